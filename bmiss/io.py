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
param_names            [n_params] str
fs                     scalar
method                 str
meta_json              str                          settings, timing (s), channels used, ...
=====================  ==========================  =========================================
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class BmissFileError(ValueError):
    """A file could not be read or does not hold what bmiss needs."""


# ---------------------------------------------------------------- helpers
def atomic_write(path: str | os.PathLike, writer, *, force: bool = True) -> Path:
    """Call ``writer(tmp_path)`` then rename onto ``path``: a crash never leaves half a file.

    ``writer`` receives a temporary path in the same directory (same suffix).
    With ``force=False`` an existing ``path`` raises ``FileExistsError``.
    """
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force (force=True) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=path.suffix + ".tmp")
    os.close(fd)
    try:
        writer(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


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


def csr_to_spikes(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return [np.asarray(flat[offsets[i]:offsets[i + 1]], np.int64) for i in range(len(offsets) - 1)]


# ---------------------------------------------------------------- recording
@dataclass
class Recording:
    """An HD-EMG recording, optionally with simulation ground truth.

    emg: [n_channels, n_samples] float32, µV.  fs: Hz.
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

    def __post_init__(self):
        self.emg = np.asarray(self.emg, np.float32)
        self.fs = float(self.fs)
        validate_emg(self.emg, self.fs, source="recording")
        if self.channel_map is not None:
            self.channel_map = np.asarray(self.channel_map, np.int64)
            if self.channel_map.shape != (self.n_channels, 2):
                raise BmissFileError(
                    f"channel_map has shape {self.channel_map.shape}, expected ({self.n_channels}, 2): "
                    "one (row, col) per EMG channel")
        if self.grid_shape is not None:
            self.grid_shape = (int(self.grid_shape[0]), int(self.grid_shape[1]))
            if self.channel_map is None:
                r, c = self.grid_shape
                if r * c != self.n_channels:
                    raise BmissFileError(
                        f"grid_shape {r}x{c} has {r * c} electrodes but the EMG has {self.n_channels} "
                        "channels; give a channel_map [n_channels, 2] for grids with missing electrodes")
                self.channel_map = np.stack(np.unravel_index(np.arange(r * c), (r, c)), 1)


def validate_emg(emg: np.ndarray, fs: float, source: str = "EMG") -> None:
    """Raise a clear error for arrays that cannot be an EMG recording."""
    if emg.ndim != 2:
        raise BmissFileError(f"{source}: emg must be 2-D [n_channels, n_samples], got shape {emg.shape}")
    n_ch, n_s = emg.shape
    if n_ch > n_s:
        raise BmissFileError(
            f"{source}: emg has {n_ch} channels and {n_s} samples; it looks transposed. "
            "Store it as [n_channels, n_samples] (e.g. emg.T)")
    if not np.isfinite(fs) or fs <= 0:
        raise BmissFileError(f"{source}: sampling rate fs={fs} Hz is not a positive number")
    if fs < 500:
        raise BmissFileError(
            f"{source}: fs={fs} Hz is too low for surface EMG (content up to ~500 Hz); "
            "HD-EMG is usually sampled at 2000-10240 Hz. Check the unit of fs (Hz, not kHz)")


def save_recording(path, rec: Recording, *, force: bool = True) -> Path:
    arrays: dict[str, Any] = {"emg": rec.emg.astype(np.float32), "fs": np.float64(rec.fs)}
    if rec.grid_shape is not None:
        arrays["grid_shape"] = np.asarray(rec.grid_shape, np.int64)
    if rec.ied_mm is not None:
        arrays["ied_mm"] = np.float64(rec.ied_mm)
    if rec.channel_map is not None:
        arrays["channel_map"] = np.asarray(rec.channel_map, np.int64)
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


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _need_file(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def load_recording(path) -> Recording:
    """Read a recording: our ``.npz`` (or any ``.npz`` with ``emg`` + ``fs``)."""
    path = _need_file(path)
    if path.suffix.lower() != ".npz":
        from . import formats  # other formats (OTB+, .mat, openhdemg JSON)

        return formats.load_any(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BmissFileError(f"{path}: not a readable .npz file ({e})") from e
    missing = [k for k in ("emg", "fs") if k not in z.files]
    if missing:
        raise BmissFileError(
            f"{path}: a recording .npz needs 'emg' [n_channels, n_samples] and 'fs' (Hz); missing {missing}")
    truth = None
    if "true_spikes" in z.files:
        truth = csr_to_spikes(z["true_spikes"], z["true_spikes_offsets"])
    meta = json.loads(str(z["meta_json"])) if "meta_json" in z.files else {}
    try:
        return Recording(
            emg=z["emg"],
            fs=float(z["fs"]),
            grid_shape=tuple(z["grid_shape"]) if "grid_shape" in z.files else None,
            ied_mm=float(z["ied_mm"]) if "ied_mm" in z.files else None,
            channel_map=z["channel_map"] if "channel_map" in z.files else None,
            true_spikes=truth,
            true_muaps=z["true_muaps"] if "true_muaps" in z.files else None,
            true_params=z["true_params"] if "true_params" in z.files else None,
            param_names=tuple(str(s) for s in z["param_names"]) if "param_names" in z.files else None,
            excitation=z["excitation"] if "excitation" in z.files else None,
            meta=meta,
        )
    except BmissFileError as e:
        raise BmissFileError(f"{path}: {e}") from e


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

    @property
    def n_units(self) -> int:
        return len(self.spikes)


def save_decomposition(path, dec: Decomposition, *, force: bool = True) -> Path:
    arrays: dict[str, Any] = {}
    arrays["spikes"], arrays["spikes_offsets"] = spikes_to_csr(dec.spikes)
    arrays["sources"] = np.asarray(dec.sources, np.float32)
    arrays["fs"] = np.float64(dec.fs)
    arrays["method"] = np.asarray(dec.method)
    for k in ("filters", "sil", "pnr_db", "cov_isi", "params", "param_std"):
        v = getattr(dec, k)
        if v is not None:
            arrays[k] = np.asarray(v, np.float32)
    if dec.param_names is not None:
        arrays["param_names"] = np.asarray(dec.param_names, dtype=str)
    arrays["meta_json"] = np.asarray(json.dumps(dec.meta, default=_json_default))
    return _save_npz(path, arrays, force)


def load_decomposition(path) -> Decomposition:
    path = _need_file(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise BmissFileError(f"{path}: not a readable .npz file ({e})") from e
    if "spikes" not in z.files or "sources" not in z.files:
        raise BmissFileError(f"{path}: not a bmiss decomposition file (needs 'spikes' and 'sources'); "
                             "did you pass a recording instead?")
    opt = {k: (z[k] if k in z.files else None) for k in ("filters", "sil", "pnr_db", "cov_isi", "params", "param_std")}
    return Decomposition(
        spikes=csr_to_spikes(z["spikes"], z["spikes_offsets"]),
        sources=z["sources"],
        fs=float(z["fs"]),
        method=str(z["method"]),
        param_names=tuple(str(s) for s in z["param_names"]) if "param_names" in z.files else None,
        meta=json.loads(str(z["meta_json"])) if "meta_json" in z.files else {},
        **opt,
    )


# ---------------------------------------------------------------- fingerprint
def recording_fingerprint(rec: Recording) -> dict:
    """What identifies a recording, stored in every decomposition's ``meta["recording"]``.

    Returns ``{"fs": Hz, "n_samples", "n_channels", "emg_sha256"}``; the hash is over the EMG as
    C-ordered float32 bytes (what ``.npz`` recordings store), so a saved and reloaded recording
    keeps its fingerprint. Costs about 10 ms per 10 MB of EMG.
    """
    import hashlib

    emg = np.ascontiguousarray(rec.emg, dtype=np.float32)
    return {"fs": float(rec.fs), "n_samples": int(emg.shape[1]), "n_channels": int(emg.shape[0]),
            "emg_sha256": hashlib.sha256(emg.tobytes()).hexdigest()}
