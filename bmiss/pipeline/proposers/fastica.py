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

from typing import Callable, NamedTuple

import jax.numpy as jnp
import numpy as np

from ..settings import FastICASettings, as_dict
from .base import AbstractProposer, Done, Proposal

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


class _Starts:
    """Start samples: the highest residual activity not used yet (see module docstring).

    Without peel-off, :meth:`explain` removes an accepted unit's average activity around its
    discharges (the STA of the activity over ``±half`` minus the median), so later starts go
    to samples the accepted units do not explain.
    """

    def __init__(self, activity: np.ndarray, excl: int, half: int, seed: int, edge: int = 0):
        self.act = np.asarray(activity, np.float64).copy()
        self.base = float(np.median(self.act))
        self.avail = np.ones(len(self.act), bool)
        if 0 < 2 * edge < len(self.act):  # record edges: extension zeros, filter transients
            self.avail[:edge] = False
            self.avail[-edge:] = False
        self.excl, self.half = int(excl), int(half)
        self.rng = np.random.default_rng(seed)

    def next(self) -> int:
        a = np.where(self.avail, self.act, -np.inf)
        t = int(np.argmax(a))
        if not np.isfinite(a[t]):  # exhausted (tiny recordings): random sample
            t = int(self.rng.integers(len(self.act)))
        self.avail[max(0, t - self.excl): t + self.excl + 1] = False
        return t

    def explain(self, spikes) -> None:
        sp = np.asarray(spikes, np.int64)
        if len(sp) == 0:
            return
        N = len(self.act)
        idx = sp[:, None] + np.arange(-self.half, self.half + 1)[None, :]
        ok = (idx >= 0) & (idx < N)
        idx = np.clip(idx, 0, N - 1)
        sta = np.where(ok, self.act[idx], 0.0).sum(0) / np.maximum(ok.sum(0), 1)
        sub = np.where(ok, np.maximum(sta - self.base, 0.0)[None, :], 0.0)
        np.subtract.at(self.act, idx.ravel(), sub.ravel())
        np.maximum(self.act, 0.0, out=self.act)


class _State:
    def __init__(self, Qh, nq, starts, n_started):
        self.Qh, self.nq, self.starts, self.n_started = Qh, nq, starts, n_started
        self.Q = jnp.asarray(Qh.astype(np.float32))


def _orthonormal_add(Qh: np.ndarray, k: int, w: np.ndarray) -> int:
    """Gram-Schmidt ``w`` (float64, twice: Kahan) into row ``k`` of ``Qh``; new row count."""
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

    def init(self, ws):
        s = self.settings
        wh = ws.prep.whitened
        n = ws.n
        Qh = np.zeros((n // 2 + int(s.n_iter), n), np.float64)
        nq = 0
        if s.signal_subspace:
            E_floor = np.asarray(wh.eigvecs[:, wh.eigvals < wh.floor], np.float64)
            nq = E_floor.shape[1]
            Qh[:nq] = E_floor.T
        starts = _Starts(np.asarray(ws.act, np.float64), ws.d, ws.peel_half, s.seed, edge=ws.prep.R + ws.d)
        return _State(Qh, nq, starts, 0)

    def propose(self, state, ws, k, idle):
        out = []
        while len(out) < k and state.n_started < self.settings.n_iter:
            t = state.starts.next()
            v = np.asarray(ws.zt[t], np.float64)
            if state.nq:
                v = v - state.Qh[:state.nq].T @ (state.Qh[:state.nq] @ v)
            nv = np.linalg.norm(v)
            if nv < 1e-12:
                v = np.random.default_rng(self.settings.seed + t).standard_normal(ws.n)
                nv = np.linalg.norm(v)
            out.append(Proposal((v / nv).astype(np.float32), {"start": int(t)}))
            state.n_started += 1
        return state, out

    def update(self, state, ws, done: list[Done]):
        for d in done:
            if d.verdict in ("accepted", "duplicate"):
                state.nq = _orthonormal_add(state.Qh, state.nq, d.w)
                if not ws.rules.peel and d.verdict == "accepted":
                    state.starts.explain(d.unit.spikes)
            elif self.settings.deflate_rejected:
                state.nq = _orthonormal_add(state.Qh, state.nq, d.fp_w)
        state.Q = jnp.asarray(state.Qh.astype(np.float32))
        if ws.rules.peel:
            state.starts.act = np.asarray(ws.act, np.float64)  # residual activity for the next starts
        return state

    def deflation(self, state):
        return state.Q

    def settings_meta(self):
        return as_dict(self.settings)
