"""Study-file fields: what each allows, its default, and the check that turns a TOML value into a plain one.

`spec` lays every section of a study file out as a table of `Field`s;
`check_section` walks one table and notes every wrong value (section.field
and what is allowed) instead of stopping at the first::

    >>> table = {"epochs": Field("an integer from 1 to 10000", 20, integer(1, 10000)),
    ...          "timeout": Field("seconds per run, a number > 0", None, number(lambda v: v > 0))}
    >>> problems = []
    >>> check_section("study", {"epochs": 0, "timout": 5}, table, problems)
    {'timeout': None}
    >>> for p in problems: print(p)
    ('study.timout', 'unknown key; allowed: epochs, timeout')
    ('study.epochs', '0 is not allowed; allowed: an integer from 1 to 10000')

A check returns the value (normalised) or raises `Invalid`.
"""

from __future__ import annotations

import importlib
import inspect
import keyword
import math
import os
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Collection

REQUIRED = object()  # the default of a field the file must give
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class Invalid(ValueError):
    """Why a value is wrong. Each reason is followed by what the field allows, unless
    `allowed=False`: then the reasons say themselves what to do. No reason: the value
    is not allowed."""

    def __init__(self, *reasons: str, allowed: bool = True):
        super().__init__(*reasons)
        self.allowed = allowed


@dataclass(frozen=True)
class Field:
    allowed: str                  # what the user may write; error messages end with it
    default: Any                  # the value when the field is absent, or REQUIRED
    check: Callable[[Any], Any]   # the value normalised, or raises Invalid


def check_section(section: str, raw: dict, table: dict[str, Field], problems: list[tuple[str, str]],
                  unknown: str = "key") -> dict[str, Any]:
    """Every field of the table: its checked value or its default. A wrong or missing field is
    noted in `problems` (and left out), as is every key the table does not know."""
    for key in raw:
        if key not in table:
            problems.append((f"{section}.{key}", f"unknown {unknown}; allowed: {', '.join(table)}"))
    values = {}
    for key, field in table.items():
        where = f"{section}.{key}"
        if key not in raw:
            if field.default is REQUIRED:
                problems.append((where, "missing; " + field.allowed))
            else:
                values[key] = field.default
            continue
        try:
            values[key] = field.check(raw[key])
        except Invalid as exc:
            reasons = exc.args or (f"{raw[key]!r} is not allowed",)
            problems += [(where, f"{r}; allowed: {field.allowed}" if exc.allowed else r) for r in reasons]
    return values


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    """An integer from lo to hi (no upper bound when hi is None)."""
    def check(v: Any) -> int:
        if not is_int(v) or v < lo or (hi is not None and v > hi):
            raise Invalid()
        return v
    return check


def number(ok: Callable[[float], bool]) -> Callable[[Any], float]:
    """A finite number for which `ok` holds, as a float."""
    def check(v: Any) -> float:
        if not is_number(v) or not math.isfinite(v) or not ok(v):
            raise Invalid()
        return float(v)
    return check


def one_of(allowed: Collection[str]) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or v not in allowed:
            raise Invalid()
        return v
    return check


def plain_name(v: Any) -> str:
    """A name that is a plain file name (the study's results directory)."""
    if not isinstance(v, str) or not NAME_RE.match(v) or v in (".", ".."):
        raise Invalid()
    return v


def seed_list(hi: int) -> Callable[[Any], tuple[int, ...]]:
    """A non-empty list of distinct integers from 0 to hi."""
    def check(v: Any) -> tuple[int, ...]:
        if not isinstance(v, list) or not v or not all(is_int(s) and 0 <= s <= hi for s in v):
            raise Invalid()
        if len(set(v)) != len(v):
            raise Invalid("has duplicate values; list each seed once", allowed=False)
        return tuple(v)
    return check


def example_ref(catalog: Collection[str]) -> Callable[[Any], str]:
    """A catalog id, or 'module:function' (a user builder; `builder_problem` imports it)."""
    def check(v: Any) -> str:
        if not isinstance(v, str):
            raise Invalid()
        if v in catalog:
            return v
        if ":" not in v:
            raise Invalid(f"unknown example {v!r}")
        module_name, _, attr = v.partition(":")
        if not module_name or not attr:
            raise Invalid()
        return v
    return check


def builder_search_path(study_path: str) -> tuple[str, ...]:
    """Where a study's `module:function` builder is looked for before the installed packages: the
    current directory and the study file's, as `ray job submit --working-dir` puts the job's
    directory on the path, so that a module beside the study file imports as it stands.

    >>> import os
    >>> builder_search_path("studies/mine.toml") == (os.getcwd(), os.path.join(os.getcwd(), "studies"))
    True
    """
    here = os.getcwd()
    return tuple(dict.fromkeys((here, os.path.dirname(os.path.join(here, study_path)) or here)))


def builder_module(module_name: str, search_path: tuple[str, ...] = ()) -> ModuleType:
    """A builder's module, imported from `search_path` first (added to `sys.path`, in the driver
    and in every worker that builds the model)."""
    for p in reversed(search_path):
        if p not in sys.path:
            sys.path.insert(0, p)
    return importlib.import_module(module_name)


def builder_problem(ref: str, search_path: tuple[str, ...] = ()) -> str | None:
    """What is wrong with a 'module:function' builder, found by importing it (the user's code runs)."""
    module_name, _, attr = ref.partition(":")
    try:
        module = builder_module(module_name, search_path)
    except Exception as exc:  # the user's module can fail in any way; report it, do not crash
        where = f" (looked in {', '.join(search_path)} and the installed packages)" if search_path else ""
        return f"cannot import module {module_name!r}{where}: {type(exc).__name__}: {exc}"
    fn = getattr(module, attr, None)
    if fn is None:
        return f"module {module_name!r} has no attribute {attr!r}"
    if not callable(fn):
        return (f"{ref!r} is not callable; it must be a function "
                "(activation: str, seed: int) -> (keras.Model compiled with its loss, x, y)")
    return None


def table_of(table: dict[str, Field], make: Callable[..., Any]) -> Callable[[Any], Any]:
    """An inline table (`{key = value, ...}`) whose keys are `table`'s fields, as `make(**values)`;
    every wrong key is a reason, named.

    >>> check = table_of({"n": Field("an integer from 1 to 9", 5, integer(1, 9))}, dict)
    >>> check({}), check({"n": 2})
    ({'n': 5}, {'n': 2})
    >>> try:
    ...     check({"n": 0, "m": 1})
    ... except Invalid as exc:
    ...     print(exc.args)
    ('m: unknown key; allowed: n', 'n: 0 is not allowed; allowed: an integer from 1 to 9')
    """
    def check(v: Any) -> Any:
        if not isinstance(v, dict):
            raise Invalid()
        problems: list[tuple[str, str]] = []
        values = check_section("", v, table, problems)
        if problems:
            raise Invalid(*(f"{where.lstrip('.')}: {message}" for where, message in problems), allowed=False)
        return make(**values)
    return check


# The checks of one value of a [grid] axis; `values_of` makes a check of the axis's list.
def positive_number(v: Any) -> float:
    if not is_number(v):
        raise Invalid(f"{v!r} is not a number")
    if not math.isfinite(v) or v <= 0:
        raise Invalid()
    return float(v)


def positive_number_or_none(v: Any) -> float | None:
    """A clipping value: "none" (any case) for no clipping."""
    if isinstance(v, str) and v.lower() == "none":
        return None
    return positive_number(v)


def unit_number(v: Any) -> float:
    """A number from 0 to 1, as a float."""
    if not is_number(v):
        raise Invalid(f"{v!r} is not a number")
    if not 0 <= v <= 1:
        raise Invalid()
    return float(v)


def boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise Invalid()
    return v


def positive_integer(v: Any) -> int:
    if not is_int(v) or v < 1:
        raise Invalid()
    return v


def values_of(check_one: Callable[[Any], Any]) -> Callable[[Any], tuple]:
    """A non-empty list (or one value) of values each passing `check_one`, none twice."""
    def check(values: Any) -> tuple:
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise Invalid("is empty; give at least one value or leave the axis out", allowed=False)
        out, reasons = [], []
        for v in values:
            try:
                out.append(check_one(v))
            except Invalid as exc:
                reasons += exc.args or [f"{v!r} is not allowed"]
        if reasons:
            raise Invalid(*reasons)
        if len(set(out)) != len(out):
            dup = sorted({repr(v) for v in out if out.count(v) > 1})
            raise Invalid(f"has duplicate values ({', '.join(dup)}); list each value once", allowed=False)
        return tuple(out)
    return check


# [grid.model]: the builder's own keyword parameters as axes. Their columns are named as the
# knobs are, so a name must read as a pandas attribute and as an unquoted DuckDB column.
KNOB_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,59}$")
# DuckDB's reserved keywords and its type/function names that cannot name a column unquoted
# (`SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category IN ('reserved',
# 'type_function')`, DuckDB 2.0).
SQL_RESERVED = frozenset("""
all analyse analyze and anti any array as asc asof asymmetric at authorization binary both by case cast check
collate collation column columns concurrently constraint create cross default deferrable desc describe distinct
do else end except false fetch for foreign freeze from full generated glob group having ilike in initially inner
intersect into is isnull join lambda lateral leading left like limit map natural not notnull null offset on only
or order outer overlaps pivot pivot_longer pivot_wider placing positional primary qualify references returning
right select semi show similar some struct summarize symmetric table tablesample then to trailing true try_cast
tuple union unique unpack unpivot using variadic verbose when where window with""".split())
KNOB_VALUES = "strings, integers, finite floats or booleans (TOML scalars), all of one type"


def knob_name_problem(name: str) -> str | None:
    """Why `name` cannot be a model axis's column name, or None.

    >>> knob_name_problem("depth") is None
    True
    >>> knob_name_problem("order")
    "'order' is an SQL keyword (DuckDB would need it quoted)"
    >>> knob_name_problem("size")
    "'size' is a pandas DataFrame attribute (df.size would not be the column)"
    """
    if not KNOB_NAME_RE.match(name):
        return (f"{name!r} is not a plain column name: lower-case letters, digits and '_', starting with a "
                "letter, at most 60 characters")
    if keyword.iskeyword(name):
        return f"{name!r} is a Python keyword"
    if name in SQL_RESERVED:
        return f"{name!r} is an SQL keyword (DuckDB would need it quoted)"
    import pandas as pd  # only for a study that names knobs: `validate` otherwise never loads it

    if hasattr(pd.DataFrame, name):
        return f"{name!r} is a pandas DataFrame attribute (df.{name} would not be the column)"
    return None


def knob_values(ok: Callable[[Any], bool] | None = None, allowed: str = "") -> Callable[[Any], tuple]:
    """A check of one [grid.model] knob: a value or a list of TOML scalars of one type (bool is
    not an integer; 1 and 1.0 are two types, so that a builder gets what the file wrote and a
    column has one type), none twice; `ok` a catalog knob's own rule (`allowed` says it)."""
    def check(values: Any) -> tuple:
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise Invalid("is empty; give at least one value or leave the knob out", allowed=False)
        reasons = []
        for v in values:
            if not isinstance(v, (str, int, float, bool)):
                reasons.append(f"{v!r} is not a TOML scalar; allowed: {KNOB_VALUES}")
            elif isinstance(v, float) and not math.isfinite(v):
                reasons.append(f"{v!r} is not finite; allowed: {KNOB_VALUES}")
            elif ok is not None and not ok(v):
                reasons.append(f"{v!r} is not allowed; allowed: {allowed}")
        if not reasons and len({type(v) for v in values}) > 1:
            reasons.append(f"mixes {' and '.join(sorted({type(v).__name__ for v in values}))} values; allowed: "
                           f"{KNOB_VALUES} (write 1.0, not 1, beside floats)")
        if reasons:
            raise Invalid(*reasons, allowed=False)
        if len(set(values)) != len(values):
            dup = sorted({repr(v) for v in values if values.count(v) > 1})
            raise Invalid(f"has duplicate values ({', '.join(dup)}); list each value once", allowed=False)
        return tuple(values)
    return check


# Keyword arguments the sweep itself passes to a user builder: not knobs.
BUILDER_ARGUMENTS = ("activation", "seed")


def builder_knobs(fn: Callable) -> tuple[str, ...] | None:
    """The keyword parameters a user builder accepts besides `BUILDER_ARGUMENTS`; None when it
    takes any (`**kwargs`).

    >>> def build(activation, seed, depth=2, *, kernel_initializer="glorot_uniform"): ...
    >>> builder_knobs(build)
    ('depth', 'kernel_initializer')
    """
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: nothing to read, accept any
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                 and p.name not in BUILDER_ARGUMENTS)
