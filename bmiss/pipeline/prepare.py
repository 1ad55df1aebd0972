"""Stage 1 of the pipeline, ``prepare``: channel check, band-pass, extension, ZCA whitening.

Steps (Negro et al. 2016; the settings MUedit/openhdemg use, see reference.md §2)::

    check_channels -> bandpass (20-500 Hz) -> extend (R delays) -> whiten (ZCA)

Extended space (shared by :func:`extend`, :func:`muap_to_ext`, the oracle and the model
proposers): with ``n_ch`` channels and extension factor ``R`` the extended data has
``n_ch * R`` rows ordered CHANNEL-MAJOR::

    x_ext[ch * R + r, t] = x[ch, t - r]          (0 for t - r < 0)

A MUAP ``h[ch, k]`` (k = 0..T-1, starting at the discharge) of a spike at ``t0`` therefore
puts ``h[ch, lag - r]`` into row ``ch*R + r`` of the extended column at ``t0 + lag``;
:func:`muap_to_ext` returns that column.

Precision: covariance and eigendecomposition are computed in float64 with numpy (the
eigenvalue spread of extended EMG covariances reaches 1e6+, float32 eigh is not trusted);
only the whitened data ``z`` and the whitening matrix are then stored as float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import BmissFileError
from ..filters import DATA_ORDER, DEFAULT_BAND, effective_band
from ..filters import bandpass as _bandpass
from ..whitening import zca

__all__ = [
    "check_channels",
    "bandpass",
    "extension_factor",
    "extend",
    "extended_gram",
    "whiten",
    "Whitened",
    "prepare",
    "Prepared",
    "muap_to_ext",
    "min_samples",
]


# ---------------------------------------------------------------------------- channels
def check_channels(emg, fs: float, *, clip_frac: float = 0.01, rms_factor: float = 10.0):
    """Find channels that must not enter the decomposition.

    A channel is excluded when it

    * holds NaN or inf samples,
    * is flat (std <= 1e-6 x the median std of the finite channels, or exactly 0),
    * is saturated: more than ``clip_frac`` (1 %) of its samples sit at its own maximum
      absolute value (clipped amplifier),
    * has an RMS above ``rms_factor`` (10) x the median RMS of the finite, non-flat channels
      (loose or shorted electrode).

    Returns ``(good_mask [n_ch] bool, report list[str])``; the report has one human-readable
    line per excluded channel (0-based channel index).  Raises :class:`BmissFileError` when
    NaN/inf appear in most channels or fewer than 2 good channels remain.
    """
    emg = np.asarray(emg)
    if emg.ndim != 2:
        raise BmissFileError(f"emg must be 2-D [n_channels, n_samples], got shape {emg.shape}")
    n_ch, n_s = emg.shape
    finite = np.isfinite(emg).all(axis=1)
    report: list[str] = []
    n_bad_finite = int((~finite).sum())
    if n_bad_finite > n_ch / 2:
        raise BmissFileError(
            f"{n_bad_finite} of {n_ch} channels contain NaN/inf samples; the recording is unusable "
            "(check the file conversion, or cut the recording to the part without gaps)")
    for ch in np.flatnonzero(~finite):
        report.append(f"channel {ch}: contains NaN/inf samples")
    good = finite.copy()
    x = np.where(finite[:, None], emg, 0.0).astype(np.float64)
    std = x.std(axis=1)
    med_std = float(np.median(std[finite])) if finite.any() else 0.0
    flat = finite & ((std == 0) | (std <= 1e-6 * med_std))
    for ch in np.flatnonzero(flat):
        report.append(f"channel {ch}: flat (std {std[ch]:.3g})")
    good &= ~flat
    absx = np.abs(x)
    amax = absx.max(axis=1)
    at_max = (absx >= amax[:, None] * (1 - 1e-7)).sum(axis=1) / max(n_s, 1)
    sat = good & (amax > 0) & (at_max > clip_frac)
    for ch in np.flatnonzero(sat):
        report.append(f"channel {ch}: saturated ({100 * at_max[ch]:.1f}% of samples at |x| = {amax[ch]:.4g})")
    good &= ~sat
    rms = np.sqrt(np.mean(x ** 2, axis=1))
    ref = finite & ~flat
    if ref.any():
        med_rms = float(np.median(rms[ref]))
        loud = good & (rms > rms_factor * med_rms)
        for ch in np.flatnonzero(loud):
            report.append(f"channel {ch}: RMS {rms[ch]:.4g} is > {rms_factor:g}x the median RMS {med_rms:.4g}")
        good &= ~loud
    if good.sum() < 2:
        raise BmissFileError(
            f"only {int(good.sum())} of {n_ch} channels are usable; need at least 2. Excluded:\n  "
            + "\n  ".join(report))
    return good, report


# ---------------------------------------------------------------------------- filtering
def bandpass(emg, fs: float, lo: float = DEFAULT_BAND[0], hi: float | None = DEFAULT_BAND[1],
             order: int = DATA_ORDER) -> np.ndarray:
    """The data's zero-phase band-pass (:func:`bmiss.filters.bandpass`), float64 out; ``hi=None``: high-pass."""
    return _bandpass(emg, fs, (lo, hi), order=order)


# ---------------------------------------------------------------------------- extension
def extension_factor(n_channels: int, target: int = 1000) -> int:
    """MUedit rule: ``R = round(target / n_channels)`` (16 for 64 channels), at least 1."""
    return max(1, int(round(target / max(int(n_channels), 1))))


def extend(x, R: int) -> np.ndarray:
    """Stack ``R`` delayed copies of each channel, channel-major, float32.

    ``out[ch * R + r, t] = x[ch, t - r]`` and 0 for ``t < r``.  Shape ``[n_ch * R, n_s]``.
    """
    x = np.asarray(x, np.float32)
    n_ch, n_s = x.shape
    out = np.zeros((n_ch, R, n_s), np.float32)
    for r in range(R):
        out[:, r, r:] = x[:, : n_s - r]
    return out.reshape(n_ch * R, n_s)


def extended_gram(x, R: int) -> np.ndarray:
    """``X X^T`` (float64) of ``X = extend(x, R)`` without forming ``X``: exact.

    Block ``(r1, r2)`` with ``k = r1 - r2 >= 0`` is the lag-``k`` cross product
    ``G_k = x[:, :N-k] @ x[:, k:].T`` minus the ``r2`` products lost at the end of the
    record, ``sum_{u=N-k-r2}^{N-k-1} x[:, u] x[:, u+k]^T``.  Cost ``R`` small matmuls
    instead of one ``(n_ch R)^2 x N`` matmul.
    """
    x = np.asarray(x, np.float64)
    n, N = x.shape
    if R > N:
        raise ValueError("extension factor larger than the recording")
    blocks = np.empty((R, R, n, n))
    for k in range(R):
        G = x[:, : N - k] @ x[:, k:].T
        tail = np.zeros((n, n))
        for r2 in range(R - k):
            if r2 > 0:
                u = N - k - r2
                tail += np.outer(x[:, u], x[:, u + k])
            blocks[r2 + k, r2] = G - tail
            if k:
                blocks[r2, r2 + k] = (G - tail).T
    return blocks.transpose(2, 0, 3, 1).reshape(n * R, n * R)


def muap_to_ext(muap, R: int, lag: int) -> np.ndarray:
    """Extended-space column produced at ``t0 + lag`` by a discharge at ``t0``.

    ``muap`` is ``[n_ch, T]`` (starting at the discharge).  Returns ``b`` with
    ``b[ch*R + r] = muap[ch, lag - r]`` (0 outside ``0 <= lag - r < T``), consistent with
    :func:`extend`.  Non-zero for ``0 <= lag <= T + R - 2``.
    """
    h = np.asarray(muap, np.float64)
    n_ch, T = h.shape
    r = np.arange(R)
    k = lag - r
    ok = (k >= 0) & (k < T)
    b = np.zeros((n_ch, R))
    b[:, ok] = h[:, k[ok]]
    return b.reshape(n_ch * R)


# ---------------------------------------------------------------------------- whitening
class Whitened(eqx.Module):
    """ZCA-whitened extended data.

    ``z = W (x_ext - mean)`` with ``W = E diag(1/sqrt(max(d, floor))) E^T`` (``C = E diag(d) E^T``
    the extended covariance), so ``E[z z^T] ~ I`` and, W being symmetric,
    ``(W b)^T z = b^T C_reg^{-1} (x_ext - mean)``.

    Fields: ``z`` float32 jax array [n_ext, n_s]; ``W`` float32 [n_ext, n_ext]; ``mean``
    float64 [n_ext]; ``eigvals`` (ascending, float64, before flooring) and ``eigvecs``
    float64 [n_ext, n_ext]; ``floor`` = mean of the smaller half of the eigenvalues (MUedit).
    """

    z: jax.Array
    W: np.ndarray
    mean: np.ndarray
    eigvals: np.ndarray
    eigvecs: np.ndarray
    floor: float

    @property
    def n_ext(self) -> int:
        return int(self.z.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.z.shape[1])

    def whiten_vector(self, b_ext):
        """``W @ b_ext`` (``b_ext`` [n_ext] or [n_ext, k]): the whitened-space filter whose
        source ``(W b)^T z`` is ``b^T C^-1 x_ext`` (ZCA, regularised C)."""
        return self.W.astype(np.float64) @ np.asarray(b_ext, np.float64)




@jax.jit
def _apply_whitening(W, x_ext, mean):
    return W @ (x_ext - mean[:, None])


def whiten(x_ext, *, gram=None) -> Whitened:
    """ZCA whitening with the MUedit eigenvalue floor (see :class:`Whitened`).

    ``gram`` (optional) is the float64 ``x_ext @ x_ext.T`` (e.g. from :func:`extended_gram`,
    much cheaper); otherwise it is computed here in float64.
    """
    x_ext = np.asarray(x_ext, np.float32)
    n_ext, N = x_ext.shape
    mean = x_ext.mean(axis=1, dtype=np.float64)
    with threadpool_limits(1):  # float64 eigh: extra BLAS threads only spin on 2 shared cores
        if gram is None:
            x64 = x_ext.astype(np.float64)
            gram = x64 @ x64.T
            del x64
        C = np.asarray(gram, np.float64) / N - np.outer(mean, mean)
        W, d, E, floor = zca(C)
    W32 = W.astype(np.float32)
    z = _apply_whitening(jnp.asarray(W32), jnp.asarray(x_ext), jnp.asarray(mean, jnp.float32))
    return Whitened(z=z, W=W32, mean=mean, eigvals=d, eigvecs=E, floor=floor)


@partial(jax.jit, static_argnames=("R",))
def _extend_whiten(W, x, mean, *, R: int):
    """``W @ (extend(x, R) - mean)`` with the extension built inside XLA (no host copy)."""
    n_ch, N = x.shape
    xp = jnp.pad(x, ((0, 0), (R - 1, 0)))
    x_ext = jnp.stack([xp[:, R - 1 - r: R - 1 - r + N] for r in range(R)], axis=1).reshape(n_ch * R, N)
    return W @ (x_ext - mean[:, None])


def _whiten_from_x(x32: np.ndarray, R: int) -> Whitened:
    """:func:`whiten` of ``extend(x32, R)`` without forming the extended data on the host:
    the float64 Gram matrix comes from :func:`extended_gram`, the extended row means from
    prefix sums, and ``z`` is computed in one jitted call."""
    n_ch, N = x32.shape
    x64 = x32.astype(np.float64)
    # row ch*R + r of the extended data is x[ch, :N-r] preceded by r zeros
    csum = np.cumsum(x64[:, ::-1], axis=1)[:, ::-1]  # csum[:, k] = sum(x[:, k:])
    tail = np.concatenate([np.zeros((n_ch, 1)), np.cumsum(x64[:, ::-1], axis=1)], axis=1)  # sums of last j
    mean = ((csum[:, :1] - tail[:, :R]) / N).reshape(n_ch * R)  # sum(x[:, :N-r]) / N
    with threadpool_limits(1):  # float64 eigh: extra BLAS threads only spin on 2 shared cores
        gram = extended_gram(x64, R)
        C = gram / N - np.outer(mean, mean)
        W, d, E, floor = zca(C)
    W32 = W.astype(np.float32)
    z = _extend_whiten(jnp.asarray(W32), jnp.asarray(x32), jnp.asarray(mean, jnp.float32), R=int(R))
    return Whitened(z=z, W=W32, mean=mean, eigvals=d, eigvecs=E, floor=floor)


# ---------------------------------------------------------------------------- pipeline
@dataclass
class Prepared:
    """Output of :func:`prepare`.

    ``x`` is the band-passed EMG of the kept channels (float32 [n_good, n_s]); ``whitened``
    its extended, whitened version; ``channel_mask`` [n_ch] marks the kept channels of the
    input; ``report`` lists the excluded ones.
    """

    whitened: Whitened
    x: np.ndarray
    R: int
    fs: float
    channel_mask: np.ndarray
    report: list[str] = field(default_factory=list)
    band: tuple | None = DEFAULT_BAND

    @property
    def z(self):
        return self.whitened.z

    @property
    def channels_used(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.channel_mask)]

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[1])


def min_samples(n_channels: int, R: int) -> int:
    """Shortest recording accepted: ``max(20 R, n_channels R)`` samples (at least as many
    samples as extended dimensions for a full-rank covariance, and >= 20 extension windows)."""
    return max(20 * R, n_channels * R)


def prepare(emg, fs: float, *, R: int | None = None, band=DEFAULT_BAND) -> Prepared:
    """check_channels -> bandpass -> extend -> whiten.

    ``R=None`` uses :func:`extension_factor` of the number of KEPT channels.  ``band=None``
    skips filtering.  Raises :class:`BmissFileError` for recordings too short for ``R``.
    """
    emg = np.asarray(emg)
    if emg.ndim != 2:
        raise BmissFileError(f"emg must be 2-D [n_channels, n_samples], got shape {emg.shape}")
    if emg.shape[0] > emg.shape[1]:
        raise BmissFileError(
            f"emg has {emg.shape[0]} channels and {emg.shape[1]} samples; it looks transposed "
            "(expected [n_channels, n_samples])")
    good, report = check_channels(emg, fs)
    x = np.asarray(emg[good], np.float64)
    n_good, N = x.shape
    if R is None:
        R = extension_factor(n_good)
    R = int(R)
    if R < 1:
        raise BmissFileError(f"extension factor R must be >= 1, got {R} (--extension-factor)")
    need = min_samples(n_good, R)
    if N < need:
        raise BmissFileError(
            f"recording too short: {N} samples ({N / fs:.2f} s) for {n_good} channels with extension "
            f"factor R={R}; need at least {need} samples ({need / fs:.2f} s). Use a longer recording "
            "or a smaller extension factor (setting R; CLI --extension-factor)")
    if band is not None:
        band = effective_band(fs, band)  # recorded as used (the upper corner may be clipped)
        x = bandpass(x, fs, band[0], band[1])
    x = x - x.mean(axis=1, keepdims=True)
    x32 = x.astype(np.float32)
    wh = _whiten_from_x(x32, R)
    return Prepared(whitened=wh, x=x32, R=R, fs=float(fs), channel_mask=good, report=report,
                    band=None if band is None else tuple(band))
