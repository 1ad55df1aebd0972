"""Other file formats: OTB+ (.otb+), OTBioLab+ .mat exports, openhdemg JSON, BIDS-style events
and a per-unit summary CSV.

Readers return :class:`bmiss.io.Recording` (EMG in µV, ``[n_channels, n_samples]``).
:func:`load_any` dispatches on the file suffix; :func:`bmiss.io.load_recording` calls it for
everything that is not ``.npz``.

Supported inputs
----------------
=================  ===========================================================================
``.npz``           bmiss recording (:func:`bmiss.io.load_recording`)
``.otb+``          OT Bioelettronica OTB+ archive (tar: XML description + int16/24 ``.sig``)
``.mat``           OTBioLab+ MATLAB export (``Data``, ``SamplingFrequency``, ``Description``)
``.json``          openhdemg emgfile (gzip-compressed JSON, also plain JSON), also ``.json.gz``
=================  ===========================================================================

No pandas at runtime: openhdemg's DataFrames are written and read as pandas
``orient='split'`` JSON (``{"columns": [...], "index": [...], "data": [[...], ...]}``) by hand.
"""
from __future__ import annotations

import csv
import gzip
import io as _io
import json
import math
import re
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import BmissFileError, Decomposition, Recording, _need_file, atomic_write

__all__ = [
    "SUPPORTED_SUFFIXES",
    "load_any",
    "load_otbplus",
    "load_mat",
    "save_openhdemg",
    "load_openhdemg",
    "load_openhdemg_decomposition",
    "save_events_tsv",
    "save_summary_csv",
]

SUPPORTED_SUFFIXES = (".npz", ".otb+", ".mat", ".json", ".json.gz")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in (".json.gz", ".otb+"):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def load_any(path) -> Recording:
    """Read a recording of any supported type (by suffix, case-insensitive).

    Raises ``FileNotFoundError`` for a missing file and :class:`BmissFileError` for an
    unsupported suffix (the message lists the supported ones) or an unreadable file.
    """
    path = _need_file(path)
    suf = _suffix(path)
    if suf == ".npz":
        from .io import load_recording

        return load_recording(path)
    if suf == ".otb+":
        return load_otbplus(path)
    if suf == ".mat":
        return load_mat(path)
    if suf in (".json", ".json.gz"):
        return load_openhdemg(path)
    hint = " (.otb4 is not supported yet: export .otb+ or .mat from OTBioLab+)" if suf == ".otb4" else ""
    raise BmissFileError(
        f"{path}: unsupported file type {suf or '(no suffix)'!r}{hint}. Supported: "
        ".npz (bmiss), .otb+ (OT Bioelettronica), .mat (OTBioLab+ export), "
        ".json / .json.gz (openhdemg)")


# =============================================================================== OTB+
# Channels that carry no EMG (OTB control/IMU/auxiliary channels).
_OTB_NON_EMG_ADAPTERS = ("adaptercontrol", "adapterquaternions")
_OTB_NON_EMG_CHANNELS = ("quaternion", "bufferchannel", "rampchannel", "loadcellchannel")
_OTB_GRID_RE = re.compile(r"(\d+)MM(\d{2})(\d{2})", re.IGNORECASE)


def _otb_is_emg(adapter_id: str, ch_id: str) -> bool:
    a, c = adapter_id.lower(), ch_id.lower()
    if a in _OTB_NON_EMG_ADAPTERS or "aux" in a:
        return False
    if c in _OTB_NON_EMG_CHANNELS or c.startswith("aux"):
        return False
    return True


def _read_int(raw: bytes, bits: int) -> np.ndarray:
    if bits == 16:
        return np.frombuffer(raw[: len(raw) // 2 * 2], dtype="<i2").astype(np.float64)
    if bits == 24:
        b = np.frombuffer(raw[: len(raw) // 3 * 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.astype(np.float64)
    if bits == 32:
        return np.frombuffer(raw[: len(raw) // 4 * 4], dtype="<i4").astype(np.float64)
    raise BmissFileError(f"ad_bits={bits} is not supported (16, 24 or 32)")


def _otb_parse_device(root: ET.Element, where: str) -> dict:
    dev = root if root.tag == "Device" else root.find(".//Device")
    if dev is None:
        raise BmissFileError(f"{where}: no <Device> element")
    try:
        fs = float(dev.attrib["SampleFrequency"])
    except (KeyError, ValueError) as e:
        raise BmissFileError(f"{where}: <Device> has no valid SampleFrequency") from e
    bits = int(float(dev.attrib.get("ad_bits", dev.attrib.get("AdBits", 16))))
    chans = []  # (position, adapter_id, channel_id, gain)
    for ad in dev.iter("Adapter"):
        a_id = ad.attrib.get("ID", "")
        a_gain = float(ad.attrib.get("Gain", 1.0))
        start = int(float(ad.attrib.get("ChannelStartIndex", 0)))
        for ch in ad.iter("Channel"):
            c_gain = float(ch.attrib.get("Gain", 1.0))
            pos = start + int(float(ch.attrib.get("Index", 0)))
            chans.append((pos, a_id, ch.attrib.get("ID", ""), a_gain * c_gain))
    total = int(float(dev.attrib.get("DeviceTotalChannels", 0))) or (max(c[0] for c in chans) + 1 if chans else 0)
    return {"fs": fs, "bits": bits, "total": total, "chans": chans, "name": dev.attrib.get("Name", "")}


def load_otbplus(path, *, adc_range_v: float = 5.0, sig: int | str | None = None,
                 emg_only: bool = True) -> Recording:
    """Read an OT Bioelettronica ``.otb+`` archive.

    Layout (found by suffix, names are free): a tar with one or more ``<name>.sig`` files of
    interleaved little-endian signed integers (channels fastest, ``ad_bits`` 16 — also 24/32)
    and, for each, an XML description (``<name>.xml``, else any XML with a ``<Device>``)::

        <Device Name=.. SampleFrequency="2048" DeviceTotalChannels=".." ad_bits="16">
          <Channels>
            <Adapter ID=".." Gain="150" ChannelStartIndex="0" ..>
              <Channel ID="HD08MM1305" Index="0" Gain="1" .. />

    Channel ``k`` of the ``.sig`` is the channel with ``ChannelStartIndex + Index == k``.

    Conversion to µV (documented choice)::

        uV = raw * adc_range_v / 2**ad_bits / gain * 1e6,   gain = adapter Gain * channel Gain

    with ``adc_range_v = 5.0`` V by default (the MUedit convention for 16-bit Quattrocento
    data: raw * 5/2**16/gain); OTB's own MATLAB converter uses a 3.3 V supply, pass
    ``adc_range_v=3.3`` to match it.  The scale does not matter to decomposition.

    Only EMG channels are kept (``emg_only``): control (buffer/ramp), quaternion and AUX
    channels are dropped.  Several ``.sig`` files with the same length and rate are stacked
    along channels; otherwise pick one with ``sig`` (index or file name).  The electrode
    code in a channel ID such as ``HD08MM1305`` gives ``ied_mm`` (8) and the grid size
    (13 x 5, in ``meta['otb']``); ``grid_shape``/``channel_map`` are NOT set because the
    electrode numbering of OTB grids is not row-major.
    """
    path = _need_file(path)
    try:
        tf = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise BmissFileError(f"{path}: not a readable OTB+ archive (expected a tar file: {e})") from e
    with tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        sigs = sorted(n for n in members if n.lower().endswith(".sig"))
        xmls = sorted(n for n in members if n.lower().endswith(".xml"))
        if not sigs:
            raise BmissFileError(f"{path}: no .sig data file in the OTB+ archive (members: {sorted(members)})")
        if sig is not None:
            if isinstance(sig, int):
                if not 0 <= sig < len(sigs):
                    raise BmissFileError(f"{path}: sig={sig} but the archive has {len(sigs)} .sig files {sigs}")
                sigs = [sigs[sig]]
            else:
                pick = [n for n in sigs if n == sig or Path(n).name == sig]
                if not pick:
                    raise BmissFileError(f"{path}: no .sig named {sig!r}; have {sigs}")
                sigs = pick

        def parse_xml(name):
            try:
                return ET.fromstring(tf.extractfile(members[name]).read())
            except ET.ParseError as e:
                raise BmissFileError(f"{path}: {name} is not valid XML ({e})") from e

        blocks, meta_sigs = [], []
        for s in sigs:
            stem = s[: -len(".sig")]
            same = [x for x in xmls if x[: -len(".xml")] == stem]
            dev = None
            for x in same + [x for x in xmls if x not in same]:
                root = parse_xml(x)
                if root.tag == "Device" or root.find(".//Device") is not None:
                    dev = _otb_parse_device(root, f"{path}:{x}")
                    break
            if dev is None:
                raise BmissFileError(f"{path}: no XML with a <Device> description for {s} (XML files: {xmls})")
            raw = tf.extractfile(members[s]).read()
            vals = _read_int(raw, dev["bits"])
            n_tot = dev["total"]
            if n_tot <= 0 or len(vals) % n_tot:
                raise BmissFileError(
                    f"{path}: {s} holds {len(vals)} values, not a multiple of DeviceTotalChannels={n_tot}; "
                    "file truncated or XML does not describe it")
            data = vals.reshape(-1, n_tot).T  # [n_total, n_samples]
            keep = [c for c in sorted(dev["chans"]) if c[0] < n_tot and (not emg_only or _otb_is_emg(c[1], c[2]))]
            if not keep:
                continue
            gains = np.array([c[3] for c in keep])
            gains[gains == 0] = 1.0
            uv = data[[c[0] for c in keep]] * (adc_range_v / 2.0 ** dev["bits"] * 1e6) / gains[:, None]
            blocks.append((dev["fs"], uv))
            meta_sigs.append({"sig": s, "device": dev["name"], "ad_bits": dev["bits"],
                              "channels": [c[2] for c in keep], "gains": gains.tolist()})
    if not blocks:
        raise BmissFileError(f"{path}: the OTB+ archive describes no EMG channels")
    fss = {b[0] for b in blocks}
    lens = {b[1].shape[1] for b in blocks}
    if len(fss) > 1 or len(lens) > 1:
        raise BmissFileError(
            f"{path}: {len(blocks)} .sig files with different rates/lengths {sorted(fss)} / {sorted(lens)}; "
            "choose one with sig=<index or name>")
    emg = np.concatenate([b[1] for b in blocks], 0)
    ied, grid = None, None
    codes = sorted({c for m in meta_sigs for c in m["channels"]})
    for c in codes:
        m = _OTB_GRID_RE.search(c)
        if m:
            ied, grid = float(int(m.group(1))), [int(m.group(2)), int(m.group(3))]
            break
    meta = {"source": "otb+", "file": path.name, "adc_range_v": adc_range_v,
            "otb": {"sigs": meta_sigs, "electrode_codes": codes, "grid_rows_cols": grid}}
    try:
        return Recording(emg=emg, fs=blocks[0][0], ied_mm=ied, meta=meta)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {e}") from e


# =============================================================================== .mat
# Columns of an OTBioLab+ export that are not EMG (openhdemg's naming, plus AUX/control).
_MAT_NON_EMG = re.compile(r"source for decomposition|decomposition of|acquired data|performed path|"
                          r"\baux|buffer|ramp|load ?cell|quaternion", re.IGNORECASE)


def _mat_get(m: dict, *names):
    for n in names:
        if n in m:
            return n, m[n]
    return None, None


def load_mat(path, *, to_uv: float = 1000.0, emg_only: bool = True) -> Recording:
    """Read an OTBioLab+ ``.mat`` export (what openhdemg's ``emg_from_otb`` reads).

    Variables: ``Data`` [n_samples, n_columns] (either orientation accepted; with
    ``Description`` the axis whose length matches it is the channel axis, otherwise the
    shorter axis), ``SamplingFrequency`` (Hz; ``fsamp``/``fs`` also accepted) and optional
    ``Description`` (one label per column).  Columns whose label names a decomposition
    output (``Source for decomposition``, ``Decomposition of``), the reference signal
    (``acquired data``, ``performed path``) or an AUX/control channel are dropped when
    ``emg_only``.  OTBioLab+ exports millivolts: values are multiplied by ``to_uv``
    (default 1000) to give µV; pass ``to_uv=1`` for files already in µV.
    """
    path = _need_file(path)
    try:
        from scipy.io import loadmat

        m = loadmat(path, simplify_cells=True)
    except Exception as e:  # noqa: BLE001
        raise BmissFileError(f"{path}: not a readable MATLAB file ({e})") from e
    k, data = _mat_get(m, "Data", "data", "EMG", "emg")
    if data is None:
        have = sorted(x for x in m if not x.startswith("__"))
        raise BmissFileError(f"{path}: no 'Data' variable [n_samples, n_channels] (variables: {have})")
    data = np.asarray(data, np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise BmissFileError(f"{path}: '{k}' must be 2-D, got shape {data.shape}")
    _, fs = _mat_get(m, "SamplingFrequency", "fsamp", "FSAMP", "fs", "Fs")
    if fs is None:
        raise BmissFileError(f"{path}: no 'SamplingFrequency' variable (Hz)")
    fs = float(np.asarray(fs, np.float64).ravel()[0])
    _, desc = _mat_get(m, "Description", "description")
    labels = None
    if desc is not None:
        if isinstance(desc, str):
            labels = [desc]
        else:
            labels = [str(np.asarray(d).ravel()[0]) if not isinstance(d, str) else d
                      for d in np.asarray(desc, dtype=object).ravel()]
        labels = [s.strip() for s in labels]
    # orient to [n_channels, n_samples]
    if labels is not None and len(labels) == data.shape[1] != data.shape[0]:
        emg = data.T
    elif labels is not None and len(labels) == data.shape[0] != data.shape[1]:
        emg = data
    else:
        emg = data.T if data.shape[0] >= data.shape[1] else data
    if labels is not None and len(labels) != emg.shape[0]:
        labels = None
    dropped = []
    if emg_only and labels is not None:
        keep = [i for i, s in enumerate(labels) if not _MAT_NON_EMG.search(s)]
        dropped = [labels[i] for i in range(len(labels)) if i not in set(keep)]
        emg, labels = emg[keep], [labels[i] for i in keep]
        if not keep:
            raise BmissFileError(f"{path}: no EMG channels left after dropping {dropped}")
    meta = {"source": "mat", "file": path.name, "to_uv": to_uv, "channel_labels": labels,
            "dropped_columns": dropped}
    try:
        return Recording(emg=emg * to_uv, fs=fs, meta=meta)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {e}") from e


# =============================================================================== openhdemg
def _num(v) -> str:
    """One JSON number; non-finite -> null (what pandas.to_json writes for NaN)."""
    f = float(v)
    return repr(f) if math.isfinite(f) else "null"


def _split_json(data: np.ndarray, columns: Sequence | None = None, *, integer: bool = False) -> str:
    """pandas ``DataFrame.to_json(orient='split')`` text for a 2-D array, without pandas.

    Floats are written with 9 significant digits (exact round trip of float32), integers
    as integers, NaN/inf as null.  Index is 0..n-1 (a RangeIndex)."""
    data = np.asarray(data)
    if data.ndim == 1:
        data = data[:, None]
    n, c = data.shape
    cols = list(range(c)) if columns is None else list(columns)
    head = '{"columns":' + json.dumps(cols) + ',"index":' + json.dumps(list(range(n))) + ',"data":'
    if n == 0:
        return head + "[]}"
    if integer:
        arr = np.asarray(data, np.int64)
        fmt = "%d"
        finite = True
    else:
        arr = np.asarray(data, np.float64)
        fmt = "%.9g"
        finite = bool(np.isfinite(arr).all())
    if finite:
        buf = _io.StringIO()
        np.savetxt(buf, arr, fmt=fmt, delimiter=",")
        rows = buf.getvalue().splitlines()
    else:
        rows = [",".join(_num(v) for v in row) for row in arr]
    return head + "[" + ",".join("[" + r + "]" for r in rows) + "]}"


def _from_split(obj) -> tuple[list, list, np.ndarray]:
    """Parse pandas 'split' JSON (string or already-decoded dict) -> (columns, index, data)."""
    d = json.loads(obj) if isinstance(obj, str) else obj
    cols, index = list(d.get("columns", [])), list(d.get("index", []))
    rows = d.get("data", [])
    # numpy maps None (JSON null, pandas' NaN) to nan for a float dtype
    data = np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, len(cols)))
    if data.ndim == 1:
        data = data.reshape(len(rows), -1)
    # openhdemg sorts by (int) index and uses int column labels
    try:
        order = np.argsort(np.asarray(index, np.int64), kind="stable")
        data = data[order]
        index = [index[i] for i in order]
    except (TypeError, ValueError):
        pass
    return cols, index, data


def _sort_columns(cols: list, data: np.ndarray) -> tuple[list, np.ndarray]:
    try:
        order = np.argsort(np.asarray([int(c) for c in cols]), kind="stable")
    except (TypeError, ValueError):
        return cols, data
    return [cols[i] for i in order], data[:, order]


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    if x.shape[-1] == n:
        return x
    if x.shape[-1] > n:
        return x[..., :n]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])]
    return np.pad(x, pad)


def save_openhdemg(path, dec: Decomposition | None, rec: Recording, *, ied_mm: float | None = None,
                   force: bool = True, compresslevel: int = 4) -> Path:
    """Write an openhdemg ``emgfile`` (gzip-compressed JSON) that ``openhdemg.library.emg_from_json``
    opens.

    Structure (as openhdemg's ``save_json_emgfile`` writes it): the outer JSON object maps
    each key to a JSON *string*: scalars and ``MUPULSES`` (list of lists of 0-based sample
    indices) are ``json.dumps``-ed, DataFrames are pandas ``to_json(orient='split')`` text:

    ===================  ======================================================================
    SOURCE               ``"CUSTOMCSV"`` (a source openhdemg's JSON loader accepts)
    FILENAME             file name of ``path``
    RAW_SIGNAL           DataFrame [samples x channels], µV (``rec.emg.T``)
    REF_SIGNAL           DataFrame [samples x 1]: ``rec.excitation * 100`` (% of max, as
                         openhdemg expects % MVC) or zeros
    ACCURACY             DataFrame [MUs x 1]: SIL per MU (``dec.sil``, else computed)
    IPTS                 DataFrame [samples x MUs]: ``dec.sources.T`` (trimmed/zero-padded
                         to the EMG length)
    MUPULSES             list of int lists (spikes outside the EMG dropped)
    FSAMP, IED           float (IED: ``ied_mm`` or ``rec.ied_mm``; NaN when unknown)
    EMG_LENGTH           int, samples;  NUMBER_OF_MUS int
    BINARY_MUS_FIRING    DataFrame [samples x MUs] of 0/1
    EXTRAS               empty DataFrame (one column ``0``)
    ===================  ======================================================================

    ``dec=None`` writes the EMG with zero MUs.  Written atomically; pandas is not needed.
    """
    path = Path(path)
    n = rec.n_samples
    ied = ied_mm if ied_mm is not None else rec.ied_mm
    ied = float("nan") if ied is None else float(ied)
    if dec is not None and abs(float(dec.fs) - float(rec.fs)) > 1e-6 * rec.fs:
        raise ValueError(f"decomposition fs={dec.fs} differs from recording fs={rec.fs}")
    spikes = [] if dec is None else [np.unique(np.asarray(s, np.int64)) for s in dec.spikes]
    spikes = [s[(s >= 0) & (s < n)] for s in spikes]
    n_mu = len(spikes)
    if n_mu and dec.sources is not None and np.asarray(dec.sources).size:
        src = _fit_length(np.asarray(dec.sources, np.float64).reshape(n_mu, -1), n)
    else:
        src = np.zeros((n_mu, n))
    if dec is not None and dec.sil is not None and len(dec.sil) == n_mu:
        acc = np.asarray(dec.sil, np.float64)
    else:
        from .metrics import sil as _sil

        acc = np.array([_sil(src[j], spikes[j]) for j in range(n_mu)], np.float64)
    binary = np.zeros((n, n_mu), np.int8)
    for j, s in enumerate(spikes):
        binary[s, j] = 1
    ref = (np.zeros(n) if rec.excitation is None
           else _fit_length(np.asarray(rec.excitation, np.float64).ravel(), n) * 100.0)
    empty = '{"columns":[0],"index":[],"data":[]}'
    emgfile = {
        "SOURCE": json.dumps("CUSTOMCSV"),
        "FILENAME": json.dumps(path.name),
        "RAW_SIGNAL": _split_json(rec.emg.T),
        "REF_SIGNAL": _split_json(ref[:, None]),
        "ACCURACY": _split_json(acc[:, None]) if n_mu else empty,
        "IPTS": _split_json(src.T) if n_mu else empty,
        "MUPULSES": json.dumps([s.tolist() for s in spikes]),
        "FSAMP": json.dumps(float(rec.fs)),
        "IED": json.dumps(ied),  # NaN -> 'NaN' inside the string (Python/openhdemg read it)
        "EMG_LENGTH": json.dumps(int(n)),
        "NUMBER_OF_MUS": json.dumps(int(n_mu)),
        "BINARY_MUS_FIRING": _split_json(binary, integer=True) if n_mu else empty,
        "EXTRAS": empty,
    }

    def w(tmp):
        with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=compresslevel) as f:
            json.dump(emgfile, f)

    return atomic_write(path, w, force=force)


def _read_openhdemg_dict(path: Path) -> dict:
    raw = path.read_bytes()
    try:
        text = gzip.decompress(raw).decode("utf-8") if raw[:2] == b"\x1f\x8b" else raw.decode("utf-8")
        d = json.loads(text)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BmissFileError(f"{path}: not an openhdemg JSON file (gzip-compressed JSON expected: {e})") from e
    if not isinstance(d, dict) or "SOURCE" not in d:
        raise BmissFileError(f"{path}: not an openhdemg emgfile (no 'SOURCE' key)")
    return d


def _scalar(v):
    if isinstance(v, str):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def load_openhdemg(path) -> Recording:
    """Read an openhdemg JSON emgfile: RAW_SIGNAL -> ``emg`` [channels, samples] (values as
    stored; files written by bmiss are µV), FSAMP -> ``fs``, IED -> ``ied_mm`` (None if
    NaN), REF_SIGNAL (% MVC) / 100 -> ``excitation`` when present.  The decomposition in the
    file is in ``meta['openhdemg']`` (source, filename, n_mus); read it with
    :func:`load_openhdemg_decomposition`."""
    path = _need_file(path)
    d = _read_openhdemg_dict(path)
    if "RAW_SIGNAL" not in d:
        src = _scalar(d["SOURCE"])
        raise BmissFileError(f"{path}: openhdemg file of SOURCE {src!r} has no RAW_SIGNAL "
                             "(a reference-signal-only file?)")
    try:
        cols, _, raw = _from_split(d["RAW_SIGNAL"])
        cols, raw = _sort_columns(cols, raw)
        fs = float(_scalar(d["FSAMP"]))
        ied = _scalar(d.get("IED"))
        ied = float(ied) if ied is not None else None
        if ied is not None and not math.isfinite(ied):
            ied = None
        exc = None
        if "REF_SIGNAL" in d:
            _, _, ref = _from_split(d["REF_SIGNAL"])
            if ref.shape[0] == raw.shape[0] and ref.shape[1] >= 1 and np.isfinite(ref[:, 0]).all():
                exc = ref[:, 0] / 100.0
    except (KeyError, TypeError, ValueError) as e:
        raise BmissFileError(f"{path}: malformed openhdemg emgfile ({e})") from e
    meta = {"source": "openhdemg", "file": path.name,
            "openhdemg": {"source": _scalar(d["SOURCE"]), "filename": _scalar(d.get("FILENAME")),
                          "n_mus": _scalar(d.get("NUMBER_OF_MUS"))}}
    try:
        return Recording(emg=raw.T, fs=fs, ied_mm=ied, excitation=exc, meta=meta)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {e}") from e


def load_openhdemg_decomposition(path) -> Decomposition:
    """The MUs of an openhdemg emgfile as a :class:`Decomposition` (method ``"openhdemg:<SOURCE>"``):
    MUPULSES -> spikes, IPTS -> sources, ACCURACY -> sil."""
    path = _need_file(path)
    d = _read_openhdemg_dict(path)
    try:
        fs = float(_scalar(d["FSAMP"]))
        pulses = _scalar(d.get("MUPULSES", "[]")) or []
        spikes = [np.asarray(p, np.int64).ravel() for p in pulses]
        n_mu = len(spikes)
        n = int(_scalar(d.get("EMG_LENGTH", 0)) or 0)
        sources = np.zeros((n_mu, n), np.float32)
        if "IPTS" in d and n_mu:
            cols, _, ipts = _from_split(d["IPTS"])
            cols, ipts = _sort_columns(cols, ipts)
            if ipts.shape[1] == n_mu:
                sources = ipts.T.astype(np.float32)
        sil = None
        if "ACCURACY" in d and n_mu:
            _, _, acc = _from_split(d["ACCURACY"])
            if acc.shape[0] == n_mu and acc.shape[1] >= 1:
                sil = acc[:, 0].astype(np.float32)
    except (KeyError, TypeError, ValueError) as e:
        raise BmissFileError(f"{path}: malformed openhdemg emgfile ({e})") from e
    return Decomposition(spikes=spikes, sources=sources, fs=fs, method=f"openhdemg:{_scalar(d['SOURCE'])}",
                         sil=sil, meta={"file": path.name})


# =============================================================================== tables
def save_events_tsv(path, dec: Decomposition, *, force: bool = True) -> Path:
    """EMG-BIDS-style ``*_events.tsv``: one row per discharge, sorted by time then unit.

    Columns: ``onset`` (s, 6 decimals), ``duration`` (0), ``unit`` (int, row of ``dec``),
    ``sample`` (0-based sample index)."""
    rows = []
    for u, s in enumerate(dec.spikes):
        for k in np.asarray(s, np.int64).ravel():
            rows.append((int(k), u))
    rows.sort()

    def w(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write("onset\tduration\tunit\tsample\n")
            for k, u in rows:
                f.write(f"{k / dec.fs:.6f}\t0\t{u}\t{k}\n")

    return atomic_write(path, w, force=force)


def _csv_val(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    return f"{f:.6g}" if math.isfinite(f) else "n/a"


def save_summary_csv(path, dec: Decomposition, quality: Sequence[dict] | None = None, *,
                     force: bool = True) -> Path:
    """One row per MU: ``unit, n_spikes, rate_hz, cov_isi, sil, pnr_db`` and, when ``dec.params``
    exists, each fitted parameter (physical units) followed by ``<name>_std`` when
    ``dec.param_std`` exists.  ``quality`` (list of :func:`bmiss.metrics.unit_quality` dicts)
    is computed from ``dec`` when not given (values stored in ``dec.sil``/``pnr_db``/
    ``cov_isi`` take precedence).  Missing values are ``n/a``."""
    from . import metrics

    n_mu = dec.n_units
    if quality is None:
        quality = []
        src = None if dec.sources is None else np.asarray(dec.sources)
        for j in range(n_mu):
            if src is not None and src.ndim == 2 and j < src.shape[0]:
                q = metrics.unit_quality(src[j], dec.spikes[j], dec.fs)
            else:
                q = {"n_spikes": len(dec.spikes[j]), "rate_hz": metrics.discharge_rate(dec.spikes[j], dec.fs),
                     "cov_isi": metrics.cov_isi(dec.spikes[j]), "sil": None, "pnr_db": None}
            for key in ("sil", "pnr_db", "cov_isi"):
                v = getattr(dec, key)
                if v is not None and j < len(v) and np.isfinite(v[j]):
                    q[key] = float(v[j])
            quality.append(q)
    if len(quality) != n_mu:
        raise ValueError(f"quality has {len(quality)} rows for {n_mu} units")
    header = ["unit", "n_spikes", "rate_hz", "cov_isi", "sil", "pnr_db"]
    names: list[str] = []
    P = S = None
    if dec.params is not None:
        P = np.asarray(dec.params, np.float64).reshape(n_mu, -1)
        names = list(dec.param_names) if dec.param_names is not None else [f"p{k}" for k in range(P.shape[1])]
        if dec.param_std is not None:
            S = np.asarray(dec.param_std, np.float64).reshape(n_mu, -1)
        for nm in names:
            header += [nm] + ([f"{nm}_std"] if S is not None else [])

    def w(tmp):
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            wr = csv.writer(f)
            wr.writerow(header)
            for j in range(n_mu):
                q = quality[j]
                row: list[Any] = [str(j)] + [_csv_val(q.get(k)) for k in header[1:6]]
                for k in range(len(names)):
                    row.append(_csv_val(P[j, k]))
                    if S is not None:
                        row.append(_csv_val(S[j, k]))
                wr.writerow(row)

    return atomic_write(path, w, force=force)
