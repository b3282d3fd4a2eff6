"""Every error code a client can meet is listed once, in the README, with its one HTTP status.

The codes are read from the source: each `SomeKind(..., code="x")` raised or built, each
error class with its own `code`, each table row `(SomeKind, "x", message)`, resolved to the
real classes so that the status is the one `core.http.status_of` gives. A code used with two
statuses, a code missing from the README's table, or a row left there for a code no longer
used fails this test.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from types import ModuleType

from core.errors import DomainError
from core.http import status_of

ROOT = Path(__file__).resolve().parent.parent
# Stand-ins for WeChat and the platform answer in those parties' words, not ours.
NOT_OURS = {"wechat/simulator.py", "bridge/simulator.py", "core/simserver.py"}
SKIP = {".venv", "tests", "benchmarks", "var", ".git"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or rel.as_posix() in NOT_OURS or "migrations" in rel.parts:
            continue
        found[".".join(rel.with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def _resolve(node: ast.expr, namespace: dict) -> object:
    if isinstance(node, ast.Name):
        return namespace.get(node.id)
    if isinstance(node, ast.Attribute):
        # Only through modules and classes: an attribute of anything else may run code.
        base = _resolve(node.value, namespace)
        return getattr(base, node.attr, None) if isinstance(base, ModuleType | type) else None
    return None


def _is_error(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, DomainError)


def used_codes() -> dict[str, set[int]]:
    """{code: the HTTP statuses it is raised with} over the whole source."""
    codes: dict[str, set[int]] = {}
    for name, path in _modules().items():
        namespace = vars(importlib.import_module(name))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and _is_error(cls := namespace.get(node.name)):
                if "code" in vars(cls):
                    codes.setdefault(cls.code, set()).add(status_of(cls))
            elif isinstance(node, ast.Call) and _is_error(cls := _resolve(node.func, namespace)):
                given = next((k.value for k in node.keywords if k.arg == "code"), None)
                if isinstance(given, ast.Constant):
                    codes.setdefault(given.value, set()).add(status_of(cls))
                elif given is None:
                    codes.setdefault(cls.code, set()).add(status_of(cls))
            elif (
                isinstance(node, ast.Tuple)
                and len(node.elts) >= 2
                and _is_error(cls := _resolve(node.elts[0], namespace))
            ):
                # A table row (kind, code, message), as handlers/upstream.py maps WeChat's errcodes.
                if isinstance(code := node.elts[1], ast.Constant) and isinstance(code.value, str):
                    codes.setdefault(code.value, set()).add(status_of(cls))
    return codes


def listed_codes() -> dict[str, int]:
    """{code: status} from the README's error code table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("### Error codes", 1)[1].split("\n#", 1)[0]
    return {code: int(status) for status, code in re.findall(r"^\| (\d{3}) \| `([a-z0-9_]+)` \|", section, re.M)}


def test_each_code_has_one_status():
    several = {code: sorted(statuses) for code, statuses in used_codes().items() if len(statuses) > 1}
    assert not several, f"codes raised with more than one status: {several}"


def test_the_readme_lists_every_code_once_with_its_status():
    used = {code: min(statuses) for code, statuses in used_codes().items()}
    listed = listed_codes()
    assert len(used) > 50, "the scan found too few codes to be reading the source"
    missing = {code: status for code, status in used.items() if listed.get(code) != status}
    stale = sorted(set(listed) - set(used))
    assert not missing, f"add these rows to the README's error code table (or fix their status): {missing}"
    assert not stale, f"these README rows name codes no longer used: {stale}"
