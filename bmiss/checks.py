"""Checks of API arguments: each refusal is a :class:`bmiss.errors.UserError` that names the argument
and says the type or range expected (``seed must be an integer in 0..4294967295, got -1``).

This module imports nothing heavy.
"""
from __future__ import annotations

import math
import numbers

from .errors import UserError

SEED_MAX = 2 ** 32 - 1


def check_int(value, arg: str, lo: int | None = None, hi: int | None = None, *, none_ok: bool = False,
              where: str = ""):
    """``value`` as an int in [lo, hi] (None passes with ``none_ok``); bools and floats are refused.

    Examples
    --------
    >>> check_int(3, "n_units", 1, 2000)
    3
    """
    if value is None and none_ok:
        return None
    rng = f"{'' if lo is None else lo}..{'' if hi is None else hi}" if (lo is not None or hi is not None) else ""
    ok = (not isinstance(value, bool) and isinstance(value, numbers.Integral)
          and (lo is None or value >= lo) and (hi is None or value <= hi))
    if not ok:
        pre = f"{where}: " if where else ""
        raise UserError(f"{pre}{arg} must be an integer{' in ' + rng if rng else ''}"
                        f"{' or None' if none_ok else ''}, got {value!r}")
    return int(value)


def check_seed(seed, arg: str = "seed", *, none_ok: bool = False, where: str = ""):
    """A random seed: an int in 0..2**32-1."""
    return check_int(seed, arg, 0, SEED_MAX, none_ok=none_ok, where=where)


def check_number(value, arg: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 none_ok: bool = False, unit: str = "", where: str = ""):
    """``value`` as a finite float in [lo, hi] ((lo, hi] with ``lo_open``); text and bools are refused."""
    if value is None and none_ok:
        return None
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = (lo is None or v > lo or (v == lo and not lo_open)) and (hi is None or v <= hi)
    if not ok:
        pre = f"{where}: " if where else ""
        left = "(" if lo_open else "["
        rng = f" in {left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}]" \
            if (lo is not None or hi is not None) else ""
        u = f" {unit}" if unit else ""
        raise UserError(f"{pre}{arg} must be a finite number{rng}{u}{' or None' if none_ok else ''}, got {value!r}")
    return float(value)


__all__ = ["check_int", "check_seed", "check_number", "SEED_MAX"]
