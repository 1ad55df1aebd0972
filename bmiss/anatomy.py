"""Anatomy: the limb region, the motor-unit pool and the electrode grid, read from TOML.

Coordinates (mm): ``x`` lateral (across the fibres), ``z`` along the fibres, ``y`` depth below the
skin surface. The muscle is centred at x = 0 and the fibre midpoints lie at z = 0.

Shipped anatomies live in the top-level ``anatomy/`` folder and install as the package data
``bmiss.anatomies`` (``bmiss.anatomy.list_anatomies()``); any TOML with the same keys
can be passed by path.  Unknown sections and keys are rejected with a "did you mean" hint.

``[grid] electrode = "GR08MM1305"`` (optional, with ``orientation = 0 | 180``) takes the grid's
rows, columns, IED, missing electrodes and amplifier channel order (``channel_order``) from
:mod:`bmiss.electrodes`; :meth:`Anatomy.with_layout` does the same for a recording's layout.
"""
from __future__ import annotations

from .errors import AnatomyError, did_you_mean  # noqa: F401  (AnatomyError re-exported)
import math
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

def _anatomy_dir() -> Path:
    """The shipped anatomies: the package ``bmiss.anatomies`` (the top-level ``anatomy/`` folder of a
    checkout, mapped by setup.py; a wheel's copy); a checkout run without installing falls back to
    the folder itself."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("bmiss.anatomies")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    return Path(__file__).resolve().parents[1] / "anatomy"


ANATOMY_DIR = _anatomy_dir()
MONTAGES = ("monopolar", "single_differential", "double_differential")




# (section, key): (type, lo, hi, unit/help). Ranges are physiological plausibility bounds.
_SCHEMA: dict[str, dict[str, tuple]] = {
    "layers": {
        "skin_thickness_mm": (float, 0.2, 5.0, "mm"),
        "skin_conductivity": (float, 1e-4, 5.0, "S/m"),
        "fat_thickness_mm": (float, 0.0, 30.0, "mm"),
        "fat_conductivity": (float, 1e-3, 1.0, "S/m"),
        "muscle_conductivity_radial": (float, 0.01, 2.0, "S/m"),
        "muscle_conductivity_longitudinal": (float, 0.01, 5.0, "S/m"),
    },
    "muscle": {
        "width_mm": (float, 5.0, 300.0, "mm"),
        "thickness_mm": (float, 3.0, 100.0, "mm"),
        "fibre_length_mm": (float, 20.0, 250.0, "mm"),
        "fibre_length_spread_mm": (float, 0.0, 50.0, "mm"),
        "iz_fraction": (float, 0.2, 0.8, "fraction of fibre length"),
        "iz_spread_fraction": (float, 0.0, 0.3, "fraction of fibre length"),
        "iz_jitter_mm": (float, 0.0, 15.0, "mm"),
        "end_jitter_mm": (float, 0.0, 15.0, "mm"),
        "cv_mean_m_s": (float, 2.0, 7.0, "m/s"),
        "cv_std_m_s": (float, 0.0, 1.5, "m/s"),
        "mu_fibre_density_per_mm2": (float, 1.0, 500.0, "fibres/mm^2"),
    },
    "pool": {
        "n_units": (int, 1, 2000, "units"),
        "recruitment_range": (float, 1.0, 200.0, "ratio"),
        "recruitment_end": (float, 0.05, 1.0, "fraction of max excitation"),
        "fibres_min": (int, 1, 5000, "fibres"),
        "fibres_max": (int, 1, 5000, "fibres"),
        "min_rate_hz": (float, 1.0, 30.0, "Hz"),
        "peak_rate_first_hz": (float, 5.0, 100.0, "Hz"),
        "peak_rate_last_hz": (float, 5.0, 100.0, "Hz"),
        "isi_cov": (float, 0.0, 0.5, "ratio"),
    },
    "grid": {
        "rows": (int, 1, 64, "electrodes"),
        "cols": (int, 1, 64, "electrodes"),
        "ied_mm": (float, 1.0, 50.0, "mm"),
        "electrode_radius_mm": (float, 0.05, 10.0, "mm"),
        "centre_x_mm": (float, -200.0, 200.0, "mm"),
        "centre_z_mm": (float, -200.0, 200.0, "mm"),
        "rotation_deg": (float, -180.0, 180.0, "degrees"),
        "montage": (str, None, None, " | ".join(MONTAGES)),
        "missing": (list, None, None, "list of [row, col]"),
        "fs_hz": (float, 500.0, 100000.0, "Hz"),
        "muap_samples": (int, 16, 1024, "samples"),
        "electrode": (str, None, None, "grid code from bmiss.electrodes, e.g. GR08MM1305 (optional)"),
        "orientation": (int, 0, 180, "0 or 180 degrees (optional; 180 = connector towards the researcher)"),
        "channel_order": (list, None, None, "list of [row, col] per channel, amplifier order (optional)"),
    },
}
# Optional keys and their defaults (everything else is required).
_OPTIONAL = {("grid", "missing"): (), ("grid", "electrode"): "", ("grid", "orientation"): 180,
             ("grid", "channel_order"): ()}
_TOP_KEYS = ("name", "description")


@dataclass(frozen=True)
class Layers:
    """Planar volume conductor: skin over fat over (anisotropic) muscle. Thickness mm, conductivity S/m."""

    skin_thickness_mm: float
    skin_conductivity: float
    fat_thickness_mm: float
    fat_conductivity: float
    muscle_conductivity_radial: float
    muscle_conductivity_longitudinal: float


@dataclass(frozen=True)
class Muscle:
    width_mm: float
    thickness_mm: float
    fibre_length_mm: float
    fibre_length_spread_mm: float
    iz_fraction: float
    iz_spread_fraction: float
    iz_jitter_mm: float
    end_jitter_mm: float
    cv_mean_m_s: float
    cv_std_m_s: float
    mu_fibre_density_per_mm2: float


@dataclass(frozen=True)
class PoolSpec:
    n_units: int
    recruitment_range: float
    recruitment_end: float
    fibres_min: int
    fibres_max: int
    min_rate_hz: float
    peak_rate_first_hz: float
    peak_rate_last_hz: float
    isi_cov: float


@dataclass(frozen=True)
class Grid:
    """Electrode grid. Rows run along the fibres when ``rotation_deg`` = 0; channels are row-major."""

    rows: int
    cols: int
    ied_mm: float
    electrode_radius_mm: float
    centre_x_mm: float
    centre_z_mm: float
    rotation_deg: float
    montage: str
    missing: tuple[tuple[int, int], ...]
    fs_hz: float
    muap_samples: int
    # A plain grid is row-major; LayoutGrid (below) adds the layout fields. They are class
    # attributes here, not fields, so a plain grid's fields (what the surrogate's compatibility
    # check and old TOML files know) are unchanged.
    electrode = ""  # grid code of the layout ("" = plain grid)
    orientation = 180  # of a named grid, degrees
    channel_order = ()  # (row, col) per channel in amplifier order; () = row-major

    def electrode_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(xz [n_electrodes, 2] mm, rowcol [n_electrodes, 2]) of the present electrodes.

        Order: ``channel_order`` (the amplifier's) when set, else row-major.  With a monopolar
        montage, channel k of the forward model is electrode k, so the MUAP channels come out in
        the recording's order."""
        if self.channel_order:
            rc = np.array(self.channel_order, np.int64).reshape(-1, 2)
        else:
            missing = set(self.missing)
            rc = np.array([(r, c) for r in range(self.rows) for c in range(self.cols) if (r, c) not in missing])
        u = (rc[:, 1] - (self.cols - 1) / 2) * self.ied_mm  # across fibres
        v = (rc[:, 0] - (self.rows - 1) / 2) * self.ied_mm  # along fibres
        th = math.radians(self.rotation_deg)
        x = self.centre_x_mm + u * math.cos(th) - v * math.sin(th)
        z = self.centre_z_mm + u * math.sin(th) + v * math.cos(th)
        return np.stack([x, z], 1), rc

    def montage_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(M [n_channels, n_electrodes], channel rowcol [n_channels, 2]): channels = M @ electrodes.

        Monopolar: one channel per electrode, in ``electrode_positions`` order (the amplifier's
        when ``channel_order`` is set).  Differential montages difference consecutive electrodes
        along a column (along the fibres), channels row-major; a channel exists only where every
        electrode it needs is present.
        """
        _, rc = self.electrode_positions()
        if self.montage == "monopolar":
            return np.eye(len(rc), dtype=np.float32), rc.astype(np.int64)
        index = {tuple(p): i for i, p in enumerate(rc.tolist())}
        taps = {"monopolar": [1.0], "single_differential": [-1.0, 1.0],
                "double_differential": [1.0, -2.0, 1.0]}[self.montage]
        rows_out = self.rows - len(taps) + 1
        mats, chans = [], []
        for r in range(rows_out):
            for c in range(self.cols):
                need = [(r + k, c) for k in range(len(taps))]
                if all(n in index for n in need):
                    m = np.zeros(len(rc))
                    for k, n in enumerate(need):
                        m[index[n]] = taps[k]
                    mats.append(m)
                    chans.append((r, c))
        return np.array(mats, np.float32), np.array(chans, np.int64)

    def with_layout(self, layout, source: str = "grid") -> "Grid":
        """This grid with ``layout``'s geometry and channel order (see :meth:`Anatomy.with_layout`)."""
        ch = dict(rows=int(layout.rows), cols=int(layout.cols), ied_mm=float(layout.ied_mm),
                  missing=tuple(layout.missing), channel_order=tuple(map(tuple, layout.channel_map.tolist())),
                  electrode=str(layout.code), orientation=180 if layout.orientation is None else int(layout.orientation))
        if layout.electrode_diameter_mm:
            ch["electrode_radius_mm"] = float(layout.electrode_diameter_mm) / 2
        g = make_grid(**{**plain_fields(self), **ch})
        _check_grid(g, source)
        return g

    @property
    def channel_grid_shape(self) -> tuple[int, int]:
        ntaps = {"monopolar": 1, "single_differential": 2, "double_differential": 3}[self.montage]
        return (self.rows - ntaps + 1, self.cols)

    @property
    def n_channels(self) -> int:
        return int(self.montage_matrix()[0].shape[0])


@dataclass(frozen=True)
class LayoutGrid(Grid):
    """A grid with a named or custom electrode layout: the channels come in ``channel_order``
    (the amplifier's), ``electrode`` is the grid code and ``orientation`` its mounting (0/180)."""

    electrode: str = ""
    orientation: int = 180
    channel_order: tuple[tuple[int, int], ...] = ()


_LAYOUT_FIELDS = ("electrode", "orientation", "channel_order")


def plain_fields(g: Grid) -> dict:
    """The fields every grid has (not the layout fields)."""
    return {f.name: getattr(g, f.name) for f in fields(Grid)}


def make_grid(**vals) -> Grid:
    """A :class:`LayoutGrid` when ``electrode`` or ``channel_order`` is given, else a plain :class:`Grid`."""
    lay = {k: vals.pop(k) for k in _LAYOUT_FIELDS if k in vals}
    if lay.get("electrode") or lay.get("channel_order"):
        return LayoutGrid(**vals, **lay)
    return Grid(**vals)


@dataclass(frozen=True)
class Anatomy:
    name: str
    description: str
    layers: Layers
    muscle: Muscle
    pool: PoolSpec
    grid: Grid
    source: str = ""  # file it was read from
    text: str = ""  # TOML text, stored with simulations for reproducibility

    @property
    def muscle_top_mm(self) -> float:
        """Depth of the muscle surface below the skin, mm."""
        return self.layers.skin_thickness_mm + self.layers.fat_thickness_mm

    def with_grid(self, **changes) -> "Anatomy":
        """Copy with grid fields replaced (e.g. ``rows=8, cols=8, ied_mm=10``); re-validated.

        Changing rows, cols or missing without a new ``channel_order`` drops the amplifier order
        (and electrode code) of a named layout: the grid becomes row-major."""
        if {"rows", "cols", "missing"} & set(changes) and "channel_order" not in changes:
            changes = {**changes, "channel_order": (), "electrode": changes.get("electrode", "")}
        a = replace(self, grid=make_grid(**{**plain_fields(self.grid), "electrode": self.grid.electrode,
                                            "orientation": self.grid.orientation,
                                            "channel_order": self.grid.channel_order, **changes}))
        _check_geometry(a, self.source or self.name)
        return a

    def with_layout(self, layout) -> "Anatomy":
        """Copy whose grid is ``layout``'s (:class:`bmiss.electrodes.Layout`): rows, columns, IED,
        missing electrodes, amplifier channel order and (when known) electrode radius; the grid
        centre, rotation, montage and sampling rate stay.  Re-validated (the grid must lie over
        the muscle)."""
        a = replace(self, grid=self.grid.with_layout(layout, source=self.source or self.name))
        _check_geometry(a, self.source or self.name)
        return a

    def with_layers(self, **changes) -> "Anatomy":
        return replace(self, layers=replace(self.layers, **changes))

    def param_bounds(self) -> dict[str, tuple[float, float]]:
        """Physiological bounds of the fitted MU parameters (physical units), from this anatomy."""
        m = self.muscle
        top = self.muscle_top_mm
        L = m.fibre_length_mm
        half_w = m.width_mm / 2
        iz_c = (m.iz_fraction - 0.5) * L
        iz_half = max(3 * m.iz_spread_fraction * L, 5.0)
        return {
            "depth_mm": (top + 0.5, top + m.thickness_mm),
            "x_mm": (-half_w, half_w),
            "log_fibres": (math.log(max(self.pool.fibres_min, 1)) - 0.5, math.log(self.pool.fibres_max) + 0.5),
            "iz_mm": (iz_c - iz_half, iz_c + iz_half),
            "cv_m_s": (max(m.cv_mean_m_s - 4 * max(m.cv_std_m_s, 0.1), 2.0), m.cv_mean_m_s + 4 * max(m.cv_std_m_s, 0.1)),
            "length_mm": (L - 4 * max(m.fibre_length_spread_mm, 2.0), L + 4 * max(m.fibre_length_spread_mm, 2.0)),
        }


def list_anatomies() -> list[str]:
    return sorted(p.stem for p in ANATOMY_DIR.glob("*.toml"))


def resolve(name_or_path: str | Path) -> Path:
    """Path of a shipped anatomy (by name) or of a TOML file.

    A shipped name wins over a folder of the same name in the working directory; a folder
    given as a path is refused with a clear message."""
    p = Path(name_or_path)
    shipped = ANATOMY_DIR / f"{p.name}.toml"
    if p.suffix != ".toml" and len(p.parts) == 1 and shipped.is_file() and not p.is_file():
        return shipped
    if p.is_dir():
        raise AnatomyError(f"anatomy {str(p)!r} is a folder, not a TOML file; give a .toml path or one of "
                           f"{', '.join(list_anatomies())}")
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"anatomy file {p} does not exist; shipped anatomies: {', '.join(list_anatomies())}")
        return p
    hint = did_you_mean(name_or_path, list_anatomies())
    raise FileNotFoundError(
        f"no shipped anatomy named {name_or_path!r}{hint}; choose one of {', '.join(list_anatomies())} or give a "
        ".toml path")


def load(name_or_path: "str | Path | Anatomy" = "biceps_brachii") -> Anatomy:
    """Read and validate an anatomy TOML (a shipped name such as ``"biceps_brachii"`` or a path).

    An :class:`Anatomy` passes through unchanged."""
    if isinstance(name_or_path, Anatomy):
        return name_or_path
    path = resolve(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AnatomyError(f"{path}: cannot read the anatomy file ({e})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AnatomyError(f"{path}: not valid TOML ({e})") from e
    return from_dict(raw, source=str(path), text=text)


def _did_you_mean(word: str, options) -> str:
    return did_you_mean(word, options, cutoff=0.5)


def from_dict(raw: dict, source: str = "<dict>", text: str = "") -> Anatomy:
    if not isinstance(raw, dict):
        raise AnatomyError(f"{source}: an anatomy is a TOML table, got {type(raw).__name__}")
    for k in raw:
        if k not in _SCHEMA and k not in _TOP_KEYS:
            kind = "section" if isinstance(raw[k], dict) else "key"
            raise AnatomyError(f"{source}: unknown {kind} {('[' + k + ']') if kind == 'section' else repr(k)}"
                               f"{_did_you_mean(k, list(_SCHEMA) + list(_TOP_KEYS))}; allowed sections: "
                               f"{', '.join('[' + x + ']' for x in _SCHEMA)} and keys {', '.join(_TOP_KEYS)}")
    sections = {}
    for sec, keys in _SCHEMA.items():
        if sec not in raw or not isinstance(raw[sec], dict):
            raise AnatomyError(f"{source}: missing section [{sec}] (needs keys {', '.join(keys)})")
        unknown = [k for k in raw[sec] if k not in keys]
        if unknown:
            k = unknown[0]
            raise AnatomyError(f"{source}: [{sec}] has unknown key {k!r}{_did_you_mean(k, keys)}; allowed: "
                               f"{', '.join(keys)}")
        layout = None
        if sec == "grid" and raw[sec].get("electrode") and _is_named(raw[sec]["electrode"], raw[sec]):
            layout = _grid_layout(raw[sec], source)
        vals = {}
        for key, (typ, lo, hi, unit) in keys.items():
            where = f"{source}: [{sec}] {key}"
            if key not in raw[sec]:
                if layout is not None and key in _LAYOUT_KEYS:
                    vals[key] = _LAYOUT_KEYS[key](layout)
                    continue
                if (sec, key) in _OPTIONAL:
                    vals[key] = _OPTIONAL[(sec, key)]
                    continue
                raise AnatomyError(f"{where} is missing ({unit}" + (f", allowed {lo}..{hi})" if lo is not None else ")"))
            v = raw[sec][key]
            if typ is str:
                if not isinstance(v, str):
                    raise AnatomyError(f"{where} = {v!r} must be a string ({unit})")
                if key == "montage" and v not in MONTAGES:
                    raise AnatomyError(f"{where} = {v!r} is not a known montage{_did_you_mean(v, MONTAGES)}; "
                                       f"allowed: {', '.join(MONTAGES)}")
            elif typ is list:
                try:
                    v = tuple((int(a), int(b)) for a, b in v)
                except (TypeError, ValueError):
                    raise AnatomyError(f"{where} must be a list of [row, col] pairs, got {v!r}") from None
            else:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and not float(v).is_integer()):
                    raise AnatomyError(f"{where} = {v!r} must be {'an integer' if typ is int else 'a number'} ({unit})")
                v = typ(v)
                if not (lo <= v <= hi) or not math.isfinite(v):
                    raise AnatomyError(f"{where} = {v} is outside the allowed range {lo}..{hi} {unit}")
                if key == "orientation" and v not in (0, 180):
                    raise AnatomyError(f"{where} = {v} must be 0 or 180 degrees")
            if layout is not None and key in _LAYOUT_KEYS and key != "electrode_radius_mm":
                want = _LAYOUT_KEYS[key](layout)
                same = (sorted(v) == sorted(want)) if key == "missing" else (v == want)
                if not same:
                    raise AnatomyError(f"{where} = {v!r} contradicts electrode {layout.code} "
                                       f"(orientation {layout.orientation}): expected {want!r}; drop the key or fix it")
            vals[key] = v
        sections[sec] = vals
    a = Anatomy(
        name=str(raw.get("name", Path(source).stem)),
        description=str(raw.get("description", "")),
        layers=Layers(**sections["layers"]),
        muscle=Muscle(**sections["muscle"]),
        pool=PoolSpec(**sections["pool"]),
        grid=make_grid(**sections["grid"]),
        source=source,
        text=text,
    )
    _check_geometry(a, source)
    return a


# Grid keys that an ``electrode = CODE`` line fills in (and checks when they are also given).
_LAYOUT_KEYS = {
    "rows": lambda lay: int(lay.rows),
    "cols": lambda lay: int(lay.cols),
    "ied_mm": lambda lay: float(lay.ied_mm),
    "missing": lambda lay: tuple(lay.missing),
    "channel_order": lambda lay: tuple(map(tuple, lay.channel_map.tolist())),
    "electrode_radius_mm": lambda lay: float(lay.electrode_diameter_mm or 1.0) / 2,
}


def _is_named(code, g: dict) -> bool:
    """A registry grid code fills the grid in; any other ``electrode`` value ("row-major",
    "recording", a custom map's name) is a label, and then ``channel_order`` must be given."""
    from . import electrodes

    if not isinstance(code, str):
        return True  # let _grid_layout report the bad value
    return electrodes.canonical_code(code) is not None or "channel_order" not in g


def _grid_layout(g: dict, source: str):
    from . import electrodes

    try:
        return electrodes.load_layout(g["electrode"], g.get("orientation"))
    except electrodes.LayoutError as e:
        raise AnatomyError(f"{source}: [grid] electrode: {e}") from None


def _check_grid(g: Grid, source: str) -> None:
    """Grid-only checks: sizes, missing electrodes and channel order inside the grid."""
    if g.rows < 1 or g.cols < 1:
        raise AnatomyError(f"{source}: [grid] {g.rows}x{g.cols} is not a grid (rows and cols must be >= 1)")
    if not (g.ied_mm > 0 and math.isfinite(g.ied_mm)):
        raise AnatomyError(f"{source}: [grid] ied_mm = {g.ied_mm} must be a positive number of mm")
    for r, c in g.missing:
        if not (0 <= r < g.rows and 0 <= c < g.cols):
            raise AnatomyError(f"{source}: [grid] missing electrode ({r}, {c}) is outside the {g.rows}x{g.cols} grid")
    if g.channel_order:
        seen = set()
        miss = set(g.missing)
        for r, c in g.channel_order:
            if not (0 <= r < g.rows and 0 <= c < g.cols):
                raise AnatomyError(f"{source}: [grid] channel_order position ({r}, {c}) is outside the "
                                   f"{g.rows}x{g.cols} grid")
            if (r, c) in seen or (r, c) in miss:
                raise AnatomyError(f"{source}: [grid] channel_order lists ({r}, {c}) twice or at a missing electrode")
            seen.add((r, c))
        if len(seen) + len(miss) != g.rows * g.cols:
            raise AnatomyError(f"{source}: [grid] channel_order has {len(seen)} channels and missing has {len(miss)} "
                               f"electrodes, but a {g.rows}x{g.cols} grid has {g.rows * g.cols} positions: list every "
                               "position once in one of them")
    if len(g.missing) >= g.rows * g.cols:
        raise AnatomyError(f"{source}: [grid] every electrode of the {g.rows}x{g.cols} grid is missing")


def _check_geometry(a: Anatomy, source: str) -> None:
    g, m, p = a.grid, a.muscle, a.pool
    if p.fibres_min > p.fibres_max:
        raise AnatomyError(f"{source}: [pool] fibres_min ({p.fibres_min}) must not exceed fibres_max ({p.fibres_max})")
    _check_grid(g, source)
    xz, _ = g.electrode_positions()
    # The grid must lie over the muscle: laterally within the belly (+ one IED of slack), and
    # along the fibres within the fibre extent plus 30 mm (grids often reach over the tendon).
    half_w = m.width_mm / 2 + g.ied_mm
    half_l = m.fibre_length_mm / 2 + 30.0
    if np.abs(xz[:, 0]).max() > half_w:
        raise AnatomyError(
            f"{source}: [grid] electrodes reach x = {np.abs(xz[:, 0]).max():.1f} mm but the muscle is only "
            f"{m.width_mm} mm wide (allowed |x| <= {half_w:.1f} mm): the grid falls off the muscle; "
            "move centre_x_mm, reduce cols/ied_mm or widen [muscle] width_mm")
    if np.abs(xz[:, 1]).max() > half_l:
        raise AnatomyError(
            f"{source}: [grid] electrodes reach z = {np.abs(xz[:, 1]).max():.1f} mm along the fibres but the fibres "
            f"span +/-{m.fibre_length_mm / 2:.1f} mm (allowed |z| <= {half_l:.1f} mm): the grid falls off the muscle; "
            "move centre_z_mm or reduce rows/ied_mm")
    if g.montage_matrix()[0].shape[0] == 0:
        raise AnatomyError(f"{source}: [grid] montage {g.montage!r} leaves no channel on a {g.rows}x{g.cols} grid")
    if p.peak_rate_first_hz < p.min_rate_hz or p.peak_rate_last_hz < p.min_rate_hz:
        raise AnatomyError(f"{source}: [pool] peak rates must be >= min_rate_hz ({p.min_rate_hz} Hz)")


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


def _toml_value(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def to_toml(a: Anatomy) -> str:
    """TOML text of ``a`` (``load``/``from_dict`` read it back to an equal Anatomy)."""
    lines = [f"name = {_toml_value(a.name)}", f"description = {_toml_value(a.description)}"]
    for sec, obj in (("layers", a.layers), ("muscle", a.muscle), ("pool", a.pool), ("grid", a.grid)):
        lines += ["", f"[{sec}]"] + [f"{f.name} = {_toml_value(getattr(obj, f.name))}" for f in fields(obj)]
    return "\n".join(lines) + "\n"
