"""Stage ``dedupe``: one unit per motor unit.

Rule: a new unit sharing ``>= rules.dup_threshold`` (30 %) of its discharges with an accepted
one (:func:`bmiss.quality.shared_fraction`, within ``±dup_tol_ms`` after the best lag within
``±dup_max_lag_ms``) is a duplicate.  Of the new unit and every unit it duplicates, one stays:
``keep="cov"`` the lowest CoV of ISI (then the highest SIL), ``keep="sil"`` the highest SIL.
The others' ``info`` is kept in the survivor's ``absorbed`` list (the model proposer reads the
spread of their fitted parameters).
"""
from __future__ import annotations

import math

from ..quality import ms_to_samples, shared_fraction, tol_samples
from .accept import Unit
from .settings import Rules

__all__ = ["duplicates_of", "merge"]


def duplicates_of(unit: Unit, units: list[Unit], rules: Rules, fs: float) -> list[int]:
    """Indices of the accepted ``units`` that ``unit`` duplicates (compared on ``spikes``)."""
    if not rules.dedupe:
        return []
    tol, lag = tol_samples(rules.dup_tol_ms, fs), ms_to_samples(rules.dup_max_lag_ms, fs)
    return [j for j, u in enumerate(units)
            if shared_fraction(unit.spikes, u.spikes, tol=tol, max_lag=lag) >= rules.dup_threshold]


def _rank(u: Unit, keep: str):
    cov = u.cov if math.isfinite(u.cov) else math.inf
    return (-u.sil,) if keep == "sil" else (cov, -u.sil)


def merge(unit: Unit, units: list[Unit], dup_of: list[int], rules: Rules) -> tuple[list[Unit], Unit]:
    """Replace the group ``units[dup_of] + [unit]`` by its best member; returns
    ``(new unit list, survivor)``."""
    group = [units[j] for j in dup_of] + [unit]
    best = min(group, key=lambda u: _rank(u, rules.keep))
    for u in group:
        if u is not best:
            best.absorbed.extend([u.info] + u.absorbed)
    return [u for j, u in enumerate(units) if j not in dup_of] + [best], best
