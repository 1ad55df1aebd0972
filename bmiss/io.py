"""Recording and decomposition files.

Recording (``.npz``), written by ``bmiss simulate`` and read by ``bmiss decompose``:

=====================  ==========================  =========================================
key                    shape / dtype               meaning
=====================  ==========================  =========================================
emg                    [n_channels, n_samples] f32  EMG in µV (channels row-major over grid)
fs                     scalar f64                   sampling rate, Hz
grid_shape             [2] int                      (rows, cols) of the channel grid (optional)
ied_mm                 scalar f64                   inter-electrode distance, mm (optional)
channel_map            [n_channels, 2] int          (row, col) of each channel (optional)
true_spikes            [n_spikes_total] int64       ground truth, concatenated sample indices
true_spikes_offsets    [n_units + 1] int64          CSR offsets into ``true_spikes``
true_muaps             [n_units, n_channels, T] f32 true MUAPs, µV (MUAP starts at the spike)
true_params            [n_units, n_params] f32      true MU parameters (physical units)
param_names            [n_params] str               names of the parameter columns
excitation             [n_samples] f32              excitation profile, 0..1
meta_json              str                          anatomy, seed, SNR, ... as JSON
=====================  ==========================  =========================================

Any ``.npz`` with just ``emg`` [n_channels, n_samples] and ``fs`` is a valid recording.

Decomposition (``.npz``), written by ``bmiss decompose``:

=====================  ==========================  =========================================
spikes, spikes_offsets CSR as above                 discharge sample indices per unit
sources                [n_units, n_samples] f32     source (pulse train estimate) per unit
filters                [n_units, n_ext] f32         separation vectors (method-specific space)
sil, pnr_db, cov_isi   [n_units] f32                blind quality per unit
params, param_std      [n_units, n_params] f32      fitted MU properties (bmiss only)
param_interval         [n_units, n_params, 4] f32   their 2.5 / 16 / 84 / 97.5 % bounds: calibrated
                                                    95 % and 68 % intervals (bmiss only)
param_names            [n_params] str
fs                     scalar
method                 str
meta_json              str                          settings, timing (s), channels used, ...
=====================  ==========================  =========================================
"""
from __future__ import annotations

from .errors import BmissFileError  # noqa: F401  (re-exported)
import hashlib
import importlib
import json
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger("bmiss")




def one_line(e) -> str:
    """An exception's text on one line (library messages may span several: a tar ReadError, an
    XML error), cut to 400 characters: for the one-line errors every reader promises."""
    return " ".join(str(e).split())[:400]


def warn(msg: str) -> None:
    """One-line warning on stderr (through the ``bmiss`` logger: with no logging configured,
    Python prints just the message)."""
    log.warning("warning: %s", msg)


# ---------------------------------------------------------------- helpers
from .files import atomic_write  # noqa: E402,F401  (the one atomic writer; re-exported)


def _save_npz(path, arrays: dict, force: bool) -> Path:
    def w(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return atomic_write(path, w, force=force)


def spikes_to_csr(spikes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of per-unit sample-index arrays -> (concatenated int64, offsets [n+1])."""
    counts = [len(s) for s in spikes]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = np.concatenate([np.asarray(s, np.int64) for s in spikes]) if spikes else np.zeros(0, np.int64)
    return flat, offsets


def csr_to_spikes(flat: np.ndarray, offsets: np.ndarray, where: str = "spikes") -> list[np.ndarray]:
    """Inverse of :func:`spikes_to_csr`; checks that the offsets describe ``flat``."""
    flat = np.asarray(flat)
    offsets = np.asarray(offsets)
    if flat.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1 or not np.issubdtype(offsets.dtype, np.integer) \
            or not np.issubdtype(flat.dtype, np.integer):
        raise BmissFileError(f"{where}: spike indices and offsets must be 1-D integer arrays")
    if offsets[0] != 0 or offsets[-1] != len(flat) or (np.diff(offsets) < 0).any():
        raise BmissFileError(f"{where}: offsets must rise from 0 to {len(flat)} (the number of spikes); "
                             "the file is inconsistent")
    return [np.asarray(flat[offsets[i]:offsets[i + 1]], np.int64) for i in range(len(offsets) - 1)]


def scalar_fs(v, where: str = "fs") -> float:
    """A sampling rate (Hz) from a number or a one-element array; clear error otherwise."""
    arr = np.asarray(v)
    if arr.dtype.kind not in "iuf" or arr.size != 1:
        what = "empty" if arr.size == 0 else (f"shape {arr.shape}" if arr.size > 1 else f"of type {arr.dtype}")
        raise BmissFileError(f"{where}: the sampling rate must be one number (Hz), got {what}")
    fs = float(arr.reshape(()))
    if not math.isfinite(fs) or fs <= 0:
        raise BmissFileError(f"{where}: sampling rate fs={fs} Hz is not a positive number")
    return fs


# ---------------------------------------------------------------- recording
@dataclass
class Recording:
    """An HD-EMG recording, optionally with simulation ground truth.

    emg: [n_channels, n_samples] float32, µV.  fs: Hz.
    Geometry (all optional): ``electrode`` (grid code, e.g. ``"GR08MM1305"``, or
    ``"row-major"``/``"custom"``), ``orientation`` (0/180 degrees), ``grid_shape`` (rows, cols),
    ``ied_mm`` and ``channel_map`` [n_channels, 2] (row, col of each channel, amplifier order).
    A known grid code alone fills in the rest.  ``ref_signal`` [n_samples]: the force/reference
    channel of a real recording (its unit in ``meta["ref_unit"]``), e.g. for recruitment
    thresholds; ``excitation`` is the simulated drive (0..1).
    """

    emg: np.ndarray
    fs: float
    grid_shape: tuple[int, int] | None = None
    ied_mm: float | None = None
    channel_map: np.ndarray | None = None  # [n_channels, 2] (row, col)
    true_spikes: list[np.ndarray] | None = None
    true_muaps: np.ndarray | None = None
    true_params: np.ndarray | None = None
    param_names: tuple[str, ...] | None = None
    excitation: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    electrode: str | None = None
    orientation: int | None = None
    ref_signal: np.ndarray | None = None

    @property
    def n_channels(self) -> int:
        return int(self.emg.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.emg.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    @property
    def has_truth(self) -> bool:
        return self.true_spikes is not None

    @property
    def has_geometry(self) -> bool:
        """True when the channel positions are known (channel_map and IED)."""
        return self.channel_map is not None and self.ied_mm is not None

    def __post_init__(self):
        self.emg = _real_array(self.emg, "recording: emg")
        self.fs = scalar_fs(self.fs, "recording")
        validate_emg(self.emg, self.fs, source="recording")
        if self.ref_signal is not None:
            ref = _real_array(self.ref_signal, "recording: ref_signal").ravel()
            if len(ref) != self.n_samples:
                raise BmissFileError(f"recording: ref_signal has {len(ref)} samples but the EMG has {self.n_samples}")
            self.ref_signal = ref
        if self.true_spikes is not None:
            self._check_truth()
        self._check_geometry()

    def _check_truth(self) -> None:
        n = self.n_samples
        spikes = []
        for u, s in enumerate(self.true_spikes):
            s = np.asarray(s)
            if s.size and (s.dtype.kind not in "iuf" or (s.dtype.kind == "f" and not (
                    np.isfinite(s).all() and np.all(s == np.round(s))))):
                raise BmissFileError(f"recording: true_spikes of unit {u} must be whole sample indices")
            s = s.astype(np.int64).ravel()
            if s.size and (s.min() < 0 or s.max() >= n):
                bad = int(s.min()) if s.min() < 0 else int(s.max())
                raise BmissFileError(f"recording: true_spikes of unit {u} has a discharge at sample {bad}, outside "
                                     f"the recording's 0..{n - 1} ({n} samples): ground truth and EMG do not match")
            spikes.append(s)
        self.true_spikes = spikes

    def _check_geometry(self) -> None:
        from . import electrodes as E

        n = self.n_channels
        if self.orientation is not None:
            if isinstance(self.orientation, (bool, np.bool_)) or int(self.orientation) not in E.ORIENTATIONS \
                    or float(self.orientation) != int(self.orientation):
                raise BmissFileError(f"recording: orientation {self.orientation!r} must be 0 or 180 degrees")
            self.orientation = int(self.orientation)
        if self.ied_mm is not None:
            v = np.asarray(self.ied_mm)
            if v.dtype.kind not in "iuf" or v.size != 1 or not (0.5 <= float(v.reshape(())) <= 100):
                raise BmissFileError(f"recording: ied_mm = {self.ied_mm!r} must be one number in 0.5..100 mm")
            self.ied_mm = float(v.reshape(()))
        if self.grid_shape is not None:
            g = np.asarray(self.grid_shape)
            if g.shape != (2,) or g.dtype.kind not in "iuf" or not np.all(g == np.round(g)) or (g < 1).any() \
                    or (g > 256).any():
                raise BmissFileError(f"recording: grid_shape {self.grid_shape!r} must be two whole numbers "
                                     "(rows, cols) in 1..256")
            self.grid_shape = (int(g[0]), int(g[1]))
        if self.electrode is not None:
            self.electrode = str(self.electrode)
            code = E.canonical_code(self.electrode)
            if code is not None:
                self.electrode = code
                if self.channel_map is None:
                    lay = E.load_layout(code, self.orientation)
                    if lay.n_channels != n:
                        raise BmissFileError(f"recording: electrode {code} has {lay.n_channels} channels but the "
                                             f"EMG has {n}; pass the right --electrode")
                    self.orientation = lay.orientation
                    self.channel_map = lay.channel_map
                    self.grid_shape = self.grid_shape or lay.grid_shape
                    if self.ied_mm is None:
                        self.ied_mm = lay.ied_mm
        if self.channel_map is not None:
            cm = np.asarray(self.channel_map)
            if cm.shape != (n, 2) or cm.dtype.kind not in "iuf" or not np.all(cm == np.round(cm)):
                raise BmissFileError(
                    f"recording: channel_map has shape {cm.shape}, expected ({n}, 2) integers: one (row, col) "
                    "per EMG channel")
            cm = cm.astype(np.int64)
            if (cm < 0).any():
                raise BmissFileError("recording: channel_map rows/cols are 0-based and must be >= 0")
            if self.grid_shape is None:
                self.grid_shape = (int(cm[:, 0].max()) + 1, int(cm[:, 1].max()) + 1)
            r, c = self.grid_shape
            if (cm[:, 0] >= r).any() or (cm[:, 1] >= c).any():
                raise BmissFileError(f"recording: channel_map has positions outside the {r}x{c} grid_shape")
            if len(np.unique(cm[:, 0] * c + cm[:, 1])) != n:
                raise BmissFileError("recording: channel_map puts two channels on the same electrode")
            self.channel_map = cm
        elif self.grid_shape is not None:
            r, c = self.grid_shape
            if r * c == n:
                self.channel_map = np.stack(np.unravel_index(np.arange(r * c), (r, c)), 1).astype(np.int64)
                self.electrode = self.electrode or "row-major"
            elif (r, c) == (13, 5) and n == 64:
                lay = E.standard_13x5(self.ied_mm or 8.0)
                self.channel_map = lay.channel_map
                self.electrode = self.electrode or "row-major"
                warn("grid_shape 13x5 with 64 channels and no channel_map: assuming the standard 13x5 grid stored "
                     "row-major with the empty corner at (0, 0); override with --electrode CODE (e.g. GR08MM1305) "
                     "or --grid 13x5 --missing r,c")
            else:
                raise BmissFileError(
                    f"recording: grid_shape {r}x{c} has {r * c} electrodes but the EMG has {n} channels; give a "
                    "channel_map [n_channels, 2] for grids with missing electrodes (or --electrode CODE, or --grid "
                    "ROWSxCOLS --missing \"r,c;...\")")

    def layout(self):
        """The recording's :class:`bmiss.electrodes.Layout`, or None without a geometry."""
        from . import electrodes as E

        return E.layout_of(self)

    def with_layout(self, layout) -> "Recording":
        """Copy with ``layout``'s geometry (a :class:`bmiss.electrodes.Layout`)."""
        from dataclasses import replace

        if layout.n_channels != self.n_channels:
            raise BmissFileError(f"electrode layout {layout.code} has {layout.n_channels} channels but the recording "
                                 f"has {self.n_channels}")
        return replace(self, electrode=layout.code, orientation=layout.orientation, grid_shape=layout.grid_shape,
                       ied_mm=float(layout.ied_mm), channel_map=np.asarray(layout.channel_map),
                       meta={**self.meta, "layout_source": layout.source})


def _real_array(x, where: str) -> np.ndarray:
    """float32 copy of a real numeric array; complex or non-numeric data is refused (never cast)."""
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise BmissFileError(f"{where} is complex-valued; bmiss needs real EMG (µV). If the imaginary part is "
                             "meaningless, pass emg.real explicitly")
    if arr.dtype.kind not in "iuf":
        raise BmissFileError(f"{where} must be numeric, got dtype {arr.dtype}")
    return to_float32(arr, where)


F32_MAX = float(np.finfo(np.float32).max)


def to_float32(arr, where: str) -> np.ndarray:
    """float32 copy of a numeric array; finite values beyond float32's range (about 3.4e38) are
    refused as such (a silent cast would turn them into inf and be reported as NaN/inf)."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 4 and arr.size:
        with np.errstate(invalid="ignore"):
            big = np.abs(arr) > F32_MAX
        if big.any():
            finite_big = big & np.isfinite(arr)
            if finite_big.any():
                v = float(arr[finite_big].flat[0])
                raise BmissFileError(f"{where}: value {v:g} is out of float32 range (|x| <= 3.4e38); the data "
                                     "are not EMG in µV or are corrupt")
    return np.asarray(arr, np.float32)


FS_MAX = 200_000.0  # Hz: higher rates are a unit mistake, not EMG


def validate_emg(emg: np.ndarray, fs: float, source: str = "EMG") -> None:
    """Raise a clear error for arrays that cannot be an EMG recording."""
    if np.iscomplexobj(emg):
        raise BmissFileError(f"{source}: emg is complex-valued; bmiss needs real EMG (µV)")
    if emg.ndim != 2:
        raise BmissFileError(f"{source}: emg must be 2-D [n_channels, n_samples], got shape {emg.shape}")
    n_ch, n_s = emg.shape
    if n_ch == 0 or n_s == 0:
        raise BmissFileError(f"{source}: emg is empty (shape {emg.shape})")
    if n_ch > n_s:
        raise BmissFileError(
            f"{source}: emg has {n_ch} channels and {n_s} samples; it looks transposed. "
            "Store it as [n_channels, n_samples] (e.g. emg.T)")
    if not np.isfinite(fs) or fs <= 0:
        raise BmissFileError(f"{source}: sampling rate fs={fs} Hz is not a positive number")
    if fs > FS_MAX:
        raise BmissFileError(
            f"{source}: fs={fs:g} Hz is implausibly high for EMG (surface HD-EMG 2-10 kHz, needle EMG up to "
            f"~100 kHz; limit {FS_MAX:g} Hz). Check the unit of fs (Hz)")
    if fs < 500:
        raise BmissFileError(
            f"{source}: fs={fs} Hz is too low for surface EMG (content up to ~500 Hz); "
            "HD-EMG is usually sampled at 2000-10240 Hz. Check the unit of fs (Hz, not kHz)")


def save_recording(path, rec: Recording, *, force: bool = True) -> Path:
    """Write ``rec``; the writer is chosen by suffix (:data:`WRITERS`): ``.npz`` (default, ours)
    or ``.json``/``.json.gz`` (openhdemg emgfile without MUs)."""
    suf = _suffix(Path(path))
    if suf in WRITERS and suf != ".npz":
        return _resolve(WRITERS[suf])(path, rec, force=force)
    return save_recording_npz(path, rec, force=force)


def save_recording_npz(path, rec: Recording, *, force: bool = True) -> Path:
    arrays: dict[str, Any] = {"emg": rec.emg.astype(np.float32), "fs": np.float64(rec.fs)}
    if rec.grid_shape is not None:
        arrays["grid_shape"] = np.asarray(rec.grid_shape, np.int64)
    if rec.ied_mm is not None:
        arrays["ied_mm"] = np.float64(rec.ied_mm)
    if rec.channel_map is not None:
        arrays["channel_map"] = np.asarray(rec.channel_map, np.int64)
    if rec.electrode is not None:
        arrays["electrode"] = np.asarray(str(rec.electrode))
    if rec.orientation is not None:
        arrays["orientation"] = np.int64(rec.orientation)
    if rec.ref_signal is not None:
        arrays["ref_signal"] = np.asarray(rec.ref_signal, np.float32)
    if rec.true_spikes is not None:
        arrays["true_spikes"], arrays["true_spikes_offsets"] = spikes_to_csr(rec.true_spikes)
    if rec.true_muaps is not None:
        arrays["true_muaps"] = np.asarray(rec.true_muaps, np.float32)
    if rec.true_params is not None:
        arrays["true_params"] = np.asarray(rec.true_params, np.float32)
    if rec.param_names is not None:
        arrays["param_names"] = np.asarray(rec.param_names, dtype=str)
    if rec.excitation is not None:
        arrays["excitation"] = np.asarray(rec.excitation, np.float32)
    arrays["meta_json"] = np.asarray(json.dumps(rec.meta, default=_json_default))
    return _save_npz(path, arrays, force)


def json_default(o):
    """``json.dumps(default=...)`` for numpy scalars/arrays; anything else by its ``str`` (a
    meta field of an odd type must never cost a finished decomposition its file)."""
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


_json_default = json_default


def _need_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise BmissFileError(f"{path} is a directory, not a file")
    return path


# ---------------------------------------------------------------- reader/writer registry
# Suffix -> "module:function".  Resolved on first use, so this module never imports the
# format readers (no io <-> formats import cycle); register_reader() adds more.
READERS: dict[str, str | Callable] = {
    ".npz": "bmiss.io:load_recording_npz",
    ".otb+": "bmiss.formats:load_otbplus",
    ".otb4": "bmiss.formats:load_otb4",
    ".mat": "bmiss.formats:load_mat",
    ".json": "bmiss.formats:load_openhdemg",
    ".json.gz": "bmiss.formats:load_openhdemg",
    ".hea": "bmiss.needle.wfdb:load_wfdb",  # WFDB record (single-channel needle EMG)
    ".bdf": "bmiss.bids:load_emg_bids",
    ".edf": "bmiss.bids:load_emg_bids",
}
WRITERS: dict[str, str | Callable] = {
    ".npz": "bmiss.io:save_recording_npz",
    ".json": "bmiss.formats:save_openhdemg_recording",
    ".json.gz": "bmiss.formats:save_openhdemg_recording",
}


def register_reader(suffix: str, reader: str | Callable) -> None:
    """Register ``reader(path, **kw) -> Recording`` for files ending in ``suffix``."""
    READERS[suffix.lower()] = reader


def _resolve(entry):
    if callable(entry):
        return entry
    mod, fn = entry.split(":")
    return getattr(importlib.import_module(mod), fn)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in sorted(READERS, key=len, reverse=True):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def load_recording(path, *, electrode=None, orientation=None, fs: float | None = None, **reader_kw) -> Recording:
    """Read a recording of any supported type, chosen by suffix (:data:`READERS`).

    electrode / orientation: the grid that recorded it (``--electrode``, ``--orientation``);
    overrides what the file says.  fs: sampling rate (Hz) for files that do not store one
    (``--fs``); a file that stores another rate is refused.  Other keywords go to the reader.
    Raises ``FileNotFoundError`` or :class:`BmissFileError` (one line naming the file).
    """
    path = _need_file(path)
    suf = _suffix(path)
    if suf not in READERS:
        hint = ""
        raise BmissFileError(
            f"{path}: unsupported file type {suf or '(no suffix)'!r}{hint}. Supported: "
            ".npz (bmiss), .otb+ / .otb4 (OT Bioelettronica), .mat (OTBioLab+ export), "
            ".json / .json.gz (openhdemg), .bdf / .edf (EMG-BIDS)")
    reader = _resolve(READERS[suf])
    if fs is not None:
        reader_kw["fs"] = fs
    if orientation is not None:
        import inspect

        try:
            if "orientation" in inspect.signature(reader).parameters:
                reader_kw.setdefault("orientation", orientation)  # the user's orientation overrides the file's
        except (TypeError, ValueError):
            pass
    rec = reader(path, **reader_kw)
    if electrode is not None or orientation is not None:
        from . import electrodes as E

        try:
            rec = rec.with_layout(E.resolve_layout(rec, electrode=electrode, orientation=orientation))
        except BmissFileError as e:
            raise BmissFileError(f"{path}: {one_line(e)}") from None
    return rec


def _open_npz(path: Path):
    head = b""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise BmissFileError(f"{path}: cannot read ({one_line(e)})") from None
    if head.startswith(b"\x93NUMPY"):
        raise BmissFileError(f"{path}: a single .npy array, not an .npz archive; save a recording with "
                             "np.savez(path, emg=EMG, fs=FS)")
    if not zipfile.is_zipfile(path):
        if head.startswith(b"PK"):
            raise BmissFileError(f"{path}: truncated or corrupt .npz (a zip archive without its central directory: "
                                 "the file was cut short, e.g. by an interrupted copy or write)")
        raise BmissFileError(f"{path}: not an .npz archive (an .npz is a zip of .npy arrays; this file starts "
                             f"with {head!r}); save a recording with np.savez(path, emg=EMG, fs=FS)")
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BmissFileError(f"{path}: not a readable .npz file ({type(e).__name__}: {one_line(e)})") from None


def _npz_get(z, key: str, path: Path):
    try:
        return z[key]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise BmissFileError(f"{path}: array {key!r} holds Python objects; bmiss reads only plain numeric/text "
                                 "arrays (save numbers, not lists of arrays)") from None
        raise BmissFileError(f"{path}: array {key!r} is unreadable ({one_line(e)})") from None
    except Exception as e:  # noqa: BLE001  (zip/zlib errors of a damaged member)
        raise BmissFileError(f"{path}: array {key!r} is damaged ({type(e).__name__}: {one_line(e)})") from None


def load_recording_npz(path, *, fs: float | None = None) -> Recording:
    """Read our ``.npz`` (or any ``.npz`` with ``emg`` + ``fs``).

    A geometry that contradicts the EMG (e.g. ``grid_shape`` 8x10 for 64 channels) is dropped
    with a one-line warning: blind methods need none, model-based ones then ask for the flags."""
    path = _need_file(path)
    with _open_npz(path) as z:
        files = set(z.files)
        need = ["emg"] + (["fs"] if fs is None else [])
        missing = [k for k in need if k not in files]
        if missing:
            raise BmissFileError(
                f"{path}: a recording .npz needs 'emg' [n_channels, n_samples] and 'fs' (Hz); missing {missing}")
        g = lambda k: _npz_get(z, k, path) if k in files else None  # noqa: E731
        fs_file = scalar_fs(g("fs"), f"{path}") if "fs" in files else None
        if fs is not None and fs_file is not None and abs(fs_file - float(fs)) > 1e-9 * fs_file:
            raise BmissFileError(f"{path}: the file says fs = {fs_file:g} Hz but fs = {fs:g} Hz was given")
        truth = None
        if "true_spikes" in files:
            if "true_spikes_offsets" not in files:
                raise BmissFileError(f"{path}: has 'true_spikes' but no 'true_spikes_offsets' (CSR offsets [n_units+1])")
            truth = csr_to_spikes(g("true_spikes"), g("true_spikes_offsets"), where=str(path))
        try:
            meta = json.loads(str(g("meta_json"))) if "meta_json" in files else {}
        except json.JSONDecodeError as e:
            raise BmissFileError(f"{path}: meta_json is not valid JSON ({one_line(e)})") from None
        geo = dict(grid_shape=g("grid_shape"), ied_mm=g("ied_mm"), channel_map=g("channel_map"),
                   electrode=str(g("electrode")) if "electrode" in files else None,
                   orientation=g("orientation"))
        if geo["grid_shape"] is not None:
            geo["grid_shape"] = tuple(np.asarray(geo["grid_shape"]).ravel().tolist())
        if geo["orientation"] is not None:
            o = np.asarray(geo["orientation"])
            geo["orientation"] = o.reshape(()).item() if o.size == 1 else o.tolist()
        kw = dict(
            emg=g("emg"), fs=fs_file if fs_file is not None else fs,
            true_spikes=truth, true_muaps=g("true_muaps"), true_params=g("true_params"),
            param_names=tuple(str(s) for s in g("param_names")) if "param_names" in files else None,
            excitation=g("excitation"), ref_signal=g("ref_signal"), meta=meta,
        )
    try:
        return Recording(**kw, **geo)
    except BmissFileError as e:
        msg = str(e)
        if not any(w in msg for w in ("grid_shape", "channel_map", "ied_mm", "orientation", "electrode")):
            raise BmissFileError(f"{path}: {one_line(e)}") from None
    # the geometry is unusable: keep the EMG (blind methods need no geometry) and say so
    warn(f"{path}: electrode geometry ignored ({msg.removeprefix('recording: ')}); model-based methods need "
         "--electrode CODE or --grid ROWSxCOLS --ied MM")
    try:
        rec = Recording(**kw)
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {one_line(e)}") from None
    rec.meta["geometry_ignored"] = msg
    return rec


# ---------------------------------------------------------------- decomposition
@dataclass
class Decomposition:
    """Result of a decomposition. Units are rows everywhere: spikes[i] belongs to sources[i]."""

    spikes: list[np.ndarray]
    sources: np.ndarray  # [n_units, n_samples]
    fs: float
    method: str
    filters: np.ndarray | None = None
    sil: np.ndarray | None = None
    pnr_db: np.ndarray | None = None
    cov_isi: np.ndarray | None = None
    params: np.ndarray | None = None
    param_std: np.ndarray | None = None
    param_names: tuple[str, ...] | None = None
    meta: dict = field(default_factory=dict)
    param_interval: np.ndarray | None = None  # [n_units, n_params, 4]: 2.5, 16, 84, 97.5 % bounds

    @property
    def n_units(self) -> int:
        return len(self.spikes)


#: the optional per-unit arrays of a decomposition file (float32)
_OPTIONAL = ("filters", "sil", "pnr_db", "cov_isi", "params", "param_std", "param_interval")


def save_decomposition(path, dec: Decomposition, *, force: bool = True) -> Path:
    arrays: dict[str, Any] = {}
    arrays["spikes"], arrays["spikes_offsets"] = spikes_to_csr(dec.spikes)
    arrays["sources"] = np.asarray(dec.sources, np.float32)
    arrays["fs"] = np.float64(dec.fs)
    arrays["method"] = np.asarray(dec.method)
    for k in _OPTIONAL:
        v = getattr(dec, k)
        if v is not None:
            arrays[k] = np.asarray(v, np.float32)
    if dec.param_names is not None:
        arrays["param_names"] = np.asarray(dec.param_names, dtype=str)
    arrays["meta_json"] = np.asarray(json.dumps(dec.meta, default=_json_default))
    return _save_npz(path, arrays, force)


def load_decomposition(path) -> Decomposition:
    path = _need_file(path)
    with _open_npz(path) as z:
        files = set(z.files)
        if "spikes" not in files or "sources" not in files:
            raise BmissFileError(f"{path}: not a bmiss decomposition file (needs 'spikes' and 'sources'); "
                                 "did you pass a recording instead?")
        for k in ("spikes_offsets", "fs", "method"):
            if k not in files:
                raise BmissFileError(f"{path}: decomposition file lacks {k!r}; it was not written by bmiss "
                                     "or is damaged: decompose the recording again")
        g = lambda k: _npz_get(z, k, path) if k in files else None  # noqa: E731
        opt = {k: g(k) for k in _OPTIONAL}
        try:
            meta = json.loads(str(g("meta_json"))) if "meta_json" in files else {}
        except json.JSONDecodeError as e:
            raise BmissFileError(f"{path}: meta_json is not valid JSON ({one_line(e)})") from None
        if not isinstance(meta, dict):
            raise BmissFileError(f"{path}: meta_json must be a JSON object, got {type(meta).__name__}")
        fs_dec = scalar_fs(g("fs"), f"{path}: fs")
        _check_fingerprint(meta, fs_dec, path)
        return Decomposition(
            spikes=csr_to_spikes(g("spikes"), g("spikes_offsets"), where=str(path)),
            sources=g("sources"),
            fs=fs_dec,
            method=str(g("method")),
            param_names=tuple(str(s) for s in g("param_names")) if "param_names" in files else None,
            meta=meta,
            **opt,
        )


# ---------------------------------------------------------------- fingerprint
def _check_fingerprint(meta: dict, fs: float, path) -> None:
    """A decomposition's ``meta["recording"]`` must be a well-formed fingerprint that agrees with
    its own ``fs``; a file that contradicts itself is refused (it would pass the pairing check
    and export wrong rates)."""
    fp = meta.get("recording")
    if fp is None:
        return
    where = f"{path}: meta_json 'recording' (the recording's fingerprint)"
    if not isinstance(fp, dict):
        raise BmissFileError(f"{where} must be an object, got {type(fp).__name__}")
    for k, kind in (("fs", "number"), ("n_samples", "int"), ("n_channels", "int")):
        if k not in fp:
            continue
        v = fp[k]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        if ok and kind == "int":
            ok = float(v) == int(v)
        if not ok:
            raise BmissFileError(f"{where}: {k} = {v!r} must be a positive {'whole ' if kind == 'int' else ''}number")
    h = fp.get("emg_sha256")
    if h is not None and not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
        raise BmissFileError(f"{where}: emg_sha256 must be 64 hexadecimal digits, got {str(h)[:40]!r}")
    if "fs" in fp and abs(float(fp["fs"]) - fs) > 1e-9 * fs:
        raise BmissFileError(f"{path}: the decomposition says fs = {fs:g} Hz but its recording fingerprint says "
                             f"{float(fp['fs']):g} Hz; the file was edited or is corrupt: decompose the recording "
                             "again")


def recording_fingerprint(rec: Recording) -> dict:
    """What identifies a recording, stored in every decomposition's ``meta["recording"]``.

    Returns ``{"fs": Hz, "n_samples", "n_channels", "emg_sha256"}``; the hash is over the EMG as
    C-ordered float32 bytes (what ``.npz`` recordings store), so a saved and reloaded recording
    keeps its fingerprint. Costs about 10 ms per 10 MB of EMG.
    """
    emg = np.ascontiguousarray(rec.emg, dtype=np.float32)
    return {"fs": float(rec.fs), "n_samples": int(emg.shape[1]), "n_channels": int(emg.shape[0]),
            "emg_sha256": hashlib.sha256(emg.tobytes()).hexdigest()}
