"""Label and field selectors, parsed once per request.

Labels: ``k=v``, ``k==v``, ``k!=v`` (also true when ``k`` is absent), ``k``, ``!k``,
``k in (a,b)``, ``k notin (a,b)`` (also true when absent), comma-separated (all must hold).
Fields: ``f=v``, ``f==v``, ``f!=v`` over the fields ``Kind.selectable`` gives; any other
field is a ``ValueError`` (a real server answers 400 "field label not supported").
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._kinds import Fields, Kind

Test = Callable[[dict[str, str], Fields], bool]

_SET_TERM = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s*\((.*)\)\s*$")


def _split_terms(text: str) -> list[str]:
    """Split on the commas that are not inside ``( )``."""
    terms: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [t.strip() for t in terms if t.strip()]


def _equality(term: str) -> tuple[str, bool, str]:
    """``key``, ``equal?``, ``value`` of ``key=value``/``key==value``/``key!=value``."""
    if "!=" in term:
        key, _, value = term.partition("!=")
        return key.strip(), False, value.strip()
    key, _, value = term.partition("=")
    return key.strip(), True, value.lstrip("=").strip()


def _label_test(term: str) -> Test:
    match = _SET_TERM.match(term)
    if match:
        key, op, values = match.group(1), match.group(2), match.group(3)
        allowed = {v.strip() for v in values.split(",")}
        if op == "in":
            return lambda labels, _: labels.get(key) in allowed
        return lambda labels, _: labels.get(key) not in allowed
    if "=" in term:
        key, equal, value = _equality(term)
        if equal:
            return lambda labels, _: labels.get(key) == value
        return lambda labels, _: labels.get(key) != value
    if term.startswith("!"):
        absent = term[1:].strip()
        return lambda labels, _: absent not in labels
    return lambda labels, _: term in labels


def _field_test(term: str, kind: Kind) -> Test:
    key, equal, value = _equality(term)
    if key not in kind.selectable({}):
        raise ValueError(f'"{key}" is not a known field selector: only {_known(kind)}')
    if equal:
        return lambda _, fields: fields.get(key, "") == value
    return lambda _, fields: fields.get(key, "") != value


def _known(kind: Kind) -> str:
    return ", ".join(f'"{f}"' for f in kind.selectable({}))


class Selector:
    """What one LIST or WATCH asks for: a namespace (from the path) and the selectors."""

    def __init__(
        self,
        kind: Kind,
        *,
        namespace: str | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        tests: list[Test] = []
        if namespace is not None:
            tests.append(lambda _, fields: fields.get("metadata.namespace") == namespace)
        for term in _split_terms(field_selector or ""):
            tests.append(_field_test(term, kind))
        for term in _split_terms(label_selector or ""):
            tests.append(_label_test(term))
        self.tests = tests

    @property
    def everything(self) -> bool:
        return not self.tests

    def matches(self, labels: dict[str, str], fields: Fields) -> bool:
        return all(test(labels, fields) for test in self.tests)
