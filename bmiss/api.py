"""The notebook API: ``simulate``, ``decompose``, ``evaluate``, ``export``, ``fit`` and the
recording/decomposition readers and writers (the CLI calls these).

The API keeps the command line's promises: writers never overwrite an existing file unless
``force=True``, and refuse an output that is one of their inputs even then
(:mod:`bmiss.outputs`); a wrong argument raises :class:`bmiss.errors.UserError` naming the
argument and the type or range expected.
"""
from __future__ import annotations

from .errors import BmissFileError, UserError, RecordingMismatchError  # noqa: F401  (re-exported)
import functools
import os
import zipfile
from pathlib import Path

import numpy as np

from . import anatomy as anatomy_mod
from . import interrupts, outputs
from .checks import SEED_MAX, check_seed  # noqa: F401  (re-exported)
from .files import write_json
from .io import (Decomposition, Recording, recording_fingerprint)
from .io import load_decomposition as _io_load_decomposition
from .io import load_recording as _io_load_recording
from .io import save_decomposition as _io_save_decomposition
from .io import save_recording as _io_save_recording
from .simulate import simulate  # noqa: F401  (re-exported)

METHODS = ("bmiss", "cbss", "oracle")
RECORDING_FILES = ".npz, .otb+, .mat, .json/.json.gz"


# ------------------------------------------------------------------ argument checks
def _path_like(x) -> bool:
    return isinstance(x, (str, os.PathLike))


def _npz_kind(path) -> str | None:
    """'recording' / 'decomposition' for a bmiss .npz (by its members), else None; never raises."""
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    if {"spikes.npy", "sources.npy"} <= names:
        return "decomposition"
    if "emg.npy" in names:
        return "recording"
    return None


def _as_recording(rec, arg: str = "rec", fn: str = "") -> Recording:
    """``rec`` as a Recording: a Recording passes, a path is read; anything else is refused naming ``arg``."""
    if isinstance(rec, Recording):
        return rec
    where = f"{fn}: " if fn else ""
    if isinstance(rec, Decomposition):
        raise UserError(f"{where}{arg} is a Decomposition; pass a Recording (or the path of a recording file: "
                        f"{RECORDING_FILES})")
    if not _path_like(rec):
        hint = (" (wrap an EMG array: bmiss.io.Recording(emg=EMG [n_channels, n_samples] µV, fs=HZ))"
                if isinstance(rec, np.ndarray) else "")
        raise UserError(f"{where}{arg} must be a bmiss Recording or the path of a recording file "
                        f"({RECORDING_FILES}); got {type(rec).__name__}{hint}")
    if _npz_kind(rec) == "decomposition":
        raise UserError(f"{where}{arg}={os.fspath(rec)!r} is a decomposition file, not a recording")
    return _io_load_recording(rec)


def _as_decomposition(dec, arg: str = "dec", fn: str = "") -> Decomposition:
    """``dec`` as a Decomposition: one passes, a path is read; anything else is refused naming ``arg``."""
    if isinstance(dec, Decomposition):
        return dec
    where = f"{fn}: " if fn else ""
    if isinstance(dec, Recording):
        raise UserError(f"{where}{arg} is a Recording; pass a Decomposition (or the path of a decomposition .npz)")
    if not _path_like(dec):
        raise UserError(f"{where}{arg} must be a bmiss Decomposition or the path of a decomposition .npz; "
                        f"got {type(dec).__name__}")
    if _npz_kind(dec) == "recording":
        raise UserError(f"{where}{arg}={os.fspath(dec)!r} is a recording file, not a decomposition")
    return _io_load_decomposition(dec)


def _holds_recording(path: Path, fingerprint: dict | None) -> bool:
    """Whether ``path`` is a recording .npz with this fingerprint (the input a decomposition came from)."""
    if not isinstance(fingerprint, dict) or not path.is_file() or _npz_kind(path) != "recording":
        return False
    try:
        import hashlib

        with np.load(path, allow_pickle=False) as z:
            emg = np.ascontiguousarray(z["emg"], dtype=np.float32)  # hashed as recording_fingerprint does
        return hashlib.sha256(emg.tobytes()).hexdigest() == fingerprint.get("emg_sha256")
    except Exception:  # noqa: BLE001 - unreadable: not the recording
        return False


# ------------------------------------------------------------------ readers and writers
def load_recording(path, **kw) -> Recording:
    """Read a recording (.npz, .otb+, .mat, openhdemg .json/.json.gz); see :func:`bmiss.io.load_recording`.

    Examples
    --------
    >>> rec = bmiss.load_recording("rec.npz")  # doctest: +SKIP
    """
    if not _path_like(path):
        raise UserError(f"load_recording: path must be a file path (str or Path), got {type(path).__name__}")
    return _as_recording(path, "path", "load_recording") if not kw else _io_load_recording(path, **kw)


def load_decomposition(path) -> Decomposition:
    """Read a decomposition .npz written by :func:`save_decomposition` / ``bmiss decompose``.

    Examples
    --------
    >>> dec = bmiss.load_decomposition("dec.npz")  # doctest: +SKIP
    """
    if not _path_like(path):
        raise UserError(f"load_decomposition: path must be a file path (str or Path), got {type(path).__name__}")
    return _as_decomposition(path, "path", "load_decomposition")


def save_recording(path, rec: Recording, *, force: bool = False) -> Path:
    """Write a recording: ``.npz`` (bmiss) or ``.json``/``.json.gz`` (openhdemg emgfile without MUs).

    Never overwrites an existing file unless ``force=True``; a name bmiss could not read back
    (no suffix, another suffix) is refused. Returns the path written.

    Examples
    --------
    >>> bmiss.save_recording("rec.npz", rec)  # doctest: +SKIP
    """
    if not isinstance(rec, Recording):
        raise UserError(f"save_recording: rec must be a bmiss Recording, got {type(rec).__name__}"
                        + (" (arguments swapped? call save_recording(path, rec))" if isinstance(path, Recording) else ""))
    path = outputs.check_suffix(path, outputs.RECORDING_SUFFIXES, what="recording", arg="path", example="rec.npz")
    outputs.check_outputs([path], force, force_hint="force=True")
    return _io_save_recording(path, rec, force=force)


def save_decomposition(path, dec: Decomposition, *, force: bool = False) -> Path:
    """Write a decomposition ``.npz``.

    Never overwrites an existing file unless ``force=True``, and never the recording the
    decomposition was made from (its fingerprint, ``dec.meta["recording"]``), even with ``force``.

    Examples
    --------
    >>> bmiss.save_decomposition("dec.npz", dec)  # doctest: +SKIP
    """
    if not isinstance(dec, Decomposition):
        raise UserError(f"save_decomposition: dec must be a bmiss Decomposition, got {type(dec).__name__}"
                        + (" (arguments swapped? call save_decomposition(path, dec))"
                           if isinstance(path, Decomposition) else ""))
    path = outputs.check_suffix(path, outputs.DECOMPOSITION_SUFFIXES, what="decomposition", arg="path",
                                example="dec.npz")
    outputs.check_outputs([path], force, force_hint="force=True")
    if _holds_recording(path, (dec.meta or {}).get("recording")):
        raise UserError(f"save_decomposition: {path} holds the recording this decomposition was made from; "
                        "write the decomposition to another file")
    return _io_save_decomposition(path, dec, force=force)


def _fingerprinted(fn):
    """Store the recording's fingerprint in the decomposition's meta (checked by evaluate/export/figures)."""
    @functools.wraps(fn)
    def wrapper(rec=None, *args, **kw):
        rec = _as_recording(rec, "rec", "decompose")
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


@_fingerprinted
def decompose(rec: Recording | str | Path, method: str = "bmiss", *, progress: bool = True, **kw) -> Decomposition:
    """Decompose a recording into MU spike trains.

    Parameters
    ----------
    rec : Recording or path of a recording file (.npz, .otb+, .mat, .json/.json.gz); EMG
        [n_channels, n_samples] in µV at ``rec.fs`` Hz.
    method : "bmiss" (model-informed inversion; kw: anatomy, n_rounds, forward, init, ...), "cbss"
        (convolutive FastICA baseline; kw: n_iter, contrast, ...) or "oracle" (separation filters
        from the recording's TRUE MUAPs: an upper bound, simulation only).
    progress : tqdm progress on stderr.
    **kw : seed (int, 0..2**32-1); geometry (electrode, orientation, grid, ied_mm in mm, missing);
        any field of the method's settings (:mod:`bmiss.pipeline.settings`).

    Returns
    -------
    Decomposition : spikes (sample indices per unit), sources [n_units, n_samples], quality
        (SIL, PNR dB, CoV of ISI), ``meta["recording"]`` (the recording's fingerprint) and
        ``meta["settings"]``.

    Raises
    ------
    UserError naming the argument (``rec``, ``method``, ``seed``) when one is of the wrong type or range.

    Examples
    --------
    >>> dec = bmiss.decompose("rec.npz", "cbss", seed=0)  # doctest: +SKIP
    """
    rec = _as_recording(rec, "rec", "decompose")
    if not isinstance(method, str) or method not in METHODS:
        from .errors import did_you_mean

        raise UserError(f"decompose: method must be one of {', '.join(METHODS)}{did_you_mean(method, METHODS)}; got {method!r}")
    if "seed" in kw:
        kw["seed"] = check_seed(kw["seed"], "seed", where="decompose")
    interrupts.check()
    from . import electrodes, geometry, pipeline

    # Geometry flags (electrode, orientation, grid, ied_mm, missing) override the file's layout.
    # Blind methods never need a geometry; bmiss gets the anatomy with the recording's grid
    # (geometry.anatomy_for_recording) and refuses, naming the flags, when there is none.
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
        a = geometry.anatomy_for_recording(rec, kw.pop("anatomy", None), electrode=geo.get("electrode"),
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
    """Score a decomposition against the ground truth of a simulated recording (see :func:`bmiss.metrics.evaluate`).

    Parameters
    ----------
    dec : Decomposition or path of a decomposition .npz.
    rec : the simulated Recording (or its path) that ``dec`` was decomposed from.
    oracle : also run the oracle and report the yield as a fraction of the identifiable MUs.
    check : refuse a decomposition of another recording (:func:`check_pair`).

    Returns
    -------
    dict : ``summary`` (found at RoA >= 0.9 / 0.8, false, duplicates, ...), per-unit matching,
        blind quality, property errors.

    Raises
    ------
    UserError when the arguments are swapped or of the wrong type; RecordingMismatchError when
    ``dec`` belongs to another recording.

    Examples
    --------
    >>> report = bmiss.evaluate("dec.npz", "rec.npz")  # doctest: +SKIP
    """
    from . import metrics

    if isinstance(dec, Recording) and isinstance(rec, Decomposition):
        raise UserError("evaluate: the arguments are swapped: dec is a Recording and rec a Decomposition; "
                        "call evaluate(dec, rec)")
    if _path_like(dec) and _path_like(rec) and _npz_kind(dec) == "recording" and _npz_kind(rec) == "decomposition":
        raise UserError(f"evaluate: the arguments are swapped: dec={os.fspath(dec)!r} is a recording and "
                        f"rec={os.fspath(rec)!r} a decomposition; call evaluate(dec, rec)")
    names = (str(dec) if _path_like(dec) else "the decomposition",
             str(rec) if _path_like(rec) else "the recording")
    dec = _as_decomposition(dec, "dec", "evaluate")
    rec = _as_recording(rec, "rec", "evaluate")
    interrupts.check()
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


EXPORT_FORMATS = ("openhdemg", "muedit", "csv", "tsv", "json", "mu-csv", "mu-json", "drive-csv", "drive-json")


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


EXPORT_DESCRIPTIONS = {
    "openhdemg": "openhdemg emgfile (gzip JSON with RAW_SIGNAL and the MUs)",
    "muedit": "MUedit output .mat (signal struct: EMG, discharge times, pulse trains) to review in MUedit",
    "csv": "per-MU summary CSV (quality and fitted MU properties)",
    "tsv": "EMG-BIDS events TSV of the discharges",
    "json": "per-MU JSON (quality and fitted MU properties)",
    "mu-csv": "motor-neuron properties CSV", "mu-json": "motor-neuron properties JSON",
    "drive-csv": "neural drive CSV", "drive-json": "neural drive JSON",
}


def export_format(out: str | Path, fmt: str | None = None) -> str:
    """The export format written to ``out``: ``fmt`` when given, else by suffix: ``.csv`` -> csv,
    ``.tsv`` -> tsv, ``.json`` -> json (per-MU), ``.json.gz`` -> openhdemg."""
    if fmt is not None:
        if fmt not in EXPORT_FORMATS:
            raise UserError(f"export: unknown format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        return fmt
    name = Path(out).name.lower()
    for suf, f in ((".json.gz", "openhdemg"), (".mat", "muedit"), (".csv", "csv"), (".tsv", "tsv"), (".json", "json")):
        if name.endswith(suf):
            return f
    raise UserError(f"cannot infer the export format from {Path(out).name!r}; pass --format (fmt=), one of "
                    f"{', '.join(EXPORT_FORMATS)}")


def export(dec: Decomposition | str | Path, out: str | Path, fmt: str | None = None, *,
           rec: Recording | str | Path | None = None, force: bool = False) -> Path:
    """Write a decomposition for other tools.

    Parameters
    ----------
    dec : Decomposition or path of a decomposition .npz.
    out : file to write. Never overwritten unless ``force=True``; never one of the inputs (``dec``,
        ``rec``) nor an ``.npz`` (bmiss's own recordings and decompositions), even with ``force``.
    fmt : "openhdemg" (gzip JSON emgfile; needs the recording), "muedit" (MUedit's output .mat, to
        review the units in MUedit; needs the recording), "csv" (per-MU summary and fitted
        MU properties), "tsv" (EMG-BIDS ``_events.tsv`` of discharges), "json" (MU properties and
        quality as JSON), "mu-csv"/"mu-json" (motor-neuron properties), "drive-csv"/"drive-json"
        (neural drive). Inferred from the suffix of ``out`` when omitted (:func:`export_format`:
        ``.json`` is the per-MU JSON, ``.json.gz`` the openhdemg emgfile).
    rec : the recording (Recording or path), for openhdemg and the reference signal of mu-*/drive-*.

    Returns
    -------
    Path written.

    Examples
    --------
    >>> bmiss.export(dec, "units.csv")  # doctest: +SKIP
    >>> bmiss.export(dec, "dec.json.gz", rec=rec)  # openhdemg  # doctest: +SKIP
    """
    from . import formats

    if not _path_like(out):
        raise UserError(f"export: out must be a file path (str or Path), got {type(out).__name__}"
                        + (" (arguments swapped? call export(dec, out, ...))" if isinstance(dec, (str, Path)) else ""))
    fmt = export_format(out, fmt)
    out = Path(out)
    if out.name.lower().endswith(".npz"):
        raise UserError(f"export: out={str(out)!r}: an export is {EXPORT_DESCRIPTIONS[fmt]}, not an .npz (bmiss's "
                        "own recordings and decompositions); choose a name ending in .csv, .tsv, .json, .json.gz or .mat")
    outputs.check_outputs([out], force, inputs=[x for x in (dec, rec) if _path_like(x)],
                          force_hint="force=True (--force)")
    dec_name = str(dec) if _path_like(dec) else "the decomposition"
    dec = _as_decomposition(dec, "dec", "export")
    if _holds_recording(out, (dec.meta or {}).get("recording")):
        raise UserError(f"export: {out} holds the recording of this decomposition; write the export to another file")
    if rec is not None and not isinstance(rec, Recording) and not _path_like(rec):
        raise UserError(f"export: rec must be a bmiss Recording, the path of a recording file or None; "
                        f"got {type(rec).__name__}")
    interrupts.check()
    if fmt in ("openhdemg", "muedit"):
        if rec is None:
            raise UserError(f"{fmt} export needs the recording (--recording REC): the file holds the EMG")
        rec_name = str(rec) if isinstance(rec, (str, Path)) else "the recording"
        rec = _as_recording(rec, "rec", "export")
        check_pair(dec, rec, dec_name=dec_name, rec_name=rec_name)
        save = formats.save_openhdemg if fmt == "openhdemg" else formats.save_muedit
        return save(out, dec, rec, force=force)
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
                    if dec.param_interval is not None:
                        u.update({f"{n}_{b}": float(v) for b, v in zip(formats.INTERVAL_BOUNDS, dec.param_interval[i, j])})
            units.append(u)
        from .quality import SIL_DEFINITION

        doc = {"method": dec.method, "fs": dec.fs, "n_units": dec.n_units, "sil_definition": SIL_DEFINITION,
               "units": units, "meta": dec.meta}
        return write_json(out, doc, force=force)
    raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")


def _export_neural(dec, out, fmt, rec, *, force, dec_name):
    """Motor-neuron properties (``mu-*``: thresholds, rates, rate-coding slope, pool fit) or the
    neural drive (``drive-*``: smoothed rates and cumulative spike train) of a decomposition;
    the reference is the recording's force/reference signal, else a simulation's excitation."""
    from . import drive, recruitment

    if rec is not None:
        rec_name = str(rec) if isinstance(rec, (str, Path)) else "the recording"
        rec = _as_recording(rec, "rec", "export")
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

    seed = check_seed(seed, "seed", where="fit")
    if decomposition is not None and not isinstance(decomposition, Decomposition):
        decomposition = _as_decomposition(decomposition, "decomposition", "fit")
    from . import fitting, geometry

    src = source or (str(rec) if _path_like(rec) else "")
    rec = _as_recording(rec, "rec", "fit")
    interrupts.check()
    s = fitting.SubjectFitSettings(fix=tuple(fix or ()), **settings)
    base = anatomy if isinstance(anatomy, anatomy_mod.Anatomy) else geometry.anatomy_for_recording(
        rec, anatomy, electrode=electrode)
    t0 = time.perf_counter()
    dec = decomposition if decomposition is not None else decompose(rec, "cbss", progress=False, seed=seed)
    t_dec = time.perf_counter() - t0
    sf = fitting.fit_subject(rec, dec, anatomy=base, settings=s, units=units, fixed_values=fixed_values, seed=seed,
                             progress=progress, source=src)
    sf.timing["decompose"] = round(t_dec, 2)
    return sf


__all__ = ["simulate", "decompose", "evaluate", "export", "fit", "load_recording", "load_decomposition",
           "save_recording", "save_decomposition", "export_format", "check_seed", "oracle_identifiable", "check_pair",
           "UserError", "RecordingMismatchError", "METHODS", "EXPORT_FORMATS"]
