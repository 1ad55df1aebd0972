"""Classic convolutive blind source separation (Negro et al. 2016, as MUedit/openhdemg run it).

Pipeline: :func:`bmiss.decompose.preprocess.prepare` (channel check, 20-500 Hz band-pass,
extension, ZCA whitening), then ``n_iter`` candidate separation filters, each

1. initialised at the whitened extended sample of highest activity ``||z(t)||^2`` not yet
   used (samples within ``min_distance_ms`` of an earlier start are skipped too, so two
   candidates never start on the same discharge);
2. fixed-point iteration ``w <- E[z g(w'z)] - E[g'(w'z)] w``, orthogonalised against the
   filters already found (deflation), normalised, until ``|1 - |w_new' w_old|| < tol`` or
   ``max_fp_iter`` iterations.  Contrasts ("skew" default): ``G(x) = x^3/3``
   (``g = x^2``), ``log cosh`` (``g = tanh``), kurtosis ``G = x^4/4`` (``g = x^3``);
3. discharges by :func:`bmiss.decompose.spikes.detect_core` (peaks of ``s|s|`` >= 20 ms
   apart, 2-means on heights);
4. CKC-style refinement: ``w <- mean of z at the discharges``, re-detect, repeated while the
   CoV of the inter-spike intervals decreases (at most ``max_refine_iter`` times);
5. accepted when ``SIL >= sil_threshold`` and ``>= min_spikes`` discharges; a unit sharing
   >= 30 % of its discharges (within +/-0.5 ms, after the best lag within +/-25 ms) with an
   accepted one is a duplicate: the one with the lower CoV of ISI (then higher SIL) stays.
   Optional peel-off subtracts an accepted unit's spike-triggered average from ``z``.

Speed design (2-core CPU target: 20 s x 64 channels in a few seconds):

* ``z`` (float32 [n_ext, n_s]) is formed once and never copied;
* a pool of ``batch`` candidates iterates together: each fixed-point pass reads ``z`` once,
  block by block (``W @ z_blk`` then ``g(s) @ z_blk^T`` while the block is in cache), and
  serves every candidate of the pool.  When some candidates converge, control returns to
  the host, which refines/accepts them (also batched) and refills their slots with new
  starts; the other candidates keep their state;
* all loops on the data are ``lax.while_loop``/``fori_loop`` inside a few jitted functions
  with static shapes (the deflation basis is a zero-padded [n_iter, n_ext] array), so
  nothing is recompiled per iteration.

Deflation basis: the (orthonormalised) filters of accepted units and the converged filters
of rejected candidates, so the search does not return to a solution it already judged.
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
_BLOCK = 512  # samples per block of the fused fixed-point pass (z block ~ n_ext*512*4 B)


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
def _fused_pass(W, zt, fn, block: int):
    """One read of ``zt`` [N, n]: per block of samples, ``S = z_blk W^T`` ([blk, B]),
    ``(G, gp) = fn(S)``, accumulate ``G^T z_blk`` ([B, n]) and ``sum(gp)`` ([B]) while the
    block is in cache.  Returns the means over N."""
    N, n = zt.shape
    B = W.shape[0]
    nb, rem = divmod(N, block)
    dn = (((0,), (0,)), ((), ()))

    def acc_block(blk, acc, accp):
        S = blk @ W.T
        G, gp = fn(S)
        return acc + lax.dot_general(G, blk, dn), accp + gp.sum(axis=0)

    acc0 = (jnp.zeros((B, n), jnp.float32), jnp.zeros((B,), jnp.float32))
    if nb:
        def body(i, c):
            blk = lax.dynamic_slice_in_dim(zt, i * block, block, axis=0)
            return acc_block(blk, *c)

        acc0 = lax.fori_loop(0, nb, body, acc0)
    if rem:
        acc0 = acc_block(zt[nb * block:], *acc0)
    return acc0[0] / N, acc0[1] / N


@partial(jax.jit, static_argnames=("contrast", "max_fp_iter", "min_done", "block"))
def _fp_run(W, it, running, zt, Q, tol, *, contrast: str, max_fp_iter: int, min_done: int, block: int):
    """Fixed-point iterations for a pool of candidates until >= ``min_done`` of the running
    ones have stopped (converged or ``max_fp_iter`` reached) or none is running.

    W [B, n] unit rows; it [B] iterations done; running [B] bool; Q [K, n] orthonormal
    deflation rows (zero rows are inert).  Returns (W, it, running, converged [B], n_passes).
    """
    fn = partial(_g_gp, contrast=contrast)

    def cond(st):
        W, it, running, conv, n_fin, n_pass = st
        return (n_fin < min_done) & jnp.any(running)

    def body(st):
        W, it, running, conv, n_fin, n_pass = st
        Ezg, Egp = _fused_pass(W, zt, fn, block)
        Wn = Ezg - Egp[:, None] * W
        Wn = Wn - (Wn @ Q.T) @ Q
        Wn = Wn / jnp.maximum(jnp.linalg.norm(Wn, axis=1, keepdims=True), 1e-20)
        c = jnp.abs(1.0 - jnp.abs(jnp.sum(Wn * W, axis=1))) < tol
        it_n = it + running.astype(it.dtype)
        stop = running & (c | (it_n >= max_fp_iter))
        W = jnp.where(running[:, None], Wn, W)
        conv = conv | (running & c)
        return W, it_n, running & ~stop, conv, n_fin + stop.sum(), n_pass + 1

    conv0 = jnp.zeros_like(running)
    W, it, running, conv, _, n_pass = lax.while_loop(
        cond, body, (W, it, running, conv0, jnp.array(0), jnp.array(0)))
    return W, it, running, conv, n_pass


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


def _src(W, zt):
    return (zt @ W.T).T  # [B, N]


@partial(jax.jit, static_argnames=("d", "max_refine_iter"))
def _refine_batch(W, mask, zt, *, d: int, max_refine_iter: int):
    """Detect discharges of the rows of ``W`` (where ``mask``), then CKC refinement while
    the CoV of ISI decreases.  Returns (W, detection dict) for the best iterate of each row."""
    det_fn = jax.vmap(partial(detect_core, d=d, flip=True))
    S = _src(W, zt)
    det = det_fn(S)

    def cond(st):
        W, S, det, active, k = st
        return jnp.any(active) & (k < max_refine_iter)

    def body(st):
        W, S, det, active, k = st
        Wn = _spike_mean(zt, det["spikes"], jnp.where(active, det["n_spikes"], 0))
        Wn = Wn / jnp.maximum(jnp.linalg.norm(Wn, axis=1, keepdims=True), 1e-20)
        Sn = _src(Wn, zt)
        dn = det_fn(Sn)
        better = active & (dn["cov_isi"] < det["cov_isi"]) & (dn["n_spikes"] >= 2)
        W = jnp.where(better[:, None], Wn, W)
        S = jnp.where(better[:, None], Sn, S)
        det = jax.tree_util.tree_map(
            lambda a, b: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), b, a), det, dn)
        return W, S, det, better, k + 1

    active = mask & (det["n_spikes"] >= 2)
    if max_refine_iter > 0:
        W, S, det, _, _ = lax.while_loop(cond, body, (W, S, det, active, jnp.array(0)))
    return W, S, det


_sources = jax.jit(_src)


@jax.jit
def _activity(zt):
    return jnp.sum(zt * zt, axis=1)


@jax.jit
def _transpose(z):
    return z.T


@partial(jax.jit, static_argnames=("half",), donate_argnums=(0,))
def _peel(zt, starts, n_ok, *, half: int):
    """Peel-off: subtract the unit's spike-triggered average of ``z`` (lags ``-half..half``
    around each discharge) at every discharge, in place (buffer donation).

    ``starts`` [P]: window starts ``spike - half`` of the ``n_ok`` discharges whose window
    lies inside the record (host-compacted, padded).  Each window is one contiguous
    [2 half + 1, n] slab of ``zt``."""
    N, n = zt.shape
    L = 2 * half + 1

    def acc(i, a):
        return a + lax.dynamic_slice(zt, (starts[i], 0), (L, n))

    sta = lax.fori_loop(0, n_ok, acc, jnp.zeros((L, n), jnp.float32)) / jnp.maximum(n_ok, 1)

    def sub(i, zz):
        cur = lax.dynamic_slice(zz, (starts[i], 0), (L, n))
        return lax.dynamic_update_slice(zz, cur - sta, (starts[i], 0))

    return lax.fori_loop(0, n_ok, sub, zt)


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


def muap_peak_shift(x: np.ndarray, spikes, half: int) -> int:
    """Shift (samples) that moves ``spikes`` onto the energy peak of the spike-triggered
    average of ``x`` [n_ch, N] (the unit's MUAP) over lags ``-half..half``."""
    sp = np.asarray(spikes, np.int64)
    N = x.shape[1]
    sp = sp[(sp >= half) & (sp < N - half)]
    if len(sp) == 0:
        return 0
    lags = np.arange(-half, half + 1)
    sta = x[:, sp[:, None] + lags[None, :]].mean(axis=1)  # [n_ch, L]
    return int(lags[int(np.argmax((sta.astype(np.float64) ** 2).sum(axis=0)))])


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
    used again.  When a unit is accepted, :meth:`explain` removes its average energy from
    the activity around its discharges (the spike-triggered average of ``a`` over lags
    ``±half``, minus the median activity), so later starts go to samples that the accepted
    units do not explain instead of re-finding them at other discharges/lags.
    """

    def __init__(self, activity: np.ndarray, excl: int, half: int, seed: int):
        self.act = np.asarray(activity, np.float64).copy()
        self.base = float(np.median(self.act))
        self.avail = np.ones(len(self.act), bool)
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
                   refine: bool = True, peel_off: bool = False, min_spikes: int = 10, seed: int = 0,
                   progress: bool = True, batch: int = 16, band=(20.0, 500.0),
                   min_distance_ms: float = 20.0, max_refine_iter: int = 10,
                   dup_threshold: float = 0.3, dup_tol_ms: float = 0.5, dup_max_lag_ms: float = 25.0,
                   deflate_rejected: bool = True, prepared: Prepared | None = None) -> Decomposition:
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
    peel_off : subtract each accepted unit's spike-triggered average from the whitened data.
    batch : candidates iterated together (one read of the data serves all of them).
    seed : only used where starts run out (tiny recordings); the result is deterministic.
    prepared : reuse a :class:`Prepared` (then ``R``/``band`` are ignored).

    Returns a :class:`bmiss.io.Decomposition` (method "cbss"): ``spikes`` (sample indices
    where the source peaks; a unit's constant delay to the true discharge depends on which
    extended lag the filter picked), ``sources`` (sign-normalised, divided by the mean value
    at the discharges), ``filters`` (unit vectors in whitened space: ``s = w' z``), ``sil``,
    ``cov_isi``, ``pnr_db`` and ``meta`` (settings, timing_s, channels_used,
    excluded_channels, ...).
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
                    deflate_rejected=deflate_rejected)
    t0 = time.perf_counter()
    prep = prepared if prepared is not None else prepare(emg, fs, R=R, band=band)
    settings["R"] = prep.R
    # time-major copy of the whitened data for the kernels (the caller's prep.z is untouched)
    zt = _transpose(prep.z)
    if prepared is None:
        prep.whitened = None  # our own preparation: keep only the time-major copy in memory
    zt.block_until_ready()
    t_prep = time.perf_counter() - t0
    N, n = zt.shape
    fs = float(prep.fs)
    d = min_distance_samples(fs, min_distance_ms)
    B = int(max(1, min(batch, n_iter)))
    K = int(n_iter)  # deflation rows: at most one per candidate
    min_done = max(1, B // 4)
    tol_s = max(1, int(math.floor(dup_tol_ms * fs / 1000.0 + 0.5)))
    lag_s = int(round(dup_max_lag_ms * fs / 1000.0))
    rmax = int(max_refine_iter) if refine else 0

    activity = np.asarray(_activity(zt), np.float64)
    peel_half = int(prep.R + round(0.05 * fs))  # MUAP (<= 50 ms) + extension, either side
    P = max_peaks(N, d)
    starts = _Starts(activity, d, int(prep.R + round(0.05 * fs)), seed)

    Qh = np.zeros((K, n), np.float64)
    nq = 0
    Q = jnp.zeros((K, n), jnp.float32)
    W = np.zeros((B, n), np.float32)
    it = np.zeros(B, np.int32)
    running = np.zeros(B, bool)
    slot_cand = np.full(B, -1)
    slot_start = np.full(B, -1)
    cand_log: list[dict] = []
    n_started = 0
    n_done = 0
    units: list[dict] = []
    log = {"fp_iters": [], "converged": 0, "accepted": 0, "rejected_sil": 0, "rejected_spikes": 0,
           "duplicates": 0, "device_calls": 0, "passes": 0}
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

    peeled = False
    tm = {"fixed_point": 0.0, "refine": 0.0, "accept_peel": 0.0, "starts": 0.0}
    t1 = time.perf_counter()
    while True:
        tk = time.perf_counter()
        for b in range(B):
            if not running[b] and n_started < n_iter:
                t_start = starts.next()
                slot_start[b] = t_start
                W[b] = start_vector(t_start)
                it[b] = 0
                running[b] = True
                slot_cand[b] = n_started
                n_started += 1
        _lap(tm, "starts", tk)
        if not running.any():
            break
        tk = time.perf_counter()
        Wj, itj, run_j, conv_j, npass_j = _fp_run(jnp.asarray(W), jnp.asarray(it), jnp.asarray(running), zt, Q,
                                         jnp.float32(tol), contrast=contrast, max_fp_iter=int(max_fp_iter),
                                         min_done=min_done, block=_BLOCK)
        log["device_calls"] += 1
        log["passes"] += int(npass_j)
        W = np.array(Wj)
        tk = _lap(tm, "fixed_point", tk)
        it = np.array(itj)
        run_new = np.array(run_j)
        conv = np.array(conv_j)
        fin = running & ~run_new
        running = run_new
        Wr, Sr, det = _refine_batch(jnp.asarray(W), jnp.asarray(fin), zt, d=d, max_refine_iter=rmax)
        Wr = np.asarray(Wr)
        Sr = np.asarray(Sr)
        det = jax.tree_util.tree_map(np.asarray, det)
        tk = _lap(tm, "refine", tk)
        for b in sorted(np.flatnonzero(fin), key=lambda b: slot_cand[b]):
            n_done += 1
            log["fp_iters"].append(int(it[b]))
            log["converged"] += int(conv[b])
            nspk = int(det["n_spikes"][b])
            silv = float(det["sil"][b])
            cov = float(det["cov_isi"][b])
            sp_peak = det["spikes"][b][:nspk].astype(np.int64)
            ok = nspk >= min_spikes and silv >= sil_threshold
            shift = muap_peak_shift(prep.x, sp_peak, peel_half) if ok else 0
            sp = np.unique(np.clip(sp_peak + shift, 0, N - 1))
            cand_log.append({"cand": int(slot_cand[b]), "start": int(slot_start[b]), "fp_iters": int(it[b]),
                             "converged": bool(conv[b]), "sil": round(silv, 4), "n_spikes": nspk,
                             "cov_isi": round(cov, 4) if np.isfinite(cov) else None,
                             "outcome": "accepted" if ok else ("low_sil" if nspk >= min_spikes else "few_spikes")})
            if not ok:
                log["rejected_sil" if nspk >= min_spikes else "rejected_spikes"] += 1
                if deflate_rejected:
                    nq = _orthonormal_add(Qh, nq, W[b])
            else:
                unit = {"w": Wr[b].copy(), "source": Sr[b].copy(), "spikes": sp, "shift": shift, "sil": silv,
                        "cov": cov if np.isfinite(cov) else np.inf, "cand": int(slot_cand[b]),
                        "fp_iters": int(it[b])}
                nq = _orthonormal_add(Qh, nq, Wr[b])
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
                    if peel_off:
                        pk = sp_peak[(sp_peak >= peel_half) & (sp_peak < N - peel_half)] - peel_half
                        st = np.zeros(P, np.int32)
                        st[: len(pk)] = pk
                        zt = _peel(zt, jnp.asarray(st), jnp.int32(len(pk)), half=peel_half)
                        zt.block_until_ready()
                        peeled = True
                    else:
                        starts.explain(sp)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(units=len(units))
        Q = jnp.asarray(Qh.astype(np.float32))
        if peeled:  # residual activity for the next starts
            starts.act = np.asarray(_activity(zt), np.float64)
            peeled = False
        tk = _lap(tm, "accept_peel", tk)
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
    fp_iters = np.asarray(log["fp_iters"]) if log["fp_iters"] else np.zeros(1)
    meta = {
        "settings": _jsonable_settings(settings),
        "timing_s": {"prepare": t_prep, "search": t_search, **{k: round(v, 4) for k, v in tm.items()},
                     "total": time.perf_counter() - t0},
        "channels_used": prep.channels_used,
        "excluded_channels": list(prep.report),
        "n_ext": int(n),
        "n_candidates": int(n_done),
        "fp_iters_mean": float(fp_iters.mean()),
        "fp_converged": int(log["converged"]),
        "n_rejected_sil": int(log["rejected_sil"]),
        "n_rejected_spikes": int(log["rejected_spikes"]),
        "n_duplicates": int(log["duplicates"]),
        "device_calls": int(log["device_calls"]),
        "fp_passes": int(log["passes"]),
        "candidate_index": [u["cand"] for u in units],
        "candidates": sorted(cand_log, key=lambda c: c["cand"]),
        "spike_time": "source peak shifted onto the energy peak of the unit's spike-triggered MUAP",
        "source_normalisation": "sign so discharges are positive, divided by the mean at the discharges",
    }
    return Decomposition(spikes=spikes_out, sources=sources, fs=fs, method="cbss", filters=F,
                         sil=np.asarray(sil_out, np.float32), pnr_db=pnr_db,
                         cov_isi=np.asarray(cov_out, np.float32), meta=meta)
