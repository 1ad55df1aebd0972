"""One home for the zero-phase band-pass: its design, its application and its response.

Every band-pass in bmiss (the pipeline's data filter, spike-triggered MUAPs, model MUAPs
compared with them, simulated coloured noise) is a Butterworth design applied forwards and
backwards (``sosfiltfilt``), so its power response is ``|H(f)|²``. One clip rule: the upper
corner is lowered to :data:`MAX_HI_FRACTION` of the sampling rate (0.95 x Nyquist) where the
band asks for more; a low-pass-free band (``hi=None``) is a high-pass.

Orders: the pipeline filters the data with order 2 (:data:`DATA_ORDER`, as MUedit/openhdemg do);
spike-triggered MUAPs and the model MUAPs fitted to them use order 4 (:data:`TEMPLATE_ORDER`,
sharper skirts against low-frequency drift in the average). Whoever compares a model MUAP with
filtered data applies the response of the same order the data had.
"""
from __future__ import annotations

import numpy as np

from .errors import SettingsError

#: the default band of the decomposition pipeline, Hz (shared/reference.md §2: 20-500 Hz)
DEFAULT_BAND: tuple[float, float] = (20.0, 500.0)
#: upper corner clipped to this fraction of fs (0.95 x Nyquist)
MAX_HI_FRACTION = 0.475
DATA_ORDER = 2
TEMPLATE_ORDER = 4

__all__ = ["DEFAULT_BAND", "MAX_HI_FRACTION", "DATA_ORDER", "TEMPLATE_ORDER", "effective_band", "design",
           "bandpass", "band_power_response"]


def effective_band(fs: float, band) -> tuple[float, float | None]:
    """``(lo, hi)`` actually used at ``fs`` Hz: ``hi`` clipped to ``MAX_HI_FRACTION * fs``; refuses a
    band that is empty there (``0 < lo < hi`` must hold after clipping)."""
    lo, hi = (float(band[0]), None if band[1] is None else float(band[1]))
    if hi is not None:
        hi = min(hi, MAX_HI_FRACTION * fs)
        if not 0 < lo < hi:
            raise SettingsError(f"band ({band[0]}, {band[1]}) Hz is empty at fs = {fs:g} Hz: it needs "
                                f"0 < low < high <= {MAX_HI_FRACTION * fs:g} Hz")
    elif not 0 < lo < fs / 2:
        raise SettingsError(f"high-pass corner {lo} Hz must lie in (0, {fs / 2:g}) Hz at fs = {fs:g} Hz")
    return lo, hi


def design(fs: float, band, order: int):
    """Second-order sections of the Butterworth band-pass (or high-pass when ``band[1] is None``)."""
    from scipy.signal import butter

    lo, hi = effective_band(fs, band)
    if hi is None:
        return butter(order, lo, btype="highpass", fs=fs, output="sos")
    return butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")


def bandpass(x, fs: float, band=DEFAULT_BAND, *, order: int = DATA_ORDER, axis: int = -1) -> np.ndarray:
    """Zero-phase band-pass of ``x`` along ``axis`` (float64 out).

    Examples
    --------
    >>> y = bandpass(emg, 2048.0)  # [n_channels, n_samples] µV, 20-500 Hz  # doctest: +SKIP
    """
    from scipy.signal import sosfiltfilt

    return sosfiltfilt(design(fs, band, order), np.asarray(x, np.float64), axis=axis)


def band_power_response(f, fs: float, band, *, order: int = DATA_ORDER) -> np.ndarray:
    """``|H(f)|²`` [len(f)] float32 of :func:`bandpass` at frequencies ``f`` (Hz); ones for ``band=None``."""
    from scipy.signal import sosfreqz

    f = np.asarray(f, np.float64)
    if band is None:
        return np.ones_like(f, np.float32)
    _, h = sosfreqz(design(fs, band, order), worN=f, fs=fs)
    return (np.abs(h) ** 2).astype(np.float32)
