"""EMG-BIDS: read and write a recording (and its discharges) as the BIDS electromyography
modality describes it.

Written for one recording (``sub-<subject>/emg/``, with ``<stem> = sub-<subject>_task-<task>``)::

    <stem>_emg.bdf          the EMG (BDF, 24 bit: BIDS recommends BDF+), one signal per channel
                            in µV, label = channels.tsv name; a reference/force signal, when
                            the recording has one, as a last MISC signal
    <stem>_emg.json         sidecar: SamplingFrequency, EMGChannelCount, EMGReference,
                            EMGGround, EMGPlacementScheme, PowerLineFrequency, SoftwareFilters,
                            TaskName, RecordingDuration, RecordingType
    <stem>_channels.tsv     name, type (EMG/MISC), units, signal_electrode, reference, group
    <stem>_electrodes.tsv   name, x, y, z, coordinate_system, group: electrode positions in the
                            grid (mm; x along the grid's columns, y along its rows) when the
                            layout is known
    <stem>_coordsystem.json the grid's device-internal coordinate system (mm)
    <stem>_events.tsv       one row per motor-unit discharge (with a decomposition): onset (s),
                            duration (0), trial_type ("discharge"), unit, sample

EDF/BDF is read and written through ``edfio`` (Apache-2.0; ``pip install edfio``).  The reader
also opens a bare ``.edf``/``.bdf`` (every signal in a voltage unit is EMG), and takes the
channel positions from ``_electrodes.tsv`` + ``_channels.tsv`` (``signal_electrode``) when
they lie next to it.  Read the discharges with :func:`bmiss.reference.load_reference` on the
``_events.tsv``.

Field names follow the BIDS specification's electromyography chapter (facts from the
specification; no code copied).  Checked only against that documentation and against files
this writer made: no third-party EMG-BIDS dataset was available offline.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

from .errors import BmissFileError
from .io import Recording, _need_file, atomic_write, one_line, warn

__all__ = ["save_emg_bids", "load_emg_bids", "read_events_tsv"]

_V_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6, "nv": 1e-3}
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


def _edfio():
    try:
        import edfio
    except ImportError:
        raise BmissFileError("EDF/BDF files need the edfio package: pip install edfio "
                             "(or pip install 'bmiss[formats]')") from None
    return edfio


def _tsv_write(rows: list[list], header: list[str]):
    def w(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write("\t".join(header) + "\n")
            for r in rows:
                f.write("\t".join("n/a" if v is None else str(v) for v in r) + "\n")
    return w


def _tsv_read(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BmissFileError(f"{path}: unreadable ({type(e).__name__}: {one_line(e)})") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise BmissFileError(f"{path}: empty table (a BIDS .tsv starts with a header row)")
    rd = csv.DictReader(lines, delimiter="\t")
    rows = list(rd)
    for i, r in enumerate(rows):
        if None in r or any(v is None for v in r.values()):
            raise BmissFileError(f"{path}: row {i + 2} has {len([v for v in r.values() if v is not None])} fields "
                                 f"for {len(rd.fieldnames or [])} columns")
    return rows


def save_emg_bids(root, rec: Recording, dec=None, *, subject: str = "01", task: str = "contraction",
                  force: bool = False) -> dict:
    """Write ``rec`` (and the discharges of ``dec``) as an EMG-BIDS recording under ``root``.

    Parameters
    ----------
    root : the BIDS dataset folder (created; ``dataset_description.json`` is written if absent).
    rec : the recording (EMG µV [n_channels, n_samples]).
    dec : optional :class:`bmiss.io.Decomposition` of ``rec``: its discharges go to ``_events.tsv``.
    subject, task : BIDS labels (letters and digits only).
    force : overwrite existing files.

    Returns
    -------
    dict of the written paths by role (``emg``, ``sidecar``, ``channels``, ``electrodes``,
    ``coordsystem``, ``events``).

    Examples
    --------
    >>> paths = save_emg_bids("bids", rec, dec, subject="01", task="ramp")   # doctest: +SKIP
    >>> load_emg_bids(paths["emg"]).n_channels                               # doctest: +SKIP
    64
    """
    edfio = _edfio()
    for name, v in (("subject", subject), ("task", task)):
        if not isinstance(v, str) or not _LABEL_RE.match(v):
            raise BmissFileError(f"EMG-BIDS {name} label {v!r} must be letters and digits only")
    root = Path(root)
    d = root / f"sub-{subject}" / "emg"
    stem = f"sub-{subject}_task-{task}"
    paths = {"emg": d / f"{stem}_emg.bdf", "sidecar": d / f"{stem}_emg.json",
             "channels": d / f"{stem}_channels.tsv"}
    lay = rec.layout()
    if lay is not None:
        paths["electrodes"] = d / f"{stem}_electrodes.tsv"
        paths["coordsystem"] = d / f"{stem}_coordsystem.json"
    if dec is not None:
        paths["events"] = d / f"{stem}_events.tsv"
        if abs(float(dec.fs) - float(rec.fs)) > 1e-6 * rec.fs:
            raise BmissFileError(f"the decomposition (fs {dec.fs:g} Hz) is not of this recording (fs {rec.fs:g} Hz)")
    if not force:
        have = [str(p) for p in paths.values() if p.exists()]
        if have:
            raise FileExistsError(f"{have[0]} exists; pass force=True (--force) to overwrite")
    d.mkdir(parents=True, exist_ok=True)
    n_ch = rec.n_channels
    names = [f"EMG{i + 1}" for i in range(n_ch)]
    # a data record of 1 s holds fs samples only when fs is whole; else the shortest exact record
    rec_dur = next((float(k) for k in (1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 100)
                    if abs(rec.fs * k - round(rec.fs * k)) < 1e-9), None)
    if rec_dur is None:
        raise BmissFileError(f"fs = {rec.fs:g} Hz has no whole number of samples in a data record of <= 100 s; "
                             "EDF/BDF cannot store it")
    per_rec = int(round(rec.fs * rec_dur))
    pad = (-rec.n_samples) % per_rec  # EDF/BDF store whole data records: the sidecar keeps the true length

    def padded(x):
        x = np.asarray(x, np.float64)
        return np.concatenate([x, np.full(pad, x[-1])]) if pad else x

    def rng_of(x):
        lo, hi = float(x.min()), float(x.max())
        return (lo - 1.0, hi + 1.0) if hi - lo < 1e-6 else (lo, hi)

    signals = []
    for i in range(n_ch):
        x = padded(rec.emg[i])
        signals.append(edfio.BdfSignal(x, float(rec.fs), label=names[i], physical_dimension="uV",
                                       physical_range=rng_of(x), transducer_type="HD-sEMG electrode"))
    ch_rows = []
    for i in range(n_ch):
        ch_rows.append([names[i], "EMG", "uV", f"E{i + 1}" if lay is not None else None, "n/a",
                        rec.electrode or "grid1"])
    if rec.ref_signal is not None:
        r = padded(rec.ref_signal)
        unit = str(rec.meta.get("ref_unit") or "n/a")
        signals.append(edfio.BdfSignal(r, float(rec.fs), label="REF", physical_dimension=unit[:8],
                                       physical_range=rng_of(r)))
        ch_rows.append(["REF", "MISC", unit, None, None, None])
    bdf = edfio.Bdf(signals, data_record_duration=rec_dur)

    def write_bdf(tmp):
        bdf.write(tmp)

    atomic_write(paths["emg"], write_bdf, force=True)
    side = {"TaskName": task, "SamplingFrequency": float(rec.fs), "EMGChannelCount": n_ch,
            "EMGReference": "n/a", "EMGGround": "n/a",
            "EMGPlacementScheme": "Other",
            "EMGPlacementSchemeDescription": f"electrode grid {rec.electrode or 'unknown'}"
                                             + (f", {lay.rows}x{lay.cols}, IED {lay.ied_mm:g} mm" if lay else ""),
            "PowerLineFrequency": "n/a", "SoftwareFilters": "n/a", "RecordingType": "continuous",
            "RecordingDuration": rec.n_samples / rec.fs, "bmiss_n_samples": rec.n_samples}
    if rec.orientation is not None:
        side["bmiss_orientation"] = rec.orientation
    atomic_write(paths["sidecar"], lambda tmp: Path(tmp).write_text(json.dumps(side, indent=1)), force=True)
    atomic_write(paths["channels"], _tsv_write(ch_rows, ["name", "type", "units", "signal_electrode", "reference",
                                                         "group"]), force=True)
    if lay is not None:
        ied = float(lay.ied_mm)
        cm = np.asarray(lay.channel_map)
        rows = [[f"E{i + 1}", f"{cm[i, 1] * ied:g}", f"{cm[i, 0] * ied:g}", "n/a", "grid", rec.electrode or "grid1"]
                for i in range(n_ch)]
        atomic_write(paths["electrodes"], _tsv_write(rows, ["name", "x", "y", "z", "coordinate_system", "group"]),
                     force=True)
        cs = {"grid": {"EMGCoordinateSystem": "Other", "EMGCoordinateSystemUnits": "mm",
                       "EMGCoordinateSystemDescription": f"device-internal grid coordinates: x along the grid's "
                                                         f"{lay.cols} columns, y along its {lay.rows} rows, origin at "
                                                         f"row 0 column 0 (bmiss channel_map), IED {ied:g} mm"}}
        atomic_write(paths["coordsystem"], lambda tmp: Path(tmp).write_text(json.dumps(cs, indent=1)), force=True)
    if dec is not None:
        ev = sorted((int(k), u) for u, s in enumerate(dec.spikes) for k in np.asarray(s, np.int64).ravel())
        rows = [[f"{k / rec.fs:.6f}", "0", "discharge", u, k] for k, u in ev]
        atomic_write(paths["events"], _tsv_write(rows, ["onset", "duration", "trial_type", "unit", "sample"]),
                     force=True)
    desc = root / "dataset_description.json"
    if not desc.exists():
        atomic_write(desc, lambda tmp: Path(tmp).write_text(json.dumps(
            {"Name": "bmiss export", "BIDSVersion": "1.10.0", "DatasetType": "raw"}, indent=1)), force=True)
    return paths


def _sibling(path: Path, suffix: str) -> Path | None:
    """``<stem>_<suffix>`` next to ``<stem>_emg.<ext>`` (BIDS naming), if present."""
    m = re.match(r"(.*)_emg\.(edf|bdf)$", path.name, re.IGNORECASE)
    if not m:
        return None
    p = path.with_name(f"{m.group(1)}_{suffix}")
    return p if p.is_file() else None


def _num(v: str, where: str) -> float | None:
    if v is None or v.strip() in ("", "n/a"):
        return None
    try:
        x = float(v)
    except ValueError:
        raise BmissFileError(f"{where}: {v!r} is not a number") from None
    if not math.isfinite(x):
        raise BmissFileError(f"{where}: {v!r} is not a finite number")
    return x


def load_emg_bids(path, *, fs: float | None = None) -> Recording:
    """Read an EMG-BIDS ``*_emg.bdf``/``*_emg.edf`` (or a bare EDF/BDF) as a Recording.

    EMG channels: those ``_channels.tsv`` types as ``EMG`` (else every signal whose physical
    dimension is a voltage), scaled to µV by their unit.  A ``MISC`` channel becomes the
    reference signal.  Channel positions: ``_electrodes.tsv`` x/y (mm) of each channel's
    ``signal_electrode``, turned into grid rows/columns at the smallest electrode spacing.
    Every problem is a one-line :class:`BmissFileError` naming the file and column/signal.
    """
    edfio = _edfio()
    path = _need_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        reader = edfio.read_bdf if head[:1] == b"\xff" else edfio.read_edf
        edf = reader(path)
        sigs = list(edf.signals)
    except BmissFileError:
        raise
    except Exception as e:  # noqa: BLE001  (edfio raises many types for a damaged header)
        raise BmissFileError(f"{path}: not a readable EDF/BDF file ({type(e).__name__}: {one_line(e)})") from None
    sigs = [s for s in sigs if s.label.strip() not in ("EDF Annotations", "BDF Annotations")]
    if not sigs:
        raise BmissFileError(f"{path}: the EDF/BDF file holds no signal")
    types = {}
    ch_tsv = _sibling(path, "channels.tsv")
    ch_rows = _tsv_read(ch_tsv) if ch_tsv else []
    for i, r in enumerate(ch_rows):
        if "name" not in r or "type" not in r:
            raise BmissFileError(f"{ch_tsv}: needs the columns name and type (row {i + 2})")
        types[r["name"]] = r
    emg_i, ref_i = [], None
    for i, s in enumerate(sigs):
        lab = s.label.strip()
        row = types.get(lab)
        unit = (row.get("units") if row else None) or s.physical_dimension.strip()
        kind = row["type"].upper() if row else ("EMG" if unit.replace(" ", "").lower() in _V_TO_UV else "MISC")
        if kind == "EMG":
            emg_i.append((i, unit))
        elif ref_i is None and kind == "MISC":
            ref_i = i
    if not emg_i:
        raise BmissFileError(f"{path}: no EMG signal (channels.tsv type EMG, or a signal in uV/mV/V)")
    rates = {float(sigs[i].sampling_frequency) for i, _ in emg_i}
    if len(rates) > 1:
        raise BmissFileError(f"{path}: EMG signals at different rates {sorted(rates)} Hz; bmiss needs one rate")
    fs_file = rates.pop()
    if fs is not None and abs(float(fs) - fs_file) > 1e-9 * fs_file:
        raise BmissFileError(f"{path}: the file says fs = {fs_file:g} Hz but fs = {float(fs):g} Hz was given")
    rows = []
    for i, unit in emg_i:
        u = unit.replace(" ", "").lower()
        if u not in _V_TO_UV:
            raise BmissFileError(f"{path}: signal {sigs[i].label.strip()!r} has unit {unit!r}; EMG must be in "
                                 "uV, mV or V")
        rows.append(np.asarray(sigs[i].data, np.float64) * _V_TO_UV[u])
    emg = np.stack(rows)
    side_p = _sibling(path, "emg.json")
    side = {}
    if side_p:
        try:
            side = json.loads(side_p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BmissFileError(f"{side_p}: not valid JSON ({one_line(e)})") from None
        if not isinstance(side, dict):
            raise BmissFileError(f"{side_p}: the sidecar must be a JSON object")
    n_true = side.get("bmiss_n_samples")
    if n_true is None and isinstance(side.get("RecordingDuration"), (int, float)):
        n_true = int(round(float(side["RecordingDuration"]) * fs_file))
    if isinstance(n_true, (int, float)) and not isinstance(n_true, bool) and 0 < int(n_true) <= emg.shape[1]:
        emg = emg[:, : int(n_true)]  # drop the padding of the last data record
    ref = None
    if ref_i is not None and float(sigs[ref_i].sampling_frequency) == fs_file:
        ref = np.asarray(sigs[ref_i].data, np.float64)[: emg.shape[1]]
    geo = _bids_geometry(path, [sigs[i].label.strip() for i, _ in emg_i], types)
    orient = side.get("bmiss_orientation")
    if geo and orient in (0, 180):
        geo["orientation"] = orient
    meta = {"source": "emg-bids", "file": path.name,
            "ref_unit": None if ref_i is None else (types.get(sigs[ref_i].label.strip(), {}).get("units")
                                                    or sigs[ref_i].physical_dimension.strip())}
    try:
        return Recording(emg=emg, fs=fs_file, ref_signal=ref, meta=meta, **geo)
    except BmissFileError as e:
        msg = str(e)
        if not geo:
            raise BmissFileError(f"{path}: {msg}") from None
    warn(f"{path}: electrode positions ignored ({msg.removeprefix('recording: ')})")
    try:
        return Recording(emg=emg, fs=fs_file, ref_signal=ref, meta=meta)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {one_line(e)}") from None


def _bids_geometry(path: Path, labels: list[str], types: dict) -> dict:
    el_p = _sibling(path, "electrodes.tsv")
    if el_p is None or not types:
        return {}
    pos = {}
    for i, r in enumerate(_tsv_read(el_p)):
        if "name" not in r or "x" not in r or "y" not in r:
            raise BmissFileError(f"{el_p}: needs the columns name, x and y")
        x = _num(r["x"], f"{el_p}: row {i + 2} column x")
        y = _num(r["y"], f"{el_p}: row {i + 2} column y")
        if x is not None and y is not None:
            pos[r["name"]] = (y, x)
    xy = []
    for lab in labels:
        e = (types.get(lab) or {}).get("signal_electrode")
        if e not in pos:
            return {}
        xy.append(pos[e])
    xy = np.asarray(xy, np.float64)
    if (xy < 0).any():
        xy = xy - xy.min(0)
    steps = np.concatenate([np.diff(np.unique(xy[:, 0])), np.diff(np.unique(xy[:, 1]))])
    steps = steps[steps > 1e-6]
    if not len(steps):
        return {}
    ied = float(steps.min())
    rc = xy / ied
    if not np.allclose(rc, np.round(rc), atol=0.05):
        warn(f"{el_p}: electrodes are not on a regular grid; channel positions left unknown")
        return {}
    grp = {(types.get(lab) or {}).get("group") for lab in labels} - {None, "n/a"}
    from . import electrodes as E

    code = E.find_code(next(iter(grp))) if len(grp) == 1 else None
    return {"channel_map": np.round(rc).astype(np.int64), "ied_mm": ied,
            "electrode": code or "custom"}


def read_events_tsv(path) -> tuple[list[np.ndarray], list[int], float | None]:
    """Discharges from a BIDS ``_events.tsv`` (rows with ``trial_type`` ``discharge``, or every row
    when there is no ``trial_type``): per ``unit`` (column), the ``sample`` (column) else
    ``round(onset * fs)``.  Returns (spikes per unit sorted by unit id, unit ids, fs from the
    sibling ``_emg.json`` or None)."""
    path = _need_file(path)
    rows = _tsv_read(path)
    if rows and ("onset" not in rows[0] or "unit" not in rows[0]):
        raise BmissFileError(f"{path}: a discharge table needs the columns onset and unit (and sample); "
                             f"have {list(rows[0])}")
    fs = None
    m = re.match(r"(.*)_events\.tsv$", path.name)
    if m:
        side = path.with_name(f"{m.group(1)}_emg.json")
        if side.is_file():
            try:
                v = json.loads(side.read_text(encoding="utf-8")).get("SamplingFrequency")
                fs = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                raise BmissFileError(f"{side}: not a valid EMG-BIDS sidecar (JSON object)") from None
    by_unit: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.get("trial_type", "discharge") != "discharge":
            continue
        where = f"{path}: row {i + 2}"
        u = _num(r["unit"], f"{where} column unit")
        if u is None or u != int(u) or u < 0:
            raise BmissFileError(f"{where} column unit: {r['unit']!r} must be a unit number >= 0")
        s = _num(r.get("sample"), f"{where} column sample") if "sample" in r else None
        if s is None:
            t = _num(r["onset"], f"{where} column onset")
            if t is None or fs is None:
                raise BmissFileError(f"{where}: no sample and no onset with a known SamplingFrequency")
            s = round(t * fs)
        if s != int(s) or s < 0:
            raise BmissFileError(f"{where} column sample: {r.get('sample')!r} must be a sample number >= 0")
        by_unit.setdefault(int(u), []).append(int(s))
    ids = sorted(by_unit)
    return [np.unique(np.asarray(by_unit[u], np.int64)) for u in ids], ids, fs
