"""Numeric filters on any metadata column: `F_small>=0.5`, `A_big<0.1`, `year=2019`.

Metadata values are strings; a column is numeric for an image when its value reads as a finite number
(`float()`, surrounding spaces allowed). An image matches a numeric filter when the column's value is a
number satisfying every comparison given for it (AND) — an image without the column, or with a value that
is not a number, never matches. `=` takes one or more numbers (any of them). Both index backends apply the
same rule: FAISS from a float column per filtered field, Milvus from the numbers it stores beside the
metadata.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np

OPERATORS: tuple[str, ...] = (">=", "<=", ">", "<", "=")
# FIELD OP VALUE, the longest operator first so `>=` is not read as `>` with a value `=0.5`.
_EXPRESSION = re.compile(r"^\s*([^<>=\s][^<>=]*?)\s*(>=|<=|>|<|=)\s*(.*?)\s*$")


def number(value: object) -> float | None:
    """A metadata value as a finite float, or None."""
    try:
        parsed = float(str(value).strip())
    except ValueError:
        return None
    return parsed if math.isfinite(parsed) else None


@dataclass(frozen=True)
class Numeric:
    """The numbers a column may hold: low ≤/< x ≤/< high, and x one of `equals` when given."""

    low: float = -math.inf
    low_inclusive: bool = True
    high: float = math.inf
    high_inclusive: bool = True
    equals: frozenset[float] | None = None

    @classmethod
    def of(cls, op: str, values: list[str] | tuple[str, ...]) -> Numeric:
        return cls().tighten(op, values)

    def tighten(self, op: str, values: list[str] | tuple[str, ...]) -> Numeric:
        """This range intersected with `op values` (a ValueError names what is wrong)."""
        if op not in OPERATORS:
            raise ValueError(f"unknown comparison {op!r}; use one of {' '.join(OPERATORS)}")
        numbers = [number(v) for v in values]
        if not numbers or any(n is None for n in numbers):
            raise ValueError(f"{op} wants a number, not {', '.join(map(str, values)) or 'nothing'}")
        found = [n for n in numbers if n is not None]
        if op == "=":
            allowed = frozenset(found) if self.equals is None else self.equals & frozenset(found)
            return replace(self, equals=allowed)
        if len(found) != 1:
            raise ValueError(f"{op} takes one number, not {len(found)}")
        value = found[0]
        if op in (">", ">="):
            inclusive = op == ">="
            if value > self.low or (value == self.low and not inclusive):
                return replace(self, low=value, low_inclusive=inclusive)
            return self
        inclusive = op == "<="
        if value < self.high or (value == self.high and not inclusive):
            return replace(self, high=value, high_inclusive=inclusive)
        return self

    def intersect(self, other: Numeric) -> Numeric:
        """Both ranges at once (two filters on one column: both must hold)."""
        out = self
        for op, value in other.clauses():
            numbers = value if isinstance(value, tuple) else (value,)
            out = out.tighten(op, [repr(v) for v in numbers])
        return out

    def accepts(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if value < self.low or (value == self.low and not self.low_inclusive):
            return False
        if value > self.high or (value == self.high and not self.high_inclusive):
            return False
        return self.equals is None or value in self.equals

    def mask(self, values: np.ndarray) -> np.ndarray:
        """`accepts` over a float column (NaN: no number there, never accepted)."""
        ok = np.isfinite(values)
        ok &= values >= self.low if self.low_inclusive else values > self.low
        ok &= values <= self.high if self.high_inclusive else values < self.high
        if self.equals is not None:
            ok &= np.isin(values, np.fromiter(self.equals, dtype=np.float64, count=len(self.equals)))
        return ok

    def clauses(self) -> list[tuple[str, float | tuple[float, ...]]]:
        """The comparisons as (operator, number) pairs, `=` with its numbers: for other engines' queries."""
        out: list[tuple[str, float | tuple[float, ...]]] = []
        if self.low > -math.inf:
            out.append((">=" if self.low_inclusive else ">", self.low))
        if self.high < math.inf:
            out.append(("<=" if self.high_inclusive else "<", self.high))
        if self.equals is not None:
            out.append(("=", tuple(sorted(self.equals))))
        return out

    def describe(self, field: str) -> list[str]:
        """`["F_small>=0.5", "F_small<0.9"]`: the filter as `--filter` expressions."""
        text = []
        for op, value in self.clauses():
            shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"
            text.append(f"{field}{op}{shown}")
        return text


def split_expression(expression: str) -> tuple[str, str, str]:
    """`F_small>=0.5` → ("F_small", ">=", "0.5"); ValueError when it is not FIELD OP VALUE."""
    match = _EXPRESSION.match(expression)
    if not match or not match.group(3):
        raise ValueError(f"filter {expression!r} is not FIELD=VALUE or FIELD>=|>|<=|<NUMBER")
    return match.group(1), match.group(2), match.group(3)
