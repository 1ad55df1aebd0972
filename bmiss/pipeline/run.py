"""The decomposition pipeline: named stages in data-flow order, each timed under its own key.

Every method (:func:`run`)::

    prepare -> search (propose -> refine -> accept -> dedupe -> peel, until the proposer is
    exhausted) -> [deconvolution] -> finalize

The default ``bmiss`` (:func:`run_bmiss`)::

    prepare -> blind search -> subject fit -> model search -> deconvolution
            -> unit properties -> finalize

One module per stage: :mod:`.prepare`, :mod:`.search` (with :mod:`.proposers`, :mod:`.refine`,
:mod:`.accept`, :mod:`.dedupe`, :mod:`.peel`), :mod:`.subject`, :mod:`.deconvolution`,
:mod:`.properties`, :mod:`.finalize`. ``meta["timing_s"]`` holds one key per stage (plus the
search's inner steps under ``search_steps``); ``meta["settings"]`` every setting used.
"""
from __future__ import annotations

import sys
import time



from ..io import Decomposition
from .finalize import finalize
from .prepare import Prepared, prepare
from .proposers.base import AbstractProposer
from .search import SearchLog, search, workspace
from .settings import Rules, as_dict

__all__ = ["run", "run_bmiss"]


class _Clock:
    """Seconds per named stage, in the order the stages ran."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.stages: dict[str, float] = {}

    def stage(self, name: str, t_start: float) -> None:
        self.stages[name] = round(self.stages.get(name, 0.0) + time.perf_counter() - t_start, 4)

    def meta(self, log: SearchLog) -> dict:
        return {**self.stages, "search_steps": {k: round(v, 4) for k, v in log.times.items()},
                "total": round(time.perf_counter() - self.t0, 4)}


def _prepare(emg, fs, rules: Rules, prepared: Prepared | None, clock: _Clock):
    t = time.perf_counter()
    prep = prepared if prepared is not None else prepare(emg, fs, R=rules.R, band=rules.band)
    ws = workspace(prep, rules)
    ws.zt.block_until_ready()
    clock.stage("prepare", t)
    return prep, ws


def _deconvolve_if(ws, units, rules: Rules, clock: _Clock) -> dict:
    if not (rules.deconvolve.enabled and units):
        return {"deconvolved": False}
    from .deconvolution import deconvolution

    t = time.perf_counter()
    out = deconvolution(ws, units, rules.deconvolve)
    clock.stage("deconvolution", t)
    return {"deconvolved": True, "deconvolution": out}


def _finalize(units, ws, method, meta, extra, clock: _Clock, log: SearchLog) -> Decomposition:
    t = time.perf_counter()
    meta = {**meta, "channels_used": ws.prep.channels_used, "excluded_channels": list(ws.prep.report),
            "n_ext": ws.n, **log.meta()}
    dec = finalize(units, fs=ws.fs, N=ws.N, n_ext=ws.n, method=method, meta=meta, extra=extra)
    clock.stage("finalize", t)
    dec.meta["timing_s"] = clock.meta(log)
    return dec


def _phase_meta(proposer: AbstractProposer, rules: Rules, batch: int, prep: Prepared) -> dict:
    """The settings of one search as used: the band as applied (after the 0.95 x Nyquist clip)."""
    return {"proposer": type(proposer).__name__, "rules": as_dict(rules.replace(band=prep.band)),
            "settings": proposer.settings_meta(), "batch": int(batch)}


def run(emg, fs: float, proposer: AbstractProposer, rules: Rules, *, method: str, batch: int = 16,
        prepared: Prepared | None = None, progress: bool = True, total: int | None = None,
        properties=None) -> Decomposition:
    """Run the pipeline with ``proposer`` on ``emg`` [n_channels, n_samples] (µV) at ``fs`` Hz.

    ``batch``: candidate slots on the device; ``total``: expected number of candidates (for
    the progress bar); ``properties``: optional ``units -> (fields, meta)``, run as the
    ``unit_properties`` stage once the discharges are final. Returns a
    :class:`~bmiss.io.Decomposition` whose ``meta`` records the settings, the time of every
    stage and a log of every candidate.
    """
    clock, log = _Clock(), SearchLog()
    prep, ws = _prepare(emg, fs, rules, prepared, clock)
    t = time.perf_counter()
    units, state = search(ws, proposer, rules, [], batch=batch, log=log, desc=method, progress=progress, total=total)
    clock.stage("search", t)
    dmeta = _deconvolve_if(ws, units, rules, clock)
    extra, pmeta = proposer.extras(state, units)
    if properties is not None:
        t = time.perf_counter()
        e2, m2 = properties(units)
        extra, pmeta = {**extra, **e2}, {**pmeta, **m2}
        clock.stage("unit_properties", t)
    ph = _phase_meta(proposer, rules, batch, prep)
    meta = {"settings": {"method": method, "rules": ph["rules"], "proposer": ph["settings"], "batch": ph["batch"],
                         "R": prep.R}, **dmeta, **pmeta}
    return _finalize(units, ws, method, meta, extra, clock, log)


def _placement(subject, base_anatomy, settings):
    """The anatomy whose grid placement (rotation, centre) the amortized posterior reads x and IZ
    in: the fitted subject's where its model explains ``subject_fit.min_ev`` of the blind MUAPs,
    else the recording's own. A fit that explains little can leave the grid far off (35-mm fibres:
    EV 0.26, the grid moved 16.7 mm and turned 8 deg), and the posterior's IZ with it."""
    ev = subject.meta.get("overall_explained_variance") if subject.fit is not None else None
    return subject.anatomy if ev is not None and ev >= settings.subject_fit.min_ev else base_anatomy


def _model_search_gate(settings, subject) -> dict:
    """Whether the model search runs (``ran``) and why (``reason``): asked for, and the subject
    model explains enough of the blind units' MUAPs (``settings.model_search_min_ev``)."""
    if not settings.model_search:
        return {"ran": False, "reason": "model_search=false"}
    ev = subject.meta.get("overall_explained_variance") if subject.fit is not None else None
    if ev is not None and ev < settings.model_search_min_ev:
        return {"ran": False, "subject_explained_variance": float(ev),
                "reason": f"the subject model explains {ev:.2f} of the blind units' MUAP variance "
                          f"(< model_search_min_ev {settings.model_search_min_ev:g}): its MUAPs are not this "
                          "recording's, and a search within it found no unit where that was so"}
    return {"ran": True, "subject_explained_variance": None if ev is None else float(ev)}


def run_bmiss(rec, *, blind, blind_rules: Rules, model, rules: Rules, base_anatomy, settings,
              progress: bool = True) -> Decomposition:
    """The default ``bmiss``: blind search -> subject fit -> [model search] -> deconvolution ->
    unit properties, on one prepared, peeled workspace (the model search only with
    ``settings.model_search`` and a subject model that explains ``settings.model_search_min_ev``
    of the blind MUAPs; ``meta["settings"]["model_search"]`` says whether it ran and why).

    ``blind`` : the blind proposer (FastICA) run under ``blind_rules``; ``model`` : a callable
    ``anatomy -> ModelProposer`` (the search inverts the subject model the subject-fit stage
    returns); ``rules`` : the model search's and the later stages' rules (same ``R`` and band as
    ``blind_rules``: one preparation); ``base_anatomy`` : the anatomy the subject fit starts
    from (the recording's grid); ``settings`` : :class:`~bmiss.pipeline.settings.ModelSettings`
    (its ``subject_fit`` and ``unit_fit`` configure those stages).
    """
    from ..templates import forget
    from .properties import unit_properties
    from .subject import fit_subject

    if (blind_rules.R, blind_rules.band) != (rules.R, rules.band):
        raise ValueError("the blind and model searches share one preparation: give them the same R and band")
    clock, log = _Clock(), SearchLog()
    prep, ws = _prepare(rec.emg, rec.fs, blind_rules, None, clock)
    nb = min(blind.settings.batch, blind.settings.n_iter)
    t = time.perf_counter()
    units, _ = search(ws, blind, blind_rules, [], batch=nb, log=log, desc="bmiss 1/2 blind", progress=progress,
                      total=blind.settings.n_iter, phase=0)
    clock.stage("blind_search", t)
    t = time.perf_counter()
    subject = fit_subject(rec, ws, units, base_anatomy, settings.subject_fit, seed=settings.seed, progress=progress)
    clock.stage("subject_fit", t)
    proposer, mstate = None, None
    ms_meta = _model_search_gate(settings, subject)
    if progress and not ms_meta["ran"]:
        print(f"[bmiss] model search skipped: {ms_meta['reason']}", file=sys.stderr, flush=True)
    if ms_meta["ran"]:
        t = time.perf_counter()
        proposer = model(subject.anatomy)
        units, mstate = search(ws, proposer, rules, units, batch=settings.n_starts, log=log, desc="bmiss 2/2 model",
                               progress=progress, phase=1)
        clock.stage("model_search", t)
    dmeta = _deconvolve_if(ws, units, rules, clock)
    t = time.perf_counter()
    extra, pmeta = unit_properties(rec, units, subject, settings.unit_fit, seed=settings.seed, progress=progress,
                                   anatomy=_placement(subject, base_anatomy, settings))
    clock.stage("unit_properties", t)
    log.sharded["unit_fit"] = int(((pmeta.get("unit_fit") or {}).get("timing_s") or {}).get("devices", 1))
    forget()  # the averages of this recording are done
    smeta = proposer.extras(mstate, units)[1] if proposer is not None else {}
    phases = [_phase_meta(blind, blind_rules, nb, prep)]
    if proposer is not None:
        phases.append(_phase_meta(proposer, rules, settings.n_starts, prep))
    stages = ["prepare", "blind_search", "subject_fit"] + (["model_search"] if proposer is not None else []) + [
        "deconvolution", "unit_properties", "finalize"]
    meta = {"settings": {"method": "bmiss", "rules": phases[0]["rules"], "proposer": phases[0]["settings"],
                         "batch": phases[0]["batch"], "R": prep.R, "phases": phases, "stages": stages,
                         "model_search": ms_meta},
            **dmeta, **smeta, **pmeta, "subject_model": subject.meta}
    return _finalize(units, ws, "bmiss", meta, extra, clock, log)


