"""Stage ``finalize``: discharge times, source sign and scale, quality, the Decomposition.

Rules (one convention for every method, see :mod:`bmiss.quality`):

* discharge time = onset of the unit's spike-triggered MUAP: a filter picks the unit at
  some extension lag, so its source peaks a constant, unit-specific delay after the firing
  (up to ``T + R`` samples).  :func:`onset_shift` finds the shift from the source peaks to
  the onset of the spike-triggered MUAP of the band-passed EMG; it is applied when a unit is
  accepted (so duplicates found at different lags line up for dedupe).  The oracle knows its
  lag and places the discharges exactly (``rules.align = "proposer"``);
* sources are shifted like the spikes (their peaks sit on the discharges), signed so that the
  discharges are positive and divided by their mean at the discharges;
* ``sil``/``cov_isi`` are the values the accept stage judged; ``pnr_db`` is
  :func:`bmiss.quality.pnr` of the final source.
"""
from __future__ import annotations

import numpy as np

from ..io import Decomposition
from ..quality import SIL_DEFINITION, pnr
from .accept import Unit

__all__ = ["onset_shift", "shift_source", "aligned_source", "finalize"]

SPIKE_TIME = "onset of the unit's MUAP (bmiss.quality convention)"
SOURCE_NORMALISATION = "shifted onto the discharges, sign so discharges are positive, divided by the mean at the discharges"


def onset_shift(x: np.ndarray, spikes, half: int, frac: float = 0.1) -> int:
    """Shift (samples) that moves ``spikes`` onto the ONSET of the unit's spike-triggered MUAP.

    ``x`` [n_ch, N] is the band-passed EMG.  The spike-triggered average over lags
    ``-half..half`` gives the energy profile ``e(lag) = sum_ch sta^2``; from its peak we walk
    to earlier lags while ``e > max(frac * peak, 2 * noise)`` (noise = lower quartile of
    ``e``); the onset is the earliest lag still above.
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


def shift_source(s: np.ndarray, k: int) -> np.ndarray:
    """``out[t] = s[t + k]`` (zero outside): a peak at ``p`` lands on ``p - k``."""
    out = np.zeros_like(s)
    N = len(s)
    if k >= 0:
        out[: N - k] = s[k:]
    else:
        out[-k:] = s[: N + k]
    return out


def aligned_source(source, shift: int, spikes) -> np.ndarray:
    """The one source normalisation: shifted onto the discharges (``-shift``), signed so that the
    discharges are positive, divided by the mean at the discharges (float64 [N])."""
    s = shift_source(np.asarray(source, np.float64), -int(shift))
    sp = np.clip(np.asarray(spikes, np.int64), 0, len(s) - 1)
    sgn = 1.0 if (len(sp) == 0 or np.mean(s[sp]) >= 0) else -1.0
    s = s * sgn
    c = float(np.mean(s[sp])) if len(sp) else float(np.max(np.abs(s)))
    return s / (c if c > 0 else 1.0)


def finalize(units: list[Unit], *, fs: float, N: int, n_ext: int, method: str, meta: dict,
             extra: dict | None = None) -> Decomposition:
    """Build the :class:`~bmiss.io.Decomposition` of ``units`` (in the order found).

    ``extra``: more Decomposition fields from the proposer (e.g. ``params``)."""
    sources = np.zeros((len(units), N), np.float32)
    spikes_out = []
    for i, u in enumerate(units):
        sp = np.asarray(u.spikes, np.int64)
        sources[i] = aligned_source(u.source, u.shift, sp).astype(np.float32)
        spikes_out.append(sp)
    meta = dict(meta, spike_time=SPIKE_TIME, source_normalisation=SOURCE_NORMALISATION, sil_definition=SIL_DEFINITION,
                candidate_index=[u.cand for u in units])
    F = np.stack([u.w for u in units]).astype(np.float32) if units else np.zeros((0, n_ext), np.float32)
    return Decomposition(
        spikes=spikes_out, sources=sources, fs=float(fs), method=method, filters=F,
        sil=np.asarray([u.sil for u in units], np.float32),
        pnr_db=np.asarray([pnr(sources[i], spikes_out[i], fs) for i in range(len(units))], np.float32),
        cov_isi=np.asarray([u.cov if np.isfinite(u.cov) else np.nan for u in units], np.float32),
        meta=meta, **(extra or {}))
