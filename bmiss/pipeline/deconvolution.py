"""Stage ``deconvolution``: every unit's discharges re-estimated by sparse deconvolution.

Rule: the band-passed EMG of the used channels ``ws.prep.x`` [n_used, N] µV is explained by the
units' spike-triggered MUAPs (:func:`bmiss.deconvolve.deconvolve_recording`: greedy L0 matching
pursuit in a whitened-background domain, refractory ``refractory_ms``, threshold from the noise
level). Units keep their filter and source; their SIL and CoV of ISI are recomputed for the new
trains. Units with too few usable discharges for an average pass through unchanged. On for
``bmiss`` (``Rules.deconvolve``), opt-in for the others.
"""
from __future__ import annotations

import numpy as np

from .. import quality
from .accept import Unit
from .finalize import aligned_source

__all__ = ["deconvolution"]


def deconvolution(ws, units: list[Unit], settings) -> dict:
    """Re-estimate ``units``' discharges in place (``spikes``, ``peaks``, ``sil``, ``cov``) under
    ``settings`` (:class:`~bmiss.deconvolve.DeconvolveSettings`); returns the stage's summary for
    ``meta["deconvolution"]``."""
    from .. import deconvolve as dc

    res, _ = dc.deconvolve_recording(ws.prep.x, [u.spikes for u in units], ws.fs, band=None,
                                     min_discharges=settings.min_discharges, **settings.solver_kw())
    for u, sp in zip(units, res.spikes):
        u.spikes = np.asarray(sp, np.int64)
        u.peaks = u.spikes - u.shift
        u.sil = quality.sil(aligned_source(u.source, u.shift, u.spikes), u.spikes, ws.fs)
        u.cov = quality.cov_isi(u.spikes)
    out = res.summary()
    out["units"] = [{k: v for k, v in r.items() if k != "unit"} for r in out.get("units", [])]
    return out
