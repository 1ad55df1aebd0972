"""Clinical MUAP features of needle-EMG templates and a recording-level summary.

Definitions (template ``v`` in µV, the median MUAP of one unit, baseline = 0 after the
analysis band-pass; see :mod:`bmiss.needle.detect`):

* **duration** (ms): onset to end, where onset/end are the first/last samples at which ``|v|``
  exceeds a fixed level ``level_uv`` (default 20 µV) within the potential, i.e. not separated from
  the main spike by more than ``gap_ms`` (3 ms) of sub-threshold signal (so late satellite
  components are excluded, as clinical duration does). An amplitude-only version of the automatic
  duration markers of Stålberg et al. (1986, J Clin Neurophysiol 3:313-348), which use level and
  slope criteria; fixed-level markers lengthen durations for large MUAPs, as manual markers do.
* **amplitude** (µV): peak-to-peak, max - min of ``v`` between onset and end (Stålberg et al. 1986).
* **area** (µV·ms): integral of ``|v|`` between onset and end (Nandedkar et al. 1988,
  Muscle Nerve 11:151-159, "rectified area").
* **phases**: baseline crossings between onset and end + 1 (Stålberg et al. 1986; AANEM glossary);
  a crossing counts only when the signal goes from beyond ``+phase_uv`` to beyond ``-phase_uv``
  or back (hysteresis 10 µV) so that noise at the baseline does not add phases. MUAPs with
  more than 4 phases are **polyphasic**.
* **turns**: changes of direction of the signal by at least ``turn_uv`` (default 25 µV) in both
  the preceding and the following excursion, between onset and end (Stålberg et al. 1986;
  multi-MUP analysis, Stålberg et al. 1996, J Clin Neurophysiol 13:401-422).
* **thickness** (ms) = area / amplitude and **size index** = 2 log10(amplitude in mV) +
  thickness (Sonoo M, Stålberg E 1993, The ability of MUP parameters to discriminate between
  normal and neurogenic MUPs in concentric EMG: analysis of the MUP "thickness" and the proposal
  of "size index", Electroencephalogr Clin Neurophysiol 89:291-303).
* **discharge rate** (Hz): 1 / median inter-discharge interval (IDI) over IDIs of 20-250 ms
  within 0.5-1.5 times their median (longer IDIs span a missed discharge, shorter ones an extra
  one); **IDI CoV**: std / mean of those accepted IDIs (Stashuk 1999, Med Eng Phys 21:389-404, reports IDI statistics per MUAP train).

The recording-level summary (:func:`summarize`) gives means, medians and 10th/90th percentiles
over units, the share of polyphasic MUAPs, the number of units and candidates per second, and
three signal-level descriptors (RMS, median frequency, detected-spike rate) for the classifier.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["FEATURES", "muap_features", "unit_table", "summarize", "SUMMARY_KEYS", "analyze_recording"]

FEATURES = ("duration_ms", "amplitude_uv", "area_uvms", "phases", "turns", "thickness_ms", "size_index",
            "rate_hz", "idi_cov", "n_discharges")


def _extent(v: np.ndarray, peak: int, level: float, gap: int) -> tuple[int, int]:
    """First/last supra-threshold sample connected to ``peak`` through gaps shorter than ``gap``."""
    above = np.abs(v) > level
    lo = peak
    j = peak
    while j > 0:
        j -= 1
        if above[j]:
            lo = j
        elif peak - j > 0 and lo - j >= gap:
            break
    hi = peak
    j = peak
    while j < len(v) - 1:
        j += 1
        if above[j]:
            hi = j
        elif j - hi >= gap:
            break
    return lo, hi


def _phases(seg: np.ndarray, hyst: float) -> int:
    state = 0
    crossings = 0
    for s in np.sign(seg) * (np.abs(seg) > hyst):
        if s == 0:
            continue
        if state != 0 and s != state:
            crossings += 1
        state = s
    return crossings + 1


def _turns(seg: np.ndarray, min_uv: float) -> int:
    """Reversals with at least ``min_uv`` of excursion on both sides (hysteresis extrema)."""
    if len(seg) < 3:
        return 0
    ext = [seg[0]]
    direction = 0
    for v in seg[1:]:
        if direction >= 0 and v >= ext[-1]:
            if direction == 0 and v - ext[-1] >= min_uv:
                direction = 1
                ext.append(v)
            elif direction == 1:
                ext[-1] = v
            continue
        if direction <= 0 and v <= ext[-1]:
            if direction == 0 and ext[-1] - v >= min_uv:
                direction = -1
                ext.append(v)
            elif direction == -1:
                ext[-1] = v
            continue
        # v moves against the current direction
        if abs(v - ext[-1]) >= min_uv:
            direction = -direction if direction else (1 if v > ext[-1] else -1)
            ext.append(v)
    # ext[0] is the start, ext[1:] are running extrema; the last one is the end of the last excursion
    return max(0, len(ext) - 2)


def muap_features(v, fs: float, *, onset: int | None = None, level_uv: float = 20.0, gap_ms: float = 3.0,
                  phase_uv: float = 10.0, turn_uv: float = 25.0) -> dict:
    """Clinical features of one MUAP template (definitions in the module docstring).

    Parameters
    ----------
    v : [T] template, µV (baseline 0).  fs : Hz.
    onset : sample of the discharge (the search for the potential starts at the largest |v|
        within ±2 ms of it; default: the largest |v| of the template).
    level_uv, gap_ms, phase_uv, turn_uv : thresholds of duration, its gap rule, phases, turns.

    Returns
    -------
    dict with duration_ms, amplitude_uv, area_uvms, phases, turns, thickness_ms, size_index,
    onset_ms / end_ms (relative to the template start).

    Examples
    --------
    >>> t = np.arange(-200, 200) / 23437.5
    >>> v = -500 * (t / 1e-3) * np.exp(-0.5 * (t / 1e-3) ** 2)
    >>> f = muap_features(v, 23437.5)
    >>> f["phases"], round(f["amplitude_uv"])
    (2, 606)
    """
    v = np.asarray(v, np.float64).ravel()
    if onset is None:
        peak = int(np.argmax(np.abs(v)))
    else:
        w = max(1, int(2e-3 * fs))
        a, b = max(0, onset - w), min(len(v), onset + w + 1)
        peak = a + int(np.argmax(np.abs(v[a:b])))
    lo, hi = _extent(v, peak, level_uv, max(1, int(round(gap_ms * 1e-3 * fs))))
    seg = v[lo:hi + 1]
    dt_ms = 1e3 / fs
    amp = float(seg.max() - seg.min()) if len(seg) else 0.0
    area = float(np.sum(np.abs(seg)) * dt_ms)
    thick = area / amp if amp > 0 else float("nan")
    si = 2.0 * math.log10(amp / 1000.0) + thick if amp > 0 else float("nan")
    return {"duration_ms": (hi - lo + 1) * dt_ms, "amplitude_uv": amp, "area_uvms": area,
            "phases": _phases(seg, phase_uv), "turns": _turns(seg, turn_uv), "thickness_ms": thick,
            "size_index": si, "onset_ms": lo * dt_ms, "end_ms": (hi + 1) * dt_ms}


def _rate(spikes: np.ndarray, fs: float, lo_ms: float = 20.0, hi_ms: float = 250.0) -> tuple[float, float]:
    idi = np.diff(np.sort(np.asarray(spikes))) * 1e3 / fs
    ok = idi[(idi >= lo_ms) & (idi <= hi_ms)]
    if len(ok) < 2:
        return float("nan"), float("nan")
    med = float(np.median(ok))
    ok = ok[(ok > 0.5 * med) & (ok < 1.5 * med)]  # drop intervals spanning a missed or an extra discharge
    if len(ok) < 2:
        return 1e3 / med, float("nan")
    return 1e3 / float(np.median(ok)), float(np.std(ok) / np.mean(ok))


def unit_table(dec, **kw) -> list[dict]:
    """One row of features per unit of a :class:`~bmiss.needle.detect.NeedleDecomposition`."""
    rows = []
    for u, (tpl, sp) in enumerate(zip(dec.templates, dec.spikes)):
        f = muap_features(tpl, dec.fs, onset=dec.onset, **kw)
        rate, cov = _rate(sp, dec.fs)
        rows.append({"unit": u, **f, "rate_hz": rate, "idi_cov": cov, "n_discharges": int(len(sp))})
    return rows


_STATS = ("duration_ms", "amplitude_uv", "area_uvms", "phases", "turns", "thickness_ms", "size_index",
          "rate_hz", "idi_cov")
SUMMARY_KEYS = tuple(f"{k}_{s}" for k in _STATS for s in ("mean", "median", "p10", "p90")) + (
    "polyphasic_share", "n_units", "units_per_s", "candidates_per_s", "rms_uv", "median_freq_hz", "log_amp_max")


def summarize(rows: list[dict], dec, *, polyphasic_min: int = 5) -> dict:
    """Recording-level summary of a unit table (keys :data:`SUMMARY_KEYS`; NaN where undefined).

    Units are weighted equally. ``polyphasic_share``: fraction of units with at least
    ``polyphasic_min`` phases (> 4 phases, Stålberg et al. 1986).
    """
    out = {}
    dur = len(dec.x) / dec.fs
    for k in _STATS:
        vals = np.array([r[k] for r in rows], np.float64)
        vals = vals[np.isfinite(vals)]
        for s, fn in (("mean", np.mean), ("median", np.median), ("p10", lambda a: np.percentile(a, 10)),
                      ("p90", lambda a: np.percentile(a, 90))):
            out[f"{k}_{s}"] = float(fn(vals)) if len(vals) else float("nan")
    out["polyphasic_share"] = float(np.mean([r["phases"] >= polyphasic_min for r in rows])) if rows else float("nan")
    out["n_units"] = float(len(rows))
    out["units_per_s"] = len(rows) / dur
    out["candidates_per_s"] = dec.n_candidates / dur
    x = np.asarray(dec.x, np.float64)
    out["rms_uv"] = float(np.sqrt(np.mean(x * x)))
    spec = np.abs(np.fft.rfft(x[: 1 << int(math.log2(len(x)))])) ** 2
    cum = np.cumsum(spec)
    out["median_freq_hz"] = float(np.searchsorted(cum, cum[-1] / 2) * dec.fs / (2 * (len(spec) - 1)))
    out["log_amp_max"] = float(math.log10(max(r["amplitude_uv"] for r in rows))) if rows else float("nan")
    return out


def analyze_recording(rec_or_x, fs: float | None = None, **kw):
    """Decompose one needle recording and measure its MUAPs: (decomposition, unit rows, summary).

    Parameters
    ----------
    rec_or_x : :class:`bmiss.io.Recording` (first channel used) or a [n_samples] array (µV).
    fs : Hz (needed for an array).  Other keywords go to
        :func:`bmiss.needle.detect.decompose_needle`.

    Examples
    --------
    >>> dec, rows, summary = analyze_recording(rec)  # doctest: +SKIP
    >>> summary["duration_ms_mean"], summary["polyphasic_share"]  # doctest: +SKIP
    """
    from .detect import decompose_needle

    if hasattr(rec_or_x, "emg"):
        x, fs = rec_or_x.emg[0], rec_or_x.fs
    else:
        x = np.asarray(rec_or_x, np.float32).ravel()
        if fs is None:
            raise ValueError("fs is needed with an array")
    dec = decompose_needle(x, fs, **kw)
    rows = unit_table(dec)
    return dec, rows, summarize(rows, dec)
