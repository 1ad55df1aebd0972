"""Training draws for the universal MUAP network (:mod:`bmiss.muapnet`): tissue, grid, MU, sampling.

Every draw is one motor unit under its own tissue (skin and fat thickness, conductivity ratios,
MU fibre density, IZ and fibre-end scatter), seen by its own electrode grid (shape, IED, rotation
of the fibres against the grid, placement, electrode diameter) sampled at its own rate. The
targets come from the analytic conductor (:class:`bmiss.conductor.Conductor`): its expected mode
(``muap``) and, for a share of the draws, its per-fibre mode (``muap_fibres``: random fibre
layout and IZ shifts). Conductors of one frequency grid are compiled once and fed each draw's
tissue, electrode positions, electrode filter and sample times as array leaves.

The domain (``DOMAIN``) is drawn wider than the shipped anatomies (bmiss/anatomies/*.toml).
Units: mm, m/s, Hz, ms, µV.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

# ranges of the training draws (uniform unless said); the network refuses values outside them
DOMAIN = {
    "skin_mm": (0.5, 2.0),
    "fat_mm": (1.0, 8.0),
    "aniso": (1.5, 12.0),  # sigma_z / sigma_r (= the subject fit's bounds, so every fitted subject is in)
    "skin_fat": (8.0, 40.0),  # sigma_skin / sigma_fat
    "fat_radial": (0.25, 1.0),  # sigma_fat / sigma_r
    "density": (12.0, 30.0),  # MU fibres per mm² (only the territory radius depends on it)
    "iz_jitter_mm": (1.5, 2.5),
    "end_jitter_mm": (2.0, 2.5),
    "depth_below_mm": (0.5, 26.0),  # MU axis below the muscle surface
    "log_fibres": (math.log(3.0), math.log(1500.0)),
    "cv_m_s": (2.5, 6.5),
    "length_mm": (30.0, 160.0),
    "iz_fraction": (0.1, 0.9),  # IZ position along the fibre (0 = left end)
    "ied_mm": (4.0, 10.0),
    "radius_mm": (0.25, 2.5),  # electrode diameter 0.5-5 mm
    "rotation_deg": (-25.0, 25.0),  # = the subject fit's bounds
    "fs_hz": (2048.0, 10240.0),  # log-uniform
}
# discrete values of the scatter the conductor takes as static fields (one compile each)
IZ_JITTERS = (1.5, 2.0, 2.5)
END_JITTERS = (2.0, 2.5)
GRID_SHAPES = ((8, 8), (16, 4), (4, 16), (13, 5), (32, 2), (10, 6))  # 64 electrodes each ((13,5): one missing)
N_ELECTRODES = 64
N_SAMPLES = 104  # 50.8 ms at 2048 Hz
T_MAX_MS = 50.8  # latest sample time of the training draws, ms after the discharge
# muscle-surface depth bins of the frequency grids (k_max = 9 / lower edge, as Conductor.from_anatomy)
TOP_BINS = (1.5, 2.5, 4.0, 10.0 + 1e-6)


def draw(n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` random draws over ``DOMAIN`` (numpy, seeded): a dict of arrays, one row per draw.

    Keys: the ``DOMAIN`` names, ``rows``/``cols``/``missing`` of the grid, ``ex``/``ez`` [n, 64]
    electrode positions in the fibre frame (mm; z along the fibres from the fibre midpoint, x across
    from the MU axis ... see :func:`electrode_positions`), ``x_mm``/``iz_mm`` MU position, and the
    static-scatter indices.
    """
    g = np.random.default_rng(seed)
    u = lambda k, size=n: g.uniform(*DOMAIN[k], size)  # noqa: E731
    d = {k: u(k) for k in DOMAIN if k not in ("fs_hz", "iz_jitter_mm", "end_jitter_mm")}
    d["fs_hz"] = np.exp(g.uniform(*np.log(DOMAIN["fs_hz"]), n))
    d["iz_jit_i"] = g.integers(0, len(IZ_JITTERS), n)
    d["end_jit_i"] = g.integers(0, len(END_JITTERS), n)
    d["iz_jitter_mm"] = np.asarray(IZ_JITTERS)[d["iz_jit_i"]]
    d["end_jitter_mm"] = np.asarray(END_JITTERS)[d["end_jit_i"]]
    shape_i = g.integers(0, len(GRID_SHAPES), n)
    L = d["length_mm"]
    d["iz_mm"] = (d["iz_fraction"] - 0.5) * L  # IZ relative to the fibre midpoint
    d["x_mm"] = np.zeros(n)  # the MU axis is the lateral origin; the grid moves instead
    ex = np.empty((n, N_ELECTRODES))
    ez = np.empty((n, N_ELECTRODES))
    for i in range(n):
        r, c = GRID_SHAPES[shape_i[i]]
        rc = [(a, b) for a in range(r) for b in range(c)][: N_ELECTRODES]
        rc = np.array(rc[:N_ELECTRODES] if len(rc) >= N_ELECTRODES else rc + rc[: N_ELECTRODES - len(rc)], float)
        ied = d["ied_mm"][i]
        uu = (rc[:, 1] - (c - 1) / 2) * ied
        vv = (rc[:, 0] - (r - 1) / 2) * ied
        # grid centre: laterally within +-(half the grid width + 25 mm) of the MU, along the fibres
        # anywhere over the fibre +- 10 mm (so that IZ, fibre ends and electrodes meet in every order)
        half_w = (c - 1) / 2 * ied
        cx = g.uniform(-(half_w + 25.0), half_w + 25.0)
        cz = g.uniform(-L[i] / 2 - 10.0, L[i] / 2 + 10.0)
        th = math.radians(d["rotation_deg"][i])
        ex[i] = cx + uu * math.cos(th) - vv * math.sin(th)
        ez[i] = cz + uu * math.sin(th) + vv * math.cos(th)
    d["ex"], d["ez"] = ex.astype(np.float32), ez.astype(np.float32)
    d["top_mm"] = d["skin_mm"] + d["fat_mm"]
    d["bin"] = np.searchsorted(np.asarray(TOP_BINS), d["top_mm"], side="right") - 1
    return d


def params_of(d: dict, i=slice(None)) -> np.ndarray:
    """MU parameters [n, 6] (``conductor.PARAM_NAMES``: depth from the skin, x, log fibres, iz, cv, length)."""
    return np.stack([d["top_mm"][i] + d["depth_below_mm"][i], d["x_mm"][i], d["log_fibres"][i], d["iz_mm"][i],
                     d["cv_m_s"][i], d["length_mm"][i]], -1).astype(np.float32)


SIGMA_R = 0.1  # S/m, the radial muscle conductivity of the draws (potentials scale as 1 / sigma_r)
DENSITY_REF = 20.0  # fibres/mm² of the conductors that make the draws (other densities by rescaling)


def tissue_arrays(d: dict, i=slice(None)) -> dict[str, np.ndarray]:
    """The conductor's tissue fields (mm, S/m) of draws ``i``."""
    sf = SIGMA_R * d["fat_radial"][i]
    return {"skin_mm": d["skin_mm"][i], "fat_mm": d["fat_mm"][i], "sigma_skin": sf * d["skin_fat"][i],
            "sigma_fat": sf, "sigma_r": np.full_like(sf, SIGMA_R), "sigma_z": SIGMA_R * d["aniso"][i]}


def base_conductor(bin_i: int, iz_jitter: float, end_jitter: float):
    """Conductor (64 monopolar electrodes, ``N_SAMPLES`` samples) with the frequency grid of a depth bin."""
    from . import anatomy as _anatomy
    from .conductor import Conductor

    a = _anatomy.load("biceps_brachii")
    top = TOP_BINS[bin_i]
    a = a.with_layers(skin_thickness_mm=0.5, fat_thickness_mm=top - 0.5)
    a = replace(a, muscle=replace(a.muscle, iz_jitter_mm=iz_jitter, end_jitter_mm=end_jitter,
                                  mu_fibre_density_per_mm2=DENSITY_REF))
    a = a.with_grid(rows=8, cols=8, missing=[], montage="monopolar", muap_samples=N_SAMPLES, fs_hz=2048.0,
                    rotation_deg=0.0, centre_x_mm=0.0, centre_z_mm=0.0)
    return Conductor.from_anatomy(a)


def electrode_filter(kx, kz, radius_mm) -> np.ndarray:
    """2 J1(kr)/(kr) [Nkx, Nkz] of a circular electrode of radius ``radius_mm``."""
    import scipy.special

    kr = np.hypot(np.asarray(kx)[:, None], np.asarray(kz)[None, :]) * radius_mm
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(kr > 1e-9, 2 * scipy.special.j1(kr) / kr, 1.0).astype(np.float32)


_COMPILED: dict = {}


def _runner(mode: str):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from .conductor import Tissue

    if mode in _COMPILED:
        return _COMPILED[mode]

    def one(base, leaf, key, n_max):
        cond = eqx.tree_at(lambda c: (c.ex, c.ez, c.elec_filter, c.t_ms), base,
                           (leaf["ex"], leaf["ez"], leaf["ef"], leaf["t"]))
        tis = Tissue(*(leaf["tissue"][k] for k in ("skin_mm", "fat_mm", "sigma_skin", "sigma_fat", "sigma_r",
                                                   "sigma_z")))
        if mode == "expected":
            return cond.muap(leaf["p"], 0.0, tis)
        return cond.muap_fibres(leaf["p"], key, n_max, 0.0, tis)

    @eqx.filter_jit
    def run(base, leaves, keys, n_max):
        return jax.lax.map(lambda a: one(base, a[0], a[1], n_max), (leaves, keys))

    def call(base, leaves, keys, n_max=None):
        return run(base, leaves, keys, n_max)

    _COMPILED[mode] = call
    return call


def conductor_muaps(d: dict, idx: np.ndarray, mode: str = "expected", seed: int = 0, chunk: int = 32,
                    progress: bool = False, desc: str = "conductor") -> np.ndarray:
    """Monopolar electrode potentials [len(idx), 64, N_SAMPLES] µV of draws ``idx`` from the conductor.

    ``mode``: "expected" or "fibres" (per-fibre: fibre layout and IZ shifts drawn with ``seed``;
    at most 1500 fibres). Draws are grouped by (depth bin, IZ scatter, end scatter): one compile each,
    chunks of ``chunk`` draws (the last padded) keep one shape.
    """
    import jax
    import jax.numpy as jnp

    idx = np.asarray(idx)
    out = np.zeros((len(idx), N_ELECTRODES, N_SAMPLES), np.float32)
    run = _runner(mode)
    groups = {}
    for j, i in enumerate(idx):
        groups.setdefault((int(d["bin"][i]), int(d["iz_jit_i"][i]), int(d["end_jit_i"][i])), []).append(j)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(idx), desc=desc, unit="MUAP", mininterval=2.0)
    key0 = jax.random.PRNGKey(seed)
    n_max = int(math.ceil(math.exp(DOMAIN["log_fibres"][1])))
    for (b, ij, ej), js in sorted(groups.items()):
        base = base_conductor(b, IZ_JITTERS[ij], END_JITTERS[ej])
        kx, kz = np.asarray(base.kx), np.asarray(base.kz)
        for s in range(0, len(js), chunk):
            jj = np.asarray(js[s:s + chunk])
            ii = idx[jj]
            pad = chunk - len(ii)
            iip = np.concatenate([ii, np.repeat(ii[-1:], pad)]) if pad else ii
            P = params_of(d, iip)
            # other fibre densities: same territory radius from n * 20 / density fibres, amplitude rescaled
            scale = d["density"][iip] / DENSITY_REF
            if mode == "expected":
                P[:, 2] += np.log(DENSITY_REF / d["density"][iip])
            else:
                scale = np.ones_like(scale)  # per-fibre draws use the reference density (exact fibre count)
            leaves = {"ex": jnp.asarray(d["ex"][iip]), "ez": jnp.asarray(d["ez"][iip]),
                      "ef": jnp.asarray(np.stack([electrode_filter(kx, kz, d["radius_mm"][i]) for i in iip])),
                      "t": jnp.asarray(np.arange(N_SAMPLES)[None] / d["fs_hz"][iip, None] * 1e3, jnp.float32),
                      "tissue": {k: jnp.asarray(v, jnp.float32) for k, v in tissue_arrays(d, iip).items()},
                      "p": jnp.asarray(P)}
            keys = jax.random.split(jax.random.fold_in(key0, int(iip[0])), len(iip))
            m = np.asarray(run(base, leaves, keys, n_max if mode == "fibres" else None))
            out[jj] = (m * scale[:, None, None])[: len(ii)]
            if bar is not None:
                bar.update(len(ii))
    if bar is not None:
        bar.close()
    return out


# --------------------------------------------------------------------------- parameter sampling (one home)
def latin_hypercube(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """Latin hypercube sample [n, d] in [0, 1): each column hits each of n equal strata once."""
    u = rng.random((n, d))
    strata = np.stack([rng.permutation(n) for _ in range(d)], axis=1)
    return (strata + u) / n


def bounds_array(a) -> tuple[np.ndarray, np.ndarray]:
    """(lo [6], hi [6]) physical parameter bounds in ``PARAM_NAMES`` order."""
    from .conductor import PARAM_NAMES

    b = a.param_bounds()
    return (np.array([b[n][0] for n in PARAM_NAMES], np.float64),
            np.array([b[n][1] for n in PARAM_NAMES], np.float64))


def sample_params(a, n: int, seed: int) -> np.ndarray:
    """n LHS draws [n, 6] (physical units) over ``a.param_bounds()``."""
    lo, hi = bounds_array(a)
    return (lo + (hi - lo) * latin_hypercube(n, 6, np.random.default_rng(seed))).astype(np.float32)
