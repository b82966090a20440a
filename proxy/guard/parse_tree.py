"""Reading libpg_query's JSON parse tree: constant values, options, names, every object.

The analyzer (:mod:`proxy.guard.analysis`) decides what a statement does; these functions
only read the shape pglast returns (``{"A_Const": {"sval": {"sval": ...}}}``, DefElem
lists, ``funcname`` lists) and know nothing of settings or policies. Trees are walked
iteratively: deep expressions cannot exhaust Python's stack.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from proxy.guard.verdict import Param, SettingValue, Special

_TEXT_TYPES = frozenset({"text", "varchar"})


def constant_value(node: Any, depth: int) -> SettingValue:
    """The value of a constant expression, a bind parameter (only at ``depth`` 0, the
    text the client sent), or Special.UNKNOWN."""
    while type(node) is dict:
        if "A_Const" in node:
            const = node["A_Const"]
            if const.get("isnull"):
                return Special.NULL
            if "sval" in const:
                return str(const["sval"].get("sval", ""))
            if "ival" in const:
                return str(const["ival"].get("ival", 0))
            if "fval" in const:
                return str(const["fval"].get("fval", ""))
            if "boolval" in const:
                return "true" if const["boolval"].get("boolval") else "false"
            return Special.UNKNOWN
        if "TypeCast" in node:
            # Casts to text or varchar keep the value; any other cast may change it.
            cast = node["TypeCast"]
            type_name = cast.get("typeName") or {}
            names = [n.get("String", {}).get("sval") for n in type_name.get("names", ())]
            plain = not type_name.get("typmods") and not type_name.get("arrayBounds")
            if not (plain and names and names[-1] in _TEXT_TYPES
                    and (len(names) == 1 or names[:-1] == ["pg_catalog"])):
                return Special.UNKNOWN
            node = cast.get("arg")
            continue
        if "ParamRef" in node and depth == 0:
            number = node["ParamRef"].get("number", 0)
            return Param(number - 1) if number > 0 else Special.UNKNOWN
        return Special.UNKNOWN
    return Special.UNKNOWN


def dicts(root: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in ``root``, depth first, without recursion."""
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        if type(obj) is dict:
            yield obj
            stack.extend(v for v in obj.values() if type(v) is dict or type(v) is list)
        elif type(obj) is list:
            stack.extend(obj)


def names_in_statements(stmts: list[Any]) -> tuple[list[str], list[str]]:
    """Function names (without schema) and relation names anywhere in ``stmts``."""
    functions: list[str] = []
    relations: list[str] = []
    for obj in dicts(stmts):
        names = obj.get("funcname")
        if type(names) is list and names:
            functions.append(str(names[-1].get("String", {}).get("sval", "")))
        relname = obj.get("relname")
        if type(relname) is str:
            relations.append(relname)
    return functions, relations


def def_elems(items: Iterable[Any]) -> dict[str, Any]:
    """DefElem options as {name: argument node}."""
    result: dict[str, Any] = {}
    for item in items:
        elem = item.get("DefElem")
        if elem is not None:
            result[elem.get("defname", "")] = elem.get("arg")
    return result


def string_value(node: Any) -> str | None:
    """The text of a String node, or None for any other node."""
    if type(node) is dict and "String" in node:
        return str(node["String"].get("sval", ""))
    return None
