"""Observed MUAPs from a recording: spike-triggered averaging (STA) with a measured window.

Given the discharges of a unit (from any decomposition), its multichannel MUAP is the average of
the EMG around the discharges. Two things make this more than ``mean(segments)``:

* **The window is measured, not fixed.** The STA is first taken over a generous window
  (default -20 .. +80 ms around the discharge). Its energy summed over channels,
  E(t) = Σ_ch STA(ch, t)², is compared with the energy the averaging noise alone would leave,
  E₀(t) = Σ_ch σ²(ch, t) (σ = per-sample noise std of the average, below). The unit's support is
  the span around the energy peak where the smoothed E(t) exceeds ``threshold`` x E₀(t) + the
  same statistic's spread; it is then widened by ``margin_ms`` on each side. The fibre-end
  (non-propagating) components of long fibres arrive 15-25 ms after the discharge, so a short
  fixed window would cut them off; a window that stops where the energy reaches the noise floor
  cannot.
* **A unit's own neighbouring discharges are removed.** At 25-35 Hz the next discharge of the
  same unit falls inside a long window. The template is the least-squares solution for the unit's
  whole train, A m = Σ_k x(s_k + τ), with A the Toeplitz matrix of discharge-pair counts at each
  lag difference (A = n I when discharges never overlap: the plain average).

Noise estimate: the residual of each segment after subtracting the unit's own modelled train (everything that is not
this unit's MUAP: other units, noise) has a per-sample std r(ch, t) across discharges; the
average of n discharges has std r / sqrt(n) (r sqrt(diag A⁻¹) with self-overlap). This is the weight for least squares fits.

Units: EMG and MUAPs µV, fs Hz, windows in samples relative to the discharge sample.
"""
from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass, field

import numpy as np
import scipy.fft
import scipy.linalg

from . import filters


@dataclass
class Templates:
    """Spike-triggered MUAP estimates.

    Attributes
    ----------
    muaps : [n_units, n_channels, T] float32, µV
        Sample ``j`` is the EMG at ``discharge - onset + j`` (averaged).
    noise_std : [n_units, n_channels, T] float32, µV
        Std of each averaged sample (residual std / sqrt(n_discharges)).
    onset : int
        Samples before the discharge at which the window starts (``window[0] == -onset``).
    window : (int, int)
        Common window [start, stop) in samples relative to the discharge (start <= 0).
    support : [n_units, 2] int
        Each unit's own measured support [start, stop) relative to the discharge (samples).
    n_discharges : [n_units] int
        Discharges used per unit (those whose generous window lies inside the recording).
    fs : float
        Sampling rate, Hz.
    band : (float, float) or None
        Band-pass (Hz) applied to the EMG before averaging; apply the same to model MUAPs
        (``bandpass_muaps``) before comparing.
    truncated : [n_units] bool
        True where the energy had not reached the noise floor at an edge of the generous window
        (the window limit, not the MUAP, ended the support).
    """

    muaps: np.ndarray
    noise_std: np.ndarray
    onset: int
    window: tuple[int, int]
    support: np.ndarray
    n_discharges: np.ndarray
    fs: float
    band: tuple[float, float] | None
    truncated: np.ndarray

    @property
    def n_units(self) -> int:
        return int(self.muaps.shape[0])

    @property
    def t_ms(self) -> np.ndarray:
        """[T] time of each template sample relative to the discharge, ms."""
        return (np.arange(self.muaps.shape[-1]) - self.onset) / self.fs * 1e3


def _bandpass(x: np.ndarray, fs: float, band, axis=-1) -> np.ndarray:
    """The templates' band-pass (order 4, :mod:`bmiss.filters`)."""
    return filters.bandpass(x, fs, band, order=filters.TEMPLATE_ORDER, axis=axis)


def bandpass_muaps(muaps: np.ndarray, fs: float, band: tuple[float, float] | None, pad: int | None = None) -> np.ndarray:
    """Apply the zero-phase band-pass used by ``spike_triggered_muaps`` to MUAPs [..., T].

    The MUAPs are zero-padded by ``pad`` samples (default T) on both sides so that the filter's
    ringing is not folded back, then cropped. This equals the STA of the band-passed EMG up to the
    (small) parts of the filtered waveform that leave the window.
    """
    m = np.asarray(muaps, np.float64)
    if band is None:
        return m.astype(np.float32)
    T = m.shape[-1]
    pad = T if pad is None else pad
    widths = [(0, 0)] * (m.ndim - 1) + [(pad, pad)]
    y = _bandpass(np.pad(m, widths), fs, band)
    return y[..., pad:pad + T].astype(np.float32)


def _pair_counts(a: np.ndarray, b: np.ndarray, L: int, shift: int = 0) -> np.ndarray:
    """c[d + L - 1] = #{(k, l): b_l - a_k - shift = d}, |d| < L: [2L - 1] (both sorted int arrays)."""
    d = (b[None, :] - a[:, None] - shift).ravel()
    d = d[np.abs(d) < L]
    return np.bincount(d + L - 1, minlength=2 * L - 1).astype(np.float64)


def _own_sum(tpl: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Σ_k own(s_k + τ) for a pair-count histogram ``counts`` [2L-1]: [L, C] from tpl [L, C].

    own(t) = Σ_l tpl(t - s_l); with d = s_l - s_k the term at lag τ is tpl[τ - d] (0 <= τ - d < L).
    """
    L = tpl.shape[0]
    # Toeplitz matrix A[τ, j] = counts[τ - j + L - 1] so that (A @ tpl)[τ] = Σ_d counts[d] tpl[τ - d].
    A = scipy.linalg.toeplitz(counts[L - 1:], counts[L - 1::-1])
    return A @ tpl


def _own_segments(tpl: np.ndarray, ok: np.ndarray, s: np.ndarray) -> np.ndarray:
    """own(ok_i + τ) for every segment: [n, L, C], from the unit's own discharges ``s`` (sorted)."""
    L, C = tpl.shape
    pad = np.concatenate([np.zeros((L, C)), tpl, np.zeros((L, C))])  # tpl[m] at pad[m + L]
    out = np.zeros((len(ok), L, C))
    lo = np.searchsorted(s, ok - L + 1)
    hi = np.searchsorted(s, ok + L)
    tau = np.arange(L)
    for r in range(int((hi - lo).max(initial=0))):
        has = lo + r < hi
        if not has.any():
            break
        j = np.where(has, lo + r, 0)
        d = s[j] - ok  # own discharge at ok + d contributes tpl[τ - d]
        idx = np.clip(tau[None, :] - d[:, None] + L, 0, 3 * L - 1)
        out[has] += pad[idx[has]]
    return out


SEARCH_MS = (20.0, 80.0)  # default generous window: 20 ms before to 80 ms after the discharge


def search_bounds(fs: float, search_ms: tuple[float, float] = SEARCH_MS,
                  window: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(pre, post)`` samples of the generous window the averages read around each discharge
    (``search_ms`` at ``fs``, widened to cover ``window`` (start <= 0 < stop) when given)."""
    pre = int(np.ceil(search_ms[0] * 1e-3 * fs))
    post = int(np.ceil(search_ms[1] * 1e-3 * fs))
    if window is not None:
        if not (window[0] <= 0 < window[1]):
            raise ValueError(f"window must satisfy start <= 0 < stop (samples), got {window}")
        pre, post = max(pre, -window[0]), max(post, window[1])
    return pre, post


def usable_discharges(spikes, n_samples: int, pre: int, post: int) -> np.ndarray:
    """The discharges whose whole ``[-pre, post)`` window lies inside the recording (the averages'
    rule for a usable discharge)."""
    s = np.asarray(spikes, np.int64)
    return s[(s - pre >= 0) & (s + post <= n_samples)]


def spike_triggered_muaps(emg: np.ndarray, spikes: list, fs: float, *, window: tuple[int, int] | None = None,
                          band: tuple[float, float] | None = filters.DEFAULT_BAND,
                          search_ms: tuple[float, float] = SEARCH_MS, threshold: float = 1.0,
                          margin_ms: float = 2.0, deconvolve_self: bool = True, min_discharges: int = 5, n_null: int = 16,
                          seed: int = 0) -> Templates:
    """Estimate each unit's multichannel MUAP by spike-triggered averaging.

    Parameters
    ----------
    emg : [n_channels, n_samples] array, µV
    spikes : list of int arrays
        Discharge samples (0-based) per unit.
    fs : float
        Sampling rate, Hz.
    window : (start, stop) samples relative to the discharge, optional
        Use this window for every unit instead of measuring it (start <= 0 < stop).
    band : (lo, hi) Hz or None
        Zero-phase 4th-order Butterworth band-pass before averaging (None: only the channel means
        are removed).
    search_ms : (pre, post) ms
        The generous window in which the support is searched: ``pre`` ms before to ``post`` ms
        after the discharge.
    threshold : float
        Support = samples whose smoothed STA energy exceeds ``threshold`` times the 99th percentile
        of the same energy for averages at random triggers (the noise floor of an average of as
        many segments; ``n_null`` random sets).
    margin_ms : float
        Added on both sides of the measured support.
    deconvolve_self : bool
        Solve the unit's least-squares template given its whole train (removes the overlap of its
        own other discharges); False gives the plain average.
    min_discharges : int
        Units with fewer usable discharges raise ``ValueError``.
    n_null, seed : int
        Random-trigger averages for the noise floor, and the seed of their trigger times.

    Returns
    -------
    Templates
        The common window is the union of the units' supports (or ``window``).
    """
    if np.ndim(emg) != 2:
        raise ValueError(f"emg must be [n_channels, n_samples], got shape {np.shape(emg)}")
    n_ch, N = np.shape(emg)
    pre, post = search_bounds(fs, search_ms, window)
    ctx = _averager(emg, fs, band, pre, post, threshold, margin_ms, deconvolve_self, n_null, seed)
    stas, noises, supports, counts, trunc = [], [], [], [], []
    for u, sp_u in enumerate(spikes):
        sp_u = np.unique(np.asarray(sp_u, np.int64))
        ok = usable_discharges(sp_u, N, pre, post)
        if len(ok) < min_discharges:
            raise ValueError(f"unit {u} has {len(ok)} discharges with a full {search_ms} ms window inside the "
                             f"recording (need >= {min_discharges}); drop it before averaging")
        sta, noise, E, null = ctx.average(ok, sp_u)
        lo, hi = _support(E, null, threshold, len(ctx.kernel))
        trunc.append(bool(lo == 0 or hi == ctx.L))
        supports.append((lo - pre - ctx.margin, hi - pre + ctx.margin))
        stas.append(sta.T)
        noises.append(noise.T)
        counts.append(len(ok))
    supports = np.array(supports, np.int64).reshape(-1, 2)
    if window is None:
        start = int(max(supports[:, 0].min(), -pre)) if len(supports) else 0
        stop = int(min(supports[:, 1].max(), post)) if len(supports) else 1
        start = min(start, 0)
        stop = max(stop, 1)
    else:
        start, stop = int(window[0]), int(window[1])
    sl = slice(start + pre, stop + pre)
    muaps = np.array([m[:, sl] for m in stas], np.float32).reshape(len(stas), n_ch, stop - start)
    noise = np.array([m[:, sl] for m in noises], np.float32).reshape(len(stas), n_ch, stop - start)
    supports[:, 0] = np.maximum(supports[:, 0], -pre)
    supports[:, 1] = np.minimum(supports[:, 1], post)
    return Templates(muaps=muaps, noise_std=noise, onset=-start, window=(start, stop), support=supports,
                     n_discharges=np.array(counts, np.int64), fs=float(fs),
                     band=None if band is None else (float(band[0]), float(band[1])),
                     truncated=np.array(trunc, bool))


#: the prepared EMG of the last recording averaged, keyed by the array's id (checked through a weak
#: reference, dropped when the array is freed): the subject fit, the unit fit and the posterior
#: average the same units of the same recording, and each unit's average is computed once
_LAST: dict = {}
_KEEP_MAX_BYTES = 400 * 2**20  # float64 EMG (64 ch x 10 kHz x 80 s)


def forget() -> None:
    """Drop the prepared EMG kept for reuse (the pipeline calls it when a run ends)."""
    _LAST.clear()


def _averager(emg, fs, band, pre, post, threshold, margin_ms, deconvolve_self, n_null, seed) -> "_Averager":
    key = (float(fs), None if band is None else (float(band[0]), float(band[1])), int(pre), int(post),
           float(threshold), float(margin_ms), bool(deconvolve_self), int(n_null), int(seed), np.shape(emg))
    hit = _LAST.get(id(emg))
    if hit is not None and hit[0]() is emg and key in hit[1]:
        return hit[1][key]
    x = np.asarray(emg, np.float64)
    x = _bandpass(x, fs, band) if band is not None else x - x.mean(axis=1, keepdims=True)
    ctx = _Averager.of(x, fs, pre, post, threshold, margin_ms, deconvolve_self, n_null, seed)
    if x.nbytes > _KEEP_MAX_BYTES:  # the prepared copies are ~5x the EMG in float32: don't hold huge ones
        return ctx
    try:
        ref = weakref.ref(emg, lambda _r, k=id(emg): _LAST.pop(k, None))
    except TypeError:  # not weak-referenceable (e.g. a list): no reuse
        return ctx
    _LAST.clear()  # one recording at a time: a study's loop must not accumulate prepared copies
    _LAST[id(emg)] = (ref, {key: ctx})
    return ctx


@dataclass
class _Averager:
    """The band-passed EMG prepared for averaging at any train: its spectrum (sums of segments at a
    train shifted by any lag are one cross-correlation), its time-major copy (fast gathers of a few
    segments for the residual std) and the window rules."""

    x: np.ndarray  # [C, N] float64
    xt: np.ndarray  # [N, C] float32
    Xf: np.ndarray  # rfft of x over nfft
    nfft: int
    lags: np.ndarray  # [L] samples, -pre..post-1
    L: int
    kernel: np.ndarray  # 1-ms smoothing of the energy curve
    margin: int  # samples added on both sides of a measured support
    deconvolve_self: bool
    n_null: int
    seed: int
    done: dict = field(default_factory=dict)  # train fingerprint -> this unit's average

    @classmethod
    def of(cls, x, fs, pre, post, threshold, margin_ms, deconvolve_self, n_null, seed) -> "_Averager":
        lags = np.arange(-pre, post)
        L = len(lags)
        sm = max(int(round(0.5e-3 * fs)), 1)
        nfft = scipy.fft.next_fast_len(x.shape[1] + 4 * L + post + pre)
        return cls(x=x, xt=np.ascontiguousarray(x.T, dtype=np.float32), Xf=np.fft.rfft(x, n=nfft, axis=1), nfft=nfft,
                   lags=lags, L=L, kernel=np.ones(2 * sm + 1) / (2 * sm + 1), margin=int(round(margin_ms * 1e-3 * fs)),
                   deconvolve_self=deconvolve_self, n_null=n_null, seed=int(seed))

    def average(self, ok: np.ndarray, s: np.ndarray):
        """One unit: ``(sta [L, C], noise std [L, C], smoothed energy E [L], null energies)`` from its
        usable discharges ``ok`` and whole train ``s``."""
        fp = (zlib.crc32(np.ascontiguousarray(ok, np.int64).tobytes()),
              zlib.crc32(np.ascontiguousarray(s, np.int64).tobytes()), len(ok), len(s))
        if fp not in self.done:
            self.done[fp] = self._average(ok, s, np.random.default_rng([self.seed, fp[0], fp[1]]))
        return self.done[fp]

    def _average(self, ok: np.ndarray, s: np.ndarray, rng: np.random.Generator):
        L, lags, nfft = self.L, self.lags, self.nfft
        train = np.zeros(nfft)
        train[ok] = 1.0
        R = np.fft.irfft(self.Xf * np.conj(np.fft.rfft(train)), n=nfft, axis=1)  # [C, nfft], lag l at l mod nfft
        seg_sum = lambda off: R[:, (lags + off) % nfft].T  # noqa: E731  [L, C] = Σ_k x(ok_k + off + lags)
        # residual std from up to 128 discharges (a std from 128 samples is good to ~6 %)
        sub = ok if len(ok) <= 128 else ok[np.linspace(0, len(ok) - 1, 128).astype(int)]
        segs = self.xt[sub[:, None] + lags[None, :]]  # [n_sub, L, C]
        if self.deconvolve_self:
            # Least squares for this unit alone: A m = Σ_k x(s_k + τ), A[τ, j] = number of discharge
            # pairs (k in ok, l in all) with s_l - s_k = τ - j (Toeplitz); A = n I without self-overlap.
            c = _pair_counts(ok, s, L)
            c[L - 1] += 1e-6 * len(ok)  # a whisper of ridge for strictly periodic trains
            Ainv = np.linalg.inv(scipy.linalg.toeplitz(c[L - 1:], c[L - 1::-1]))
        else:
            Ainv = np.eye(L) / len(ok)
        sta = Ainv @ seg_sum(0)  # [L, C]
        resid = segs - _own_segments(sta, sub, s)
        noise = resid.std(axis=0) * np.sqrt(np.diag(Ainv))[:, None]  # [L, C]
        E = np.convolve((sta**2).sum(1), self.kernel, mode="same")
        # Null distribution of the same statistic: the same estimator applied to the unit's train shifted
        # by a random 1-3 window lengths, on the EMG without this unit (other units and noise are
        # correlated across channels, so a chi-square level from the per-sample variance alone is far
        # too low; shifting locally keeps the activity level of when the unit fires, e.g. a plateau).
        null = []
        for _ in range(self.n_null):
            off = int(rng.integers(L, 3 * L)) * int(rng.choice([-1, 1]))
            # (segments pushed past the recording's ends read zeros: a slightly conservative level)
            est = Ainv @ (seg_sum(off) - _own_sum(sta, _pair_counts(ok + off, s, L)))
            null.append(np.convolve((est**2).sum(1), self.kernel, mode="same"))
        return sta, noise, E, (np.concatenate(null) if null else np.zeros(1))


def _support(E: np.ndarray, null: np.ndarray, threshold: float, min_run: int) -> tuple[int, int]:
    """``[lo, hi)`` (indices of ``E``): the run above the noise level around the energy peak, extended
    over any other above-level run of at least ``min_run`` samples that peaks above every null value."""
    L = len(E)
    level = threshold * float(np.quantile(null, 0.99))
    # a separate stretch (e.g. a fibre-end component after a quiet gap) must beat the largest value of
    # all the null averages: over a 100-ms window, 99th-percentile crossings happen by chance.
    level_far = 1.5 * threshold * float(null.max())
    above = E > level
    pk = int(np.argmax(E))
    if not above[pk]:
        return pk, pk + 1  # the unit is below the noise: keep the peak only
    lo = pk
    while lo > 0 and above[lo - 1]:
        lo -= 1
    hi = pk + 1
    while hi < L and above[hi]:
        hi += 1
    # fibre-end components can be separated from the main wave by a short quiet gap
    runs = np.flatnonzero(np.diff(np.concatenate([[0], above.astype(np.int8), [0]])))
    for a_, b_ in zip(runs[::2], runs[1::2]):
        if b_ - a_ >= min_run and E[a_:b_].max() > level_far:
            lo, hi = min(lo, a_), max(hi, b_)
    return lo, hi


def explained_variance(observed: np.ndarray, model: np.ndarray, axis=(-2, -1)) -> np.ndarray:
    """1 - ||observed - model||² / ||observed||² over ``axis`` (per unit for [U, C, T] inputs)."""
    o = np.asarray(observed, np.float64)
    r = o - np.asarray(model, np.float64)
    return 1.0 - (r**2).sum(axis=axis) / np.maximum((o**2).sum(axis=axis), 1e-30)


__all__ = ["Templates", "spike_triggered_muaps", "bandpass_muaps", "explained_variance"]
