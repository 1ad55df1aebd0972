"""The filter-proposer interface: the one place where decomposition methods differ.

A proposer suggests separation filters (unit vectors in the whitened extended space); the
shared stages (:mod:`~bmiss.pipeline.refine`, :mod:`~bmiss.pipeline.accept`,
:mod:`~bmiss.pipeline.dedupe`, :mod:`~bmiss.pipeline.peel`) judge them inside
:func:`bmiss.pipeline.search.search`. Diffrax-style: the proposer (an ``eqx.Module``) holds the
configuration; an immutable state object (a frozen dataclass deriving from
:class:`ProposerState`) carries what changes while the search runs. Every hook that changes
the state returns a NEW state; none changes its argument.

Hooks (``ws`` is the :class:`~bmiss.pipeline.search.Workspace`):

* ``init(ws) -> state`` (required): once, when the search starts, after ``prepare`` and any
  earlier search (``ws.units`` holds the units found so far);
* ``propose(state, ws, k, idle) -> (state, [Proposal])`` (required): up to ``k`` new filters;
  ``idle`` says that no candidate is in flight (a proposer working in rounds starts its next
  round only then); an empty list with ``idle=True`` ends the search;
* ``update(state, ws, done) -> state``: after the host judged a batch of finished candidates
  (:class:`Done`: verdict, accepted unit, filters) and peeled the accepted ones off ``ws``;
  default: the state unchanged;
* ``deflation(state) -> Q or None``: rows ``Q`` [K, n_ext] that the on-device ``iteration``
  projects out; default none;
* ``on_device() -> (iteration, max_iter, tol)``: an optional on-device step run inside the
  refine stage's pooled pass before refinement (FastICA's fixed point); default none;
* ``extras(state, units) -> (fields, meta)``: proposer-specific outputs once the units are
  final (fields of the Decomposition, entries of its meta); default none;
* ``settings_meta() -> dict``: the proposer's settings as recorded in ``meta["settings"]``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import numpy as np

__all__ = ["AbstractProposer", "ProposerState", "Proposal", "Done"]


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class ProposerState:
    """Base of every proposer's state: frozen; hooks return ``dataclasses.replace(state, ...)``."""


@dataclass
class Proposal:
    """A proposed filter ``w`` [n_ext] (float32) and what the proposer wants to remember."""

    w: np.ndarray
    info: dict = field(default_factory=dict)


@dataclass
class Done:
    """A finished candidate as the host judged it."""

    cand: int
    verdict: str  # accepted | duplicate | low_sil | few_spikes | irregular
    info: dict
    fp_w: np.ndarray  # filter at the end of the proposer's iteration
    w: np.ndarray  # best (refined) filter
    unit: Any = None  # the accepted Unit (also for duplicates: the candidate's own unit)


class AbstractProposer(eqx.Module):
    """Interface of a filter proposer (see the module docstring for the contract)."""

    def on_device(self) -> tuple[Any, int, float]:
        """``(iteration, max_iter, tol)``: the on-device step for the refine stage, or ``(None, 0, 0)``."""
        return None, 0, 0.0

    @abc.abstractmethod
    def init(self, ws) -> ProposerState:
        """The state at the start of a search."""

    @abc.abstractmethod
    def propose(self, state: ProposerState, ws, k: int, idle: bool) -> tuple[ProposerState, list[Proposal]]:
        """Up to ``k`` proposals and the new state; none with ``idle=True`` ends the search."""

    def update(self, state: ProposerState, ws, done: list[Done]) -> ProposerState:
        """The new state after the host judged ``done`` (default: unchanged)."""
        return state

    def deflation(self, state: ProposerState):
        """``Q`` [K, n_ext] float32 projected out by the on-device iteration, or ``None``."""
        return None

    def extras(self, state: ProposerState, units) -> tuple[dict, dict]:
        """``(Decomposition fields, meta entries)`` once the units are final (default none)."""
        return {}, {}

    def settings_meta(self) -> dict:
        """The proposer's settings for ``meta["settings"]``."""
        return {}
