"""Guided forms: the engine behind the `form:` key of catalogue items.

`expressions` is the rule language (`visible_if`, `required_if`, checks), `definitions` the form
models checked when the catalogue loads, `review` the pre-review of a draft against its form.
The package imports only `core` and its own modules: no storage, no other handlers.
"""
