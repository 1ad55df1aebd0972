"""Stages ``source -> spikes -> refine`` for a pool of candidate filters, on device.

Rule (CKC-style refinement, Holobar & Zazula 2007; MUedit's "improve" step): from a proposed
filter ``w`` (unit vector in whitened space, source ``s = w' z``), detect the discharges
(:func:`bmiss.pipeline.spikes.detect_core`), then repeat ``w <- mean of z at the discharges``
(normalised) and re-detect while the CoV of the inter-spike intervals decreases, at most
``max_refine_iter`` updates.  The first detection is the reference; the best iterate (lowest
CoV) is returned.  With ``max_refine_iter = 0`` the stage is ``source -> spikes`` only.

Speed design (2-core CPU target: 20 s x 64 channels, 50 candidates in a few seconds): a pool
of ``B`` candidate slots advances together inside ONE jitted ``lax.while_loop``.  Every pass
reads the whitened data ``zt`` [N, n] (time-major float32, so a block of samples or one
discharge's sample is contiguous) once, block by block, and serves all slots.  A proposer may
add an on-device iteration of its own before refinement (FastICA's fixed point,
:class:`bmiss.pipeline.proposers.fastica.FixedPoint`): its slots start in phase ``ITERATE``,
and the same pass that computes their sources also accumulates the statistics of their update
while the block is in cache.  Slots of other proposers start in ``REFINE``.  The pass only
multiplies ACTIVE rows (bucketed row counts B, B/2, ..., 1 via ``lax.switch``), so a draining
pool costs a memory-bound read of the data, not B rows of work.  Control returns to the host
once a candidate is DONE; the host accepts or rejects it and puts a new one into the slot.
Static shapes everywhere (padded spike arrays, a fixed-size deflation basis), so nothing is
recompiled per candidate or per recording of the same shape.

Pool state ``st`` (dict of arrays, ``B`` slots): ``W`` [B, n], ``phase`` [B], ``it``
(iterations done), ``conv``/``cyc`` (iteration converged / stopped in a 2-cycle), ``rk``
(refinement detections), ``fp_W`` (filter at the end of the iteration), ``W_prev``,
``best_W``, ``best_S`` [B, N], ``best_spk`` [B, P], ``best_n``, ``best_sil``, ``best_cov``.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .spikes import detect_core

__all__ = ["EMPTY", "ITERATE", "REFINE", "DONE", "new_pool", "run_pool", "spike_mean", "BLOCK"]

EMPTY, ITERATE, REFINE, DONE = 0, 1, 2, 3  # slot phases
BLOCK = 256  # samples per block of the fused pass (a z block = 256 n floats stays in cache)


def new_pool(B: int, n: int, N: int, P: int) -> dict:
    """Empty pool state (numpy, host side) for ``B`` slots, ``n`` extended rows, ``N`` samples,
    ``P`` padded spikes."""
    return {
        "W": np.zeros((B, n), np.float32), "phase": np.full(B, EMPTY, np.int32), "it": np.zeros(B, np.int32),
        "conv": np.zeros(B, bool), "rk": np.zeros(B, np.int32), "fp_W": np.zeros((B, n), np.float32),
        "W_prev": np.zeros((B, n), np.float32), "cyc": np.zeros(B, bool),
        "best_W": np.zeros((B, n), np.float32), "best_S": np.zeros((B, N), np.float32),
        "best_spk": np.full((B, P), N, np.int32), "best_n": np.zeros(B, np.int32),
        "best_sil": np.zeros(B, np.float32), "best_cov": np.full(B, np.inf, np.float32),
    }


def spike_mean(zt, spikes, n_spk):
    """Mean whitened sample at the discharges, per row: ``zt`` [N, n], ``spikes`` [B, P]
    (padded with N), ``n_spk`` [B] -> [B, n].  A loop over discharge ranks reading one
    contiguous row of ``zt`` per candidate and discharge."""
    N, n = zt.shape
    B = spikes.shape[0]

    def body(k, acc):
        idx = jnp.clip(spikes[:, k], 0, N - 1)
        rows = jax.vmap(lambda i: lax.dynamic_slice_in_dim(zt, i, 1, 0)[0])(idx)
        return acc + rows * (k < n_spk)[:, None].astype(jnp.float32)

    acc = lax.fori_loop(0, jnp.max(n_spk), body, jnp.zeros((B, n), jnp.float32))
    return acc / jnp.maximum(n_spk, 1)[:, None].astype(jnp.float32)


def _fused_pass(W, zt, nonlin, block: int):
    """One read of ``zt`` [N, n]: per block ``S = z_blk W^T`` [blk, B]; with a proposer
    iteration, also ``(G, gp) = nonlin(S)`` accumulated as ``G^T z_blk`` [B, n] and
    ``sum(gp)`` [B] while the block is in cache.  Returns (S [N, B], E[z g(s)], E[g'(s)])."""
    N, n = zt.shape
    B = W.shape[0]
    nb, rem = divmod(N, block)
    dn = (((0,), (0,)), ((), ()))

    def acc_block(blk, acc, accp):
        S = blk @ W.T
        if nonlin is None:
            return S, acc, accp
        G, gp = nonlin(S)
        return S, acc + lax.dot_general(G, blk, dn), accp + gp.sum(axis=0)

    c = (jnp.zeros((N, B), jnp.float32), jnp.zeros((B, n), jnp.float32), jnp.zeros((B,), jnp.float32))
    if nb:
        def body(i, c):
            Sall, acc, accp = c
            blk = lax.dynamic_slice_in_dim(zt, i * block, block, axis=0)
            S, acc, accp = acc_block(blk, acc, accp)
            return lax.dynamic_update_slice_in_dim(Sall, S, i * block, axis=0), acc, accp

        c = lax.fori_loop(0, nb, body, c)
    if rem:
        Sall, acc, accp = c
        S, acc, accp = acc_block(zt[nb * block:], acc, accp)
        c = (Sall.at[nb * block:].set(S), acc, accp)
    Sall, acc, accp = c
    return Sall, acc / N, accp / N


def _bucketed_pass(W, active, zt, nonlin, block: int):
    """:func:`_fused_pass` over the ACTIVE rows only, on the smallest static row count
    (B, B/2, ..., 1) that holds them; inactive rows get zeros."""
    N, n = zt.shape
    B = W.shape[0]
    sizes = sorted({max(1, B >> k) for k in range(B.bit_length())}, reverse=True)
    perm = jnp.argsort(~active, stable=True)
    inv = jnp.argsort(perm)
    Wp = W[perm]
    branch = jnp.sum(jnp.asarray(sizes) >= active.sum()) - 1  # smallest size >= number active

    def make(b):
        def f(Wp):
            S, E, G = _fused_pass(Wp[:b], zt, nonlin, block)
            if b == B:
                return S, E, G
            return (jnp.zeros((N, B), S.dtype).at[:, :b].set(S), jnp.zeros((B, n), E.dtype).at[:b].set(E),
                    jnp.zeros((B,), G.dtype).at[:b].set(G))
        return f

    S, E, G = lax.switch(branch, [make(b) for b in sizes], Wp)
    return S[:, inv], E[inv], G[inv]


def _where_rows(m, a, b):
    return jnp.where(m.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


@partial(jax.jit, static_argnames=("iteration", "max_fp_iter", "max_refine_iter", "min_done", "block", "d",
                                   "n_det", "flip"))
def run_pool(st, zt, Q, tol, *, iteration=None, max_fp_iter: int = 0, max_refine_iter: int = 10,
             min_done: int = 1, block: int = BLOCK, d: int, n_det: int = 4, flip: bool = True):
    """Advance the pool until ``min_done`` candidates are DONE (or none is active).

    ``iteration``: the proposer's on-device step (static; ``None`` = none) with
    ``nonlin(S) -> (G, gp)`` and ``update(W, W_prev, Ezg, Egp, Q, tol, it) -> (W_new, conv,
    cycle)``; ITERATE slots move to REFINE on convergence, a cycle or ``max_fp_iter``.
    ``Q`` [K, n]: deflation rows the iteration projects out (zeros: none).  Up to ``n_det``
    REFINE slots are detected per pass.  Returns ``(st, n_passes)``.
    """
    nonlin = None if iteration is None else iteration.nonlin
    det_fn = jax.vmap(partial(detect_core, d=d, flip=flip))

    def cond(c):
        st, n_new, _ = c
        ph = st["phase"]
        return (n_new < min_done) & jnp.any((ph == ITERATE) | (ph == REFINE))

    def body(c):
        st, n_new, n_pass = c
        W, ph = st["W"], st["phase"]
        is_it = ph == ITERATE
        Sall, Ezg, Egp = _bucketed_pass(W, is_it | (ph == REFINE), zt, nonlin, block)
        new = dict(st)
        if iteration is not None:
            Wn, cnv, cyc = iteration.update(W, st["W_prev"], Ezg, Egp, Q, tol, st["it"])
            it = st["it"] + is_it.astype(jnp.int32)
            stop = is_it & (cnv | cyc | (it >= max_fp_iter))
            new["it"] = it
            new["conv"] = st["conv"] | (stop & cnv)
            new["cyc"] = st["cyc"] | (stop & cyc & ~cnv)
            new["fp_W"] = _where_rows(stop, Wn, st["fp_W"])
            new["W_prev"] = jnp.where(is_it[:, None], W, st["W_prev"])
            W2 = jnp.where(is_it[:, None], Wn, W)
            ph2 = jnp.where(stop, REFINE, ph)
        else:
            W2, ph2 = W, ph
        # ---- refinement of up to n_det REFINE slots
        is_rf = ph == REFINE
        sel = jnp.argsort(jnp.where(is_rf, 0, 1), stable=True)[:n_det]
        sv = is_rf[sel]
        Ssel = Sall[:, sel].T  # [n_det, N]
        det = det_fn(Ssel)
        rk = st["rk"][sel]
        ok_n = det["n_spikes"] >= 2
        improved = sv & ((rk == 0) | (ok_n & (det["cov_isi"] < st["best_cov"][sel])))
        cont = sv & improved & ok_n & (rk < max_refine_iter)
        fin = sv & ~cont
        Wm = spike_mean(zt, det["spikes"], jnp.where(cont, det["n_spikes"], 0))
        Wm = Wm / jnp.maximum(jnp.linalg.norm(Wm, axis=1, keepdims=True), 1e-20)
        for k in ("W", "S", "spk"):
            src = {"W": W[sel], "S": Ssel, "spk": det["spikes"]}[k]
            new["best_" + k] = st["best_" + k].at[sel].set(_where_rows(improved, src, st["best_" + k][sel]))
        for k, v in (("n", det["n_spikes"]), ("sil", det["sil"]), ("cov", det["cov_isi"])):
            new["best_" + k] = st["best_" + k].at[sel].set(jnp.where(improved, v, st["best_" + k][sel]))
        new["rk"] = st["rk"].at[sel].add(sv.astype(jnp.int32))
        new["W"] = W2.at[sel].set(_where_rows(cont, Wm, W2[sel]))
        new["phase"] = ph2.at[sel].set(jnp.where(fin, DONE, ph2[sel]))
        return new, n_new + fin.sum(), n_pass + 1

    st, _, n_pass = lax.while_loop(cond, body, (st, jnp.array(0), jnp.array(0)))
    return st, n_pass
