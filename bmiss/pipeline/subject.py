"""Stage ``subject_fit``: the forward model adapted to the subject from the blind units.

Rule: the blind units' spike-triggered MUAPs are fitted jointly through the MUAP network (the
expected-mode conductor where fat and skin are fitted, ``SubjectFitSettings.forward``;
:func:`bmiss.fitting.fit`): subject-level parameters (anisotropy, grid rotation and offset
along the fibres, population means of fibre length, CV and IZ; fat and skin held at the
anatomy's values by default, ``SubjectFitSettings.fix``) with every unit's depth, x, fibre
count, IZ, CV and length. When the fit with held values explains less than
``SubjectFitSettings.min_ev`` of the MUAPs' variance it is repeated with them free and the
better one kept (held fat at 3 mm for 4.1 mm and 61-mm fibres converged to 163-mm fibres, EV
0.48; ``results/bench_fit_fat_held.json``); the free fit replaces the held one only where it
explains 0.02 more. Where the conductor's free fit is kept, the unit fits in it run through the
network (its fitted fat and skin in the network's domain; ``meta["unit_forward_model"]`` says which). Too few confident units: the base anatomy is
returned, and ``meta["error"]`` says why. Output: a :class:`SubjectModel` that the model search
inverts and the unit-properties stage reads.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import FitError

__all__ = ["SubjectModel", "fit_subject", "base_model"]


@dataclass(frozen=True)
class SubjectModel:
    """anatomy : the model the search inverts (fitted, or the base one when not fitted);
    fit : the :class:`~bmiss.fitting.SubjectFit` or ``None``; unit_params : candidate index ->
    [6] properties of the blind units the fit used (``PARAM_NAMES`` units); meta :
    ``meta["subject_model"]`` of the decomposition."""

    anatomy: object
    fit: object = None
    unit_params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


#: the free refit replaces the held fit only where it explains this much more of the MUAPs' variance:
#: two more parameters always explain a little more (the network's free fit on 35-mm fibres: +0.0007,
#: with fat at 1.4 mm against a true 3 mm), which is no evidence for its fat and skin
FREE_MIN_GAIN = 0.02


def base_model(anatomy, reason: str) -> SubjectModel:
    """The base anatomy as the subject model, with the reason it was not fitted."""
    return SubjectModel(anatomy=anatomy, meta={"error": reason, "anatomy": "base (not fitted)"})


def _say(progress: bool, msg: str) -> None:
    if progress:  # the fit takes tens of seconds and has no bar of its own
        print(f"[bmiss] {msg}", file=sys.stderr, flush=True)


def fit_subject(rec, ws, blind_units: list, base, settings, *, seed: int = 0, progress: bool = False) -> SubjectModel:
    """Fit the subject model of ``rec`` to ``blind_units`` (accepted units of the blind search).

    ``base`` : the base :class:`~bmiss.anatomy.Anatomy` (the recording's grid); ``settings`` :
    :class:`~bmiss.pipeline.settings.SubjectFitSettings`.
    """
    from .. import fitting
    from .finalize import finalize

    if not settings.enabled:
        return base_model(base, "not fitted (subject_fit.enabled=False)")
    t = time.perf_counter()
    blind = sorted(blind_units, key=lambda u: u.cand)
    _say(progress, f"fitting the subject model to the {len(blind)} blind units' MUAPs ...")
    dec = finalize(blind, fs=ws.fs, N=ws.N, n_ext=ws.n, method="cbss", meta={"channels_used": ws.prep.channels_used})

    def run(fix):
        return fitting.fit_subject(rec, dec, anatomy=base, settings=settings.replace(fix=fix), seed=seed,
                                   progress=False)

    try:
        sf = run(tuple(settings.fix))
        refit = None
        if settings.fix and sf.overall_ev < settings.min_ev:
            _say(progress, f"explained variance {sf.overall_ev:.2f} with {', '.join(settings.fix)} held: "
                           "refitting with them free ...")
            sf2 = run(())
            better = sf2.overall_ev >= sf.overall_ev + FREE_MIN_GAIN
            refit = {"held_explained_variance": float(sf.overall_ev), "free_explained_variance": float(sf2.overall_ev),
                     "kept": "free" if better else "held", "min_gain": FREE_MIN_GAIN}
            sf = sf2 if better else sf
    except FitError as e:
        return base_model(base, str(e))
    subject_forward = sf.settings.get("forward_model")
    unit_forward = subject_forward
    if settings.forward == "surrogate" and str(subject_forward).startswith("conductor"):
        # the conductor fitted the subject (fat and skin free): the unit fits in it run through the network
        sf_net, why = fitting.with_network(sf)
        sf, unit_forward = (sf_net, "surrogate (in the subject the conductor fitted)") if sf_net is not None \
            else (sf, f"conductor ({why})")
    unit_params = {blind[int(i)].cand: np.asarray(sf.unit_params[k], np.float32) for k, i in enumerate(sf.unit_index)}
    meta = {"subject": {k: [float(v[0]), float(v[1])] for k, v in sf.subject.items()},
            "overall_explained_variance": float(sf.overall_ev), "n_units_fitted": int(len(sf.unit_index)),
            "degenerate": list(sf.degenerate), "anatomy_toml": sf.toml(), "refit_free": refit,
            "forward_model": subject_forward,  # the MUAP model that fitted it
            "unit_forward_model": unit_forward,  # the one the unit fits in it use
            "time_s": round(time.perf_counter() - t, 2)}
    return SubjectModel(anatomy=sf.anatomy, fit=sf, unit_params=unit_params, meta=meta)
