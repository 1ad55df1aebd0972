"""Stages ``source -> spikes``: discharges of a separation source (MUedit/openhdemg style), jittable.

A source ``s`` (one separation filter applied to the whitened data) is turned into a
discharge train by:

1. sign: ``s`` is flipped when its skewness is negative, so the spiky side is positive
   (``flip=False`` keeps it, e.g. for the skew contrast whose sources are positive-skew);
2. ``p = s |s|`` (squared, keeping the sign);
3. peaks: samples where ``p > 0`` and ``p`` is the maximum of the window
   ``[t - d, t + d]`` with ``d = round(min_distance_ms * fs / 1000)`` (20 ms), so two
   peaks are always more than ``d`` apart (a max-filter, jittable; MUedit/openhdemg use
   ``findpeaks(MinPeakDistance)``, which differs only for chains of nearly equal peaks);
4. 2-class k-means on the peak heights ``p`` (centroids initialised at the min and max
   height, Lloyd iterations until the assignment no longer changes); the upper class are
   the discharges.

SIL and CoV of ISI are those of :mod:`bmiss.quality` (``sil_from_heights`` on the two classes;
``_cov_isi_padded`` is the jittable form of :func:`bmiss.quality.cov_isi`, tested equal).
The minimum distance ``d`` is :func:`bmiss.quality.min_distance_samples` (round half up).

The jittable core :func:`detect_core` works on padded arrays of static length
``max_peaks(n_samples, d)``; :func:`detect_spikes` is the numpy-facing wrapper.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ..quality import min_distance_samples, sil_from_heights

__all__ = ["detect_spikes", "detect_core", "min_distance_samples", "max_peaks", "KMEANS_MAX_ITER"]

KMEANS_MAX_ITER = 100


def max_peaks(n_samples: int, d: int) -> int:
    """Upper bound on the number of peaks more than ``d`` samples apart."""
    return int(n_samples // (d + 1) + 1)


# ---------------------------------------------------------------------------- core
def _kmeans2(h, valid):
    """1-D 2-means on padded heights; returns bool upper-class mask."""
    big = jnp.finfo(h.dtype).max
    lo = jnp.min(jnp.where(valid, h, big))
    hi = jnp.max(jnp.where(valid, h, -big))

    def assign(c0, c1):
        return valid & (jnp.abs(h - c1) < jnp.abs(h - c0))

    def centroids(a):
        n1 = a.sum()
        n0 = (valid & ~a).sum()
        c1 = jnp.where(a, h, 0).sum() / jnp.maximum(n1, 1)
        c0 = jnp.where(valid & ~a, h, 0).sum() / jnp.maximum(n0, 1)
        # keep the old centroid of an emptied class (cannot happen with min/max init, safety)
        return c0, c1, n0, n1

    a0 = assign(lo, hi)

    def cond(st):
        a, changed, it = st
        return changed & (it < KMEANS_MAX_ITER)

    def body(st):
        a, _, it = st
        c0, c1, n0, n1 = centroids(a)
        c0 = jnp.where(n0 > 0, c0, lo)
        c1 = jnp.where(n1 > 0, c1, hi)
        a_new = assign(c0, c1)
        return a_new, jnp.any(a_new != a), it + 1

    a, _, _ = lax.while_loop(cond, body, (a0, jnp.array(True), jnp.array(0)))
    return a


def _skew_sign(s):
    m = s.mean()
    c = s - m
    m3 = jnp.mean(c ** 3)
    return jnp.where(m3 < 0, -1.0, 1.0).astype(s.dtype)


def _cov_isi_padded(sp, n):
    """CoV of ISI from compacted sorted spikes ``sp`` [P] with ``n`` valid entries."""
    P = sp.shape[0]
    isi = (sp[1:] - sp[:-1]).astype(jnp.float32)
    v = jnp.arange(P - 1) < (n - 1)
    k = jnp.maximum(n - 1, 1)
    srt = jnp.sort(jnp.where(v, isi, jnp.inf))
    med = 0.5 * (srt[jnp.maximum(k - 1, 0) // 2] + srt[k // 2])
    keep = v & (isi <= 5.0 * med)
    k = keep.sum()
    mean = jnp.where(keep, isi, 0).sum() / jnp.maximum(k, 1)
    var = jnp.where(keep, (isi - mean) ** 2, 0).sum() / jnp.maximum(k, 1)
    return jnp.where(k >= 2, jnp.sqrt(var) / jnp.maximum(mean, 1e-12), jnp.inf)


@partial(jax.jit, static_argnames=("d", "flip"))
def detect_core(source, *, d: int, flip: bool = True):
    """Jittable spike detection on one source [n_samples] (vmap it for batches).

    Returns a dict of fixed-shape arrays (``P = max_peaks(n_samples, d)``):

    * ``spikes`` [P] int32: sorted discharge indices, padded with ``n_samples``
    * ``n_spikes``: number of valid entries of ``spikes``
    * ``sil``, ``cov_isi`` (inf when < 2 ISIs), ``sign`` (+1/-1 applied to the source)
    * ``n_peaks``, ``peak_idx`` [P] / ``is_spike`` [P]: all peaks and their class
    * ``c_spike``: mean of the source (sign-normalised, NOT squared) at the discharges.
    """
    s = source.astype(jnp.float32)
    N = s.shape[0]
    P = max_peaks(N, d)
    sign = _skew_sign(s) if flip else jnp.array(1.0, jnp.float32)
    s = s * sign
    p = s * jnp.abs(s)
    mx = lax.reduce_window(p, -jnp.inf, lax.max, (2 * d + 1,), (1,), [(d, d)])
    is_peak = (p >= mx) & (p > 0)
    n_peaks = jnp.minimum(is_peak.sum(), P)
    (pidx,) = jnp.nonzero(is_peak, size=P, fill_value=N)
    valid = jnp.arange(P) < n_peaks
    h = jnp.where(valid, p[jnp.minimum(pidx, N - 1)], 0.0)
    upper = _kmeans2(h, valid) & valid & (n_peaks >= 2)
    sil_v = sil_from_heights(h, upper, valid)
    n_spk = upper.sum()
    (pos,) = jnp.nonzero(upper, size=P, fill_value=P - 1)
    sp = jnp.where(jnp.arange(P) < n_spk, pidx[pos], N).astype(jnp.int32)
    cov = _cov_isi_padded(sp, n_spk)
    c_spk = jnp.where(jnp.arange(P) < n_spk, s[jnp.minimum(sp, N - 1)], 0).sum() / jnp.maximum(n_spk, 1)
    return {"spikes": sp, "n_spikes": n_spk, "sil": sil_v, "cov_isi": cov, "sign": sign,
            "n_peaks": n_peaks, "peak_idx": pidx.astype(jnp.int32), "is_spike": upper, "c_spike": c_spk}


def detect_spikes(source, fs: float, *, min_distance_ms: float = 20.0, flip: bool = True,
                  return_info: bool = False):
    """Discharges of one source: ``(spikes int64 [n], sil float)`` (see module docstring).

    ``return_info=True`` adds a third item, a dict with ``cov_isi``, ``sign``, ``n_peaks``
    and ``c_spike`` (mean sign-normalised source value at the discharges).
    """
    s = jnp.asarray(np.asarray(source, np.float32))
    d = min_distance_samples(fs, min_distance_ms)
    out = detect_core(s, d=d, flip=flip)
    n = int(out["n_spikes"])
    spikes = np.asarray(out["spikes"][:n], np.int64)
    silv = float(out["sil"])
    if not return_info:
        return spikes, silv
    info = {"cov_isi": float(out["cov_isi"]) if np.isfinite(float(out["cov_isi"])) else float("nan"),
            "sign": float(out["sign"]), "n_peaks": int(out["n_peaks"]), "c_spike": float(out["c_spike"])}
    return spikes, silv, info
