"""The notebook API: ``simulate``, ``decompose``, ``evaluate``, ``export`` (the CLI calls these)."""
from __future__ import annotations

from .errors import UserError, RecordingMismatchError  # noqa: F401  (re-exported)
import functools
import json
from pathlib import Path

import numpy as np

from . import anatomy as anatomy_mod
from .io import (Decomposition, Recording, atomic_write, load_decomposition, load_recording,
                 recording_fingerprint)
from .simulate import simulate  # noqa: F401  (re-exported)

METHODS = ("bmiss", "cbss", "oracle")






def _fingerprinted(fn):
    """Store the recording's fingerprint in the decomposition's meta (checked by evaluate/export/figures)."""
    @functools.wraps(fn)
    def wrapper(rec, *args, **kw):
        rec = _as_recording(rec)
        dec = fn(rec, *args, **kw)
        dec.meta["recording"] = recording_fingerprint(rec)
        return dec

    return wrapper


def check_pair(dec: Decomposition, rec: Recording, *, dec_name: str = "the decomposition",
               rec_name: str = "the recording") -> None:
    """Refuse a decomposition paired with a recording it was not decomposed from.

    Decompositions written by ``bmiss.decompose`` carry ``meta["recording"]`` (fs, n_samples,
    n_channels, sha256 of the float32 EMG) and must match it exactly. Older files without it are
    checked on fs, the length of the sources and the spike range. Raises
    :class:`RecordingMismatchError` naming what differs.
    """
    diffs = []
    fp = (dec.meta or {}).get("recording")
    if isinstance(fp, dict):
        mine = recording_fingerprint(rec)
        for k, unit in (("fs", " Hz"), ("n_samples", " samples"), ("n_channels", " channels")):
            if k in fp and fp[k] != mine[k]:
                diffs.append(f"{k} {fp[k]:g}{unit} vs {mine[k]:g}{unit}")
        if not diffs and fp.get("emg_sha256") not in (None, mine["emg_sha256"]):
            diffs.append("same size but different EMG samples (content hash differs)")
    else:
        if abs(float(dec.fs) - float(rec.fs)) > 1e-6 * float(rec.fs):
            diffs.append(f"fs {dec.fs:g} Hz vs {rec.fs:g} Hz")
        if dec.sources is not None and getattr(dec.sources, "ndim", 0) == 2:
            if dec.sources.shape[1] != rec.n_samples:
                diffs.append(f"n_samples {dec.sources.shape[1]} (length of the sources) vs {rec.n_samples}")
            if dec.sources.shape[0] != dec.n_units:
                diffs.append(f"{dec.sources.shape[0]} sources for {dec.n_units} spike trains")
    hi = max((int(s.max()) for s in dec.spikes if len(s)), default=-1)
    lo = min((int(s.min()) for s in dec.spikes if len(s)), default=0)
    if lo < 0 or hi >= rec.n_samples:
        diffs.append(f"discharges at samples {lo}..{hi}, outside the recording's 0..{rec.n_samples - 1}")
    if diffs:
        raise RecordingMismatchError(
            f"{dec_name} does not belong to {rec_name}: {'; '.join(diffs)}. Pass the recording it was "
            "decomposed from, or decompose this recording again")


def _as_recording(rec) -> Recording:
    return rec if isinstance(rec, Recording) else load_recording(rec)


@_fingerprinted
def decompose(rec: Recording | str | Path, method: str = "bmiss", *, progress: bool = True, **kw) -> Decomposition:
    """Decompose a recording into MU spike trains.

    method: "bmiss" (model-informed inversion; kw: anatomy, n_rounds, forward, seed, ...),
    "cbss" (convolutive FastICA baseline; kw: n_iter, contrast, seed, ...) or
    "oracle" (separation filters from the recording's TRUE MUAPs: an upper bound, simulation only).
    """
    rec = _as_recording(rec)
    from . import electrodes, pipeline

    # Geometry flags (electrode, orientation, grid, ied_mm, missing) override the file's layout.
    # Blind methods never need a geometry; bmiss gets the anatomy with the recording's grid
    # (electrodes.anatomy_for_recording) and refuses, naming the flags, when there is none.
    geo = {k: kw.pop(k) for k in ("electrode", "orientation", "grid", "ied_mm", "missing") if k in kw}
    geo = {k: v for k, v in geo.items() if v is not None and v != ()}
    lay = None
    if geo and method != "bmiss":
        lay = electrodes.resolve_layout(rec, electrode=geo.get("electrode"), orientation=geo.get("orientation"),
                                        grid=geo.get("grid"), ied=geo.get("ied_mm"), missing=geo.get("missing"))
        if lay is not None and lay.n_channels != rec.n_channels:
            raise UserError(f"electrode layout {lay.code} has {lay.n_channels} channels but the recording has "
                            f"{rec.n_channels}")
    if method == "cbss":
        dec = pipeline.decompose_cbss(rec.emg, rec.fs, progress=progress, **kw)
    elif method == "oracle":
        if rec.true_muaps is None:
            raise UserError("method 'oracle' needs the recording's true MUAPs (a simulated recording)")
        kw.pop("seed", None)  # deterministic: nothing to seed
        dec = pipeline.decompose_oracle(rec.emg, rec.fs, rec.true_muaps, progress=progress, **kw)
    elif method == "bmiss":
        a = electrodes.anatomy_for_recording(rec, kw.pop("anatomy", None), electrode=geo.get("electrode"),
                                             orientation=geo.get("orientation"), grid=geo.get("grid"),
                                             ied=geo.get("ied_mm"), missing=geo.get("missing"))
        lay = electrodes.layout_of_anatomy(a)
        dec = pipeline.decompose_bmiss(rec, progress=progress, anatomy=a, **kw)
    else:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    dec.meta.setdefault("layout", electrodes.layout_meta(rec, lay))
    return dec


def oracle_identifiable(rec: Recording, *, threshold: float = 0.9, oracle: Decomposition | None = None) -> list[int]:
    """Indices of the true MUs that the true-MUAP oracle filter finds at RoA >= ``threshold``."""
    from . import metrics

    oracle = oracle or decompose(rec, "oracle", progress=False)
    m = metrics.match_units(oracle.spikes, rec.true_spikes, rec.fs)
    return [int(r["true"]) for r in m["per_true"] if r["est"] >= 0 and (r["roa"] or 0) >= threshold]


def evaluate(dec: Decomposition | str | Path, rec: Recording | str | Path, *, oracle: bool = False,
             check: bool = True, **kw) -> dict:
    """Score a decomposition against the ground truth of a simulated recording (see metrics.evaluate).

    oracle=True also runs the oracle and reports the yield as a fraction of the identifiable MUs.
    check=True (default) refuses a decomposition of another recording (:func:`check_pair`).
    """
    from . import metrics

    names = (str(dec) if isinstance(dec, (str, Path)) else "the decomposition",
             str(rec) if isinstance(rec, (str, Path)) else "the recording")
    dec = dec if isinstance(dec, Decomposition) else load_decomposition(dec)
    rec = _as_recording(rec)
    if not rec.has_truth:
        raise UserError(f"{names[1]} has no ground truth (true_spikes): evaluate scores decompositions of "
                        "simulated recordings (bmiss simulate); for measured data see the blind SIL/PNR in bmiss export")
    if check:
        check_pair(dec, rec, dec_name=names[0], rec_name=names[1])
    if oracle and rec.true_muaps is not None and "oracle_found" not in kw:
        kw["oracle_found"] = oracle_identifiable(rec)
    if "bounds" not in kw and dec.params is not None and rec.meta.get("anatomy_toml"):
        from . import anatomy

        import tomllib

        a = anatomy.from_dict(tomllib.loads(rec.meta["anatomy_toml"]), source=rec.meta.get("anatomy", "recording"))
        kw["bounds"] = a.param_bounds()
    return metrics.evaluate(dec, rec, **kw)


EXPORT_FORMATS = ("openhdemg", "csv", "tsv", "json", "mu-csv", "mu-json", "drive-csv", "drive-json")


def _unit_quality(dec: Decomposition) -> list[dict]:
    """Blind quality per unit: the decomposer's stored SIL/PNR/CoV (one definition,
    :mod:`bmiss.quality`), recomputed only where a file lacks them."""
    from . import quality as q

    out = []
    for i in range(dec.n_units):
        row = {"n_spikes": int(len(dec.spikes[i])), "rate_hz": q.discharge_rate(dec.spikes[i], dec.fs)}
        for key, stored, compute in (("sil", dec.sil, lambda: q.sil(dec.sources[i], dec.spikes[i], dec.fs)),
                                     ("pnr_db", dec.pnr_db, lambda: q.pnr(dec.sources[i], dec.spikes[i], dec.fs)),
                                     ("cov_isi", dec.cov_isi, lambda: q.cov_isi(dec.spikes[i]))):
            v = float(stored[i]) if stored is not None and i < len(stored) else float("nan")
            row[key] = v if np.isfinite(v) else compute()
        out.append(row)
    return out


def export(dec: Decomposition | str | Path, out: str | Path, fmt: str | None = None, *,
           rec: Recording | str | Path | None = None, force: bool = False) -> Path:
    """Write a decomposition for other tools.

    fmt: "openhdemg" (gzip JSON emgfile; needs the recording), "csv" (per-MU summary and fitted
    MU properties), "tsv" (EMG-BIDS ``_events.tsv`` of discharges), "json" (MU properties and
    quality as JSON). Inferred from the suffix of ``out`` when omitted.
    """
    from . import formats, metrics

    dec_name = str(dec) if isinstance(dec, (str, Path)) else "the decomposition"
    dec = dec if isinstance(dec, Decomposition) else load_decomposition(dec)
    out = Path(out)
    if fmt is None:
        name = out.name.lower()
        fmt = ("openhdemg" if name.endswith((".json.gz", ".json")) and rec is not None else
               "csv" if name.endswith(".csv") else "tsv" if name.endswith(".tsv") else
               "json" if name.endswith(".json") else None)
        if fmt is None:
            raise UserError(f"cannot infer the export format from {out.name!r}; pass --format, one of "
                            f"{', '.join(EXPORT_FORMATS)}")
    if fmt == "openhdemg":
        if rec is None:
            raise UserError("openhdemg export needs the recording (--recording REC): the emgfile holds RAW_SIGNAL")
        rec_name = str(rec) if isinstance(rec, (str, Path)) else "the recording"
        rec = _as_recording(rec)
        check_pair(dec, rec, dec_name=dec_name, rec_name=rec_name)
        return formats.save_openhdemg(out, dec, rec, force=force)
    if fmt == "tsv":
        return formats.save_events_tsv(out, dec, force=force)
    if fmt in ("mu-csv", "mu-json", "drive-csv", "drive-json"):
        return _export_neural(dec, out, fmt, rec, force=force, dec_name=dec_name)
    quality = _unit_quality(dec)
    if fmt == "csv":
        return formats.save_summary_csv(out, dec, quality, force=force)
    if fmt == "json":
        units = []
        for i in range(dec.n_units):
            u = {"unit": i, **quality[i]}
            if dec.params is not None:
                for j, n in enumerate(dec.param_names or ()):
                    u[n] = float(dec.params[i, j])
                    if dec.param_std is not None:
                        u[n + "_std"] = float(dec.param_std[i, j])
            units.append(u)
        from .quality import SIL_DEFINITION

        doc = {"method": dec.method, "fs": dec.fs, "n_units": dec.n_units, "sil_definition": SIL_DEFINITION,
               "units": units, "meta": dec.meta}
        text = json.dumps(metrics._jsonable(doc), indent=1)
        return atomic_write(out, lambda tmp: Path(tmp).write_text(text), force=force)
    raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


def _export_neural(dec, out, fmt, rec, *, force, dec_name):
    """Motor-neuron properties (``mu-*``: thresholds, rates, rate-coding slope, pool fit) or the
    neural drive (``drive-*``: smoothed rates and cumulative spike train) of a decomposition;
    the reference is the recording's force/reference signal, else a simulation's excitation."""
    from . import drive, recruitment

    if rec is not None:
        rec_name = str(rec) if isinstance(rec, (str, Path)) else "the recording"
        rec = _as_recording(rec)
        check_pair(dec, rec, dec_name=dec_name, rec_name=rec_name)
    if fmt.startswith("mu-"):
        p = recruitment.decomposition_properties(dec, rec)
        if fmt == "mu-csv":
            return recruitment.save_mu_properties_csv(out, p["mu_properties"], ref_unit=p["ref_unit"], force=force,
                                                      extra={"SIL": ("ratio", dec.sil), "PNR": ("dB", dec.pnr_db)})
        return recruitment.save_mu_properties_json(out, p["mu_properties"], p["pool_fit"], ref_unit=p["ref_unit"],
                                                   force=force)
    ref, unit = recruitment.reference_signal(rec) if rec is not None else (None, "")
    d = drive.drive_of(dec, rec)
    if fmt == "drive-csv":
        return drive.save_drive_csv(out, d, reference=ref, reference_name="ref_signal", reference_unit=unit, force=force)
    return drive.save_drive_json(out, d, reference=ref, reference_unit=unit, force=force)


def fit(rec: Recording | str | Path, *, anatomy=None, electrode=None, decomposition: Decomposition | None = None,
        progress: bool = True, seed: int = 0, units=None, fix=(), fixed_values: dict | None = None,
        source: str | None = None, **settings):
    """Fit the subject-specific forward model to a recording.

    Runs the blind decomposition (``cbss``) when no ``decomposition`` is given, then
    :func:`bmiss.fitting.fit_subject` on its confident units.

    Parameters
    ----------
    rec : Recording or path
    anatomy : base anatomy name, path or Anatomy (default: the recording's nominal one or
        ``biceps_brachii``); its grid becomes the recording's (``electrode`` = grid code).
    decomposition : blind units to use (default: ``decompose(rec, "cbss")``).
    fix, fixed_values : subject parameters (``bmiss.fitting.SUBJECT_NAMES``) held at the base
        anatomy's values or at ``fixed_values[name]`` (e.g. fat measured by ultrasound).
    **settings : fields of :class:`bmiss.fitting.SubjectFitSettings` (``max_units``, ``n_starts``, ...).

    Returns
    -------
    SubjectFit
        ``.anatomy`` (the fitted subject, usable as ``anatomy=`` / ``--anatomy`` after
        ``.save_toml(path)``), ``.subject`` (value, std) per subject-level parameter, per-unit
        parameters, observed and model MUAPs, explained variance.

    Examples
    --------
    >>> sf = bmiss.fit("rec.npz", fix=("fat_mm",), fixed_values={"fat_mm": 3.2})  # doctest: +SKIP
    """
    import time

    from . import electrodes, fitting

    src = source or (str(rec) if not isinstance(rec, Recording) else "")
    rec = _as_recording(rec)
    s = fitting.SubjectFitSettings(fix=tuple(fix or ()), **settings)
    base = anatomy if isinstance(anatomy, anatomy_mod.Anatomy) else electrodes.anatomy_for_recording(
        rec, anatomy, electrode=electrode)
    t0 = time.perf_counter()
    dec = decomposition if decomposition is not None else decompose(rec, "cbss", progress=False, seed=seed)
    t_dec = time.perf_counter() - t0
    sf = fitting.fit_subject(rec, dec, anatomy=base, settings=s, units=units, fixed_values=fixed_values, seed=seed,
                             progress=progress, source=src)
    sf.timing["decompose"] = round(t_dec, 2)
    return sf


__all__ = ["simulate", "decompose", "evaluate", "export", "fit", "oracle_identifiable", "check_pair", "UserError",
           "RecordingMismatchError", "METHODS", "EXPORT_FORMATS"]
