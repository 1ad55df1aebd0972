"""The filter-proposer interface: the one place where decomposition methods differ.

A proposer suggests separation filters (unit vectors in the whitened extended space); the
shared stages (:mod:`~bmiss.pipeline.refine`, :mod:`~bmiss.pipeline.accept`,
:mod:`~bmiss.pipeline.dedupe`, :mod:`~bmiss.pipeline.peel`, :mod:`~bmiss.pipeline.finalize`)
judge them.  Diffrax-style: the module holds the configuration, a separate state object
carries what changes while the pipeline runs.

* ``init(ws) -> state``: once, after ``prepare`` (``ws`` is the :class:`~bmiss.pipeline.run.Workspace`);
* ``propose(state, ws, k, idle) -> (state, [Proposal])``: up to ``k`` new filters; ``idle``
  says that no candidate is in flight (a proposer working in rounds starts its next round
  only then); an empty list with ``idle=True`` ends the search;
* ``update(state, ws, done) -> state``: after the host judged a batch of finished candidates
  (:class:`Done`: verdict, accepted unit, filters) and peeled the accepted ones off ``ws``;
* ``deflation(state)``: rows ``Q`` [K, n] that an on-device ``iteration`` projects out;
* ``extras(state, units) -> (fields, meta)``: proposer-specific outputs (fitted parameters).

``on_device() -> (iteration, max_iter, tol)`` names an optional on-device step run inside the
refine stage's pooled pass before refinement (FastICA's fixed point); default none.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import numpy as np

__all__ = ["AbstractProposer", "Proposal", "Done"]


@dataclass
class Proposal:
    """A proposed filter ``w`` [n_ext] (float32) and what the proposer wants to remember."""

    w: np.ndarray
    info: dict = field(default_factory=dict)


@dataclass
class Done:
    """A finished candidate as the host judged it."""

    cand: int
    verdict: str  # accepted | duplicate | low_sil | few_spikes
    info: dict
    fp_w: np.ndarray  # filter at the end of the proposer's iteration
    w: np.ndarray  # best (refined) filter
    unit: Any = None  # the accepted Unit (also for duplicates: the candidate's own unit)


class AbstractProposer(eqx.Module):
    def on_device(self) -> tuple[Any, int, float]:
        """``(iteration, max_iter, tol)``: the on-device step for the refine stage, or ``(None, 0, 0)``."""
        return None, 0, 0.0

    @abc.abstractmethod
    def init(self, ws):
        ...

    @abc.abstractmethod
    def propose(self, state, ws, k: int, idle: bool):
        ...

    def update(self, state, ws, done: list[Done]):
        return state

    def deflation(self, state):
        return None

    def extras(self, state, units) -> tuple[dict, dict]:
        return {}, {}

    def settings_meta(self) -> dict:
        return {}

