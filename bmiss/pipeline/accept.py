"""Stage ``accept``: a refined candidate becomes a :class:`Unit` or is rejected.

Rule: accepted when ``SIL >= rules.sil_threshold``, it has ``>= rules.min_spikes``
discharges (SIL as defined in :mod:`bmiss.quality`) and, with ``rules.max_cov``, its CoV of ISI
is at most that; ``rules.accept_all`` keeps every
candidate (the oracle reports one unit per true MU, however poor).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .settings import Rules

__all__ = ["Unit", "verdict"]


@dataclass
class Unit:
    """An accepted unit while the pipeline runs.

    w : [n_ext] unit filter in whitened space (source ``s = w' z``);
    source : [N] float32 source before alignment; peaks : discharges at the source peaks;
    spikes : discharge times (onset convention of :mod:`bmiss.quality`), set by finalize;
    shift : samples from the source peaks to the discharge times (``spikes = peaks + shift``);
    sil, cov : quality; cand : candidate index (order found); info : proposer-specific
    (e.g. fitted MU parameters); absorbed : infos of the duplicates merged into this unit.
    """

    w: np.ndarray
    source: np.ndarray
    peaks: np.ndarray
    sil: float
    cov: float
    cand: int
    shift: int = 0
    spikes: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    absorbed: list = field(default_factory=list)


def verdict(n_spikes: int, sil: float, rules: Rules, cov: float | None = None) -> str:
    """``"accepted"``, ``"few_spikes"``, ``"low_sil"`` or ``"irregular"`` (CoV of ISI above
    ``rules.max_cov``)."""
    if rules.accept_all:
        return "accepted"
    if n_spikes < rules.min_spikes:
        return "few_spikes"
    if not sil >= rules.sil_threshold:
        return "low_sil"
    if rules.max_cov is not None and cov is not None and cov > rules.max_cov:
        return "irregular"
    return "accepted"
