"""Reference decompositions: the motor units another tool found in a recording, and how a
bmiss decomposition agrees with them.

:func:`load_reference` reads the decomposition a file carries into one :class:`Reference`
(discharges per unit as 0-based sample indices, the sampling rate, optionally the units'
pulse trains, and where it came from):

===========================  ==================================================================
OTBioLab+ ``.mat`` export    ``Data`` columns labelled ``... Decomposition of ...`` (one binary
                             discharge train per unit, whatever numbered prefix such as
                             ``"1 - 4 - "`` they carry) and ``... Source for decomposition of
                             ...`` (the units' pulse trains); ``SamplingFrequency``
DEMUSE ``.mat``              ``MUPulses`` (cell of 1-based discharge samples per unit),
                             ``IPTs`` [units x samples] pulse trains, ``fsamp``
MUedit output ``.mat``       struct ``signal``: ``Dischargetimes`` (cell {grid, unit} of 1-based
                             samples), ``Pulsetrain`` (cell {grid} of [units x samples]),
                             ``fsamp``, ``data`` [channels x samples]; an edited file's
                             ``edition.Distimeclean`` (cell {grid}{unit}) takes precedence
openhdemg ``.json(.gz)``     ``MUPULSES`` (0-based), ``IPTS``, ``FSAMP``, ``EMG_LENGTH``
bmiss ``.npz``               a decomposition written by ``bmiss decompose``
EMG-BIDS ``_events.tsv``     rows of ``trial_type`` ``discharge``: ``unit``, ``sample`` (rate from
                             the sibling ``_emg.json``), as :func:`bmiss.bids.save_emg_bids` writes
===========================  ==================================================================

:func:`compare` matches a decomposition to a reference one-to-one (Hungarian assignment on
the rate of agreement, :func:`bmiss.metrics.match_units`) and reports the RoA of each pair,
the units found at RoA >= 0.9 and >= 0.8, and the units only on either side.

Only the structures above are read; they are taken from the tools' documentation and from
readers that load them (facts only, no code): see README "File formats" for which were checked
against a real file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import BmissFileError, RecordingMismatchError
from .io import one_line

__all__ = ["Reference", "load_reference", "compare", "format_comparison", "REFERENCE_SUFFIXES"]

REFERENCE_SUFFIXES = (".mat", ".json", ".json.gz", ".npz", ".tsv")


@dataclass
class Reference:
    """A reference decomposition.

    spikes: one int64 array of 0-based discharge sample indices per unit.  fs: Hz.
    n_samples: length of the recording it belongs to (None when the file does not say).
    sources: [n_units, n_samples] pulse trains, or None.  origin: the tool/format
    (``"OTBioLab+ .mat"``, ``"DEMUSE .mat"``, ``"MUedit .mat"``, ``"openhdemg"``, ``"bmiss"``).
    labels: a name per unit (e.g. the column label).  file: the file name.
    """

    spikes: list[np.ndarray]
    fs: float
    origin: str
    n_samples: int | None = None
    sources: np.ndarray | None = None
    labels: list[str] | None = None
    file: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_units(self) -> int:
        return len(self.spikes)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".json.gz" if name.endswith(".json.gz") else path.suffix.lower()


def _spike_array(v, where: str, one_based: bool) -> np.ndarray:
    """A unit's discharge samples as sorted unique int64, checked (whole, finite, >= 0)."""
    a = np.asarray(v)
    if a.dtype == object:
        a = np.asarray([x for x in a.ravel()], dtype=np.float64) if a.size else np.zeros(0)
    if a.size and a.dtype.kind not in "iuf":
        raise BmissFileError(f"{where}: discharge times must be numbers, got {a.dtype}")
    a = np.asarray(a, np.float64).ravel()
    if a.size and (not np.isfinite(a).all() or not np.all(a == np.round(a))):
        raise BmissFileError(f"{where}: discharge times must be whole sample numbers")
    if one_based:
        a = a - 1
    if a.size and a.min() < 0:
        raise BmissFileError(f"{where}: discharge at sample {a.min() + one_based:g}, before the recording's start"
                             + (" (MATLAB samples count from 1)" if one_based else ""))
    if a.size and a.max() > 2 ** 53:
        raise BmissFileError(f"{where}: discharge at sample {a.max():g} is not a plausible sample number")
    return np.unique(a.astype(np.int64))


def _check_range(ref: Reference, path) -> Reference:
    if ref.n_samples is not None:
        for u, s in enumerate(ref.spikes):
            if len(s) and s[-1] >= ref.n_samples:
                name = ref.labels[u] if ref.labels else f"unit {u}"
                raise BmissFileError(f"{path}: {name} has a discharge at sample {int(s[-1])}, past the recording's "
                                     f"end ({ref.n_samples} samples)")
    if ref.sources is not None:
        src = np.asarray(ref.sources)
        if src.ndim != 2 or src.shape[0] != ref.n_units:
            ref.sources = None
        else:
            from .io import to_float32, warn

            try:
                ref.sources = to_float32(src, f"{path}: pulse trains")
            except BmissFileError as e:  # the discharges are what is compared: keep them
                warn(f"{e}; pulse trains ignored")
                ref.sources = None
    return ref


# ------------------------------------------------------------------ readers
def _load_mat_vars(path: Path) -> dict:
    from .formats import safe_loadmat

    try:
        return safe_loadmat(path)
    except BmissFileError:
        raise
    except NotImplementedError:
        raise BmissFileError(f"{path}: a MATLAB v7.3 (HDF5) file, which bmiss does not read yet (MUedit may save "
                             "these); re-save it in MATLAB with save(name, 'signal', '-v7')") from None
    except Exception as e:  # noqa: BLE001  (scipy raises many types for a damaged file)
        raise BmissFileError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {one_line(e)})") from None


def _as_list(v) -> list:
    """A MATLAB cell as loadmat(simplify_cells) gives it -> list of entries (a one-element cell is
    squeezed to its content, which is then a numeric array)."""
    if isinstance(v, np.ndarray) and v.dtype == object:
        return list(v.ravel(order="C"))
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def _otbiolab_reference(path: Path) -> Reference:
    from .formats import _mat_label, _mat_table

    _, cols, labels, fs = _mat_table(path)
    if labels is None:
        raise BmissFileError(f"{path}: an OTBioLab+ export needs 'Description' (one label per column) to find its "
                             "decomposition columns")
    info = [_mat_label(s) for s in labels]
    dec_i = [i for i, d in enumerate(info) if d["kind"] == "decomposition"]
    src_i = [i for i, d in enumerate(info) if d["kind"] == "source"]
    if not dec_i:
        raise BmissFileError(f"{path}: no 'Decomposition of ...' column (OTBioLab+ writes one binary discharge train "
                             "per unit when the export includes its decomposition)")
    spikes = []
    for i in dec_i:
        col = cols[i]
        if not np.isfinite(col).all():
            raise BmissFileError(f"{path}: column {labels[i]!r} holds NaN/inf; a discharge train is 0/1")
        spikes.append(np.flatnonzero(col > 0.5).astype(np.int64))
    sources = np.stack([cols[i] for i in src_i]) if len(src_i) == len(dec_i) else None
    meta = {"decomposition_columns": [labels[i] for i in dec_i], "source_columns": [labels[i] for i in src_i],
            "note": "OTBioLab+'s binary trains lag its pulse trains by the extension factor (openhdemg shifts them "
                    "back by 8 samples); the matching's best lag absorbs such a shift"}
    return Reference(spikes=spikes, fs=fs, origin="OTBioLab+ .mat", n_samples=int(cols.shape[1]), sources=sources,
                     labels=[labels[i] for i in dec_i], file=path.name, meta=meta)


def _demuse_reference(path: Path, m: dict) -> Reference:
    from .io import scalar_fs

    if "fsamp" not in m:
        raise BmissFileError(f"{path}: a DEMUSE file needs 'fsamp' (Hz) next to 'MUPulses'")
    fs = scalar_fs(m["fsamp"], f"{path}: fsamp")
    pulses = m["MUPulses"]
    if isinstance(pulses, np.ndarray) and pulses.dtype != object:
        pulses = [pulses]  # one unit: the cell was squeezed to its content
    spikes = [_spike_array(p, f"{path}: MUPulses{{{u + 1}}}", True) for u, p in enumerate(_as_list(pulses))]
    sources, n = None, None
    if "IPTs" in m:
        ipts = np.asarray(m["IPTs"])
        if ipts.dtype.kind in "iuf":
            ipts = ipts.reshape(1, -1) if ipts.ndim == 1 else ipts
            if ipts.ndim == 2 and ipts.shape[0] != len(spikes) and ipts.shape[1] == len(spikes):
                ipts = ipts.T
            if ipts.ndim == 2 and ipts.shape[0] == len(spikes):
                sources, n = ipts, int(ipts.shape[1])
    return Reference(spikes=spikes, fs=fs, origin="DEMUSE .mat", n_samples=n, sources=sources,
                     labels=[f"MU {u + 1}" for u in range(len(spikes))], file=path.name)


def _muedit_reference(path: Path, m: dict) -> Reference:
    from .io import scalar_fs

    sig = m["signal"]
    if not isinstance(sig, dict):
        raise BmissFileError(f"{path}: 'signal' must be a struct (MUedit output)")
    if "fsamp" not in sig:
        raise BmissFileError(f"{path}: signal.fsamp (Hz) is missing; not a MUedit output")
    fs = scalar_fs(sig["fsamp"], f"{path}: signal.fsamp")
    ed = m.get("edition")
    n = None
    data = sig.get("data")
    if isinstance(data, np.ndarray) and data.ndim == 2 and data.dtype.kind in "iuf":
        n = int(data.shape[1])
    spikes, labels, where = [], [], "signal.Dischargetimes"
    if isinstance(ed, dict) and "Distimeclean" in ed:
        where = "edition.Distimeclean"
        grids = ed["Distimeclean"]
        grids = _as_list(grids) if isinstance(grids, np.ndarray) and grids.dtype == object else [grids]
        for g, cell in enumerate(grids):
            units = _as_list(cell) if isinstance(cell, np.ndarray) and cell.dtype == object else [cell]
            for u, s in enumerate(units):
                spikes.append(_spike_array(s, f"{path}: {where}{{{g + 1}}}{{{u + 1}}}", True))
                labels.append(f"grid {g + 1} MU {u + 1}")
    elif "Dischargetimes" in sig:
        dt = sig["Dischargetimes"]
        if isinstance(dt, np.ndarray) and dt.dtype == object:
            arr = dt if dt.ndim == 2 else dt.reshape(1, -1)
        else:
            arr = np.empty((1, 1), object)
            arr[0, 0] = dt
        for g in range(arr.shape[0]):
            for u in range(arr.shape[1]):
                s = arr[g, u]
                if s is None or (isinstance(s, np.ndarray) and s.size == 0 and u > 0):
                    continue  # MUedit pads the {grid, unit} cell with empty cells for grids with fewer units
                spikes.append(_spike_array(s, f"{path}: {where}{{{g + 1},{u + 1}}}", True))
                labels.append(f"grid {g + 1} MU {u + 1}")
    else:
        raise BmissFileError(f"{path}: MUedit output without signal.Dischargetimes (was the file decomposed?)")
    sources = None
    pt = sig.get("Pulsetrain")
    if pt is not None:
        blocks = _as_list(pt) if isinstance(pt, np.ndarray) and pt.dtype == object else [pt]
        try:
            rows = [np.atleast_2d(np.asarray(b, np.float64)) for b in blocks if np.asarray(b).size]
            src = np.concatenate(rows, 0) if rows else None
            if src is not None and src.shape[0] == len(spikes):
                sources = src
                n = n or int(src.shape[1])
        except (TypeError, ValueError):
            sources = None
    return Reference(spikes=spikes, fs=fs, origin="MUedit .mat", n_samples=n, sources=sources, labels=labels,
                     file=path.name, meta={"discharges_from": where})


def _openhdemg_reference(path: Path) -> Reference:
    from .formats import load_openhdemg_decomposition, _read_openhdemg_dict, _scalar

    d = load_openhdemg_decomposition(path)
    n = None
    raw = _read_openhdemg_dict(path).get("EMG_LENGTH")
    try:
        v = _scalar(raw)
        n = int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
    except (TypeError, ValueError, OverflowError):
        n = None
    spikes = [_spike_array(s, f"{path}: MUPULSES[{u}]", False) for u, s in enumerate(d.spikes)]
    src = d.sources if d.sources is not None and np.asarray(d.sources).size and np.any(d.sources) else None
    return Reference(spikes=spikes, fs=d.fs, origin="openhdemg", n_samples=n, sources=src,
                     labels=[f"MU {u}" for u in range(len(spikes))], file=path.name,
                     meta={"openhdemg_source": d.method.split(":", 1)[-1]})


def _bids_reference(path: Path) -> Reference:
    import json
    import re

    from .bids import read_events_tsv

    spikes, ids, fs = read_events_tsv(path)
    if fs is None:
        raise BmissFileError(f"{path}: no sampling rate: an EMG-BIDS _events.tsv needs its _emg.json "
                             "(SamplingFrequency) next to it")
    n = None
    m = re.match(r"(.*)_events\.tsv$", path.name)
    side = path.with_name(f"{m.group(1)}_emg.json") if m else None
    if side is not None and side.is_file():
        d = json.loads(side.read_text(encoding="utf-8"))
        v = d.get("bmiss_n_samples")
        if v is None and isinstance(d.get("RecordingDuration"), (int, float)):
            v = round(float(d["RecordingDuration"]) * fs)
        n = int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 else None
    return Reference(spikes=spikes, fs=fs, origin="EMG-BIDS events", n_samples=n,
                     labels=[f"unit {u}" for u in ids], file=path.name)


def load_reference(path) -> Reference:
    """Read the reference decomposition a file carries.

    Parameters
    ----------
    path : an OTBioLab+ ``.mat`` export with its decomposition columns, a DEMUSE ``.mat``, a
        MUedit output ``.mat``, an openhdemg ``.json``/``.json.gz`` or a bmiss decomposition
        ``.npz`` (the module docstring lists what is read from each).

    Returns
    -------
    Reference with 0-based discharge samples per unit (MATLAB's 1-based indices converted).

    Raises
    ------
    BmissFileError : one line naming the file and the variable/column at fault.

    Examples
    --------
    >>> ref = load_reference("export.mat")            # doctest: +SKIP
    >>> ref.origin, ref.n_units, ref.fs               # doctest: +SKIP
    ('OTBioLab+ .mat', 5, 2048.0)
    """
    from .io import _need_file, load_decomposition

    path = _need_file(path)
    suf = _suffix(path)
    if suf == ".npz":
        d = load_decomposition(path)
        n = (d.meta.get("recording") or {}).get("n_samples")
        if n is None and d.sources is not None and np.asarray(d.sources).ndim == 2:
            n = int(np.asarray(d.sources).shape[1])
        ref = Reference(spikes=[np.unique(np.asarray(s, np.int64)) for s in d.spikes], fs=d.fs,
                        origin=f"bmiss ({d.method})", n_samples=None if n is None else int(n), sources=d.sources,
                        labels=[f"unit {u}" for u in range(d.n_units)], file=path.name)
    elif suf in (".json", ".json.gz"):
        ref = _openhdemg_reference(path)
    elif suf == ".tsv":
        ref = _bids_reference(path)
    elif suf == ".mat":
        m = _load_mat_vars(path)
        if "MUPulses" in m:
            ref = _demuse_reference(path, m)
        elif "signal" in m:
            ref = _muedit_reference(path, m)
        elif "Data" in m or "data" in m:
            ref = _otbiolab_reference(path)
        else:
            have = sorted(k for k in m if not k.startswith("__"))
            raise BmissFileError(f"{path}: no decomposition found (expected OTBioLab+ 'Data'+'Description', DEMUSE "
                                 f"'MUPulses' or MUedit 'signal'; variables: {have})")
    else:
        raise BmissFileError(f"{path}: unsupported reference type {suf or '(no suffix)'!r}; supported: "
                             f"{', '.join(REFERENCE_SUFFIXES)}")
    return _check_range(ref, path)


# ------------------------------------------------------------------ comparison
def compare(dec, reference, *, tol_ms: float = 0.5, max_lag_ms: float = 30.0, min_roa: float = 0.3) -> dict:
    """Agreement of a decomposition with a reference decomposition of the same recording.

    Parameters
    ----------
    dec : :class:`bmiss.io.Decomposition` or path of a bmiss decomposition ``.npz``.
    reference : :class:`Reference` or a path :func:`load_reference` reads.
    tol_ms, max_lag_ms : discharge matching tolerance and the largest whole-train shift tried
        (ms), as in :func:`bmiss.metrics.rate_of_agreement`; the shift absorbs fixed delays
        between tools (e.g. OTBioLab+'s extension-factor lag).
    min_roa : a Hungarian pair counts as the same unit from this RoA on (0.3).

    Returns
    -------
    dict (JSON-ready): ``reference`` (file, origin, n_units, fs), ``decomposition`` (method,
    n_units), ``pairs`` [{ref, dec, ref_label, roa, lag_ms, tp, fp, fn, n_ref, n_dec}]
    (one-to-one, RoA >= ``min_roa``, by reference unit; ``lag_ms``: how much later the
    reference's discharges are than the decomposition's), ``common_90`` / ``common_80`` (pairs at RoA >= 0.9 / 0.8),
    ``only_reference`` / ``only_decomposition`` (units without a pair), ``roa`` (matrix
    [n_ref, n_dec]).  RoA = TP / (TP + FP + FN).

    Raises
    ------
    RecordingMismatchError : the two disagree on the sampling rate or the recording's length.

    Examples
    --------
    >>> rep = compare("dec.npz", "export.mat")       # doctest: +SKIP
    >>> print(format_comparison(rep))                # doctest: +SKIP
    """
    from . import metrics
    from .io import Decomposition, load_decomposition

    dec_name = str(dec) if isinstance(dec, (str, Path)) else "the decomposition"
    ref_name = str(reference) if isinstance(reference, (str, Path)) else "the reference"
    if not isinstance(dec, Decomposition):
        dec = load_decomposition(dec)
    ref = reference if isinstance(reference, Reference) else load_reference(reference)
    if abs(float(dec.fs) - float(ref.fs)) > 1e-6 * float(ref.fs):
        raise RecordingMismatchError(f"{dec_name} (fs {dec.fs:g} Hz) and {ref_name} (fs {ref.fs:g} Hz) are not of the "
                                     "same recording")
    n_dec = (dec.meta.get("recording") or {}).get("n_samples") if isinstance(dec.meta, dict) else None
    if n_dec is None and dec.sources is not None and np.asarray(dec.sources).ndim == 2 and dec.n_units:
        n_dec = int(np.asarray(dec.sources).shape[1])
    if ref.n_samples is not None and n_dec is not None and int(n_dec) != int(ref.n_samples):
        raise RecordingMismatchError(f"{dec_name} ({int(n_dec)} samples) and {ref_name} ({ref.n_samples} samples) are "
                                     "not of the same recording")
    m = metrics.match_units(dec.spikes, ref.spikes, ref.fs, match_min=min_roa, tol_ms=tol_ms,
                            max_lag_ms=max_lag_ms)
    pairs = []
    for p in m["per_true"]:
        if p["est"] < 0:
            continue
        pairs.append({"ref": p["true"], "dec": p["est"], "ref_label": ref.labels[p["true"]] if ref.labels else None,
                      "roa": round(float(p["roa"]), 4), "lag_ms": round(p["lag"] * 1000.0 / ref.fs, 3),
                      "tp": p["tp"], "fp": p["fp"], "fn": p["fn"],
                      "n_ref": int(len(ref.spikes[p["true"]])), "n_dec": int(len(dec.spikes[p["est"]]))})
    matched_dec = {p["dec"] for p in pairs}
    return {
        "reference": {"file": ref.file, "origin": ref.origin, "n_units": ref.n_units, "fs": ref.fs,
                      "n_samples": ref.n_samples},
        "decomposition": {"file": Path(dec_name).name if dec_name != "the decomposition" else None,
                          "method": dec.method, "n_units": dec.n_units},
        "settings": {"tol_ms": tol_ms, "max_lag_ms": max_lag_ms, "min_roa": min_roa, "score": "RoA = TP/(TP+FP+FN)"},
        "pairs": pairs,
        "n_common": len(pairs),
        "common_90": sum(p["roa"] >= 0.9 for p in pairs),
        "common_80": sum(p["roa"] >= 0.8 for p in pairs),
        "only_reference": [p["true"] for p in m["per_true"] if p["est"] < 0],
        "only_decomposition": [j for j in range(dec.n_units) if j not in matched_dec],
        "roa": [[round(float(x), 4) for x in row] for row in m["roa"]],
    }


def format_comparison(rep: dict) -> str:
    """The :func:`compare` report as a text table (what ``bmiss evaluate --reference`` prints)."""
    r, d = rep["reference"], rep["decomposition"]
    lines = [f"reference: {r['file']} ({r['origin']}), {r['n_units']} units at {r['fs']:g} Hz; "
             f"decomposition: {d['method']}, {d['n_units']} units",
             f"{'ref':>4} {'dec':>4} {'RoA':>6} {'lag ms':>7} {'n ref':>6} {'n dec':>6}  reference unit"]
    for p in rep["pairs"]:
        lines.append(f"{p['ref']:>4} {p['dec']:>4} {p['roa']:>6.3f} {p['lag_ms']:>7.2f} {p['n_ref']:>6} "
                     f"{p['n_dec']:>6}  {p['ref_label'] or ''}")
    n = r["n_units"]
    lines.append(f"common units: {rep['n_common']} of {n} reference units; RoA >= 0.9: {rep['common_90']}, "
                 f">= 0.8: {rep['common_80']}")
    lines.append(f"only in the reference: {rep['only_reference'] or 'none'}; only in the decomposition: "
                 f"{rep['only_decomposition'] or 'none'}")
    return "\n".join(lines)
