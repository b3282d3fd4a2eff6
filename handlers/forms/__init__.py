"""Guided forms: the engine behind the `form:` key of catalogue items.

`expressions` is the rule language (`visible_if`, `required_if`, checks), `definitions` the form
models checked when the catalogue loads, `review` the pre-review of a draft against its form.
The package imports only `core` and its own modules: no storage, no other handlers.
"""

# re-exported until importers move to the submodules
from handlers.forms.definitions import FormDef
from handlers.forms.expressions import ExpressionError, compile_expression
from handlers.forms.review import PROBLEM_CODES, Problem, evaluate, prefill_sources, review_form, visible_paths

__all__ = [  # re-exported until importers move to the submodules
    "PROBLEM_CODES",
    "ExpressionError",
    "FormDef",
    "Problem",
    "compile_expression",
    "evaluate",
    "prefill_sources",
    "review_form",
    "visible_paths",
]
