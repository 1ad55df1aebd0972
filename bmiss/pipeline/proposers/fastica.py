"""FastICA fixed point (Negro et al. 2016, as MUedit/openhdemg run it): the ``cbss`` proposer.

Each candidate starts at the whitened extended sample of highest RESIDUAL activity
``||z(t)||^2`` not used yet (samples within ``min_distance`` of an earlier start, and the record
edges, are skipped), projected off the deflation basis.  On device, inside the refine stage's
pooled pass (:func:`bmiss.pipeline.refine.run_pool`), it iterates

    w <- E[z g(w'z)] - E[g'(w'z)] w,  deflated against Q, normalised,

until ``|1 - |w_new' w_old|| < tol``, a period-2 cycle (back to the iterate of two steps ago:
more iterations cannot help) or ``max_fp_iter``.  Contrasts ("skew" default): ``G = x^3/3``
(``g = x^2``), ``log cosh`` (``g = tanh``), kurtosis ``G = x^4/4`` (``g = x^3``).

Deflation basis ``Q``: the floored eigen-directions of the whitening (with
``signal_subspace``: there ``z`` has variance ``d/floor < 1`` and every low-variance direction
is a spurious fixed point of the tanh/x^3 updates), the filters of accepted units and the
converged filters of rejected candidates (``deflate_rejected``), so the search does not
return to a solution it already judged.  Static row count ``n/2 + n_iter``, so one compiled
kernel serves every recording of the same shape.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from ..settings import FastICASettings, as_dict
from .base import AbstractProposer, Done, Proposal, ProposerState

__all__ = ["FastICA", "FixedPoint", "FIXED_POINT"]


def _g_skew(s):  # G = x^3/3
    return s * s, 2.0 * s


def _g_logcosh(s):  # G = log cosh x
    t = jnp.tanh(s)
    return t, 1.0 - t * t


def _g_kurtosis(s):  # G = x^4/4
    s2 = s * s
    return s2 * s, 3.0 * s2


def _fixed_point_update(W, W_prev, Ezg, Egp, Q, tol, it):
    Wn = Ezg - Egp[:, None] * W
    Wn = Wn - (Wn @ Q.T) @ Q
    Wn = Wn / jnp.maximum(jnp.linalg.norm(Wn, axis=1, keepdims=True), 1e-20)
    conv = jnp.abs(1.0 - jnp.abs(jnp.sum(Wn * W, axis=1))) < tol
    cycle = (jnp.abs(1.0 - jnp.abs(jnp.sum(Wn * W_prev, axis=1))) < tol) & (it >= 2)
    return Wn, conv, cycle


class FixedPoint(NamedTuple):
    """On-device step for :func:`bmiss.pipeline.refine.run_pool` (hashable: a jit static)."""

    nonlin: Callable
    update: Callable = _fixed_point_update


FIXED_POINT = {"skew": FixedPoint(_g_skew), "logcosh": FixedPoint(_g_logcosh), "kurtosis": FixedPoint(_g_kurtosis)}


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class Starts:
    """Start samples: the highest residual activity not used yet (see module docstring).

    act : [N] residual activity; base : its median at the start; avail : [N] samples not yet
    excluded; excl : half-width (samples) excluded around a used start; half : half-width of the
    activity an accepted unit explains (no peel-off); seed, n_taken : random starts once the
    samples run out (tiny recordings) come from ``default_rng((seed, n_taken))``.
    """

    act: np.ndarray
    base: float
    avail: np.ndarray
    excl: int
    half: int
    seed: int
    n_taken: int = 0

    @classmethod
    def new(cls, activity: np.ndarray, excl: int, half: int, seed: int, edge: int = 0) -> "Starts":
        act = np.asarray(activity, np.float64).copy()
        avail = np.ones(len(act), bool)
        if 0 < 2 * edge < len(act):  # record edges: extension zeros, filter transients
            avail[:edge] = False
            avail[-edge:] = False
        return cls(act, float(np.median(act)), avail, int(excl), int(half), int(seed))

    def take(self) -> tuple[int, "Starts"]:
        """The next start sample and the starts without it."""
        a = np.where(self.avail, self.act, -np.inf)
        t = int(np.argmax(a))
        if not np.isfinite(a[t]):  # exhausted (tiny recordings): random sample
            t = int(np.random.default_rng((self.seed, self.n_taken)).integers(len(self.act)))
        avail = self.avail.copy()
        avail[max(0, t - self.excl): t + self.excl + 1] = False
        return t, replace(self, avail=avail, n_taken=self.n_taken + 1)

    def explained(self, spikes) -> "Starts":
        """Without peel-off: the starts with an accepted unit's average activity around its
        discharges removed (the STA of the activity over ``±half`` minus the median), so later
        starts go to samples the accepted units do not explain."""
        sp = np.asarray(spikes, np.int64)
        if len(sp) == 0:
            return self
        act = self.act.copy()
        N = len(act)
        idx = sp[:, None] + np.arange(-self.half, self.half + 1)[None, :]
        ok = (idx >= 0) & (idx < N)
        idx = np.clip(idx, 0, N - 1)
        sta = np.where(ok, act[idx], 0.0).sum(0) / np.maximum(ok.sum(0), 1)
        sub = np.where(ok, np.maximum(sta - self.base, 0.0)[None, :], 0.0)
        np.subtract.at(act, idx.ravel(), sub.ravel())
        np.maximum(act, 0.0, out=act)
        return replace(self, act=act)


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class FastICAState(ProposerState):
    """Qh : [K_max, n_ext] float64 orthonormal deflation rows, the first ``nq`` in use;
    Q : the same rows as float32 on the device; starts : :class:`Starts`; n_started : filters proposed."""

    Qh: np.ndarray
    nq: int
    starts: Starts
    n_started: int
    Q: object


def _state(Qh, nq, starts, n_started) -> FastICAState:
    return FastICAState(Qh, nq, starts, n_started, jnp.asarray(Qh.astype(np.float32)))


def _orthonormal_add(Qh: np.ndarray, k: int, w: np.ndarray) -> int:
    """Gram-Schmidt ``w`` (float64, twice: Kahan) into row ``k`` of ``Qh`` (a fresh copy the
    caller owns); new row count."""
    if k >= Qh.shape[0]:
        return k
    v = np.asarray(w, np.float64).copy()
    for _ in range(2):
        if k:
            v -= Qh[:k].T @ (Qh[:k] @ v)
    nv = np.linalg.norm(v)
    if nv < 1e-6:
        return k
    Qh[k] = v / nv
    return k + 1


class FastICA(AbstractProposer):
    """Convolutive FastICA proposer (see module docstring)."""

    settings: FastICASettings

    def on_device(self):
        return FIXED_POINT[self.settings.contrast], int(self.settings.max_fp_iter), float(self.settings.tol)

    def init(self, ws) -> FastICAState:
        s = self.settings
        wh = ws.prep.whitened
        n = ws.n
        Qh = np.zeros((n // 2 + int(s.n_iter), n), np.float64)
        nq = 0
        if s.signal_subspace:
            E_floor = np.asarray(wh.eigvecs[:, wh.eigvals < wh.floor], np.float64)
            nq = E_floor.shape[1]
            Qh[:nq] = E_floor.T
        starts = Starts.new(np.asarray(ws.act, np.float64), ws.d, ws.peel_half, s.seed, edge=ws.prep.R + ws.d)
        return _state(Qh, nq, starts, 0)

    def propose(self, state: FastICAState, ws, k, idle):
        out = []
        starts, n_started = state.starts, state.n_started
        Qn = state.Qh[:state.nq]
        while len(out) < k and n_started < self.settings.n_iter:
            t, starts = starts.take()
            v = np.asarray(ws.zt[t], np.float64)
            if state.nq:
                v = v - Qn.T @ (Qn @ v)
            nv = np.linalg.norm(v)
            if nv < 1e-12:
                v = np.random.default_rng(self.settings.seed + t).standard_normal(ws.n)
                nv = np.linalg.norm(v)
            out.append(Proposal((v / nv).astype(np.float32), {"start": int(t)}))
            n_started += 1
        return replace(state, starts=starts, n_started=n_started), out

    def update(self, state: FastICAState, ws, done: list[Done]) -> FastICAState:
        Qh, nq, starts = state.Qh.copy(), state.nq, state.starts
        for d in done:
            if d.verdict in ("accepted", "duplicate"):
                nq = _orthonormal_add(Qh, nq, d.w)
                if not ws.rules.peel and d.verdict == "accepted":
                    starts = starts.explained(d.unit.spikes)
            elif self.settings.deflate_rejected:
                nq = _orthonormal_add(Qh, nq, d.fp_w)
        if ws.rules.peel:
            starts = replace(starts, act=np.asarray(ws.act, np.float64))  # residual activity for the next starts
        return _state(Qh, nq, starts, state.n_started)

    def deflation(self, state: FastICAState):
        return state.Q

    def settings_meta(self):
        return as_dict(self.settings)
