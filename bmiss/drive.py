"""Neural drive: discharge rates of single motor units and the cumulative spike train.

Conventions
-----------
* A spike train is an int array of 0-based sample indices; ``fs`` is in Hz.
* Instantaneous discharge rate (IDR) of discharge ``k >= 1`` is ``fs / (t_k - t_{k-1})``
  in Hz (pulses per second, pps), assigned to discharge ``k`` (openhdemg's ``idr`` does
  the same). Inter-spike intervals longer than ``max_isi_s`` (default 0.4 s, i.e. rates
  below 2.5 Hz) are pauses/de-recruitment, not rates, and count as silence.
* The cumulative spike train (CST) is the sum over units of their binary discharge trains,
  ``[n_samples]`` counts per sample. Smoothing it with a Hann window of unit area, scaled
  by ``fs``, gives the neural drive estimate in pulses per second summed over units (pps);
  divided by the number of units it is the mean discharge rate of the pool (Hz)
  (Negro, Holobar & Farina 2009; Farina et al. 2014 call this the "effective neural drive").

Everything is numpy/scipy; nothing here is differentiated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.signal import oaconvolve

from .files import write_text

__all__ = [
    "DEFAULT_WINDOW_S",
    "instantaneous_rate",
    "held_rate",
    "smoothed_rate",
    "smoothed_rates",
    "cumulative_spike_train",
    "smoothed_cst",
    "NeuralDrive",
    "neural_drive",
    "drive_of",
    "drive_correlation",
    "drive_to_dict",
    "save_drive_csv",
    "save_drive_json",
]

#: Default Hann window length (s) for smoothed rates and the neural drive (De Luca's 400 ms).
DEFAULT_WINDOW_S = 0.4


def _train(spikes, n_samples: int | None = None) -> np.ndarray:
    sp = np.unique(np.asarray(spikes if spikes is not None else [], np.int64).ravel())
    if n_samples is not None:
        sp = sp[(sp >= 0) & (sp < n_samples)]
    return sp


def _hann(window_s: float, fs: float) -> np.ndarray:
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0 s, got {window_s}")
    # Odd length keeps the smoothed curve centred on the sample (no half-sample lag).
    return np.hanning(max(3, int(round(window_s * fs)) | 1))


def instantaneous_rate(spikes, fs: float, *, max_isi_s: float = 0.4) -> tuple[np.ndarray, np.ndarray]:
    """Instantaneous discharge rate at each discharge of one unit.

    Parameters
    ----------
    spikes : int sample indices of one unit (duplicates dropped, order irrelevant).
    fs : sampling rate, Hz.
    max_isi_s : ISIs longer than this (s) are pauses; their rate is NaN.

    Returns
    -------
    (times_s, rate_hz) : float arrays ``[n_discharges - 1]``: the time (s) of discharge
    ``k >= 1`` and ``fs / ISI`` in Hz (NaN after a pause).
    """
    sp = _train(spikes)
    if len(sp) < 2:
        return np.zeros(0), np.zeros(0)
    isi = np.diff(sp).astype(np.float64)
    rate = np.where(isi <= max_isi_s * fs, fs / isi, np.nan)
    return sp[1:] / float(fs), rate


def held_rate(spikes, fs: float, n_samples: int, *, max_isi_s: float = 0.4) -> np.ndarray:
    """Instantaneous rate (Hz) held from each discharge to the next, ``[n_samples]``, NaN when silent."""
    sp = _train(spikes, n_samples)
    out = np.full(n_samples, np.nan)
    if len(sp) < 2:
        return out
    isi = np.diff(sp)
    rate = np.where(isi <= max_isi_s * fs, fs / isi, np.nan)
    out[sp[0]:sp[-1]] = np.repeat(rate, isi)
    return out


def smoothed_rate(spikes, fs: float, n_samples: int, *, window_s: float = DEFAULT_WINDOW_S,
                  max_isi_s: float = 0.4) -> np.ndarray:
    """Smoothed discharge rate (Hz) of one unit, ``[n_samples]``, NaN where the unit is silent.

    The instantaneous rate ``fs/ISI`` is held between consecutive spikes (ISIs longer than
    ``max_isi_s`` count as silence) and smoothed with a Hann window of ``window_s`` seconds,
    NaN-aware (normalised by the window mass over active samples), De Luca / openhdemg style.
    """
    idr = held_rate(spikes, fs, n_samples, max_isi_s=max_isi_s)
    ok = np.isfinite(idr)
    if not ok.any():
        return idr
    w = _hann(window_s, fs)
    num = oaconvolve(np.where(ok, idr, 0.0), w, mode="same")
    den = oaconvolve(ok.astype(np.float64), w, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / np.where(den > 1e-9, den, np.nan)
    out[~ok] = np.nan
    return out


def smoothed_rates(spikes: Sequence, fs: float, n_samples: int, *, window_s: float = DEFAULT_WINDOW_S,
                   max_isi_s: float = 0.4) -> np.ndarray:
    """:func:`smoothed_rate` of every unit: ``[n_units, n_samples]`` float64 Hz (NaN when silent)."""
    out = np.full((len(spikes), n_samples), np.nan)
    for i, s in enumerate(spikes):
        out[i] = smoothed_rate(s, fs, n_samples, window_s=window_s, max_isi_s=max_isi_s)
    return out


def cumulative_spike_train(spikes: Sequence, n_samples: int) -> np.ndarray:
    """Cumulative spike train: discharges of all units per sample, ``[n_samples]`` int64 counts."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    cst = np.zeros(n_samples, np.int64)
    for s in spikes:
        np.add.at(cst, _train(s, n_samples), 1)
    return cst


def smoothed_cst(spikes: Sequence, fs: float, n_samples: int, *, window_s: float = DEFAULT_WINDOW_S) -> np.ndarray:
    """Neural drive estimate: CST smoothed by a unit-area Hann window, ``[n_samples]`` in pps.

    The value is the total discharge rate of the units (pulses per second summed over units);
    a constant train of ``n`` units each at ``r`` Hz gives ``n * r`` away from the edges.
    """
    cst = cumulative_spike_train(spikes, n_samples).astype(np.float64)
    w = _hann(window_s, fs)
    return oaconvolve(cst, w * (fs / w.sum()), mode="same")


@dataclass
class NeuralDrive:
    """Neural drive of a decomposition.

    fs            sampling rate, Hz
    window_s      Hann window length, s
    rates_hz      [n_units, n_samples] smoothed discharge rate per unit, Hz (NaN when silent)
    cst           [n_samples] cumulative spike train, discharges per sample
    drive_pps     [n_samples] smoothed CST, pulses per second summed over units
    n_units       number of units summed
    idr           per unit (times_s [n_k - 1], rate_hz [n_k - 1]) instantaneous rates
    """

    fs: float
    window_s: float
    rates_hz: np.ndarray
    cst: np.ndarray
    drive_pps: np.ndarray
    n_units: int
    idr: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return int(self.cst.shape[0])

    @property
    def mean_rate_hz(self) -> np.ndarray:
        """Smoothed CST divided by the number of units: mean discharge rate of the pool, Hz."""
        return self.drive_pps / max(self.n_units, 1)

    @property
    def time_s(self) -> np.ndarray:
        return np.arange(self.n_samples) / self.fs


def neural_drive(spikes: Sequence, fs: float, n_samples: int, *, window_s: float = DEFAULT_WINDOW_S,
                 max_isi_s: float = 0.4) -> NeuralDrive:
    """Per-unit rates and the smoothed cumulative spike train of the units in ``spikes``.

    spikes: list of int sample-index arrays, one per unit. fs: Hz. n_samples: length of the
    recording. window_s: Hann window (s), default 0.4. Returns a :class:`NeuralDrive`.
    """
    if fs <= 0:
        raise ValueError(f"fs must be > 0 Hz, got {fs}")
    spikes = [_train(s, n_samples) for s in spikes]
    return NeuralDrive(
        fs=float(fs), window_s=float(window_s),
        rates_hz=smoothed_rates(spikes, fs, n_samples, window_s=window_s, max_isi_s=max_isi_s),
        cst=cumulative_spike_train(spikes, n_samples),
        drive_pps=smoothed_cst(spikes, fs, n_samples, window_s=window_s),
        n_units=len(spikes),
        idr=[instantaneous_rate(s, fs, max_isi_s=max_isi_s) for s in spikes])


def drive_of(dec, rec=None, *, window_s: float = DEFAULT_WINDOW_S) -> NeuralDrive:
    """:func:`neural_drive` of a ``bmiss.io.Decomposition`` (length from ``rec`` or ``dec.sources``)."""
    if rec is not None:
        n = int(rec.n_samples)
    elif dec.sources is not None and np.ndim(dec.sources) == 2 and np.shape(dec.sources)[1] > 0:
        n = int(np.shape(dec.sources)[1])
    else:
        raise ValueError("the recording length is unknown: pass the recording (rec=...)")
    return neural_drive(dec.spikes, dec.fs, n, window_s=window_s)


def drive_correlation(drive: NeuralDrive | np.ndarray, reference, fs: float | None = None, *,
                      trim_s: float | None = None, max_lag_s: float = 0.0) -> dict:
    """Pearson correlation of the smoothed CST with a reference (excitation, force), both ``[n_samples]``.

    trim_s: seconds dropped at both ends (default: half the Hann window, where the smoothing
    is one-sided). max_lag_s: if > 0, also search the best lag within ±max_lag_s (the force
    lags the drive physiologically; the simulated excitation does not).
    Returns ``{"r": ..., "lag_s": ..., "n": ...}``; ``lag_s > 0`` means the reference lags
    behind the drive (as force does), searched on a 10-ms grid.
    """
    d = drive.drive_pps if isinstance(drive, NeuralDrive) else np.asarray(drive, np.float64)
    fs = drive.fs if isinstance(drive, NeuralDrive) else fs
    if fs is None:
        raise ValueError("fs is needed when the drive is given as an array")
    ref = np.asarray(reference, np.float64).ravel()
    if ref.shape != d.shape:
        raise ValueError(f"reference has {ref.size} samples, the drive {d.size}: give one value per EMG sample")
    if trim_s is None:
        trim_s = drive.window_s / 2 if isinstance(drive, NeuralDrive) else DEFAULT_WINDOW_S / 2
    k = int(round(trim_s * fs))
    best = (-np.inf, 0)
    for lag in range(-int(round(max_lag_s * fs)), int(round(max_lag_s * fs)) + 1, max(1, int(fs // 100))):
        a = d[k + max(lag, 0): len(d) - k + min(lag, 0)]
        b = ref[k - min(lag, 0): len(ref) - k - max(lag, 0)]
        if a.std() == 0 or b.std() == 0:
            continue
        r = float(np.corrcoef(a, b)[0, 1])
        if r > best[0]:
            best = (r, lag)
    r = best[0] if np.isfinite(best[0]) else float("nan")
    # loop lag L compares drive(t + L) with ref(t); report the reference's delay behind the drive
    return {"r": r, "lag_s": -best[1] / fs, "n": int(len(d) - 2 * k)}


# ------------------------------------------------------------------ writers
def _decimation(fs: float, out_fs: float | None) -> int:
    if out_fs is None:
        return 1
    if out_fs <= 0:
        raise ValueError(f"out_fs must be > 0 Hz, got {out_fs}")
    return max(1, int(round(fs / out_fs)))


def save_drive_csv(path, drive: NeuralDrive, *, reference=None, reference_name: str = "ref_signal",
                   reference_unit: str = "", out_fs: float | None = 100.0, force: bool = False) -> Path:
    """Write the neural drive as CSV: one row per (decimated) sample.

    Columns: ``time_s``, ``cst_smoothed_pps``, ``mean_rate_hz``, ``[reference_name]``, then
    ``mu{i}_rate_hz`` per unit (smoothed rate, empty when silent). The second line is a units
    row (``# units,s,pps,Hz,...``) so that every column's physical unit travels with the file;
    read with ``pandas.read_csv(path, comment="#")``. out_fs: output rate in Hz (default 100,
    the drive is smooth over 400 ms; None keeps every sample).
    """
    step = _decimation(drive.fs, out_fs)
    idx = np.arange(0, drive.n_samples, step)
    cols = [("time_s", "s", idx / drive.fs), ("cst_smoothed_pps", "pps", drive.drive_pps[idx]),
            ("mean_rate_hz", "Hz", drive.mean_rate_hz[idx])]
    if reference is not None:
        ref = np.asarray(reference, np.float64).ravel()
        if ref.size != drive.n_samples:
            raise ValueError(f"reference has {ref.size} samples, the drive {drive.n_samples}")
        cols.append((reference_name, reference_unit, ref[idx]))
    cols += [(f"mu{i}_rate_hz", "Hz", drive.rates_hz[i, idx]) for i in range(drive.n_units)]
    data = np.stack([c[2] for c in cols], 1)
    header = ",".join(c[0] for c in cols) + "\n# units," + ",".join(c[1] for c in cols[1:]) + "\n"
    lines = [",".join("" if not np.isfinite(v) else f"{v:.6g}" for v in row) for row in data]
    text = header + "\n".join(lines) + "\n"
    return write_text(path, text, force=force)


def drive_to_dict(drive: NeuralDrive, *, reference=None, reference_unit: str = "",
                  out_fs: float | None = 100.0) -> dict:
    """JSON-ready dict of the drive (decimated to ``out_fs`` Hz), with a ``units`` field.

    Per unit the instantaneous rates use openhdemg's ``idr`` name (times in s, rates in pps).
    """
    step = _decimation(drive.fs, out_fs)
    idx = np.arange(0, drive.n_samples, step)

    def clean(a):
        return [None if not np.isfinite(v) else round(float(v), 5) for v in np.asarray(a, np.float64)]

    doc = {
        "fs_hz": drive.fs, "out_fs_hz": drive.fs / step, "window_s": drive.window_s, "n_units": drive.n_units,
        "units": {"time_s": "s", "cst_smoothed_pps": "pulses/s summed over units", "mean_rate_hz": "Hz",
                  "rates_hz": "Hz", "idr": "pulses/s at each discharge", "idr_time_s": "s",
                  "ref_signal": reference_unit},
        "time_s": clean(idx / drive.fs),
        "cst_smoothed_pps": clean(drive.drive_pps[idx]),
        "mean_rate_hz": clean(drive.mean_rate_hz[idx]),
        "rates_hz": [clean(drive.rates_hz[i, idx]) for i in range(drive.n_units)],
        "idr": [clean(r) for _, r in drive.idr],
        "idr_time_s": [clean(t) for t, _ in drive.idr],
    }
    if reference is not None:
        doc["ref_signal"] = clean(np.asarray(reference, np.float64).ravel()[idx])
    return doc


def save_drive_json(path, drive: NeuralDrive, *, reference=None, reference_unit: str = "",
                    out_fs: float | None = 100.0, force: bool = False) -> Path:
    """Write :func:`drive_to_dict` as JSON (NaN written as null)."""
    text = json.dumps(drive_to_dict(drive, reference=reference, reference_unit=reference_unit, out_fs=out_fs))
    return write_text(path, text, force=force)
