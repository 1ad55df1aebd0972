"""The one definition of every blind quality figure and timing convention in bmiss.

Decomposers, metrics, exports and figures all import from here, so a number means the same
thing wherever it is printed.

Conventions
-----------
* Spike trains are 0-based sample indices (int64), one array per unit.
* **Discharge time** = the onset of the unit's MUAP (the sample at which the spike-triggered
  MUAP first rises above its noise floor), not the sample where a separation source happens to
  peak.  Every method reports spikes on that convention (see
  :func:`bmiss.pipeline.finalize.onset_shift`); the oracle, which knows the true MUAP, places
  them exactly.
* **ms to samples**: round half up (``floor(ms * fs / 1000 + 0.5)``), never banker's rounding,
  so 0.5 ms at 2048 Hz is 1 sample and 20 ms at 10240 Hz is 205 samples.

Quality figures
---------------
``sil``            silhouette of the spike class against the other peaks of ``s|s|``
                   (MUedit/openhdemg, 2-means form); :func:`sil` for given spikes,
                   :func:`sil_from_heights` for the decomposer's classes.  Same number.
``pnr``            pulse-to-noise ratio in dB (openhdemg definition).
``cov_isi``        coefficient of variation of the inter-spike intervals.
``shared_fraction`` fraction of discharges two trains share after their best lag (duplicate
                   rule of the pipeline; the RoA of :mod:`bmiss.metrics` uses the same lag search
                   with one-to-one pairing).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["ms_to_samples", "min_distance_samples", "tol_samples", "sil_from_heights", "peak_mask", "sil", "pnr",
           "clean_isi", "cov_isi", "discharge_rate", "shared_fraction", "SIL_DEFINITION"]

SIL_DEFINITION = ("SIL (MUedit/openhdemg): peaks of s|s| at least min_distance apart; spike class = the "
                  "discharges, noise class = the other peaks; W = sum (spike - mean spike)^2, "
                  "B = sum (spike - mean noise)^2, SIL = (B - W) / max(W, B)")


# ---------------------------------------------------------------------------- time
def ms_to_samples(ms: float, fs: float) -> int:
    """``floor(ms * fs / 1000 + 0.5)`` (round half up): 0.5 ms at 2048 Hz -> 1 sample."""
    return int(math.floor(float(ms) * float(fs) / 1000.0 + 0.5))


def min_distance_samples(fs: float, min_distance_ms: float = 20.0) -> int:
    """Minimum distance between two discharges of one unit, samples (at least 1)."""
    return max(1, ms_to_samples(min_distance_ms, fs))


def tol_samples(tol_ms: float, fs: float) -> int:
    """Matching tolerance in samples: ``max(1, ms_to_samples(tol_ms, fs))``."""
    return max(1, ms_to_samples(tol_ms, fs))


def _as_spikes(x) -> np.ndarray:
    return np.unique(np.asarray(x if x is not None else [], dtype=np.int64).ravel())


# ---------------------------------------------------------------------------- SIL
def sil_from_heights(heights, is_spike, valid=None):
    """SIL of a 2-class split of peak heights (numpy or jax arrays; jittable).

    ``heights`` [P] (values of ``s|s|`` at the peaks); ``is_spike`` [P] bool; ``valid`` [P]
    marks real peaks in a padded array (default all).  ``W = sum_spk (h - c_spk)^2``,
    ``B = sum_spk (h - c_noise)^2`` with ``c`` the class means; ``SIL = (B - W) / max(W, B)``;
    0 when a class is empty or ``max(W, B) = 0``.
    """
    import jax
    import jax.numpy as jnp

    xp = jnp if isinstance(heights, jax.Array) else np
    h = xp.asarray(heights, dtype=xp.float32 if xp is jnp else np.float64)
    spk = xp.asarray(is_spike, bool)
    v = xp.ones(h.shape, bool) if valid is None else xp.asarray(valid, bool)
    spk = spk & v
    noi = (~spk) & v
    n_s, n_n = spk.sum(), noi.sum()
    c_s = xp.where(spk, h, 0).sum() / xp.maximum(n_s, 1)
    c_n = xp.where(noi, h, 0).sum() / xp.maximum(n_n, 1)
    Wv = xp.where(spk, (h - c_s) ** 2, 0).sum()
    Bv = xp.where(spk, (h - c_n) ** 2, 0).sum()
    den = xp.maximum(Wv, Bv)
    ok = (n_s > 0) & (n_n > 0) & (den > 0)
    out = xp.where(ok, (Bv - Wv) / xp.where(den > 0, den, 1), 0.0)
    return out if xp is jnp else float(out)


def peak_mask(p: np.ndarray, d: int) -> np.ndarray:
    """Samples where ``p > 0`` is the maximum of the window ``[t - d, t + d]`` (numpy twin of
    the jitted peak rule in :func:`bmiss.pipeline.spikes.detect_core`)."""
    from scipy.ndimage import maximum_filter1d

    mx = maximum_filter1d(p, size=2 * d + 1, mode="constant", cval=-np.inf)
    return (p >= mx) & (p > 0)


def sil(source, spikes, fs: float, *, min_distance_ms: float = 20.0) -> float:
    """SIL of a source with the given discharges as the spike class (see :data:`SIL_DEFINITION`).

    Noise class: the other peaks of ``s|s|`` found with the decomposer's peak rule (maximum of
    a ``±min_distance`` window).  For spikes that came out of the decomposer's 2-means this is
    the SIL the decomposer reported.  NaN with no spikes or no other peak.
    """
    s = np.asarray(source, np.float64).ravel()
    sp = _as_spikes(spikes)
    sp = sp[(sp >= 0) & (sp < len(s))]
    if len(sp) == 0:
        return float("nan")
    p = s * np.abs(s)
    is_pk = peak_mask(p, min_distance_samples(fs, min_distance_ms))
    is_pk[sp] = False
    noise = np.flatnonzero(is_pk)
    if len(noise) == 0:
        return float("nan")
    h = np.concatenate([p[sp], p[noise]])
    cls = np.zeros(len(h), bool)
    cls[: len(sp)] = True
    if not np.mean(p[sp]) > np.mean(p[noise]):  # a "spike class" below the noise peaks is no unit
        return -abs(sil_from_heights(h, cls))
    return sil_from_heights(h, cls)


# ---------------------------------------------------------------------------- PNR
def pnr(source, spikes, fs: float) -> float:
    """Pulse-to-noise ratio in dB (openhdemg definition).

    The source is divided by its mean at the spikes; noise = samples between the first and
    the last spike except those within ``±w`` of a spike, ``w = max(1, ms_to_samples(3 samples
    at 2048 Hz))``.  ``PNR = 10 log10(mean(peak^2) / mean(noise^2))``; NaN with < 2 spikes.
    """
    s = np.asarray(source, np.float64).ravel()
    sp = _as_spikes(spikes)
    sp = sp[(sp >= 0) & (sp < len(s))]
    if len(sp) < 2:
        return float("nan")
    m = s[sp].mean()
    if m == 0 or not np.isfinite(m):
        return float("nan")
    x = s / m
    w = max(1, ms_to_samples(3000.0 / 2048.0, fs))
    mask = np.zeros(len(s), bool)
    mask[sp[0]:sp[-1] + 1] = True
    for k in range(-w, w + 1):
        mask[np.clip(sp + k, 0, len(s) - 1)] = False
    if not mask.any():
        return float("nan")
    den = float(np.mean(x[mask] ** 2))
    if den <= 0:
        return float("inf")
    return float(10.0 * np.log10(float(np.mean(x[sp] ** 2)) / den))


# ---------------------------------------------------------------------------- ISI
def clean_isi(spikes) -> np.ndarray:
    """ISIs (samples) with intervals > 5x the median dropped (pauses, missed recruitment)."""
    sp = _as_spikes(spikes)
    if len(sp) < 2:
        return np.zeros(0)
    isi = np.diff(sp).astype(np.float64)
    return isi[isi <= 5.0 * np.median(isi)]


def cov_isi(spikes, fs: float | None = None) -> float:
    """CoV of the ISIs: ``std/mean`` (ddof=0) of :func:`clean_isi`; NaN with < 2 ISIs left.
    Independent of ``fs`` (accepted for symmetry)."""
    isi = clean_isi(spikes)
    if len(isi) < 2:
        return float("nan")
    return float(np.std(isi) / np.mean(isi))


def discharge_rate(spikes, fs: float) -> float:
    """Mean discharge rate while active, Hz: mean of ``fs / ISI`` over :func:`clean_isi`."""
    isi = clean_isi(spikes)
    if len(isi) == 0:
        return float("nan")
    return float(np.mean(fs / isi))


# ---------------------------------------------------------------------------- shared discharges
def shared_fraction(a, b, *, tol: int, max_lag: int) -> float:
    """Fraction of the discharges of the SMALLER train that coincide (within ``±tol`` samples)
    with the other train after the best common lag in ``±max_lag`` samples.

    The lag search counts all pairwise differences in a histogram and takes the ``2 tol + 1``
    window with most counts (``O(n log n)``).
    """
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
    hist = np.bincount(b[j] - a[owner] + w, minlength=2 * w + 1)
    win = np.convolve(hist, np.ones(2 * tol + 1, np.int64), mode="same")[tol: 2 * w + 1 - tol]
    best = int(win.max()) if len(win) else 0
    return min(1.0, best / min(len(a), len(b)))
