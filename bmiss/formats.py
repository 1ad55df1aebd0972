"""Other file formats: OTB+ (.otb+), OTBioLab+ .mat exports, openhdemg JSON, BIDS-style events
and a per-unit summary CSV.

Readers return :class:`bmiss.io.Recording` (EMG in µV, ``[n_channels, n_samples]``) and fill in
the electrode layout (grid code, orientation, IED, channel map) where the file names its grid.
:func:`bmiss.io.load_recording` picks the reader by suffix from its registry
(``bmiss.io.READERS``); this module imports :mod:`bmiss.io`, never the reverse, and none of the
writers computes quality metrics: they write the values they are given.

Supported inputs
----------------
=================  ===========================================================================
``.npz``           bmiss recording (:func:`bmiss.io.load_recording_npz`)
``.otb+``          OT Bioelettronica OTB+ archive (tar: XML description + int16/24 ``.sig``)
``.mat``           OTBioLab+ MATLAB export (``Data``, ``SamplingFrequency``, ``Description``),
                   also a bare ``emg``/``data`` matrix (then pass ``fs``)
``.json``          openhdemg emgfile (gzip-compressed JSON, also plain JSON), also ``.json.gz``
=================  ===========================================================================

Every reader error is a one-line :class:`bmiss.io.BmissFileError` naming the file.
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
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import electrodes as E
from .io import (BmissFileError, Decomposition, Recording, _need_file, atomic_write, load_recording, one_line,
                 scalar_fs, warn)

__all__ = [
    "SUPPORTED_SUFFIXES",
    "load_any",
    "load_otbplus",
    "load_otb4",
    "load_mat",
    "save_openhdemg",
    "save_openhdemg_recording",
    "load_openhdemg",
    "load_openhdemg_decomposition",
    "save_events_tsv",
    "save_summary_csv",
    "save_muedit",
]

SUPPORTED_SUFFIXES = (".npz", ".otb+", ".mat", ".json", ".json.gz")


def load_any(path, **kw) -> Recording:
    """Read a recording of any supported type (same as :func:`bmiss.io.load_recording`)."""
    return load_recording(path, **kw)


def _layout_for(code: str | None, n_emg: int, orientation, where: str) -> E.Layout | None:
    """The named grid's layout when it fits the EMG channel count, else None (with a warning)."""
    if code is None:
        return None
    lay = E.load_layout(code, orientation)
    if lay.n_channels != n_emg:
        warn(f"{where}: names grid {code} ({lay.n_channels} channels) but holds {n_emg} EMG channels; channel "
             "positions left unknown (pass --electrode CODE or --grid ROWSxCOLS --ied MM)")
        return None
    return lay


# =============================================================================== OTB+
# Channels that carry no EMG (OTB control/IMU/auxiliary channels).
_OTB_NON_EMG_ADAPTERS = ("adaptercontrol", "adapterquaternions")
_OTB_NON_EMG_CHANNELS = ("quaternion", "bufferchannel", "rampchannel", "loadcellchannel")
_OTB_GRID_RE = re.compile(r"(\d+)MM(\d{2})(\d{2})", re.IGNORECASE)
MAX_MEMBER_BYTES = 1 << 31  # 2 GiB: larger .sig members are refused (pass max_member_bytes)
MAX_XML_BYTES = 16 << 20
MAX_EXPANSION = 200.0  # real int16 EMG compresses ~2-4x; far more is a decompression bomb


def _otb_is_emg(adapter_id: str, ch_id: str) -> bool:
    a, c = adapter_id.lower(), ch_id.lower()
    if a in _OTB_NON_EMG_ADAPTERS or "aux" in a:
        return False
    if c in _OTB_NON_EMG_CHANNELS or c.startswith("aux"):
        return False
    return True


def _read_int(raw: bytes, bits: int, n_tot: int, rows: list[int], where: str) -> np.ndarray:
    """Interleaved little-endian integers -> float32 [len(rows), n_samples] of the chosen channels."""
    width = {16: 2, 24: 3, 32: 4}.get(bits)
    if width is None:
        raise BmissFileError(f"{where}: ad_bits={bits} is not supported (16, 24 or 32)")
    if n_tot <= 0 or len(raw) % (width * n_tot):
        raise BmissFileError(
            f"{where}: {len(raw)} bytes are not a whole number of {n_tot}-channel {bits}-bit samples; "
            "file truncated or the XML does not describe it")
    if bits == 24:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, n_tot, 3)[:, rows].astype(np.int32)
        v = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        return v.T.astype(np.float32)
    dt = "<i2" if bits == 16 else "<i4"
    return np.frombuffer(raw, dtype=dt).reshape(-1, n_tot)[:, rows].T.astype(np.float32)


def _otb_parse_device(root: ET.Element, where: str) -> dict:
    dev = root if root.tag == "Device" else root.find(".//Device")
    if dev is None:
        raise BmissFileError(f"{where}: no <Device> element")
    try:
        fs = scalar_fs(float(dev.attrib["SampleFrequency"]), where)
    except (KeyError, ValueError) as e:
        raise BmissFileError(f"{where}: <Device> has no valid SampleFrequency") from e
    try:
        bits = int(float(dev.attrib.get("ad_bits", dev.attrib.get("AdBits", 16))))
        chans = []  # (position, adapter id, channel id, gain, index in adapter, adapter number, id text)
        for k, ad in enumerate(dev.iter("Adapter")):
            a_id = ad.attrib.get("ID", "")
            a_gain = float(ad.attrib.get("Gain", 1.0))
            start = int(float(ad.attrib.get("ChannelStartIndex", 0)))
            for ch in ad.iter("Channel"):
                c_gain = float(ch.attrib.get("Gain", 1.0))
                idx = int(float(ch.attrib.get("Index", 0)))
                # the grid code is usually the channel ID; some exports put it in Description/Prefix
                text = " ".join(ch.attrib.get(x, "") for x in ("ID", "Description", "Prefix"))
                chans.append((start + idx, a_id, ch.attrib.get("ID", ""), a_gain * c_gain, idx, k, text))
        total = int(float(dev.attrib.get("DeviceTotalChannels", 0))) or (max(c[0] for c in chans) + 1 if chans else 0)
    except (TypeError, ValueError) as e:
        raise BmissFileError(f"{where}: malformed <Device>/<Adapter>/<Channel> attributes ({one_line(e)})") from None
    return {"fs": fs, "bits": bits, "total": total, "chans": chans, "name": dev.attrib.get("Name", "")}


def load_otbplus(path, *, adc_range_v: float = 5.0, sig: int | str | None = None, emg_only: bool = True,
                 orientation: int | None = None, max_member_bytes: int = MAX_MEMBER_BYTES) -> Recording:
    """Read an OT Bioelettronica ``.otb+`` archive.

    Layout (found by suffix, names are free): a tar (possibly gzip-compressed) with one or more
    ``<name>.sig`` files of interleaved little-endian signed integers (channels fastest,
    ``ad_bits`` 16, also 24/32) and, for each, an XML description (``<name>.xml``, else any XML
    with a ``<Device>``)::

        <Device Name=.. SampleFrequency="2048" DeviceTotalChannels=".." ad_bits="16">
          <Channels>
            <Adapter ID=".." Gain="150" ChannelStartIndex="0" ..>
              <Channel ID="GR08MM1305" Index="0" Gain="1" .. />

    Channel ``k`` of the ``.sig`` is the channel with ``ChannelStartIndex + Index == k``.

    Conversion to µV (documented choice)::

        uV = raw * adc_range_v / 2**ad_bits / gain * 1e6,   gain = adapter Gain * channel Gain

    with ``adc_range_v = 5.0`` V by default (the MUedit convention for 16-bit Quattrocento
    data: raw * 5/2**16/gain); OTB's own MATLAB converter uses a 3.3 V supply, pass
    ``adc_range_v=3.3`` to match it.  The scale does not matter to decomposition.

    Only EMG channels are kept (``emg_only``): control (buffer/ramp), quaternion and AUX
    channels are dropped.  Several ``.sig`` files with the same length and rate are stacked
    along channels; otherwise pick one with ``sig`` (index or file name).

    Geometry: a channel ID naming a known grid (``GR08MM1305``...) gives the layout.  The EMG
    channel with ``Index = i`` in its adapter is the grid's channel ``i + 1``, placed by the
    grid's pinout at ``orientation`` (default 180, connector towards the researcher): the
    recording's ``channel_map`` follows.  An unknown grid code gives ``ied_mm`` only.

    Safety: members larger than ``max_member_bytes`` (default 2 GiB), or expanding more than
    200x over the archive size (a gzip bomb), are refused before they are read; a truncated
    archive gives a clear error.
    """
    path = _need_file(path)
    arch_size = max(path.stat().st_size, 1)
    try:
        with tarfile.open(path, "r:*") as tf:
            return _load_otbplus_tar(tf, path, arch_size, adc_range_v, sig, emg_only, orientation, max_member_bytes)
    except BmissFileError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BmissFileError(f"{path}: not a readable OTB+ archive (expected a tar file; truncated or corrupt? "
                             f"{type(e).__name__}: {one_line(e)})") from None


def _load_otbplus_tar(tf, path, arch_size, adc_range_v, sig, emg_only, orientation, max_member_bytes) -> Recording:
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
    total = sum(members[n].size for n in sigs + xmls)
    for n in sigs + xmls:
        cap = max_member_bytes if n in sigs else MAX_XML_BYTES
        if members[n].size > cap:
            raise BmissFileError(f"{path}: member {n} declares {members[n].size} bytes, over the {cap}-byte limit "
                                 "(pass max_member_bytes=... if it is genuine)")
    if total > MAX_EXPANSION * arch_size and total > (64 << 20):
        raise BmissFileError(f"{path}: the archive ({arch_size} bytes) expands to {total} bytes: refusing a likely "
                             "decompression bomb")

    def read(name: str) -> bytes:
        f = tf.extractfile(members[name])
        data = f.read(members[name].size + 1) if f is not None else b""
        if len(data) != members[name].size:
            raise BmissFileError(f"{path}: member {name} is truncated ({len(data)} of {members[name].size} bytes)")
        return data

    def parse_xml(name):
        try:
            return ET.fromstring(read(name))
        except ET.ParseError as e:
            raise BmissFileError(f"{path}: {name} is not valid XML ({one_line(e)})") from None

    blocks, meta_sigs, grid_chans = [], [], []
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
        n_tot = dev["total"]
        keep = [c for c in sorted(dev["chans"]) if c[0] < n_tot and (not emg_only or _otb_is_emg(c[1], c[2]))]
        if not keep:
            continue
        data = _read_int(read(s), dev["bits"], n_tot, [c[0] for c in keep], f"{path}:{s}")
        gains = np.array([c[3] for c in keep], np.float64)
        gains[gains == 0] = 1.0
        uv = data * (adc_range_v / 2.0 ** dev["bits"] * 1e6 / gains[:, None]).astype(np.float32)
        blocks.append((dev["fs"], uv))
        meta_sigs.append({"sig": s, "device": dev["name"], "ad_bits": dev["bits"],
                          "channels": [c[2] for c in keep], "gains": gains.tolist()})
        grid_chans += [(c[6], c[4], (s, c[5])) for c in keep]
    if not blocks:
        raise BmissFileError(f"{path}: the OTB+ archive describes no EMG channels")
    fss = {b[0] for b in blocks}
    lens = {b[1].shape[1] for b in blocks}
    if len(fss) > 1 or len(lens) > 1:
        raise BmissFileError(
            f"{path}: {len(blocks)} .sig files with different rates/lengths {sorted(fss)} / {sorted(lens)}; "
            "choose one with sig=<index or name>")
    emg = np.concatenate([b[1] for b in blocks], 0)
    codes = sorted({c for m in meta_sigs for c in m["channels"]})
    ied, grid = None, None
    for c in codes:
        m = _OTB_GRID_RE.search(c)
        if m:
            ied, grid = float(int(m.group(1))), [int(m.group(2)), int(m.group(3))]
            break
    known = sorted({E.find_code(c) for c, _, _ in grid_chans} - {None})
    adapters = {a for _, _, a in grid_chans}
    geo: dict[str, Any] = {}
    if len(known) == 1 and len(adapters) == 1:
        lay = _layout_for(known[0], emg.shape[0], orientation, str(path))
        idx = [i for _, i, _ in grid_chans]
        if lay is not None and sorted(idx) == list(range(lay.n_channels)):
            geo = dict(electrode=lay.code, orientation=lay.orientation, ied_mm=lay.ied_mm,
                       grid_shape=lay.grid_shape, channel_map=lay.channel_map[idx])
        elif lay is not None:
            warn(f"{path}: channel Index values of grid {known[0]} are not 0..{lay.n_channels - 1}; channel "
                 "positions left unknown (pass --electrode)")
    elif len(known) > 1 or len(adapters) > 1:
        warn(f"{path}: {len(adapters)} grids ({', '.join(known) or 'unknown codes'}): channel positions left "
             "unknown; bmiss's model needs one grid")
    meta = {"source": "otb+", "file": path.name, "adc_range_v": adc_range_v, "units": "uV",
            "otb": {"sigs": meta_sigs, "electrode_codes": codes, "grid_rows_cols": grid}}
    try:
        return Recording(emg=emg, fs=blocks[0][0], ied_mm=geo.pop("ied_mm", ied), meta=meta, **geo)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {one_line(e)}") from None


# =============================================================================== OTB4
def _xml_text(el, tag: str, default=None):
    c = el.find(tag)
    return c.text.strip() if c is not None and c.text is not None else default


def load_otb4(path, *, orientation: int | None = None, max_member_bytes: int = MAX_MEMBER_BYTES) -> Recording:
    """Read an OT BioLab 4 ``.otb4`` archive (layout as OT Bioelettronica's MATLAB reader
    ``OpenOTB4`` and the Python readers derived from it read it; not checked against a real file).

    A tar holding ``Tracks_000.xml`` (``<ArrayOfTrackInfo>`` with one ``<TrackInfo>`` per track)
    and the ``.sig`` data files.  Per track: ``SignalStreamPath`` (its ``.sig``),
    ``TotalChannelsInFile``, ``AcquisitionChannel`` (0-based first channel in that file),
    ``NumberOfChannels``, ``SampleSize`` (bytes per sample: 4 -> int32, else int16; 4 when
    absent), ``SamplingFrequency``, ``Gain``, ``ADC_Nbits``, ``ADC_Range``, ``IsControl``,
    ``Title``/``Description/Name`` and ``Description/SensorType`` (names the grid, e.g.
    ``GR08MM1305``).  A ``.sig`` holds little-endian samples interleaved over its
    ``TotalChannelsInFile`` channels.  EMG tracks (not control, not quaternion, ``ADC_Nbits`` >
    0) are scaled ``raw * ADC_Range / 2**ADC_Nbits / Gain`` (V) and returned in µV; other tracks
    are dropped.  One grid code over all EMG channels sets the layout at ``orientation``
    (default 180), track channel *i* being the grid's channel *i* + 1.
    """
    path = _need_file(path)
    arch_size = max(path.stat().st_size, 1)
    try:
        with tarfile.open(path, "r:*") as tf:
            members = {m.name: m for m in tf.getmembers() if m.isfile()}
            by_base = {Path(n).name: n for n in members}
            if "Tracks_000.xml" not in by_base:
                raise BmissFileError(f"{path}: no Tracks_000.xml in the OTB4 archive (members: "
                                     f"{sorted(by_base)[:8]})")
            total = sum(m.size for m in members.values())
            if total > MAX_EXPANSION * arch_size and total > (64 << 20):
                raise BmissFileError(f"{path}: the archive ({arch_size} bytes) expands to {total} bytes: refusing a "
                                     "likely decompression bomb")

            def read(base: str, cap: int) -> bytes:
                m = members[by_base[base]]
                if m.size > cap:
                    raise BmissFileError(f"{path}: member {base} declares {m.size} bytes, over the {cap}-byte limit")
                f = tf.extractfile(m)
                data = f.read(m.size + 1) if f is not None else b""
                if len(data) != m.size:
                    raise BmissFileError(f"{path}: member {base} is truncated ({len(data)} of {m.size} bytes)")
                return data

            try:
                root = ET.fromstring(read("Tracks_000.xml", MAX_XML_BYTES))
            except ET.ParseError as e:
                raise BmissFileError(f"{path}: Tracks_000.xml is not valid XML ({one_line(e)})") from None
            tracks = list(root.iter("TrackInfo"))
            if not tracks:
                raise BmissFileError(f"{path}: Tracks_000.xml lists no <TrackInfo>")
            blocks, fss, codes, sig_cache = [], set(), [], {}
            for k, t in enumerate(tracks):
                where = f"{path}: Tracks_000.xml TrackInfo {k + 1}"
                try:
                    nbits = int(float(_xml_text(t, "ADC_Nbits", "0")))
                    title = _xml_text(t, "Title") or _xml_text(t.find("Description") if t.find("Description")
                                                               is not None else t, "Name", "") or ""
                    control = (_xml_text(t, "IsControl", "false") or "").lower() == "true"
                    if control or "quaternion" in title.lower() or nbits <= 0:
                        continue
                    sig = Path(_xml_text(t, "SignalStreamPath", "") or "").name
                    tot = int(float(_xml_text(t, "TotalChannelsInFile", "0")))
                    start = int(float(_xml_text(t, "AcquisitionChannel", "0")))
                    nch = int(float(_xml_text(t, "NumberOfChannels", "0")))
                    size = int(float(_xml_text(t, "SampleSize", "4")))
                    fs = scalar_fs(float(_xml_text(t, "SamplingFrequency", "nan")), where)
                    gain = float(_xml_text(t, "Gain", "1"))
                    rng_v = float(_xml_text(t, "ADC_Range", "nan"))
                except (TypeError, ValueError, OverflowError):
                    raise BmissFileError(f"{where}: a field is not a number (ADC_Nbits, TotalChannelsInFile, "
                                         "AcquisitionChannel, NumberOfChannels, SampleSize, SamplingFrequency, Gain, "
                                         "ADC_Range)") from None
                if sig not in by_base:
                    raise BmissFileError(f"{where}: SignalStreamPath {sig!r} is not in the archive")
                if not (0 < tot <= 4096 and 0 <= start and 0 < nch and start + nch <= tot):
                    raise BmissFileError(f"{where}: channels {start}..{start + nch - 1} do not fit the file's "
                                         f"{tot} channels")
                if not (math.isfinite(gain) and gain > 0 and math.isfinite(rng_v) and rng_v > 0 and nbits <= 32):
                    raise BmissFileError(f"{where}: Gain {gain}, ADC_Range {rng_v} V and ADC_Nbits {nbits} must be "
                                         "positive numbers (ADC_Nbits <= 32)")
                key = (sig, tot, size)
                if key not in sig_cache:
                    raw = read(sig, max_member_bytes)
                    bits = 32 if size == 4 else 16
                    sig_cache[key] = (raw, bits)
                raw, bits = sig_cache[key]
                data = _read_int(raw, bits, tot, list(range(start, start + nch)), f"{path}:{sig}")
                blocks.append(data * np.float32(rng_v / 2.0 ** nbits / gain * 1e6))
                fss.add(fs)
                desc = t.find("Description")
                sensor = " ".join(x for x in (_xml_text(desc, "SensorType", "") if desc is not None else "",
                                              _xml_text(t.find("StringsDescriptions"), "OriginalSensor", "")
                                              if t.find("StringsDescriptions") is not None else "", title) if x)
                codes.append((E.find_code(sensor), nch))
    except BmissFileError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BmissFileError(f"{path}: not a readable OTB4 archive (expected a tar file; truncated or corrupt? "
                             f"{type(e).__name__}: {one_line(e)})") from None
    if not blocks:
        raise BmissFileError(f"{path}: the OTB4 archive has no EMG track")
    if len(fss) > 1:
        raise BmissFileError(f"{path}: EMG tracks at different rates {sorted(fss)} Hz; bmiss needs one rate")
    n = min(b.shape[1] for b in blocks)
    emg = np.concatenate([b[:, :n] for b in blocks], 0)
    known = {c for c, _ in codes}
    geo: dict[str, Any] = {}
    if len(known) == 1 and None not in known and len(codes) == 1:
        lay = _layout_for(codes[0][0], emg.shape[0], orientation, str(path))
        if lay is not None:
            geo = dict(electrode=lay.code, orientation=lay.orientation, ied_mm=lay.ied_mm,
                       grid_shape=lay.grid_shape, channel_map=lay.channel_map)
    elif len(codes) > 1:
        warn(f"{path}: {len(codes)} EMG tracks ({', '.join(str(c) for c, _ in codes)}): channel positions left "
             "unknown; bmiss's model needs one grid")
    meta = {"source": "otb4", "file": path.name, "units": "uV", "otb4": {"grids": [c for c, _ in codes]}}
    try:
        return Recording(emg=emg, fs=fss.pop(), meta=meta, **geo)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {one_line(e)}") from None


# =============================================================================== .mat
_UNIT_RE = re.compile(r"\[\s*([^\[\]]*?)\s*\]\s*$")
_VOLT_TO_UV = {"uv": 1.0, "µv": 1.0, "μv": 1.0, "mv": 1e3, "v": 1e6}
_AUX_WORDS = ("aux", "force", "torque", "load cell", "loadcell", "trigger", "acceleration", "buffer", "ramp",
              "quaternion")


def _mat_label(label: str) -> dict:
    """Classify one OTBioLab+ column label by its own fields, wherever they sit in the label.

    ``[prefix - ]Muscle - INPUT (Channel a->b) - SENSOR (n)[unit]``: the unit is the trailing
    ``[...]``; the SENSOR field (last ``" - "`` field) tells EMG (a grid code such as
    ``GR08MM1305``) from auxiliary channels (``AUX ...``, force, torque ...).  The INPUT field
    may read ``AUX 3`` on EMG channels (the amplifier input's name) and is not used to classify.
    Phrases found anywhere in the label mark non-channel columns, whatever prefix OTBioLab+
    numbers them with (``"1 - 4 - Decomposition of ..."``, ``"4 - Source for decomposition of
    ..."``): ``Source for decomposition`` (a unit's pulse train: kind ``"source"``),
    ``Decomposition of`` (a unit's binary discharge train: ``"decomposition"``),
    ``acquired data`` (the force/reference signal: ``"ref"``), ``performed path`` (the target:
    ``"path"``).  A channel whose unit is neither a voltage nor absent is ``"aux"`` when its
    sensor names a force/torque/AUX input and ``"other"`` (set aside) otherwise.
    """
    s = str(label).strip()
    m = _UNIT_RE.search(s)
    unit = m.group(1) if m else None
    body = (s[: m.start()] if m else s).strip()
    low = " ".join(body.lower().split())
    sensor = body.split(" - ")[-1].strip()
    code = E.find_code(sensor) or E.find_code(body)
    volt = unit is None or unit.replace(" ", "").lower() in _VOLT_TO_UV
    if "source for decomposition" in low:
        kind = "source"
    elif "decomposition of" in low:
        kind = "decomposition"
    elif "acquired data" in low:
        kind = "ref"
    elif any(w in low for w in ("performed path", "reference path", "target path")):
        kind = "path"
    elif code is not None:
        kind = "emg" if volt else "other"
    elif sensor.lower().startswith(_AUX_WORDS) or any(w in sensor.lower() for w in _AUX_WORDS[1:]):
        kind = "aux"
    elif volt:
        kind = "emg"
    else:
        kind = "other"  # a non-voltage unit ([N], [a.u]) on a column that names no AUX input
    return {"label": s, "kind": kind, "unit": unit, "code": code, "sensor": sensor}


def _name_columns(labels: Sequence[str], k: int = 3) -> str:
    """'a', 'b', 'c' and N more -- for one-line warnings that name set-aside columns."""
    shown = ", ".join(repr(x) for x in labels[:k])
    return shown + (f" and {len(labels) - k} more" if len(labels) > k else "")


def _mat_get(m: dict, *names):
    for n in names:
        if n in m:
            return n, m[n]
    return None, None


def _to_uv_factor(unit: str, where: str) -> float:
    u = str(unit).replace(" ", "").lower()
    if u not in _VOLT_TO_UV:
        raise BmissFileError(f"{where}: unknown EMG unit {unit!r}; use uV, mV or V")
    return _VOLT_TO_UV[u]


# MATLAB v5 element types (the MAT-file format's documented miINT8..miUTF32); scipy's compiled
# reader indexes a table with the type code unchecked, so a damaged file with another code
# crashes the interpreter (segfault) instead of raising: every v5 file is walked first.
_MI_VALID = {1, 2, 3, 4, 5, 6, 7, 9, 12, 13, 14, 15, 16, 17, 18}
MAX_MAT_BYTES = 4 << 30  # decompressed size limit of one .mat file


def _check_mat5(raw: bytes, where: str, budget: list[int], depth: int = 0, base: int = 0,
                pieces: list | None = None) -> None:
    """Walk the tagged data elements of a MATLAB v5 stream; refuse unknown type codes, sizes past
    the end and decompression bombs before scipy reads the file.  ``pieces`` (top level only)
    collects the checked variables, compressed ones decompressed, for scipy to read."""
    import struct

    if depth > 64:
        raise BmissFileError(f"{where}: MATLAB data nested more than 64 levels deep; the file is corrupt")
    i, n = 0, len(raw)
    end = "<" if budget[1] == "<" else ">"
    while i < n:
        if n - i < 8:
            if raw[i:].strip(b"\x00"):
                raise BmissFileError(f"{where}: truncated MATLAB data element at byte {i}")
            return
        a, b = struct.unpack(end + "II", raw[i:i + 8])
        if a >> 16:  # small data element: type in the low, size in the high 16 bits, data in 4 bytes
            mdtype, nbytes = a & 0xFFFF, a >> 16
            if mdtype not in _MI_VALID or nbytes > 4:
                raise BmissFileError(f"{where}: corrupt MATLAB data element (type {mdtype}, {nbytes} bytes) at "
                                     f"byte {i}")
            i += 8
            continue
        mdtype, nbytes = a, b
        if mdtype not in _MI_VALID:
            raise BmissFileError(f"{where}: corrupt MATLAB data element (unknown type code {mdtype}) at byte {i}")
        if nbytes > n - i - 8:
            raise BmissFileError(f"{where}: truncated MATLAB file (an element at byte {i} declares {nbytes} bytes, "
                                 f"{n - i - 8} remain)")
        body = raw[i + 8:i + 8 + nbytes]
        if mdtype == 15:  # miCOMPRESSED: zlib stream of one element
            d = zlib.decompressobj()
            try:
                inner = d.decompress(body, budget[0] + 1)
            except zlib.error as e:
                raise BmissFileError(f"{where}: corrupt compressed MATLAB variable at byte {i} ({e})") from None
            if len(inner) > budget[0]:
                raise BmissFileError(f"{where}: a compressed MATLAB variable expands past {MAX_MAT_BYTES} bytes; "
                                     "refusing (a decompression bomb?)")
            budget[0] -= len(inner)
            _check_mat5(inner, where, budget, depth + 1, base + i)
            if pieces is not None:  # hand scipy the checked, already decompressed variable
                pieces.append(inner + b"\x00" * ((-len(inner)) % 8))
            i += 8 + nbytes
            continue
        if mdtype == 14:  # miMATRIX: flags, dims, name, then the class's data elements
            _check_matrix(body, where, budget, depth + 1, base + i)
        elif depth == 0:
            raise BmissFileError(f"{where}: a top-level MATLAB element of type {mdtype} at byte {i} (only variables, "
                                 "miMATRIX or miCOMPRESSED, belong there); the file is corrupt")
        if pieces is not None:
            pieces.append(raw[i:i + 8 + nbytes] + b"\x00" * ((-nbytes) % 8))
        i += 8 + nbytes + (-nbytes) % 8  # elements are padded to 8 bytes


_MI_SIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}


def _elements(raw: bytes, where: str, end: str, at: int) -> list[tuple[int, bytes]]:
    """The tagged elements of a miMATRIX body as (type, data)."""
    import struct

    out, i, n = [], 0, len(raw)
    while i < n:
        if n - i < 8:
            raise BmissFileError(f"{where}: truncated MATLAB variable at byte {at}")
        a, b = struct.unpack(end + "II", raw[i:i + 8])
        if a >> 16:
            t, k = a & 0xFFFF, a >> 16
            if t not in _MI_VALID or k > 4:
                raise BmissFileError(f"{where}: corrupt MATLAB data element (type {t}) in the variable at byte {at}")
            out.append((t, raw[i + 4:i + 4 + k]))
            i += 8
            continue
        if a not in _MI_VALID or b > n - i - 8:
            raise BmissFileError(f"{where}: corrupt MATLAB data element (type {a}, {b} bytes) in the variable at byte "
                                 f"{at}")
        out.append((a, raw[i + 8:i + 8 + b]))
        i += 8 + b + (-b) % 8
    return out


def _check_matrix(body: bytes, where: str, budget: list, depth: int, at: int) -> None:
    """One miMATRIX: the sub-elements its array class needs, of the sizes its dimensions give
    (scipy's compiled reader trusts them: a complex flag without an imaginary part, for one,
    crashes it)."""
    import struct

    if depth > 64:
        raise BmissFileError(f"{where}: MATLAB data nested more than 64 levels deep; the file is corrupt")
    if not body:
        return  # an empty matrix (MATLAB writes empty cells so)
    end = budget[1]
    els = _elements(body, where, end, at)
    bad = f"{where}: corrupt MATLAB variable at byte {at}"
    if len(els) < 3 or els[0][0] != 6 or len(els[0][1]) != 8 or els[1][0] != 5 or len(els[1][1]) < 8 \
            or len(els[1][1]) % 4 or els[2][0] not in (1, 2, 16):
        raise BmissFileError(f"{bad} (array flags, dimensions or name missing)")
    flags = struct.unpack(end + "I", els[0][1][:4])[0]
    cls, cplx = flags & 0xFF, bool(flags & 0x0800)
    dims = struct.unpack(end + f"{len(els[1][1]) // 4}i", els[1][1])
    if min(dims) < 0:
        raise BmissFileError(f"{bad} (negative dimension {min(dims)})")
    count = math.prod(dims)
    if count > (1 << 34):
        raise BmissFileError(f"{bad} (dimensions {dims} are implausible)")
    rest = els[3:]
    if cls == 1:  # cell: one matrix per element
        if len(rest) != count or any(t != 14 for t, _ in rest):
            raise BmissFileError(f"{bad} (a cell of {count} elements holds {len(rest)})")
        for _, b in rest:
            _check_matrix(b, where, budget, depth + 1, at)
    elif cls == 2:  # struct: field-name length, names, then one matrix per field and element
        if len(rest) < 2 or rest[0][0] != 5 or len(rest[0][1]) != 4 or rest[1][0] != 1:
            raise BmissFileError(f"{bad} (struct field names missing)")
        width = struct.unpack(end + "i", rest[0][1])[0]
        if width <= 0 or len(rest[1][1]) % width:
            raise BmissFileError(f"{bad} (struct field names of width {width})")
        n_fields = len(rest[1][1]) // width
        mats = rest[2:]
        if len(mats) != n_fields * count or any(t != 14 for t, _ in mats):
            raise BmissFileError(f"{bad} (a struct of {n_fields} fields x {count} holds {len(mats)} values)")
        for _, b in mats:
            _check_matrix(b, where, budget, depth + 1, at)
    elif cls == 4 or 6 <= cls <= 15:  # char, numeric: the real part, and the imaginary part if complex
        want = 1 + (cplx and cls != 4)
        if len(rest) != want:
            raise BmissFileError(f"{bad} ({'complex ' if cplx else ''}array with {len(rest)} data parts)")
        for t, b in rest:
            if t == 14 or len(b) != count * _MI_SIZE.get(t, 0):
                if not (cls == 4 and t in (16, 17, 18)):  # UTF-8/16 text: byte count varies
                    raise BmissFileError(f"{bad} (dimensions {dims} need {count} values; the data part holds "
                                         f"{len(b)} bytes of type {t})")
    elif cls == 5:  # sparse: row indices, column pointers, values (+ imaginary)
        if len(rest) != 3 + cplx:
            raise BmissFileError(f"{bad} (sparse array with {len(rest)} parts)")
    else:
        raise BmissFileError(f"{bad} (MATLAB class {cls}: objects, functions and opaque data are not read)")


def safe_loadmat(path, **kw) -> dict:
    """``scipy.io.loadmat(path, simplify_cells=True, **kw)`` for untrusted files: a MATLAB v5 file
    is checked element by element first (see :func:`_check_mat5`), v7.3 (HDF5) is refused, and
    any reader failure is one :class:`BmissFileError` line naming the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise BmissFileError(f"{path}: cannot read ({one_line(e)})") from None
    if len(raw) >= 128 and raw[126:128] in (b"IM", b"MI"):
        end = "<" if raw[126:128] == b"IM" else ">"
        ver = int.from_bytes(raw[124:126], "little" if end == "<" else "big")
        if ver == 0x0200:
            raise NotImplementedError("v7.3")
        if ver == 0x0100:
            pieces: list[bytes] = []
            _check_mat5(raw[128:], str(path), [MAX_MAT_BYTES, end], base=128, pieces=pieces)
            raw = raw[:128] + b"".join(pieces)  # what was checked is what scipy reads (no second inflate)
    from scipy.io import loadmat

    try:
        return loadmat(_io.BytesIO(raw), simplify_cells=True, **kw)
    except NotImplementedError:
        raise
    except Exception as e:  # noqa: BLE001  (scipy raises many types for a damaged file)
        raise BmissFileError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {one_line(e)})") from None


def _mat_table(path, fs: float | None = None):
    """Read a MATLAB file's data matrix as columns: ``(variables, cols [n_columns, n_samples]
    float64, labels or None, fs)``; every problem is a one-line :class:`BmissFileError`."""
    try:
        m = safe_loadmat(path)
    except BmissFileError:
        raise
    except NotImplementedError:
        raise BmissFileError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; re-save with "
                             "save(..., '-v7') or export .mat from OTBioLab+ again") from None
    except Exception as e:  # noqa: BLE001  (scipy raises many types for a damaged file)
        raise BmissFileError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {one_line(e)})") from None
    k, data = _mat_get(m, "Data", "data", "EMG", "emg")
    if data is None:
        have = sorted(x for x in m if not x.startswith("__"))
        raise BmissFileError(f"{path}: no 'Data' variable [n_samples, n_channels] (variables: {have})")
    data = np.asarray(data)
    if np.iscomplexobj(data):
        raise BmissFileError(f"{path}: '{k}' is complex-valued; bmiss needs real EMG")
    if data.dtype.kind not in "iuf":
        raise BmissFileError(f"{path}: '{k}' must be a numeric matrix, got {data.dtype}")
    data = np.asarray(data, np.float64)  # columns go to float32 when used (a column not used never stops the file)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise BmissFileError(f"{path}: '{k}' must be 2-D, got shape {data.shape}")
    fk, fs_file = _mat_get(m, "SamplingFrequency", "fsamp", "FSAMP", "fs", "Fs")
    if fs_file is not None:
        fs_file = scalar_fs(fs_file, f"{path}: '{fk}'")
        if fs is not None and abs(float(fs) - fs_file) > 1e-9 * fs_file:
            raise BmissFileError(f"{path}: the file says {fk} = {fs_file:g} Hz but fs = {float(fs):g} Hz was given")
    elif fs is None:
        raise BmissFileError(f"{path}: no 'SamplingFrequency' variable; pass the rate: fs=HZ (bmiss ... --fs HZ)")
    fs = fs_file if fs_file is not None else scalar_fs(fs, f"{path}: fs")
    _, desc = _mat_get(m, "Description", "description")
    labels = None
    if desc is not None:
        if isinstance(desc, str):
            labels = [desc]
        else:
            labels = [d if isinstance(d, str) else str(np.asarray(d).ravel()[0]) if np.asarray(d).size else ""
                      for d in np.asarray(desc, dtype=object).ravel()]
        labels = [s.strip() for s in labels]
    # orient to [n_columns, n_samples]
    if labels is not None and len(labels) == data.shape[1] != data.shape[0]:
        cols = data.T
    elif labels is not None and len(labels) == data.shape[0] != data.shape[1]:
        cols = data
    else:
        cols = data.T if data.shape[0] >= data.shape[1] else data
    if labels is not None and len(labels) != cols.shape[0]:
        warn(f"{path}: {len(labels)} labels for {cols.shape[0]} columns; labels ignored")
        labels = None
    return m, cols, labels, fs


def _mat_emg_columns(info: list[dict], labelled: bool, path, unit_given: bool, emg_only: bool) -> list[int]:
    """The EMG columns (indices) under the reader policy: classified by their label fields; a column
    that is neither EMG with a voltage unit nor a known AUX/reference/decomposition column is set
    aside with one warning naming it; only a file with no EMG column left is an error."""
    if unit_given:
        # the caller states the unit: a grid channel labelled in another unit ([a.u]) is EMG too
        for d in info:
            if d["kind"] == "other" and d["code"] is not None:
                d["kind"] = "emg"
    if emg_only:
        if labelled and any(d["kind"] == "emg" and d["unit"] for d in info):
            # some EMG labels carry a unit: a unit-less one cannot be scaled safely
            for d in info:
                if d["kind"] == "emg" and not d["unit"]:
                    d["kind"] = "other"
        other = [d["label"] for d in info if d["kind"] == "other"]
        if other:
            warn(f"{path}: {len(other)} column(s) set aside (neither EMG in uV/mV/V nor a known AUX, reference "
                 f"or decomposition column): {_name_columns(other)}")
    emg_i = [i for i, d in enumerate(info) if d["kind"] == "emg" or not emg_only]
    if not emg_i:
        kinds = sorted({d["kind"] for d in info})
        raise BmissFileError(f"{path}: no EMG column among {len(info)} (label kinds: {kinds}); EMG labels name a "
                             "grid code (e.g. GR08MM1305) or a voltage unit ([uV], [mV], [V]); if the values are EMG in "
                             "another unit, read it with bmiss.io.load_recording(path, units='uV')")
    return emg_i


def _mat_emg_scale(info: list[dict], emg_i: list[int], path, units, to_uv) -> tuple[np.ndarray, str]:
    """``(factor to µV per EMG column, how it was known)``: a given factor or unit, else each label's."""
    if to_uv is not None:
        return np.full(len(emg_i), float(to_uv)), f"factor {to_uv}"
    if units is not None:
        return np.full(len(emg_i), _to_uv_factor(units, str(path))), f"{units} (given)"
    if all(info[i]["unit"] for i in emg_i):
        return np.array([_to_uv_factor(info[i]["unit"], f"{path}: column {info[i]['label']!r}") for i in emg_i]), \
            "from labels"
    warn(f"{path}: no unit in the channel labels; assuming mV (OTBioLab+ export); if the values are already "
         "µV, pass --emg-unit uV (API: units='uV')")
    return np.full(len(emg_i), 1e3), "mV (assumed)"


def load_mat(path, *, fs: float | None = None, units: str | None = None, to_uv: float | None = None,
             emg_only: bool = True, orientation: int | None = None) -> Recording:
    """Read an OTBioLab+ ``.mat`` export (what openhdemg's ``emg_from_otb`` reads), or a bare
    EMG matrix.

    Variables: ``Data`` (also ``data``/``EMG``/``emg``) [n_samples, n_columns] (either
    orientation accepted; with ``Description`` the axis whose length matches it is the channel
    axis, otherwise the shorter axis), ``SamplingFrequency`` (Hz; ``fsamp``/``fs`` also
    accepted; ``fs=`` supplies it for files without one) and ``Description`` (one label per
    column).

    Columns are classified by their label fields (see :func:`_mat_label`): EMG columns are
    kept, in file order (the amplifier's order); the ``acquired data`` column (else the first
    force/torque AUX channel) becomes ``ref_signal`` (unit in ``meta["ref_unit"]``); other AUX,
    target-path and decomposition-output columns are dropped and listed in ``meta``.

    Units: each EMG label's ``[uV]``/``[mV]``/``[V]`` gives its scale to µV.  Without labels
    the values are taken as mV (OTBioLab+'s export unit) with a warning; ``units="uV"`` (or a
    factor ``to_uv``) overrides.  A grid code in the labels sets the electrode layout at
    ``orientation`` (default 180).  MATLAB v7.3 (HDF5) files are not supported.
    """
    path = _need_file(path)
    m, cols, labels, fs = _mat_table(path, fs)
    info = [_mat_label(s) for s in labels] if labels is not None else [
        {"label": None, "kind": "emg", "unit": None, "code": None, "sensor": ""} for _ in range(cols.shape[0])]
    emg_i = _mat_emg_columns(info, labels is not None, path, units is not None or to_uv is not None, emg_only)
    scale, unit_note = _mat_emg_scale(info, emg_i, path, units, to_uv)
    from .io import to_float32

    def col32(i, factor=1.0):
        return to_float32(cols[i] * factor, f"{path}: column {info[i]['label'] or i!r}")

    emg = np.stack([col32(i, float(f)) for i, f in zip(emg_i, scale)])
    # reference / force channel
    ref_i = next((i for i, d in enumerate(info) if d["kind"] == "ref"), None)
    if ref_i is None:
        ref_i = next((i for i, d in enumerate(info) if d["kind"] == "aux"
                      and any(w in (d["label"] or "").lower() for w in ("force", "torque"))), None)
    ref = None if ref_i is None else col32(ref_i)
    dropped = [info[i]["label"] for i in range(len(info)) if i not in set(emg_i) and i != ref_i]
    codes = sorted({info[i]["code"] for i in emg_i} - {None})
    geo: dict[str, Any] = {}
    if len(codes) == 1:
        lay = _layout_for(codes[0], len(emg_i), orientation, str(path))
        if lay is not None:
            geo = dict(electrode=lay.code, orientation=lay.orientation, ied_mm=lay.ied_mm,
                       grid_shape=lay.grid_shape, channel_map=lay.channel_map)
    elif len(codes) > 1:
        warn(f"{path}: channels of {len(codes)} grids ({', '.join(codes)}); channel positions left unknown")
    meta = {"source": "mat", "file": path.name, "units": unit_note, "channel_labels": labels and [info[i]["label"]
            for i in emg_i], "dropped_columns": dropped,
            "ref_label": None if ref_i is None else info[ref_i]["label"],
            "ref_unit": None if ref_i is None else info[ref_i]["unit"], "electrode_codes": codes}
    try:
        return Recording(emg=emg, fs=fs, ref_signal=ref, meta=meta, **geo)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {one_line(e)}") from None


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


def _from_split(obj, where: str = "DataFrame") -> tuple[list, list, np.ndarray]:
    """Parse pandas 'split' JSON (string or already-decoded dict) -> (columns, index, data).

    ``where`` names the member (``"file: RAW_SIGNAL"``) in the one-line error a malformed
    member gives."""
    try:
        d = json.loads(obj) if isinstance(obj, str) else obj
    except (json.JSONDecodeError, RecursionError) as e:
        raise BmissFileError(f"{where} is not a JSON DataFrame ({one_line(e)})") from None
    if not isinstance(d, dict):
        raise BmissFileError(f"{where} must be a DataFrame (pandas 'split' JSON with columns/index/data), got "
                             f"{type(d).__name__} {str(d)[:40]!r}")
    cols, index, rows = d.get("columns", []), d.get("index", []), d.get("data", [])
    if not all(isinstance(x, list) for x in (cols, index, rows)):
        raise BmissFileError(f"{where}: 'columns', 'index' and 'data' must be lists")
    try:
        # numpy maps None (JSON null, pandas' NaN) to nan for a float dtype
        data = np.asarray(rows, dtype=np.float64) if rows else np.zeros((0, len(cols)))
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        raise BmissFileError(f"{where}: 'data' must be rows of numbers of equal length ({type(e).__name__})") \
            from None
    if data.ndim == 1:
        data = data.reshape(len(rows), -1)
    if data.ndim != 2:
        raise BmissFileError(f"{where}: 'data' must be a table (rows of numbers), got {data.ndim} dimensions")
    if len(index) not in (0, data.shape[0]):
        raise BmissFileError(f"{where}: {len(index)} index labels for {data.shape[0]} rows")
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


def _extras_json(rec: Recording) -> str:
    """EXTRAS DataFrame (split JSON): one row with the electrode layout and the ref unit, when known."""
    cols, row = [], []
    for k, v in (("electrode", rec.electrode), ("orientation", rec.orientation),
                 ("ref_unit", rec.meta.get("ref_unit") if rec.ref_signal is not None else None)):
        if v is not None:
            cols.append(k)
            row.append(v)
    if not cols:
        return '{"columns":[0],"index":[],"data":[]}'
    return json.dumps({"columns": cols, "index": [0], "data": [row]}, default=str)


def save_openhdemg(path, dec: Decomposition | None, rec: Recording, *, ied_mm: float | None = None,
                   accuracy: Sequence[float] | None = None, force: bool = True, compresslevel: int = 4) -> Path:
    """Write an openhdemg ``emgfile`` (gzip-compressed JSON) that ``openhdemg.library.emg_from_json``
    opens.

    Structure (as openhdemg's ``save_json_emgfile`` writes it): the outer JSON object maps
    each key to a JSON *string*: scalars and ``MUPULSES`` (list of lists of 0-based sample
    indices) are ``json.dumps``-ed, DataFrames are pandas ``to_json(orient='split')`` text:

    ===================  ======================================================================
    SOURCE               ``"CUSTOMCSV"`` (a source openhdemg's JSON loader accepts)
    FILENAME             file name of ``path``
    RAW_SIGNAL           DataFrame [samples x channels], µV (``rec.emg.T``, the file's channel
                         order; openhdemg's ``sort_rawemg`` with the EXTRAS code sorts it)
    REF_SIGNAL           DataFrame [samples x 1]: ``rec.ref_signal`` (the recorded force /
                         reference, in its own unit, e.g. % MVC); else ``rec.excitation * 100``
                         (a simulation's drive in % of max); else zeros
    ACCURACY             DataFrame [MUs x 1]: the decomposition's stored SIL (``dec.sil``, the
                         decomposer's definition), else ``accuracy``, else NaN: nothing is
                         recomputed here
    IPTS                 DataFrame [samples x MUs]: ``dec.sources.T`` (trimmed/zero-padded
                         to the EMG length)
    MUPULSES             list of int lists (spikes outside the EMG dropped)
    FSAMP, IED           float (IED: ``ied_mm`` or ``rec.ied_mm``; NaN when unknown)
    EMG_LENGTH           int, samples;  NUMBER_OF_MUS int
    BINARY_MUS_FIRING    DataFrame [samples x MUs] of 0/1
    EXTRAS               DataFrame: one row ``electrode, orientation, ref_unit`` where known,
                         else empty (one column ``0``)
    ===================  ======================================================================

    ``dec=None`` writes the EMG with zero MUs.  Written atomically; the gzip header stores the
    output's own name and no time stamp (never the temporary name); pandas is not needed.
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
    elif accuracy is not None:
        acc = np.asarray(accuracy, np.float64).ravel()
        if len(acc) != n_mu:
            raise ValueError(f"accuracy has {len(acc)} values for {n_mu} units")
    else:
        acc = np.full(n_mu, np.nan)
    binary = np.zeros((n, n_mu), np.int8)
    for j, s in enumerate(spikes):
        binary[s, j] = 1
    if rec.ref_signal is not None:
        ref = _fit_length(np.asarray(rec.ref_signal, np.float64).ravel(), n)
    elif rec.excitation is not None:
        ref = _fit_length(np.asarray(rec.excitation, np.float64).ravel(), n) * 100.0
    else:
        ref = np.zeros(n)
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
        "EXTRAS": _extras_json(rec),
    }

    def w(tmp):
        with open(tmp, "wb") as raw:
            # filename/mtime given explicitly: the header must not carry the temporary's name
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=compresslevel,
                               mtime=0) as gz:
                with _io.TextIOWrapper(gz, encoding="utf-8") as f:
                    json.dump(emgfile, f)

    return atomic_write(path, w, force=force)


def save_openhdemg_recording(path, rec: Recording, *, force: bool = True) -> Path:
    """A recording as an openhdemg emgfile without MUs (``save_openhdemg(path, None, rec)``)."""
    return save_openhdemg(path, None, rec, force=force)


MAX_JSON_BYTES = 1 << 31  # decompressed size limit of an openhdemg file (2 GiB)


def _read_openhdemg_dict(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """The outer JSON object of an openhdemg file (gzip or plain).  Decompression stops, with a
    one-line error, past ``max_bytes`` or past ``MAX_EXPANSION`` (200) times the file's size once
    over 64 MiB (the OTB+ reader's rule): a gzip bomb never fills the memory."""
    size = max(path.stat().st_size, 1)
    cap = min(max_bytes, max(int(MAX_EXPANSION * size), 64 << 20))
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
            f.seek(0)
            if magic == b"\x1f\x8b":
                chunks, total = [], 0
                with gzip.GzipFile(fileobj=f) as gz:
                    while True:
                        c = gz.read(min(1 << 24, cap + 1 - total))
                        if not c:
                            break
                        chunks.append(c)
                        total += len(c)
                        if total > cap:
                            break
                raw = b"".join(chunks)
            else:
                raw = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise BmissFileError(f"{path}: corrupt or truncated gzip data in an openhdemg file ({type(e).__name__}: "
                             f"{one_line(e)})") from None
    if magic == b"\x1f\x8b" and len(raw) > cap:
        if cap < max_bytes:
            raise BmissFileError(f"{path}: the gzip data ({size} bytes) expand to more than {cap} bytes "
                                 f"({MAX_EXPANSION:g}x): refusing a likely decompression bomb")
        raise BmissFileError(f"{path}: decompresses to more than {max_bytes} bytes; refusing (a decompression bomb?)")
    if len(raw) > max_bytes:
        raise BmissFileError(f"{path}: more than {max_bytes} bytes of JSON; refusing")
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BmissFileError(f"{path}: not an openhdemg JSON file (gzip-compressed JSON expected: {one_line(e)})") from None
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


def _extras_layout(d: dict, where: str = "openhdemg file", check: bool = True) -> tuple[str | None, int | None]:
    """(grid code, orientation) written in an EXTRAS DataFrame, if any."""
    if "EXTRAS" not in d:
        return None, None
    try:
        ex = json.loads(d["EXTRAS"]) if isinstance(d["EXTRAS"], str) else d["EXTRAS"]
        cols = [str(c).lower() for c in ex.get("columns", [])]
        rows = ex.get("data", []) or []
    except (json.JSONDecodeError, AttributeError, TypeError, RecursionError):
        return None, None
    if not isinstance(rows, list):
        return None, None  # EXTRAS is optional metadata: a malformed one is ignored, never fatal
    code = orient = None
    for row in rows:
        for c, v in zip(cols, row if isinstance(row, list) else [row]):
            if code is None and isinstance(v, str):
                code = E.find_code(v)
            if c == "orientation" and orient is None and v is not None:
                if not check:
                    continue
                if isinstance(v, bool) or str(v).strip() not in ("0", "180", "0.0", "180.0"):
                    raise BmissFileError(f"{where}: EXTRAS column 'orientation' = {v!r}; bmiss knows grid "
                                         "orientations 0 and 180 degrees only; pass the grid's orientation "
                                         "(--orientation 0|180) to override it")
                orient = int(float(v))
        if code is None:
            code = next((E.find_code(c) for c in cols if E.find_code(c)), None)
    return code, orient


def load_openhdemg(path, *, orientation: int | None = None) -> Recording:
    """Read an openhdemg JSON emgfile: RAW_SIGNAL -> ``emg`` [channels, samples] (values as
    stored; files written by bmiss are µV), FSAMP -> ``fs``, IED -> ``ied_mm`` (None if
    NaN), REF_SIGNAL -> ``ref_signal`` (e.g. % MVC).  A grid code in EXTRAS (with an
    ``orientation`` column, else ``orientation``, default 180) sets the electrode layout.
    The decomposition in the file is in ``meta['openhdemg']`` (source, filename, n_mus); read
    it with :func:`load_openhdemg_decomposition`."""
    path = _need_file(path)
    d = _read_openhdemg_dict(path)
    if "RAW_SIGNAL" not in d:
        src = _scalar(d["SOURCE"])
        raise BmissFileError(f"{path}: openhdemg file of SOURCE {src!r} has no RAW_SIGNAL "
                             "(a reference-signal-only file?)")
    try:
        cols, _, raw = _from_split(d["RAW_SIGNAL"], f"{path}: RAW_SIGNAL")
        cols, raw = _sort_columns(cols, raw)
        if "FSAMP" not in d:
            raise KeyError("FSAMP")
        fs = scalar_fs(_scalar(d["FSAMP"]), f"{path}: FSAMP")
        ied = _scalar(d.get("IED"))
        ied = float(ied) if isinstance(ied, (int, float)) else None
        if ied is not None and not math.isfinite(ied):
            ied = None
        ref = None
        if "REF_SIGNAL" in d:
            _, _, r = _from_split(d["REF_SIGNAL"], f"{path}: REF_SIGNAL")
            if r.shape[0] == raw.shape[0] and r.shape[1] >= 1 and np.isfinite(r[:, 0]).all():
                ref = r[:, 0]
    except BmissFileError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise BmissFileError(f"{path}: malformed openhdemg emgfile ({type(e).__name__}: {one_line(e)})") from None
    code, orient = _extras_layout(d, str(path), check=orientation is None)
    geo: dict[str, Any] = {}
    lay = _layout_for(code, raw.shape[1], orientation if orientation is not None else orient, str(path))
    if lay is not None:
        geo = dict(electrode=lay.code, orientation=lay.orientation, grid_shape=lay.grid_shape,
                   channel_map=lay.channel_map)
        ied = ied if ied is not None else lay.ied_mm
    meta = {"source": "openhdemg", "file": path.name,
            "openhdemg": {"source": _scalar(d["SOURCE"]), "filename": _scalar(d.get("FILENAME")),
                          "n_mus": _scalar(d.get("NUMBER_OF_MUS"))}}
    try:
        return Recording(emg=raw.T, fs=fs, ied_mm=ied, ref_signal=ref, meta=meta, **geo)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {one_line(e)}") from None


def load_openhdemg_decomposition(path) -> Decomposition:
    """The MUs of an openhdemg emgfile as a :class:`Decomposition` (method ``"openhdemg:<SOURCE>"``):
    MUPULSES -> spikes, IPTS -> sources, ACCURACY -> sil."""
    path = _need_file(path)
    d = _read_openhdemg_dict(path)
    try:
        fs = scalar_fs(_scalar(d["FSAMP"]), f"{path}: FSAMP")
        pulses = _scalar(d.get("MUPULSES", "[]")) or []
        spikes = [np.asarray(p, np.int64).ravel() for p in pulses]
        n_mu = len(spikes)
        n = int(_scalar(d.get("EMG_LENGTH", 0)) or 0)
        sources = np.zeros((n_mu, n), np.float32)
        if "IPTS" in d and n_mu:
            cols, _, ipts = _from_split(d["IPTS"], f"{path}: IPTS")
            cols, ipts = _sort_columns(cols, ipts)
            if ipts.shape[1] == n_mu:
                sources = ipts.T.astype(np.float32)
        sil = None
        if "ACCURACY" in d and n_mu:
            _, _, acc = _from_split(d["ACCURACY"], f"{path}: ACCURACY")
            if acc.shape[0] == n_mu and acc.shape[1] >= 1:
                sil = acc[:, 0].astype(np.float32)
    except BmissFileError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise BmissFileError(f"{path}: malformed openhdemg emgfile ({type(e).__name__}: {one_line(e)})") from None
    return Decomposition(spikes=spikes, sources=sources, fs=fs, method=f"openhdemg:{_scalar(d['SOURCE'])}",
                         sil=sil, meta={"file": path.name})

# =============================================================================== MUedit
def save_muedit(path, dec: Decomposition, rec: Recording, *, force: bool = True) -> Path:
    """Write a decomposition as MUedit's output ``.mat`` (MATLAB v7, one grid) so that its units
    can be reviewed in MUedit; :func:`bmiss.reference.load_reference` reads it back.

    Struct ``signal`` (the fields MUedit's decomposition saves and its editor reads):

    ==============  ================================================================
    data            [channels x samples] EMG, µV (``rec.emg``)
    fsamp           sampling rate, Hz
    nChan, ngrid    number of channels; 1
    gridname        {grid code} (``rec.electrode``, else ``"custom"``)
    muscle          {``rec.meta["muscle"]``, else ``"n/a"``}
    Pulsetrain      {1, 1} cell: [units x samples] pulse trains (``dec.sources``)
    Dischargetimes  {1, units} cell of 1-based discharge samples (MATLAB indexing)
    target, path    [1 x samples] reference signal (``rec.ref_signal``, else zeros)
    EMGmask         {1} cell: [channels x 1] zeros (no channel excluded)
    emgtype         1 (surface)
    ==============  ================================================================

    Built from MUedit's documented output structure; whether MUedit's editor opens it was not
    checked (no MATLAB here).
    """
    from scipy.io import savemat

    path = Path(path)
    n = rec.n_samples
    if abs(float(dec.fs) - float(rec.fs)) > 1e-6 * rec.fs:
        raise BmissFileError(f"the decomposition (fs {dec.fs:g} Hz) is not of this recording (fs {rec.fs:g} Hz)")
    n_mu = dec.n_units
    dt = np.empty((1, n_mu), dtype=object)
    for j, s in enumerate(dec.spikes):
        s = np.unique(np.asarray(s, np.int64))
        s = s[(s >= 0) & (s < n)]
        dt[0, j] = (s + 1).astype(np.float64)[None, :]
    src = np.zeros((n_mu, n))
    if n_mu and dec.sources is not None and np.asarray(dec.sources).size:
        src = _fit_length(np.asarray(dec.sources, np.float64).reshape(n_mu, -1), n)
    pt = np.empty((1, 1), dtype=object)
    pt[0, 0] = src
    ref = np.zeros(n) if rec.ref_signal is None else _fit_length(np.asarray(rec.ref_signal, np.float64).ravel(), n)
    mask = np.empty((1, 1), dtype=object)
    mask[0, 0] = np.zeros((rec.n_channels, 1))
    cell = lambda v: np.array([[v]], dtype=object)  # noqa: E731
    signal = {"data": np.asarray(rec.emg, np.float64), "fsamp": float(rec.fs), "nChan": float(rec.n_channels),
              "ngrid": 1.0, "gridname": cell(str(rec.electrode or "custom")),
              "muscle": cell(str(rec.meta.get("muscle") or "n/a")), "Pulsetrain": pt, "Dischargetimes": dt,
              "target": ref[None, :], "path": ref[None, :], "EMGmask": mask, "emgtype": 1.0}

    def w(tmp):
        with open(tmp, "wb") as f:
            savemat(f, {"signal": signal}, do_compression=True)

    return atomic_write(path, w, force=force)


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


#: names of ``Decomposition.param_interval``'s last axis (the 2.5, 16, 84 and 97.5 % bounds)
INTERVAL_BOUNDS = ("lo95", "lo68", "hi68", "hi95")


def save_summary_csv(path, dec: Decomposition, quality: Sequence[dict] | None = None, *,
                     force: bool = True) -> Path:
    """One row per MU: ``unit, n_spikes, rate_hz, cov_isi, sil, pnr_db`` and, when ``dec.params``
    exists, each fitted parameter (physical units) followed by ``<name>_std`` when
    ``dec.param_std`` exists and ``<name>_lo95, <name>_lo68, <name>_hi68, <name>_hi95`` (the
    calibrated intervals' bounds) when ``dec.param_interval`` does.

    ``quality``: one dict per MU (keys as the columns, e.g. from ``bmiss.metrics.unit_quality``),
    computed by the caller: this writer computes no metric.  Values stored in the decomposition
    (``dec.sil``/``pnr_db``/``cov_isi``, the decomposer's own definitions) take precedence;
    ``n_spikes`` is counted.  Missing values are ``n/a``."""
    n_mu = dec.n_units
    if quality is None:
        quality = [{} for _ in range(n_mu)]
    quality = [dict(q) for q in quality]
    if len(quality) == n_mu:
        for j in range(n_mu):
            quality[j]["n_spikes"] = len(dec.spikes[j])
            for key in ("sil", "pnr_db", "cov_isi"):
                v = getattr(dec, key)
                if v is not None and j < len(v) and np.isfinite(v[j]):
                    quality[j][key] = float(v[j])
    if len(quality) != n_mu:
        raise ValueError(f"quality has {len(quality)} rows for {n_mu} units")
    header = ["unit", "n_spikes", "rate_hz", "cov_isi", "sil", "pnr_db"]
    names: list[str] = []
    P = S = Q = None
    if dec.params is not None:
        P = np.asarray(dec.params, np.float64).reshape(n_mu, -1)
        names = list(dec.param_names) if dec.param_names is not None else [f"p{k}" for k in range(P.shape[1])]
        if dec.param_std is not None:
            S = np.asarray(dec.param_std, np.float64).reshape(n_mu, -1)
        if dec.param_interval is not None:
            Q = np.asarray(dec.param_interval, np.float64).reshape(n_mu, P.shape[1], 4)
        for nm in names:
            header += [nm] + ([f"{nm}_std"] if S is not None else []) + (
                [f"{nm}_{b}" for b in INTERVAL_BOUNDS] if Q is not None else [])

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
                    if Q is not None:
                        row += [_csv_val(v) for v in Q[j, k]]
                wr.writerow(row)

    return atomic_write(path, w, force=force)
