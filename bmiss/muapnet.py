"""Universal MUAP network: MU parameters + tissue + electrode geometry + sample times -> potentials.

One set of weights serves every anatomy, fitted subject, grid, IED, rotation and sampling rate
whose values lie in the training domain (:data:`bmiss.muapgen.DOMAIN`).

Architecture
------------
A shared per-electrode MLP (SiLU) whose inputs are the electrode's position relative to the MU in
the fibre frame (lateral offset, distance to the MU axis, offset from the IZ, distances to the
fibre ends), its radius, the MU's depth below the muscle surface and territory radius, and the
tissue (skin and fat thickness, log conductivity ratios sigma_z/sigma_r, sigma_skin/sigma_fat,
sigma_fat/sigma_r, IZ and fibre-end scatter). For each of three components (the wave front
reaching the electrode; extinction at the right / left fibre end) it gives a log-amplitude and a
unit coefficient vector over a learned Fourier basis of a profile over v (mm travelled). Each
profile is read at v = cv (t - onset - shift) - s with s the component's physical delay
(|z_e - iz| smoothed, L/2 -+ iz): a phase rotation, then one product with the MUAP's time basis.

Exact, not learned: CV (the conductor's potential depends on time only through cv (t - onset));
the sample times (any rate and window: the profiles are continuous in v); the fibre count
(potential proportional to n at a fixed territory radius); the overall conductivity scale
(potential proportional to 1/sigma_r at fixed ratios); grid rotation and placement (electrode
positions in the fibre frame); the montage (a linear map of electrode potentials).

Domain: tissue, grid and sampling outside the training ranges are refused
(:class:`bmiss.errors.SurrogateMismatchError`) when a :class:`bmiss.surrogate.Surrogate` is bound
to an anatomy; MU parameters outside them are flagged (:meth:`MuapNet.in_domain`), never clipped.
Units: mm, m/s, ms, µV, S/m.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .muapgen import DOMAIN, SIGMA_R, T_MAX_MS

N_COMP = 3
ABS_EPS = 2.0  # mm: smoothing of |z - iz|
ONSET_MS = 1.0  # the conductor's neuromuscular delay
LEN = 50.0  # mm: scale of the geometric features
TISSUE_KEYS = ("skin_mm", "fat_mm", "aniso", "skin_fat", "fat_radial", "density", "iz_jitter_mm", "end_jitter_mm")
N_FEATURES = 20


class Buffer(nnx.Variable):
    """Non-trainable array stored with the weights."""


def _sabs(x, eps=ABS_EPS):
    return jnp.sqrt(x * x + eps * eps)


# pi/2 in three parts (Cody-Waite), so that x - j pi/2 is exact to float32 for |x| up to ~1e4 rad
_HALF_PI = (1.5703125, 4.837512969970703125e-4, 7.54978995489188216e-8)


@jax.custom_jvp
def _sincos(x):
    """(cos x, sin x), float32, |error| < 1e-7 for |x| < 1e4.

    XLA's CPU cos and sin cost about ten times an exp and were most of the network's read-out;
    this is a quadrant reduction and the classic single-precision minimax polynomials on
    [-pi/4, pi/4], which vectorise. The JVP reuses the pair instead of evaluating both again.
    """
    j = jnp.round(x * (2 / np.pi))
    r = ((x - j * _HALF_PI[0]) - j * _HALF_PI[1]) - j * _HALF_PI[2]
    z = r * r
    s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4))
    c = 1.0 - 0.5 * z + z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5))
    q = j.astype(jnp.int32)
    swap = (q & 1) == 1
    sn, cs = jnp.where(swap, c, s), jnp.where(swap, s, c)
    return jnp.where(((q + 1) & 2) == 2, -cs, cs), jnp.where((q & 2) == 2, -sn, sn)


@_sincos.defjvp
def _sincos_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    c, s = _sincos(x)
    return (c, s), (-s * dx, c * dx)


# Affine input scalings: part of the architecture, fixed with the weights (they were the first
# training domain's ranges). The domain can widen without changing them; a value outside maps
# beyond [-1, 1], which the network is trained on wherever the domain covers it.
FEATURE_RANGES = {
    "depth_below_mm": (0.5, 26.0), "skin_mm": (0.5, 2.0), "fat_mm": (1.0, 8.0), "aniso": (2.0, 10.0),
    "skin_fat": (8.0, 40.0), "fat_radial": (0.25, 1.0), "iz_jitter_mm": (1.5, 2.5), "end_jitter_mm": (2.0, 2.5),
}


def _unit(v, k):
    lo, hi = FEATURE_RANGES[k]
    return (v - (lo + hi) / 2) / ((hi - lo) / 2)


def _lunit(v, k):
    lo, hi = (math.log(b) for b in FEATURE_RANGES[k])
    return (jnp.log(v) - (lo + hi) / 2) / ((hi - lo) / 2)


def tissue_vector(tis: dict) -> jnp.ndarray:
    """[..., 8] tissue inputs (``TISSUE_KEYS`` order) from a dict of arrays."""
    return jnp.stack([jnp.asarray(tis[k], jnp.float32) for k in TISSUE_KEYS], -1)


class MuapNet(nnx.Module):
    """``electrodes(p [B,6], tis [B,8], sigma_r [B], ex, ez [B,Ne], radius [B], t_ms [B,T]) -> [B,Ne,T]`` µV.

    ``p`` in ``conductor.PARAM_NAMES`` order (depth from the skin surface, x, log fibres, iz, cv,
    length; mm, m/s), ``tis`` the tissue inputs (``TISSUE_KEYS``), electrode positions in the fibre
    frame (x across, z along the fibres from the fibre midpoint; mm), ``t_ms`` sample times after
    the discharge (ms).
    """

    def __init__(self, *, amp_mean: float = 0.0, amp_std: float = 1.0, n_basis: int = 48, k_max: float = 3.0,
                 period_mm: float = 512.0, hidden: int = 192, depth: int = 4, seed: int = 0):
        rngs = nnx.Rngs(seed)
        n_freq = int(np.ceil(k_max * period_mm / (2 * np.pi))) + 1
        sizes = [N_FEATURES] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(hidden, N_COMP * (1 + n_basis), rngs=rngs,
                              kernel_init=nnx.initializers.variance_scaling(0.1, "fan_in", "normal"))
        w = 2 * np.pi * np.arange(n_freq) / period_mm
        g = np.random.default_rng(seed)
        init = g.normal(size=(N_COMP, n_basis, 2, n_freq)) * np.exp(-1.5 * w)
        init = init.reshape(N_COMP, n_basis, 2 * n_freq) / np.sqrt(np.mean(np.sum(init**2, (2, 3))) * 100 / 2)
        self.basis = nnx.Param(jnp.asarray(init, jnp.float32))
        self.omega = Buffer(jnp.asarray(w, jnp.float32))
        self.amp = Buffer(jnp.asarray([amp_mean, amp_std], jnp.float32))

    # ------------------------------------------------------------------ pieces
    def features(self, p, tis, ex, ez, radius):
        depth, x, logn, iz, length = (p[:, i, None] for i in (0, 1, 2, 3, 5))
        skin, fat, aniso, sfr, frr, dens, izj, endj = (tis[:, i, None] for i in range(8))
        top = skin + fat
        below = depth - top
        R = jnp.sqrt(jnp.exp(logn) / (np.pi * dens))  # territory radius, mm
        dx2 = (ex - x) ** 2
        rho = jnp.sqrt(dx2 + depth**2)
        dz = ez - iz
        s = LEN
        shp = dx2.shape
        b = lambda v: jnp.broadcast_to(v, shp)  # noqa: E731
        cols = [dx2 / s**2, rho / s, jnp.log(rho / s), dz / s, _sabs(dz) / s,
                (ez + length / 2) / s, (length / 2 - ez) / s,
                b((length / 2 + iz) / s), b((length / 2 - iz) / s),
                b(_unit(below, "depth_below_mm")), b(jnp.log(R)), b(radius[:, None]),
                b(_unit(skin, "skin_mm")), b(_unit(fat, "fat_mm")), b(_lunit(aniso, "aniso")),
                b(_lunit(sfr, "skin_fat")), b(_lunit(frr, "fat_radial")), b(_unit(izj, "iz_jitter_mm")),
                b(_unit(endj, "end_jitter_mm")), b(top / 10.0)]
        return jnp.stack(cols, -1)

    def mlp(self, p, tis, ex, ez, radius):
        """The per-electrode MLP: features -> hidden layers -> output [B, Ne, N_COMP * (1 + n_basis)]."""
        h = self.features(p, tis, ex, ez, radius)
        for lin in self.layers:
            h = jax.nn.silu(lin(h))
        return self.out(h)

    def electrodes(self, p, tis, sigma_r, ex, ez, radius, t_ms):
        o = self.mlp(p, tis, ex, ez, radius)
        o = o.reshape(o.shape[:-1] + (N_COMP, -1))  # [B, Ne, C, 1 + K]
        # exact scalings: fibre count and conductivity level
        a = self.amp[0] + self.amp[1] * o[..., 0] + (p[:, 2] + jnp.log(SIGMA_R / sigma_r))[:, None, None]
        u = o[..., 1:]
        u = u * (jnp.exp(a)[..., None] * jax.lax.rsqrt(jnp.sum(u * u, -1, keepdims=True) + 1e-12))
        iz, cv, length = (p[:, i, None] for i in (3, 4, 5))
        w = self.omega[...]
        m = w.shape[0]
        bas = self.basis[...]
        br, bi = bas[..., :m], bas[..., m:]  # [C, K, M] real / imaginary parts of the profile basis
        # Each profile is rotated by its component's delay (phase w s), then read at cv (t - onset).
        # The wave front's delay differs per electrode: rotate its coefficients [B, Ne, M].
        c, sn = _sincos(_sabs(ez - iz)[..., None] * w)
        fr, fi = u[:, :, 0] @ br[0], u[:, :, 0] @ bi[0]
        gr, gi = fr * c + fi * sn, fi * c - fr * sn
        # The fibre ends' delays are the MU's: rotate the basis instead [B, 2K, M], one product for both.
        c, sn = _sincos(jnp.concatenate([length / 2 - iz, length / 2 + iz], -1)[..., None] * w)  # [B, 2, M]
        c, sn = c[:, :, None], sn[:, :, None]
        n = c.shape[0]
        rr = (br[1:] * c + bi[1:] * sn).reshape(n, -1, m)
        ri = (bi[1:] * c - br[1:] * sn).reshape(n, -1, m)
        ue = u[:, :, 1:].reshape(u.shape[0], u.shape[1], -1)  # [B, Ne, 2K]
        gr = gr + jnp.einsum("bnk,bkm->bnm", ue, rr)
        gi = gi + jnp.einsum("bnk,bkm->bnm", ue, ri)
        c, sn = _sincos((cv * (t_ms - ONSET_MS))[:, None, :] * w[None, :, None])  # [B, M, T]
        return jnp.einsum("bnm,bmt->bnt", gr, c) - jnp.einsum("bnm,bmt->bnt", gi, sn)

    @property
    def arch(self) -> dict:
        return {"hidden": int(self.layers[0].out_features), "depth": len(self.layers),
                "n_basis": int(self.basis.shape[1]), "n_freq": int(self.omega.shape[0]),
                "period_mm": float(2 * np.pi / float(self.omega[...][1]))}


def build(arch: dict, amp_mean=0.0, amp_std=1.0, seed=0) -> MuapNet:
    return MuapNet(amp_mean=amp_mean, amp_std=amp_std, n_basis=arch["n_basis"], k_max=arch["k_max"],
                   period_mm=arch["period_mm"], hidden=arch["hidden"], depth=arch["depth"], seed=seed)


# ------------------------------------------------------------------ domain
def _domain(domain: dict | None) -> dict:
    return DOMAIN if domain is None else {k: tuple(v) for k, v in domain.items()}


MU_DOMAIN_NAMES = ("depth_below_mm", "log_fibres_at_density_20", "iz_fraction", "cv_m_s", "length_mm")


def mu_domain_violations(p, tis, domain: dict | None = None) -> np.ndarray:
    """Bool [n, 5]: which MU parameters of ``p`` [n, 6] lie outside the training domain (host side).

    Columns ``MU_DOMAIN_NAMES``: depth below the muscle surface, territory (log fibres at the
    reference density), IZ fraction along the fibre, CV, fibre length. Tolerance 1e-4 relative.
    ``domain``: the ranges the weights were trained on (their metadata's ``domain``; default
    :data:`bmiss.muapgen.DOMAIN`).
    """
    DOMAIN = _domain(domain)
    p = np.atleast_2d(np.asarray(p, np.float64))
    tis = np.broadcast_to(np.asarray(tis, np.float64), (len(p), len(TISSUE_KEYS)))
    below = p[:, 0] - tis[:, 0] - tis[:, 1]
    logn20 = p[:, 2] + np.log(20.0 / tis[:, 5])  # same territory at the reference density
    dens_lo, dens_hi = DOMAIN["density"]
    ln_lo = DOMAIN["log_fibres"][0] + math.log(20.0 / dens_hi)
    ln_hi = DOMAIN["log_fibres"][1] + math.log(20.0 / dens_lo)
    izf = p[:, 3] / p[:, 5] + 0.5
    vals = np.stack([below, logn20, izf, p[:, 4], p[:, 5]], 1)
    lims = np.array([DOMAIN["depth_below_mm"], (ln_lo, ln_hi), DOMAIN["iz_fraction"], DOMAIN["cv_m_s"],
                     DOMAIN["length_mm"]])
    tol = 1e-4 * (lims[:, 1] - lims[:, 0])
    return (vals < lims[:, 0] - tol) | (vals > lims[:, 1] + tol)


def setting_violations(tissue: dict, *, ied_mm=None, radius_mm=None, rotation_deg=None, fs_hz=None,
                       t_max_ms=None, domain: dict | None = None) -> list[str]:
    """Human-readable list of tissue / grid / sampling values outside the training domain ([] if none).

    ``domain``: the weights' training ranges (default :data:`bmiss.muapgen.DOMAIN`).
    """
    DOMAIN = _domain(domain)
    out = []
    chk = dict(tissue)
    if ied_mm is not None:
        chk["ied_mm"] = ied_mm
    if radius_mm is not None:
        chk["radius_mm"] = radius_mm
    if rotation_deg is not None:
        chk["rotation_deg"] = rotation_deg
    if fs_hz is not None:
        chk["fs_hz"] = fs_hz
    for k, v in chk.items():
        lo, hi = DOMAIN[k]
        tol = 1e-6 * max(abs(lo), abs(hi), 1.0)
        if not (lo - tol <= float(v) <= hi + tol):
            out.append(f"{k} = {float(v):.4g} outside [{lo:.4g}, {hi:.4g}]")
    if t_max_ms is not None and t_max_ms > T_MAX_MS + 1e-6:
        out.append(f"MUAP window {t_max_ms:.4g} ms longer than the trained {T_MAX_MS:.4g} ms")
    return out


def tissue_of_anatomy(a) -> dict:
    """The network's tissue inputs of an :class:`~bmiss.anatomy.Anatomy` (plus ``sigma_r``)."""
    L, m = a.layers, a.muscle
    return {"skin_mm": L.skin_thickness_mm, "fat_mm": L.fat_thickness_mm,
            "aniso": L.muscle_conductivity_longitudinal / L.muscle_conductivity_radial,
            "skin_fat": L.skin_conductivity / L.fat_conductivity,
            "fat_radial": L.fat_conductivity / L.muscle_conductivity_radial,
            "density": m.mu_fibre_density_per_mm2, "iz_jitter_mm": m.iz_jitter_mm, "end_jitter_mm": m.end_jitter_mm}
