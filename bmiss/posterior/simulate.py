"""Training data for the posterior network: per-fibre MUAPs drawn far wider than any anatomy.

Every example is one motor unit seen by one grid:

* **Tissue**: skin 0.5-2.2 mm, fat 0.5-8.5 mm, conductivities (skin 0.2-1.5, fat 0.03-0.08, muscle
  across 0.06-0.2 S/m, anisotropy 2-8), so the conductivity scale (not identifiable from a MUAP's
  shape) moves the amplitude and the fibre count carries that uncertainty.
* **Grid**: 4-13 rows x 4-8 columns (<= 64 electrodes, sometimes a missing corner), IED 4-10.5 mm,
  electrode diameter 0.5-5 mm, turned by up to +-15 deg relative to the fibres (unknown to the
  network: it only hears the rotation the pipeline says it knows), sampling rate 2048-10240 Hz.
* **Unit**: depth below the muscle surface 0.3-26 mm, lateral position up to 12 mm beyond the grid
  edge, 15-1100 fibres (log-uniform), IZ anywhere from 22 mm before to 22 mm beyond the grid along
  the fibres, IZ at 0.2-0.8 of the fibre, CV 2.8-5.8 m/s, fibre length 25-170 mm (short fibres
  included), IZ scatter 0.5-3 mm, fibre-end scatter 0.5-4 mm, fibre density 10-40 /mm².
* **MUAP family**: per-fibre sums (at most ``N_DRAW`` fibres drawn uniformly in the territory and
  scaled to the unit's count: more scatter than a real unit, never less) with the Rosenfalck or the
  ``gamma2`` intracellular action potential, stretched along the fibre by 0.75-1.35.
* **Noise at the average's level**: band-passed white noise plus a spatially smooth component
  (other units' activity is correlated across neighbouring electrodes), at a per-channel std
  that makes the template's peak-to-noise ratio log-uniform in 3-400 (what a spike-triggered
  average of 30-500 discharges gives); the per-sample std is what ``Templates.noise_std`` holds.

The physics is :class:`bmiss.conductor.Conductor`'s (layers, anisotropy, electrode filter,
source spectrum); only the territory sum (fewer fibres) and the IAP stretch are written here.
Units: mm, m/s, ms, µV, Hz.
"""
from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from ..conductor import _PERIOD_MM, _SOURCE_GAIN, _SRC_DZ, _iap_slope, Tissue
from ..templates import bandpass_muaps

N_DRAW = 48  # fibres drawn per unit (scaled to the unit's count)
NE = 64  # electrodes per example (padded)
PERIOD_X = 128.0  # period of the sum across the fibres (see Conductor.from_anatomy)
SIM_T0_MS, SIM_T1_MS = -12.0, 62.0  # simulated window relative to the discharge
FS_CHOICES = (2048.0, 4096.0, 5120.0, 10240.0)
BAND = (20.0, 500.0)

# ranges drawn (documented in the weights' JSON and used by the domain check)
RANGES = {
    "skin_mm": (0.5, 2.2), "fat_mm": (0.5, 8.5), "sigma_skin": (0.2, 1.5), "sigma_fat": (0.03, 0.08),
    "sigma_r": (0.06, 0.2), "anisotropy": (2.0, 8.0), "ied_mm": (4.0, 10.5), "diameter_mm": (0.5, 5.0),
    "rotation_deg": (-15.0, 15.0), "depth_below_mm": (0.3, 26.0), "x_beyond_edge_mm": 12.0,
    "log_fibres": (math.log(15.0), math.log(1100.0)), "iz_beyond_edge_mm": 22.0, "iz_fraction": (0.2, 0.8),
    "cv_m_s": (2.8, 5.8), "length_mm": (25.0, 170.0), "iz_jitter_mm": (0.5, 3.0), "end_jitter_mm": (0.5, 4.0),
    "density_per_mm2": (10.0, 40.0), "iap_stretch": (0.75, 1.35), "peak_to_noise": (3.0, 400.0),
    "fs_hz": (2048.0, 10240.0), "rows": (4, 13), "cols": (4, 8),
}
# k-grid buckets by the depth of the muscle surface (skin + fat): kmax = 9 / top, capped at pi / dz
_TOP_EDGES = (1.0, 2.0, 3.5, 6.0, 11.0)


def _k_grid(top_min: float):
    kmax = min(9.0 / top_min, np.pi / _SRC_DZ)
    dk, dkx = 2 * np.pi / _PERIOD_MM, 2 * np.pi / PERIOD_X
    m, mx = int(np.ceil(kmax / dk)), int(np.ceil(kmax / dkx))
    return dkx * np.arange(-mx, mx + 1), dk * np.arange(0, m + 1)


def _source_spectrum(kz, t_ms, zs, cv, left_mm, right_mm, onset_ms, end_jitter, stretch, gamma2):
    """Ŝ(kz, t) [T, Nkz] complex (as ``Conductor._source_spectrum``) with a per-example fibre-end scatter,
    an IAP stretched along the fibre by ``stretch`` and the IAP shape chosen by ``gamma2`` (0/1)."""
    tau = t_ms - onset_ms
    z = zs[None, :]
    front = cv * tau[:, None]
    w_r = jax.scipy.special.ndtr(z / _SRC_DZ) * jax.scipy.special.ndtr((right_mm - z) / end_jitter)
    w_l = jax.scipy.special.ndtr(-z / _SRC_DZ) * jax.scipy.special.ndtr((z + left_mm) / end_jitter)

    def slope(zeta):
        a = _iap_slope("rosenfalck", zeta / stretch)
        b = _iap_slope("gamma2", zeta / stretch)
        return (a + gamma2 * (b - a)) / stretch

    psi = -slope(front - z) * w_r + slope(front + z) * w_l
    nk = kz.shape[0]
    spec = jnp.fft.rfft(psi, axis=1)[:, :nk]
    sign = jnp.where(jnp.arange(nk) % 2 == 0, 1.0, -1.0)
    return spec * sign * (1j * kz) * _SRC_DZ


def _simulate_one(cond, kx, kz, t_ms, zs, e):  # noqa: C901
    """Monopolar MUAP [NE, T] µV of one example ``e`` (dict of scalars and arrays, see ``draw``)."""
    tis = Tissue(skin_mm=e["skin_mm"], fat_mm=e["fat_mm"], sigma_skin=e["sigma_skin"], sigma_fat=e["sigma_fat"],
                 sigma_r=e["sigma_r"], sigma_z=e["sigma_r"] * e["anisotropy"])
    ky, layer = cond._ky_and_layers(tis)
    n = jnp.exp(e["log_fibres"])
    R = jnp.sqrt(n / (np.pi * e["density"]))
    rad = R * jnp.sqrt(e["u_r"])
    ang = 2 * np.pi * e["u_a"]
    fx, fy = rad * jnp.cos(ang), e["depth_mm"] + rad * jnp.sin(ang)
    dz = e["iz_jitter_mm"] * e["g_iz"]
    top = e["skin_mm"] + e["fat_mm"]
    d = jax.nn.softplus(4.0 * (fy - top)) / 4.0
    att = jnp.exp(-ky[None] * d[:, None, None])
    ph = jnp.exp(-1j * (kx[None, :, None] * fx[:, None, None] + kz[None, None, :] * dz[:, None, None]))
    terr = jnp.sum(att * ph, axis=0) * (n / N_DRAW)
    F = terr * layer * e["ef"]
    px = jnp.exp(1j * kx[None, :] * (e["ex"][:, None] - e["x_mm"]))
    A = px @ F
    kzw = jnp.where(kz == 0, 1.0, 2.0)
    A = A * jnp.exp(1j * kz[None, :] * (e["ez"][:, None] - e["iz_mm"])) * kzw
    L = e["length_mm"]
    # iz_mm here: IZ position along the fibres in the grid frame; the fibre runs from
    # iz - izf L to iz + (1 - izf) L
    S = _source_spectrum(kz, t_ms, zs, e["cv_m_s"], e["iz_fraction"] * L, (1 - e["iz_fraction"]) * L, 1.0,
                         jnp.maximum(e["end_jitter_mm"], _SRC_DZ), e["stretch"], e["gamma2"])
    dk = (2 * np.pi / _PERIOD_MM) * (2 * np.pi / PERIOD_X) / (4 * np.pi**2)
    return jnp.real(A @ S.T) * (dk * _SOURCE_GAIN)


def _electrode_filter(kx, kz, radius_mm):
    kr = np.hypot(kx[:, None], kz[None, :]) * radius_mm
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kr > 1e-9, 2 * scipy.special.j1(kr) / kr, 1.0).astype(np.float32)


_COMPILED: dict = {}


def _batch_fn(bucket: int, fs: float):
    """Jitted simulator of one batch for a k-grid bucket and a sampling rate (cached)."""
    key = (bucket, fs)
    if key not in _COMPILED:
        kx, kz = _k_grid(_TOP_EDGES[bucket])
        T = int(round((SIM_T1_MS - SIM_T0_MS) * 1e-3 * fs))
        t_ms = SIM_T0_MS + np.arange(T) / fs * 1e3
        n_src = int(round(_PERIOD_MM / _SRC_DZ))
        zs = (np.arange(n_src) - n_src // 2) * _SRC_DZ
        f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
        # a Conductor only for its layer transfer (Conductor._ky_and_layers) on this k grid
        from ..conductor import Conductor

        cond = Conductor(tissue=None, kx=f32(kx), kz=f32(kz), kz_weight=None, elec_filter=None, ex=None, ez=None,
                         montage=None, zs=f32(zs), t_ms=f32(t_ms), quad_x=None, quad_y=None, quad_w=None, density=20.0,
                         iz_jitter_mm=0.0, end_jitter_mm=0.0, onset_ms=1.0, n_src=n_src)
        consts = (f32(kx), f32(kz), f32(t_ms), f32(zs))

        @jax.jit
        def run(e):
            return jax.lax.map(lambda ee: _simulate_one(cond, *consts, ee), e)

        _COMPILED[key] = (run, kx, kz, t_ms)
    return _COMPILED[key]


def _grid(rng) -> tuple[np.ndarray, float, int]:
    """Electrode positions [NE, 2] (x across, z along, grid frame, centre 0; padded), IED, count."""
    while True:
        rows, cols = int(rng.integers(4, 14)), int(rng.integers(4, 9))
        if rows * cols <= NE + 1:
            break
    ied = float(rng.uniform(*RANGES["ied_mm"]))
    rc = [(r, c) for r in range(rows) for c in range(cols)]
    if rows * cols > NE or rng.random() < 0.2:
        rc = rc[1:]  # a missing corner, as on the 13x5 grid
    rc = np.array(rc, np.float64)
    pos = np.stack([(rc[:, 1] - (cols - 1) / 2) * ied, (rc[:, 0] - (rows - 1) / 2) * ied], 1)
    if rng.random() < 0.3:  # a random subset of electrodes (bad channels, partial grids)
        keep = rng.random(len(pos)) > rng.uniform(0.0, 0.25)
        keep[: max(0, 16 - keep.sum())] = True
        pos = pos[keep]
    n = len(pos)
    out = np.zeros((NE, 2))
    out[:n] = pos
    out[n:] = pos[0]
    return out, ied, n


def bucket_of(top_mm: float) -> int:
    """k-grid bucket of a muscle surface depth (skin + fat, mm)."""
    return int(np.clip(np.searchsorted(_TOP_EDGES, top_mm, side="right") - 1, 0, len(_TOP_EDGES) - 2))


def _fixed_grid(pos: np.ndarray):
    pos = np.asarray(pos, np.float64)
    n = len(pos)
    if n > NE:
        raise ValueError(f"at most {NE} electrodes per simulated example, got {n}")
    out = np.zeros((NE, 2))
    out[:n] = pos
    out[n:] = pos[0]
    from .features import median_ied

    return out, median_ied(pos), n


def draw(rng: np.random.Generator, n: int, bucket: int, grid_pos=None, fixed: dict | None = None) -> list[dict]:
    """Draw ``n`` examples whose muscle surface (skin + fat) lies in ``bucket``'s depth range.

    ``grid_pos`` [k, 2] (grid frame, mm) fixes the grid; ``fixed`` overrides drawn values by name
    (e.g. ``{"fat_mm": 3.0, "skin_mm": 1.0, "rotation_deg": 0.0}``; skin + fat must lie in the bucket).
    """
    R = RANGES
    fixed = dict(fixed or {})
    lo_top, hi_top = _TOP_EDGES[bucket], _TOP_EDGES[bucket + 1]
    out = []
    while len(out) < n:
        skin = fixed.get("skin_mm", rng.uniform(*R["skin_mm"]))
        top = rng.uniform(lo_top, hi_top)
        fat = fixed.get("fat_mm", top - skin)
        if "fat_mm" not in fixed and not (R["fat_mm"][0] <= fat <= R["fat_mm"][1]):
            continue
        pos, ied, n_el = _grid(rng) if grid_pos is None else _fixed_grid(grid_pos)
        rot = fixed.get("rotation_deg", rng.uniform(*R["rotation_deg"]))
        th = math.radians(rot)
        ex = pos[:, 0] * math.cos(th) - pos[:, 1] * math.sin(th)
        ez = pos[:, 0] * math.sin(th) + pos[:, 1] * math.cos(th)
        half_w = np.abs(pos[:n_el, 0]).max()
        half_h = np.abs(pos[:n_el, 1]).max()
        logn = rng.uniform(*R["log_fibres"])
        dens = rng.uniform(*R["density_per_mm2"])
        Rt = math.sqrt(math.exp(logn) / (math.pi * dens))
        depth_below = rng.uniform(R["depth_below_mm"][0], R["depth_below_mm"][1]) + 0.5 * Rt
        e = {
            "skin_mm": skin, "fat_mm": fat, "sigma_skin": rng.uniform(*R["sigma_skin"]),
            "sigma_fat": rng.uniform(*R["sigma_fat"]), "sigma_r": rng.uniform(*R["sigma_r"]),
            "anisotropy": rng.uniform(*R["anisotropy"]), "radius_mm": rng.uniform(*R["diameter_mm"]) / 2,
            "depth_mm": top + depth_below,
            "x_mm": rng.uniform(-(half_w + R["x_beyond_edge_mm"]), half_w + R["x_beyond_edge_mm"]),
            "log_fibres": logn, "density": dens,
            "iz_mm": rng.uniform(-(half_h + R["iz_beyond_edge_mm"]), half_h + R["iz_beyond_edge_mm"]),
            "iz_fraction": rng.uniform(*R["iz_fraction"]), "cv_m_s": rng.uniform(*R["cv_m_s"]),
            "length_mm": math.exp(rng.uniform(math.log(R["length_mm"][0]), math.log(R["length_mm"][1]))),
            "iz_jitter_mm": rng.uniform(*R["iz_jitter_mm"]), "end_jitter_mm": rng.uniform(*R["end_jitter_mm"]),
            "stretch": rng.uniform(*R["iap_stretch"]), "gamma2": float(rng.random() < 0.35),
            "u_r": rng.random(N_DRAW), "u_a": rng.random(N_DRAW), "g_iz": rng.standard_normal(N_DRAW),
            "ex": ex, "ez": ez, "pos": pos, "n_el": n_el, "ied": ied, "rotation_deg": rot,
            "pnr": math.exp(rng.uniform(math.log(R["peak_to_noise"][0]), math.log(R["peak_to_noise"][1]))),
        }
        e.update({k: v for k, v in fixed.items() if k in e})
        if "depth_below_mm" in fixed:
            e["depth_mm"] = skin + fat + fixed["depth_below_mm"]
        out.append(e)
    return out


_SIM_KEYS = ("skin_mm", "fat_mm", "sigma_skin", "sigma_fat", "sigma_r", "anisotropy", "depth_mm", "x_mm", "log_fibres",
             "density", "iz_mm", "iz_fraction", "cv_m_s", "length_mm", "iz_jitter_mm", "end_jitter_mm", "stretch",
             "gamma2", "u_r", "u_a", "g_iz", "ex", "ez")


def _bp_noise(rng, shape, fs):
    w = rng.standard_normal(shape)
    w = bandpass_muaps(w, fs, BAND, pad=0)
    return w / np.maximum(w.std(axis=-1, keepdims=True), 1e-12)


def simulate_batch(rng: np.random.Generator, n: int, bucket: int, fs: float, grid_pos=None,
                   fixed: dict | None = None) -> dict:
    """``n`` noisy band-passed training MUAPs at ``fs``: dict with ``muaps`` [n, NE, T] µV, ``noise_std``
    [n, NE] µV, ``t_ms`` [T] (relative to the discharge), ``pos`` [n, NE, 2] grid-frame mm, ``n_el`` [n],
    ``window_ms`` [n, 2] (the part an average would have kept), the drawn values and the targets
    ``theta`` [n, 6] (``PARAM_NAMES`` order; x and IZ relative to the grid centre, fibre frame)."""
    run, kx, kz, t_ms = _batch_fn(bucket, fs)
    ex = draw(rng, n, bucket, grid_pos, fixed)
    batch = {k: np.stack([np.asarray(e[k], np.float32) for e in ex]) for k in _SIM_KEYS}
    batch["ef"] = np.stack([_electrode_filter(kx, kz, e["radius_mm"]) for e in ex])
    M = np.asarray(run({k: jnp.asarray(v) for k, v in batch.items()}), np.float64)  # [n, NE, T]
    M = bandpass_muaps(M, fs, BAND)
    T = M.shape[-1]
    noise = np.zeros_like(M)
    nstd = np.zeros(M.shape[:2])
    win = np.zeros((n, 2))
    for i, e in enumerate(ex):
        ne = e["n_el"]
        M[i, ne:] = 0.0
        peak = np.abs(M[i, :ne]).max()
        sig = peak / e["pnr"] * np.exp(0.3 * rng.standard_normal(ne))
        white = _bp_noise(rng, (ne, T), fs) * sig[:, None]
        var = sig**2
        smooth = np.zeros((ne, T))
        for _ in range(int(rng.integers(0, 3))):
            c = e["pos"][rng.integers(ne)] + rng.normal(0, 10, 2)
            w = rng.uniform(8, 25)
            g = np.exp(-((e["pos"][:ne] - c) ** 2).sum(1) / (2 * w**2))
            a = rng.uniform(0.3, 1.5) * sig.mean()
            smooth += a * g[:, None] * _bp_noise(rng, (1, T), fs)
            var = var + (a * g) ** 2
        noise[i, :ne] = white + smooth
        nstd[i, :ne] = np.sqrt(var)
        # the average's window: usually the whole span, sometimes cut early or late (a measured support)
        w0 = SIM_T0_MS if rng.random() < 0.7 else rng.uniform(-12.0, -2.0)
        w1 = SIM_T1_MS if rng.random() < 0.6 else rng.uniform(22.0, SIM_T1_MS)
        win[i] = (w0, w1)
    theta = np.stack([batch["depth_mm"], batch["x_mm"], batch["log_fibres"],
                      batch["iz_mm"], batch["cv_m_s"], batch["length_mm"]], 1)
    extra = {k: np.array([e[k] for e in ex], np.float32) for k in ("skin_mm", "fat_mm", "anisotropy", "radius_mm",
                                                                   "ied", "rotation_deg", "pnr", "sigma_r",
                                                                   "gamma2", "iz_fraction")}
    return {"muaps": (M + noise).astype(np.float32), "clean": M.astype(np.float32), "noise_std": nstd.astype(np.float32),
            "t_ms": t_ms.astype(np.float32), "pos": np.stack([e["pos"] for e in ex]).astype(np.float32),
            "n_el": np.array([e["n_el"] for e in ex]), "window_ms": win.astype(np.float32), "fs": float(fs),
            "theta": theta.astype(np.float32), **extra}


def as_templates(batch: dict):
    """The batch's noisy MUAPs as :class:`bmiss.templates.Templates` (all examples must share one grid)."""
    from ..templates import Templates

    M = batch["muaps"][:, : int(batch["n_el"][0])]
    fs = batch["fs"]
    onset = int(round(-SIM_T0_MS * 1e-3 * fs))
    T = M.shape[-1]
    nz = np.broadcast_to(batch["noise_std"][:, : M.shape[1], None], M.shape).astype(np.float32)
    n = len(M)
    return Templates(muaps=M, noise_std=nz, onset=onset, window=(-onset, T - onset),
                     support=np.tile([-onset, T - onset], (n, 1)), n_discharges=np.full(n, 100), fs=float(fs),
                     band=BAND, truncated=np.zeros(n, bool))
