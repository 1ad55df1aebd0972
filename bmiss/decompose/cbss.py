"""Classic convolutive blind source separation (Negro et al. 2016, as MUedit/openhdemg run it).

Pipeline: :func:`bmiss.decompose.preprocess.prepare` (channel check, 20-500 Hz band-pass,
extension, ZCA whitening), then ``n_iter`` candidate separation filters, each

1. initialised at the whitened extended sample of highest (residual) activity
   ``||z(t)||^2`` not used yet (samples within ``min_distance_ms`` of an earlier start are
   skipped, so two candidates never start on the same discharge);
2. fixed-point iteration ``w <- E[z g(w'z)] - E[g'(w'z)] w``, orthogonalised against the
   filters already found (deflation), normalised, until ``|1 - |w_new' w_old|| < tol``,
   a period-2 cycle (``w_new`` back to the iterate of two steps ago: more iterations cannot
   help) or ``max_fp_iter`` iterations.  Contrasts ("skew" default): ``G(x) = x^3/3``
   (``g = x^2``), ``log cosh`` (``g = tanh``), kurtosis ``G = x^4/4`` (``g = x^3``).
   The iteration runs in the white part of the whitened space (the eigen-directions whose
   eigenvalue was not floored): in the floored directions ``z`` has variance ``d/floor < 1``
   and every low-variance direction is a spurious fixed point of the tanh/x^3 updates;
3. discharges by :func:`bmiss.decompose.spikes.detect_core` (peaks of ``s|s|`` >= 20 ms
   apart, 2-means on heights);
4. CKC-style refinement: ``w <- mean of z at the discharges``, re-detect, repeated while the
   CoV of the inter-spike intervals decreases (at most ``max_refine_iter`` times);
5. accepted when ``SIL >= sil_threshold`` and ``>= min_spikes`` discharges; a unit sharing
   >= 30 % of its discharges (within +/-0.5 ms, after the best lag within +/-25 ms) with an
   accepted one is a duplicate: the one with the lower CoV of ISI (then higher SIL) stays;
6. peel-off (default on): the accepted unit's spike-triggered average of ``z`` (lags up to
   ``R + 50 ms`` either side) is subtracted at its discharges, so later candidates cannot
   converge to the same unit at another extension lag (deflating one filter only blocks one
   lag, and convolutive mixtures have ``T + R - 1`` lags per unit).  Without peel-off the
   starts avoid the activity the accepted units explain instead.

Discharge times: a filter picks the unit at some extension lag, so the source peaks a
constant, unit-specific delay after the discharge (up to T + R samples).  Each unit's spikes
are shifted onto the onset of its spike-triggered MUAP (band-passed EMG, see
:func:`muap_onset_shift`), which makes duplicates found at different lags line up and puts
the reported times within a few ms of the firing (RoA evaluations search lags of only
+/-30 ms).

Speed design (2-core CPU target: 20 s x 64 channels, 50 candidates in a few seconds):

* the whitened data is kept once, float32 and time-major (``zt = z.T`` [N, n]) so that a
  block of samples, a discharge's sample or a peel-off window is contiguous memory;
* a pool of ``batch`` (16) candidates advances together inside ONE jitted
  ``lax.while_loop``: every pass reads ``zt`` once, block by block (``z_blk W^T`` then
  ``g(S)^T z_blk`` while the block is in cache), and serves all slots - fixed-point slots
  get their update, refinement slots get their new source from the same pass (spike
  detection and the spike-triggered mean run on device too).  The pass only multiplies the
  ACTIVE rows (bucketed row counts B, B/2, ..., 1 via ``lax.switch``), so a draining pool
  costs a memory-bound read of the data, not B rows of work.  Control returns to the host
  only when a candidate is finished; the host accepts/rejects it, peels it off, updates the
  deflation basis and puts a new start into the free slot while the others keep their state;
* static shapes everywhere (zero-padded deflation basis [n/2 + n_iter, n]; padded spike
  arrays), so nothing is recompiled per iteration or per recording of the same shape.

Deflation basis: the floored eigen-directions, the (orthonormalised) filters of accepted
units and the converged filters of rejected candidates (``deflate_rejected``), so the
search does not return to a solution it already judged.
"""
from __future__ import annotations

import math
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..io import Decomposition
from .preprocess import Prepared, prepare
from .spikes import detect_core, max_peaks, min_distance_samples

__all__ = ["decompose_cbss", "CONTRASTS", "duplicate_fraction"]

CONTRASTS = ("skew", "logcosh", "kurtosis")
_BLOCK = 256  # samples per block of the fused fixed-point pass (z block = 256 n_ext floats)


# ---------------------------------------------------------------------------- contrasts
def _g_gp(s, contrast: str):
    if contrast == "skew":  # G = x^3/3
        return s * s, 2.0 * s
    if contrast == "logcosh":  # G = log cosh x
        t = jnp.tanh(s)
        return t, 1.0 - t * t
    if contrast == "kurtosis":  # G = x^4/4
        s2 = s * s
        return s2 * s, 3.0 * s2
    raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")


# ---------------------------------------------------------------------------- device kernels
# All kernels take the whitened data TIME-MAJOR, ``zt = z.T`` [N, n] (float32): a block of
# samples, a discharge's sample or a peel-off window is then one contiguous piece of memory.
def _spike_mean(zt, spikes, n_spk):
    """Mean whitened sample at the discharges, per row: zt [N, n], spikes [B, P] (padded
    with N), n_spk [B] -> [B, n].  A loop over discharge ranks reading one row of ``zt``
    (contiguous) per candidate and discharge."""
    N, n = zt.shape
    B = spikes.shape[0]

    def body(k, acc):
        idx = jnp.clip(spikes[:, k], 0, N - 1)
        rows = jax.vmap(lambda i: lax.dynamic_slice_in_dim(zt, i, 1, 0)[0])(idx)
        return acc + rows * (k < n_spk)[:, None].astype(jnp.float32)

    acc = lax.fori_loop(0, jnp.max(n_spk), body, jnp.zeros((B, n), jnp.float32))
    return acc / jnp.maximum(n_spk, 1)[:, None].astype(jnp.float32)


EMPTY, FP, REFINE, DONE = 0, 1, 2, 3  # slot phases of the candidate pool


def _fused_pass(W, zt, fn, block: int):
    """One read of ``zt`` [N, n]: per block of samples, ``S = z_blk W^T`` ([blk, B]),
    ``(G, gp) = fn(S)``, accumulate ``G^T z_blk`` ([B, n]) and ``sum(gp)`` ([B]) while the
    block is in cache.  Returns (S [N, B], E[z g(s)] [B, n], E[g'(s)] [B])."""
    N, n = zt.shape
    B = W.shape[0]
    nb, rem = divmod(N, block)
    dn = (((0,), (0,)), ((), ()))

    def acc_block(blk, acc, accp):
        S = blk @ W.T
        G, gp = fn(S)
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


def _bucketed_pass(W, active, zt, fn, block: int):
    """:func:`_fused_pass` over the ACTIVE rows only: they are moved to the front and the
    pass runs on the smallest static row count (B, B/2, B/4, ..., 1) that holds them
    (``lax.switch``), so a pool that is draining (end of the search, or a few slow
    candidates) reads the data at the memory-bound cost of a few rows instead of B.
    Inactive rows get zeros."""
    N, n = zt.shape
    B = W.shape[0]
    sizes = sorted({max(1, B >> k) for k in range(B.bit_length())}, reverse=True)  # B, B/2, ..., 1
    perm = jnp.argsort(~active, stable=True)
    inv = jnp.argsort(perm)
    Wp = W[perm]
    k = active.sum()
    branch = jnp.sum(jnp.asarray(sizes) >= k) - 1  # smallest size >= k

    def make(b):
        def f(Wp):
            S, E, G = _fused_pass(Wp[:b], zt, fn, block)
            if b == B:
                return S, E, G
            return (jnp.zeros((N, B), S.dtype).at[:, :b].set(S), jnp.zeros((B, n), E.dtype).at[:b].set(E),
                    jnp.zeros((B,), G.dtype).at[:b].set(G))
        return f

    S, E, G = lax.switch(branch, [make(b) for b in sizes], Wp)
    return S[:, inv], E[inv], G[inv]


def _where_rows(m, a, b):
    return jnp.where(m.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


@partial(jax.jit, static_argnames=("contrast", "max_fp_iter", "max_refine_iter", "min_done", "block", "d",
                                   "n_det"))
def _pool_run(st, zt, Q, tol, *, contrast: str, max_fp_iter: int, max_refine_iter: int, min_done: int,
              block: int, d: int, n_det: int):
    """Advance the candidate pool until ``min_done`` candidates reached DONE (or none is
    active).  Every pass reads ``zt`` once and serves all slots:

    * FP slots: fixed-point update ``w <- E[z g(s)] - E[g'(s)] w``, deflation against the
      rows of ``Q``, normalisation; on convergence (or ``max_fp_iter``) -> REFINE;
    * REFINE slots (up to ``n_det`` per pass): discharges of this pass's source of ``w``;
      the first detection is the reference, later ones are kept while the CoV of ISI
      decreases; while improving (at most ``max_refine_iter`` updates)
      ``w <- mean z at the discharges`` (normalised), else -> DONE with the best iterate.

    ``st`` (dict of arrays, B slots): W, phase, it, conv, rk, fp_W, best_W, best_S [B, N],
    best_spk [B, P], best_n, best_sil, best_cov.  Returns (st, n_passes).
    """
    fn = partial(_g_gp, contrast=contrast)
    det_fn = jax.vmap(partial(detect_core, d=d, flip=True))

    def cond(c):
        st, n_new, n_pass = c
        ph = st["phase"]
        return (n_new < min_done) & jnp.any((ph == FP) | (ph == REFINE))

    def body(c):
        st, n_new, n_pass = c
        W, ph = st["W"], st["phase"]
        is_fp = ph == FP
        Sall, Ezg, Egp = _bucketed_pass(W, (ph == FP) | (ph == REFINE), zt, fn, block)
        # ---- fixed point
        Wn = Ezg - Egp[:, None] * W
        Wn = Wn - (Wn @ Q.T) @ Q
        Wn = Wn / jnp.maximum(jnp.linalg.norm(Wn, axis=1, keepdims=True), 1e-20)
        cnv = jnp.abs(1.0 - jnp.abs(jnp.sum(Wn * W, axis=1))) < tol
        # period-2 cycle: back to the iterate of two steps ago without converging
        cyc = (jnp.abs(1.0 - jnp.abs(jnp.sum(Wn * st["W_prev"], axis=1))) < tol) & (st["it"] >= 2)
        it = st["it"] + is_fp.astype(jnp.int32)
        fp_stop = is_fp & (cnv | cyc | (it >= max_fp_iter))
        # ---- refinement of up to n_det REFINE slots
        is_rf = ph == REFINE
        sel = jnp.argsort(jnp.where(is_rf, 0, 1), stable=True)[:n_det]
        sv = is_rf[sel]
        Ssel = Sall[:, sel].T  # [n_det, N]
        det = det_fn(Ssel)
        rk = st["rk"][sel]
        first = rk == 0
        ok_n = det["n_spikes"] >= 2
        improved = sv & (first | (ok_n & (det["cov_isi"] < st["best_cov"][sel])))
        cont = sv & improved & ok_n & (rk < max_refine_iter)
        fin = sv & ~cont
        Wm = _spike_mean(zt, det["spikes"], jnp.where(cont, det["n_spikes"], 0))
        Wm = Wm / jnp.maximum(jnp.linalg.norm(Wm, axis=1, keepdims=True), 1e-20)

        new = dict(st)
        new["best_W"] = st["best_W"].at[sel].set(_where_rows(improved, W[sel], st["best_W"][sel]))
        new["best_S"] = st["best_S"].at[sel].set(_where_rows(improved, Ssel, st["best_S"][sel]))
        new["best_spk"] = st["best_spk"].at[sel].set(_where_rows(improved, det["spikes"], st["best_spk"][sel]))
        new["best_n"] = st["best_n"].at[sel].set(jnp.where(improved, det["n_spikes"], st["best_n"][sel]))
        new["best_sil"] = st["best_sil"].at[sel].set(jnp.where(improved, det["sil"], st["best_sil"][sel]))
        new["best_cov"] = st["best_cov"].at[sel].set(jnp.where(improved, det["cov_isi"], st["best_cov"][sel]))
        new["rk"] = st["rk"].at[sel].add(sv.astype(jnp.int32))
        W2 = jnp.where(is_fp[:, None], Wn, W)
        W2 = W2.at[sel].set(_where_rows(cont, Wm, W2[sel]))
        new["W"] = W2
        ph2 = jnp.where(fp_stop, REFINE, ph)
        ph2 = ph2.at[sel].set(jnp.where(fin, DONE, ph2[sel]))
        new["phase"] = ph2
        new["it"] = it
        new["conv"] = st["conv"] | (fp_stop & cnv)
        new["fp_W"] = _where_rows(fp_stop, Wn, st["fp_W"])
        new["W_prev"] = jnp.where(is_fp[:, None], W, st["W_prev"])
        new["cyc"] = st["cyc"] | (fp_stop & cyc & ~cnv)
        return new, n_new + fin.sum(), n_pass + 1

    st, _, n_pass = lax.while_loop(cond, body, (st, jnp.array(0), jnp.array(0)))
    return st, n_pass


@jax.jit
def _activity(zt):
    return jnp.sum(zt * zt, axis=1)


@jax.jit
def _transpose(z):
    return z.T


@partial(jax.jit, static_argnames=("half", "d"))
def _sta_best_lag(zt, starts, n_ok, *, half: int, d: int):
    """Spike-triggered average of ``z`` around an accepted unit's discharges (lags
    ``-half..half``) and the unit's best-lag filter.

    The STA row of largest energy is the extended lag at which the unit is seen with the
    best SNR (the oracle's criterion, ``max ||W b||``); that row, normalised, is a filter
    whose source peaks are sharper than those of the filter the fixed point happened to
    converge to (which may jitter by a few samples).  Its source and discharges are
    returned for the host to decide.  ``starts`` [P]: window starts ``spike - half`` of the
    ``n_ok`` discharges whose window lies inside the record (host-compacted, padded); each
    window is one contiguous [2 half + 1, n] slab of ``zt``.
    Returns (sta [L, n], w [n], source [N], detection dict, lag of w relative to the spikes)."""
    N, n = zt.shape
    L = 2 * half + 1

    def acc(i, a):
        return a + lax.dynamic_slice(zt, (starts[i], 0), (L, n))

    sta = lax.fori_loop(0, n_ok, acc, jnp.zeros((L, n), jnp.float32)) / jnp.maximum(n_ok, 1)
    k = jnp.argmax(jnp.sum(sta * sta, axis=1))
    w = sta[k] / jnp.maximum(jnp.linalg.norm(sta[k]), 1e-20)
    src = zt @ w
    return sta, w, src, detect_core(src, d=d, flip=True), k - half


@partial(jax.jit, donate_argnums=(0, 3))
def _peel(zt, starts, n_ok, act, sta):
    """Peel-off: subtract ``sta`` [L, n] (from :func:`_sta_best_lag`, same ``starts``) at
    every discharge window, in place (buffer donation); ``act`` (``||z(t)||^2``) is updated
    in the touched windows.  Returns (zt, act)."""
    L, n = sta.shape

    def sub(i, c):
        zz, aa = c
        new = lax.dynamic_slice(zz, (starts[i], 0), (L, n)) - sta
        zz = lax.dynamic_update_slice(zz, new, (starts[i], 0))
        aa = lax.dynamic_update_slice(aa, jnp.sum(new * new, axis=1), (starts[i],))
        return zz, aa

    return lax.fori_loop(0, n_ok, sub, (zt, act))


# ---------------------------------------------------------------------------- host helpers
def duplicate_fraction(a, b, *, tol: int, max_lag: int) -> float:
    """Fraction of the discharges of the SMALLER train that coincide (within ``±tol``
    samples) with the other train after the best common lag in ``±max_lag``."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    if len(a) == 0 or len(b) == 0:
        return 0.0
    w = max_lag + tol
    lo = np.searchsorted(b, a - w, side="left")
    hi = np.searchsorted(b, a + w, side="right")
    cnt = hi - lo
    if cnt.sum() == 0:
        return 0.0
    owner = np.repeat(np.arange(len(a)), cnt)
    start = np.repeat(np.cumsum(cnt) - cnt, cnt)
    j = np.repeat(lo, cnt) + (np.arange(cnt.sum()) - start)
    diff = b[j] - a[owner]  # in [-w, w]
    hist = np.bincount(diff + w, minlength=2 * w + 1)
    win = np.convolve(hist, np.ones(2 * tol + 1, np.int64), mode="same")[tol: 2 * w + 1 - tol]
    best = int(win.max()) if len(win) else 0
    return min(1.0, best / min(len(a), len(b)))


def muap_onset_shift(x: np.ndarray, spikes, half: int, frac: float = 0.1) -> int:
    """Shift (samples) that moves ``spikes`` onto the ONSET of the unit's spike-triggered MUAP.

    ``x`` [n_ch, N] is the band-passed EMG.  The spike-triggered average over lags
    ``-half..half`` gives the energy profile ``e(lag) = sum_ch sta^2``; starting at its peak
    we walk to earlier lags while ``e > max(frac * peak, 2 * noise)`` (noise = lower quartile
    of ``e``); the onset is the earliest lag still above.  Aligning on the onset (rather than
    on the peak) puts the discharge within a few ms of the true firing time whatever the
    MUAP duration, and makes the same unit found at two extension lags line up exactly.
    """
    sp = np.asarray(spikes, np.int64)
    N = x.shape[1]
    sp = sp[(sp >= half) & (sp < N - half)]
    if len(sp) == 0:
        return 0
    lags = np.arange(-half, half + 1)
    sta = x[:, sp[:, None] + lags[None, :]].mean(axis=1)  # [n_ch, L]
    e = (sta.astype(np.float64) ** 2).sum(axis=0)
    k = int(np.argmax(e))
    thr = max(frac * e[k], 2.0 * float(np.percentile(e, 25)))
    while k > 0 and e[k - 1] > thr:
        k -= 1
    return int(lags[k])


def _orthonormal_add(Qh: np.ndarray, k: int, w: np.ndarray) -> int:
    """Gram-Schmidt ``w`` (float64) into row ``k`` of ``Qh``; returns the new count."""
    if k >= Qh.shape[0]:
        return k
    v = np.asarray(w, np.float64).copy()
    for _ in range(2):  # twice is enough (Kahan)
        if k:
            v -= Qh[:k].T @ (Qh[:k] @ v)
    nv = np.linalg.norm(v)
    if nv < 1e-6:
        return k
    Qh[k] = v / nv
    return k + 1


class _Starts:
    """Start samples: the highest RESIDUAL activity not used yet.

    Activity ``a(t) = ||z(t)||^2``.  Samples within ``±excl`` of an earlier start are not
    used again, nor the first/last ``edge`` samples of the record.  When a unit is accepted, :meth:`explain` removes its average energy from
    the activity around its discharges (the spike-triggered average of ``a`` over lags
    ``±half``, minus the median activity), so later starts go to samples that the accepted
    units do not explain instead of re-finding them at other discharges/lags.
    """

    def __init__(self, activity: np.ndarray, excl: int, half: int, seed: int, edge: int = 0):
        self.act = np.asarray(activity, np.float64).copy()
        self.base = float(np.median(self.act))
        self.avail = np.ones(len(self.act), bool)
        if 0 < 2 * edge < len(self.act):  # record edges: extension zeros, filter transients
            self.avail[:edge] = False
            self.avail[-edge:] = False
        self.excl = int(excl)
        self.half = int(half)
        self.rng = np.random.default_rng(seed)

    def next(self) -> int:
        N = len(self.act)
        a = np.where(self.avail, self.act, -np.inf)
        t = int(np.argmax(a))
        if not np.isfinite(a[t]):  # exhausted (tiny recordings): random sample
            t = int(self.rng.integers(N))
        self.avail[max(0, t - self.excl): t + self.excl + 1] = False
        return t

    def explain(self, spikes) -> None:
        sp = np.asarray(spikes, np.int64)
        if len(sp) == 0:
            return
        N = len(self.act)
        lags = np.arange(-self.half, self.half + 1)
        idx = sp[:, None] + lags[None, :]
        ok = (idx >= 0) & (idx < N)
        idx = np.clip(idx, 0, N - 1)
        vals = np.where(ok, self.act[idx], 0.0)
        sta = vals.sum(0) / np.maximum(ok.sum(0), 1)
        excess = np.maximum(sta - self.base, 0.0)
        sub = np.where(ok, excess[None, :], 0.0)
        np.subtract.at(self.act, idx.ravel(), sub.ravel())
        np.maximum(self.act, 0.0, out=self.act)


def _lap(tm: dict, key: str, since: float) -> float:
    now = time.perf_counter()
    tm[key] += now - since
    return now


def _shift(s: np.ndarray, k: int) -> np.ndarray:
    """``out[t] = s[t + k]`` (zero outside): a peak at ``p`` lands on ``p - k``."""
    out = np.zeros_like(s)
    N = len(s)
    if k >= 0:
        out[: N - k] = s[k:]
    else:
        out[-k:] = s[: N + k]
    return out


def _jsonable_settings(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out


# ---------------------------------------------------------------------------- main
def decompose_cbss(emg, fs: float, *, n_iter: int = 50, R: int | None = None, contrast: str = "skew",
                   sil_threshold: float = 0.9, max_fp_iter: int = 200, tol: float = 1e-4,
                   refine: bool = True, peel_off: bool = True, min_spikes: int = 10, seed: int = 0,
                   progress: bool = True, batch: int = 16, band=(20.0, 500.0),
                   min_distance_ms: float = 20.0, max_refine_iter: int = 10,
                   dup_threshold: float = 0.3, dup_tol_ms: float = 0.5, dup_max_lag_ms: float = 25.0,
                   deflate_rejected: bool = True, signal_subspace: bool = True, retime: bool = True,
                   prepared: Prepared | None = None) -> Decomposition:
    """Convolutive BSS decomposition (see module docstring).

    Parameters
    ----------
    emg : [n_channels, n_samples] array (µV); bad channels are excluded automatically.
    fs : sampling rate, Hz.
    n_iter : number of candidate filters (outer iterations).
    R : extension factor (default ``round(1000 / n_good_channels)``).
    contrast : "skew" (``x^3/3``), "logcosh" or "kurtosis" (``x^4/4``).
    sil_threshold, min_spikes : acceptance of a unit.
    max_fp_iter, tol : fixed-point stopping rule ``|1 - |w_new' w_old|| < tol``.
    refine : CKC refinement while the CoV of ISI decreases (``max_refine_iter`` at most).
    peel_off : subtract each accepted unit's spike-triggered average from the whitened data
        (default True: without it most candidates re-find the largest units at other lags;
        on the 20 s / 64 ch / 25 MU benchmark 10 instead of 22 of 24 identifiable units).
    batch : candidates iterated together (one read of the data serves all of them).
    min_distance_ms : minimum distance between discharges (peak detection).
    dup_threshold, dup_tol_ms, dup_max_lag_ms : duplicate rule (30 %, +/-0.5 ms, +/-25 ms).
    deflate_rejected : also deflate the converged filters of rejected candidates.
    signal_subspace : run the fixed point in the non-floored eigen-directions (see module doc).
    retime : replace an accepted unit's filter by its best-lag filter (largest-energy row of
        its spike-triggered average of ``z``) when that one also passes the SIL threshold:
        sharper peaks, discharge times within the +/-0.5 ms tolerance more often.
    seed : only used where starts run out (tiny recordings); the result is deterministic.
    progress : tqdm bar over the candidates.
    prepared : reuse a :class:`Prepared` (then ``R``/``band`` are ignored).

    Returns a :class:`bmiss.io.Decomposition` (method "cbss"), units in the order they were
    found: ``spikes`` (discharge sample indices, aligned on the energy peak of the unit's
    spike-triggered MUAP, see module docstring), ``sources`` (the unit's source, sign so that
    discharges are positive, shifted like the spikes, divided by its mean at the
    discharges), ``filters`` (unit vectors in whitened space, source ``s = w' z`` before the
    shift), ``sil``, ``cov_isi``, ``pnr_db`` (bmiss.metrics.pnr, when available) and
    ``meta``: settings, timing_s, channels_used, excluded_channels, per-candidate log, ...
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    if n_iter < 1:
        raise ValueError("n_iter must be >= 1")
    settings = dict(n_iter=n_iter, R=R, contrast=contrast, sil_threshold=sil_threshold,
                    max_fp_iter=max_fp_iter, tol=tol, refine=refine, peel_off=peel_off,
                    min_spikes=min_spikes, seed=seed, batch=batch, band=band,
                    min_distance_ms=min_distance_ms, max_refine_iter=max_refine_iter,
                    dup_threshold=dup_threshold, dup_tol_ms=dup_tol_ms, dup_max_lag_ms=dup_max_lag_ms,
                    deflate_rejected=deflate_rejected, signal_subspace=signal_subspace, retime=retime)
    t0 = time.perf_counter()
    prep = prepared if prepared is not None else prepare(emg, fs, R=R, band=band)
    settings["R"] = prep.R
    # time-major copy of the whitened data for the kernels (the caller's prep.z is untouched)
    zt = _transpose(prep.z)
    wh = prep.whitened
    # eigen-directions whose eigenvalue was floored: there z is not white (variance d/floor < 1)
    # and the fixed point w <- E[z g] - E[g'] w has spurious solutions (for tanh and x^3: any
    # low-variance direction); the search runs in the white (signal) subspace instead
    E_floor = np.asarray(wh.eigvecs[:, wh.eigvals < wh.floor], np.float64) if signal_subspace else None
    del wh
    if prepared is None:
        prep.whitened = None  # our own preparation: keep only the time-major copy in memory
    zt.block_until_ready()
    t_prep = time.perf_counter() - t0
    N, n = zt.shape
    fs = float(prep.fs)
    d = min_distance_samples(fs, min_distance_ms)
    B = int(max(1, min(batch, n_iter)))
    K = int(n_iter)  # deflation rows: at most one per candidate
    n_det = max(1, min(B, 4))  # REFINE slots detected per pass
    tol_s = max(1, int(math.floor(dup_tol_ms * fs / 1000.0 + 0.5)))
    lag_s = int(round(dup_max_lag_ms * fs / 1000.0))
    rmax = int(max_refine_iter) if refine else 0
    peel_half = int(prep.R + round(0.05 * fs))  # MUAP (<= 50 ms) + extension, either side
    P = max_peaks(N, d)

    act_j = _activity(zt)
    starts = _Starts(np.asarray(act_j, np.float64), d, peel_half, seed, edge=prep.R + d)

    n_fl = 0 if E_floor is None else E_floor.shape[1]
    # deflation rows: floored subspace (at most n/2 eigenvalues lie below the mean of the
    # smaller half), then the filters found; static row count so that one compiled kernel
    # serves every recording of the same shape
    Qh = np.zeros((n // 2 + K, n), np.float64)
    if n_fl:
        Qh[:n_fl] = E_floor.T
    nq = n_fl
    Q = jnp.asarray(Qh.astype(np.float32))
    st = {
        "W": np.zeros((B, n), np.float32), "phase": np.full(B, EMPTY, np.int32), "it": np.zeros(B, np.int32),
        "conv": np.zeros(B, bool), "rk": np.zeros(B, np.int32), "fp_W": np.zeros((B, n), np.float32),
        "W_prev": np.zeros((B, n), np.float32), "cyc": np.zeros(B, bool),
        "best_W": np.zeros((B, n), np.float32), "best_S": np.zeros((B, N), np.float32),
        "best_spk": np.full((B, P), N, np.int32), "best_n": np.zeros(B, np.int32),
        "best_sil": np.zeros(B, np.float32), "best_cov": np.full(B, np.inf, np.float32),
    }
    slot_cand = np.full(B, -1)
    slot_start = np.full(B, -1)
    cand_log: list[dict] = []
    n_started = 0
    units: list[dict] = []
    log = {"accepted": 0, "rejected_sil": 0, "rejected_spikes": 0, "duplicates": 0, "device_calls": 0,
           "passes": 0, "retimed": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_iter, desc="cbss", unit="it", leave=False)

    def start_vector(t):
        v = np.asarray(zt[t], np.float64)
        if nq:
            v = v - Qh[:nq].T @ (Qh[:nq] @ v)
        nv = np.linalg.norm(v)
        if nv < 1e-12:
            v = np.random.default_rng(seed + t).standard_normal(n)
            nv = np.linalg.norm(v)
        return (v / nv).astype(np.float32)

    tm = {"pool": 0.0, "accept": 0.0, "peel": 0.0, "starts": 0.0}
    t1 = time.perf_counter()
    while True:
        tk = time.perf_counter()
        for b in np.flatnonzero(st["phase"] == EMPTY):
            if n_started >= n_iter:
                break
            t_start = starts.next()
            slot_start[b], slot_cand[b] = t_start, n_started
            st["W"][b] = start_vector(t_start)
            st["phase"][b] = FP
            st["it"][b] = 0
            st["rk"][b] = 0
            st["conv"][b] = False
            st["cyc"][b] = False
            st["W_prev"][b] = 0.0
            st["best_cov"][b] = np.inf
            n_started += 1
        tk = _lap(tm, "starts", tk)
        if not np.any((st["phase"] == FP) | (st["phase"] == REFINE)):
            break
        stj, npass = _pool_run(st, zt, Q, jnp.float32(tol), contrast=contrast, max_fp_iter=int(max_fp_iter),
                               max_refine_iter=rmax, min_done=1, block=_BLOCK, d=d, n_det=n_det)
        st = {k: np.array(v) for k, v in stj.items()}
        log["device_calls"] += 1
        log["passes"] += int(npass)
        tk = _lap(tm, "pool", tk)
        sta_list = []  # accepted (new) units: best-lag filter and peel-off
        for b in sorted(np.flatnonzero(st["phase"] == DONE), key=lambda b: slot_cand[b]):
            st["phase"][b] = EMPTY
            nspk = int(st["best_n"][b])
            silv = float(st["best_sil"][b])
            cov = float(st["best_cov"][b])
            sp_peak = st["best_spk"][b][:nspk].astype(np.int64)
            ok = nspk >= min_spikes and silv >= sil_threshold
            shift = muap_onset_shift(prep.x, sp_peak, peel_half) if ok else 0
            sp = np.unique(np.clip(sp_peak + shift, 0, N - 1))
            cand_log.append({"cand": int(slot_cand[b]), "start": int(slot_start[b]), "fp_iters": int(st["it"][b]),
                             "converged": bool(st["conv"][b]), "cycle": bool(st["cyc"][b]),
                             "refine_steps": int(st["rk"][b]),
                             "sil": round(silv, 4), "n_spikes": nspk,
                             "cov_isi": round(cov, 4) if np.isfinite(cov) else None,
                             "outcome": "accepted" if ok else ("low_sil" if nspk >= min_spikes else "few_spikes")})
            if not ok:
                log["rejected_sil" if nspk >= min_spikes else "rejected_spikes"] += 1
                if deflate_rejected:
                    nq = _orthonormal_add(Qh, nq, st["fp_W"][b])
            else:
                unit = {"w": st["best_W"][b].copy(), "source": st["best_S"][b].copy(), "spikes": sp,
                        "shift": shift, "sil": silv, "cov": cov if np.isfinite(cov) else np.inf,
                        "cand": int(slot_cand[b])}
                nq = _orthonormal_add(Qh, nq, unit["w"])
                dup_of = [j for j, u in enumerate(units)
                          if duplicate_fraction(sp, u["spikes"], tol=tol_s, max_lag=lag_s) >= dup_threshold]
                if dup_of:
                    log["duplicates"] += 1
                    cand_log[-1]["outcome"] = "duplicate"
                    cand_log[-1]["dup_of"] = [units[j]["cand"] for j in dup_of]
                    # keep the best of the new unit and all units it duplicates
                    group = [units[j] for j in dup_of] + [unit]
                    best = min(group, key=lambda u: (u["cov"], -u["sil"]))
                    units = [u for j, u in enumerate(units) if j not in dup_of] + [best]
                else:
                    units.append(unit)
                    log["accepted"] += 1
                    if peel_off or retime:
                        sta_list.append((unit, sp_peak))
                    if not peel_off:
                        starts.explain(sp)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(units=len(units))
        Q = jnp.asarray(Qh.astype(np.float32))
        tk = _lap(tm, "accept", tk)
        for unit, sp_peak in sta_list:
            pk = sp_peak[(sp_peak >= peel_half) & (sp_peak < N - peel_half)] - peel_half
            stt = np.zeros(P, np.int32)
            stt[: len(pk)] = pk
            stt, n_ok = jnp.asarray(stt), jnp.int32(len(pk))
            sta, w_s, s_s, det_s, lag_s_ = _sta_best_lag(zt, stt, n_ok, half=peel_half, d=d)
            if peel_off:
                zt, act_j = _peel(zt, stt, n_ok, act_j, sta)
            n_s = int(det_s["n_spikes"])
            sil_s = float(det_s["sil"])
            if retime and n_s >= min_spikes and sil_s >= sil_threshold:
                # best-lag filter: its peaks sit lag samples after the old ones
                shift = unit["shift"] - int(lag_s_)
                cov_s = float(det_s["cov_isi"])
                unit.update(w=np.asarray(w_s), source=np.asarray(s_s), shift=shift, sil=sil_s,
                            cov=cov_s if np.isfinite(cov_s) else np.inf,
                            spikes=np.unique(np.clip(np.asarray(det_s["spikes"][:n_s], np.int64) + shift, 0, N - 1)))
                log["retimed"] += 1
        if peel_off and sta_list:
            starts.act = np.asarray(act_j, np.float64)  # residual activity for the next starts
        _lap(tm, "peel", tk)
    if bar is not None:
        bar.close()
    t_search = time.perf_counter() - t1

    # ------------------------------------------------------------------ outputs
    units.sort(key=lambda u: u["cand"])
    if units:
        F = np.stack([u["w"] for u in units]).astype(np.float32)
        S = np.stack([u["source"] for u in units])
    else:
        F = np.zeros((0, n), np.float32)
        S = np.zeros((0, N), np.float32)
    sources = np.zeros((len(units), N), np.float32)
    spikes_out, sil_out, cov_out = [], [], []
    for i, u in enumerate(units):
        s = _shift(S[i].astype(np.float64), -u["shift"])  # source peaks onto the discharges
        sp = u["spikes"]
        sgn = 1.0 if np.mean(s[sp]) >= 0 else -1.0
        s = s * sgn
        c = float(np.mean(s[sp])) if len(sp) else float(np.max(np.abs(s)))
        sources[i] = (s / (c if c > 0 else 1.0)).astype(np.float32)
        spikes_out.append(sp)
        sil_out.append(u["sil"])
        cov_out.append(u["cov"] if np.isfinite(u["cov"]) else np.nan)
    pnr_db = None
    try:
        from ..metrics import pnr as _pnr

        pnr_db = np.array([_pnr(sources[i], spikes_out[i], fs) for i in range(len(units))], np.float32)
    except ImportError:  # metrics module not available
        pass
    fp_iters = np.asarray([c["fp_iters"] for c in cand_log]) if cand_log else np.zeros(1)
    meta = {
        "settings": _jsonable_settings(settings),
        "timing_s": {"prepare": t_prep, "search": t_search, **{k: round(v, 4) for k, v in tm.items()},
                     "total": time.perf_counter() - t0},
        "channels_used": prep.channels_used,
        "excluded_channels": list(prep.report),
        "n_ext": int(n),
        "n_candidates": len(cand_log),
        "fp_iters_mean": float(fp_iters.mean()),
        "fp_converged": int(sum(c["converged"] for c in cand_log)),
        "n_rejected_sil": int(log["rejected_sil"]),
        "n_rejected_spikes": int(log["rejected_spikes"]),
        "n_duplicates": int(log["duplicates"]),
        "n_best_lag": int(log["retimed"]),
        "device_calls": int(log["device_calls"]),
        "fp_passes": int(log["passes"]),
        "candidate_index": [u["cand"] for u in units],
        "candidates": sorted(cand_log, key=lambda c: c["cand"]),
        "spike_time": "source peak shifted onto the onset of the unit's spike-triggered MUAP",
        "source_normalisation": "sign so discharges are positive, divided by the mean at the discharges",
    }
    return Decomposition(spikes=spikes_out, sources=sources, fs=fs, method="cbss", filters=F,
                         sil=np.asarray(sil_out, np.float32), pnr_db=pnr_db,
                         cov_isi=np.asarray(cov_out, np.float32), meta=meta)
