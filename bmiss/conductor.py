"""Planar multi-layer volume conductor (Farina & Merletti 2001) in JAX: MU parameters -> MUAP.

Physics
-------
* Tissue: skin (thickness s, conductivity σs) over fat (f, σf) over a semi-infinite anisotropic
  muscle (σr across the fibres, σz along them); air above the skin.
* A point current source at depth d inside the muscle gives, at the skin surface, in 2-D spatial
  frequency (kx across, kz along the fibres; k = |(kx, kz)|, ky = sqrt(kx² + σz/σr kz²)):

      H(kx, kz) = exp(-ky d) / (β + σr ky α),
      α = cosh(ks) cosh(kf) + (σs/σf) sinh(ks) sinh(kf),
      β = σf k [cosh(ks) sinh(kf) + (σs/σf) sinh(ks) cosh(kf)].

  (Derived from continuity of potential and normal current at each interface and no current
  into the air; with s = f = 0 it reduces to the insulated half-space 1/(σr ky) exp(-ky d).)
  Everything is evaluated in the numerically safe form scaled by exp(-k(s+f)).
* Source: Rosenfalck (1969) intracellular action potential V(ζ) = 96 ζ³ exp(-ζ) - 90 mV
  (ζ in mm behind the wave front). Two waves leave the innervation zone (IZ) at CV v and die at
  the fibre ends; the line current density is I(z,t) ∝ ∂/∂z[∂V/∂z · window] (Dimitrov &
  Dimitrova 1998; Farina & Merletti 2001), so generation at the IZ and extinction at the fibre
  ends (the non-propagating components) come out of the model without extra terms.
* Electrodes: circular, radius r: spatial filter 2 J1(kr)/(kr). Montage (monopolar, single or
  double differential) is a linear map of the electrode potentials.

Numerics: the field is a truncated inverse Fourier sum evaluated directly at the electrode
positions (no FFT over the skin plane), over the spatial frequencies that the tissue does not
attenuate to < 1e-4 (|k| < 9 / depth of the muscle surface); periodicity 256 mm in x and z.

Two modes:
* ``muap`` (expected potential): the MU territory (a disc of radius sqrt(n / (π ρ)) with ρ the
  MU's fibre density) is integrated with a fixed 32-point quadrature and the IZ scatter (std
  ``iz_jitter``) enters as its exact expectation exp(-kz² σ²/2). Deterministic and smooth in
  every parameter; this is what the inversion differentiates.
* ``muap_fibres``: every fibre drawn at random (uniform in the territory, own IZ shift), summed
  as phase factors in the spatial-frequency domain. Realistic; used for simulation.

Units: lengths mm, CV m/s (= mm/ms), conductivity S/m, time ms, potential µV.
Parameter vector order: ``PARAM_NAMES``.
"""
from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax.scipy.special import ndtr

from .anatomy import Anatomy

PARAM_NAMES = ("depth_mm", "x_mm", "log_fibres", "iz_mm", "cv_m_s", "length_mm")
PARAM_UNITS = ("mm", "mm", "ln(fibres)", "mm", "m/s", "mm")

# Rosenfalck 1969: V(ζ) = A ζ³ exp(-ζ) - 90 mV, A = 96 mV/mm³.
_ROSENFALCK_A = 96.0
# Line-source current per unit of d²V/dz² (mV/mm²): σi π a² with σi = 1.01 S/m (intracellular,
# Farina & Merletti 2001) and fibre radius a = 25 µm; 1e9 turns A/mm · V/A(mm units) into µV.
_SOURCE_GAIN = 1.01 * math.pi * (25e-6) ** 2 * 1e9
_PERIOD_MM = 256.0  # period of the truncated Fourier sums in x and z
_SRC_DZ = 0.5  # source sampling along the fibre, mm (0.25 changes MUAPs by ~1% at 2.3x the cost)


def _check_iap(kind: str) -> str:
    if kind not in IAP_SHAPES:
        raise ValueError(f"unknown IAP shape {kind!r}; choose one of {IAP_SHAPES}")
    return kind


class Tissue(eqx.Module):
    """Global tissue parameters (differentiable). Thickness mm, conductivity S/m."""

    skin_mm: jax.Array
    fat_mm: jax.Array
    sigma_skin: jax.Array
    sigma_fat: jax.Array
    sigma_r: jax.Array
    sigma_z: jax.Array

    @classmethod
    def from_anatomy(cls, a: Anatomy, dtype=jnp.float32) -> "Tissue":
        L = a.layers
        f = lambda v: jnp.asarray(v, dtype)  # noqa: E731
        return cls(f(L.skin_thickness_mm), f(L.fat_thickness_mm), f(L.skin_conductivity),
                   f(L.fat_conductivity), f(L.muscle_conductivity_radial), f(L.muscle_conductivity_longitudinal))


def _disc_quadrature(n_r: int = 4, n_t: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Equal-area points of the unit disc (mirror symmetric in x): (x, y) each [n_r * n_t]."""
    r = np.sqrt((np.arange(n_r) + 0.5) / n_r)
    t = 2 * np.pi * (np.arange(n_t) + 0.5) / n_t
    rr, tt = np.meshgrid(r, t, indexing="ij")
    return (rr * np.cos(tt)).ravel(), (rr * np.sin(tt)).ravel()


def _half_quadrature(qx: np.ndarray, qy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points with x >= 0 of a quadrature mirror symmetric in x, and their weights (2 for a
    mirrored pair, 1 on the axis): (x, y, w), with w summing to the number of points."""
    on_axis = np.abs(qx) < 1e-9
    keep = (qx > 0) | on_axis
    w = np.where(on_axis, 1.0, 2.0)[keep]
    mirrored = np.sort(np.round(np.c_[-qx[qx > 1e-9], qy[qx > 1e-9]], 9), axis=0)
    if not np.array_equal(mirrored, np.sort(np.round(np.c_[qx[qx < -1e-9], qy[qx < -1e-9]], 9), axis=0)):
        raise ValueError("the territory quadrature is not mirror symmetric in x")
    return np.abs(qx[keep]), qy[keep], w


def _rosenfalck_slope(zeta):
    """dV/dζ of the Rosenfalck IAP, mV/mm; zero ahead of the front (ζ < 0)."""
    zc = jnp.maximum(zeta, 0.0)
    return _ROSENFALCK_A * jnp.exp(-zc) * (3 * zc**2 - zc**3)


# A second IAP shape for model-mismatch simulations: V(ζ) = B ζ² exp(-ζ/λ) - 90 mV with λ = 0.7 mm
# (a shorter, more symmetric depolarisation than Rosenfalck's), B set for the same 129-mV peak
# (Rosenfalck's 96 · 27 e^-3). Not a published model: it only has to differ from the inversion's.
_GAMMA2_LAMBDA = 0.7
_GAMMA2_B = 96 * 27 * math.exp(-3) * math.exp(2) / (4 * _GAMMA2_LAMBDA**2)
IAP_SHAPES = ("rosenfalck", "gamma2")


def _iap_slope(kind: str, zeta):
    if kind == "rosenfalck":
        return _rosenfalck_slope(zeta)
    if kind == "gamma2":
        zc = jnp.maximum(zeta, 0.0)
        return _GAMMA2_B * jnp.exp(-zc / _GAMMA2_LAMBDA) * (2 * zc - zc**2 / _GAMMA2_LAMBDA)
    raise ValueError(f"unknown IAP shape {kind!r}; choose one of {IAP_SHAPES}")


def placed_positions(ex, ez, centre_x_mm, centre_z_mm, rotation_deg=0.0, dz_mm=0.0, dx_mm=0.0):
    """Electrode positions (x across, z along the fibres; mm) of a grid turned by ``rotation_deg``
    (degrees, about its centre) and moved by ``dz_mm`` / ``dx_mm``: the placement that
    :meth:`Conductor.placed` and :meth:`bmiss.surrogate.Surrogate.placed` apply (differentiable)."""
    th = jnp.deg2rad(jnp.asarray(rotation_deg, ex.dtype))
    u, v = ex - centre_x_mm, ez - centre_z_mm
    return (centre_x_mm + dx_mm + u * jnp.cos(th) - v * jnp.sin(th),
            centre_z_mm + dz_mm + u * jnp.sin(th) + v * jnp.cos(th))


class Conductor(eqx.Module):
    """Volume conductor bound to one anatomy's grid. Build with ``Conductor.from_anatomy``.

    Call ``muap(p)`` with a parameter vector ``p`` [6] (``PARAM_NAMES``) -> [n_channels, T] µV.
    """

    tissue: Tissue
    kx: jax.Array  # [Nkx] rad/mm, symmetric about 0
    kz: jax.Array  # [Nkz] rad/mm, >= 0 (the field is real: negative kz by symmetry)
    kz_weight: jax.Array  # [Nkz] 1 for kz = 0, 2 otherwise
    elec_filter: jax.Array  # [Nkx, Nkz]
    ex: jax.Array  # [Ne] electrode x, mm
    ez: jax.Array  # [Ne] electrode z, mm
    montage: jax.Array  # [Nch, Ne]
    zs: jax.Array  # [Nz] source sample positions relative to the IZ, mm
    t_ms: jax.Array  # [T] sample times, ms (0 = the discharge)
    quad_x: jax.Array  # [Nq] unit-disc quadrature: the points with x >= 0 (the rule is mirror symmetric)
    quad_y: jax.Array
    quad_w: jax.Array  # [Nq] 2 for a mirrored pair, 1 on the axis
    density: float = eqx.field(static=True)  # MU fibre density in its territory, fibres/mm²
    iz_jitter_mm: float = eqx.field(static=True)
    end_jitter_mm: float = eqx.field(static=True)
    onset_ms: float = eqx.field(static=True)  # neuromuscular delay before the IAP starts at the IZ
    n_src: int = eqx.field(static=True)
    centre_x_mm: float = eqx.field(static=True, default=0.0)  # grid centre (rotation pivot), mm
    centre_z_mm: float = eqx.field(static=True, default=0.0)
    period_x_mm: float = eqx.field(static=True, default=_PERIOD_MM)  # period of the sum across the fibres
    iap: str = eqx.field(static=True, default="rosenfalck")  # intracellular action potential shape

    @classmethod
    def from_anatomy(cls, a: Anatomy, *, fs: float | None = None, n_samples: int | None = None,
                     onset_ms: float = 1.0, k_factor: float = 9.0, dtype=jnp.float32, period_x_mm: float = _PERIOD_MM,
                     quadrature: tuple[int, int] = (4, 8), iap: str = "rosenfalck") -> "Conductor":
        """Static geometry (frequency grids, electrode filter, montage) for ``a``'s grid.

        ``k_factor``: keep spatial frequencies |k| < k_factor / (depth of the muscle surface).
        ``period_x_mm``: period of the Fourier sum across the fibres (256 mm by default; 128 mm halves
        the cost and changes MUAPs of a grid a few cm wide by < 1e-3, see tests/test_conductor.py).
        ``quadrature``: (radial, angular) points of the territory quadrature (expected mode).
        ``iap``: intracellular action potential shape, ``IAP_SHAPES`` ("rosenfalck" is the model; the
        others exist to simulate recordings the inversion's model did not make).
        """
        g = a.grid
        fs = float(fs or g.fs_hz)
        T = int(n_samples or g.muap_samples)
        dk = 2 * np.pi / _PERIOD_MM
        dkx = 2 * np.pi / period_x_mm
        kmax = min(k_factor / max(a.muscle_top_mm, 0.5), np.pi / _SRC_DZ)
        m = int(np.ceil(kmax / dk))
        mx = int(np.ceil(kmax / dkx))
        kx = dkx * np.arange(-mx, mx + 1)
        kz = dk * np.arange(0, m + 1)
        kk = np.hypot(kx[:, None], kz[None, :])
        kr = kk * g.electrode_radius_mm
        with np.errstate(invalid="ignore", divide="ignore"):
            ef = np.where(kr > 1e-9, 2 * scipy.special.j1(kr) / kr, 1.0)
        xz, _ = g.electrode_positions()
        M, _ = g.montage_matrix()
        n_src = int(round(_PERIOD_MM / _SRC_DZ))
        zs = (np.arange(n_src) - n_src // 2) * _SRC_DZ
        qx, qy, qw = _half_quadrature(*_disc_quadrature(*quadrature))
        f = lambda v: jnp.asarray(v, dtype)  # noqa: E731
        return cls(
            tissue=Tissue.from_anatomy(a, dtype),
            kx=f(kx), kz=f(kz), kz_weight=f(np.where(kz == 0, 1.0, 2.0)), elec_filter=f(ef),
            ex=f(xz[:, 0]), ez=f(xz[:, 1]), montage=f(M), zs=f(zs), t_ms=f(np.arange(T) / fs * 1e3),
            quad_x=f(qx), quad_y=f(qy), quad_w=f(qw),
            density=float(a.muscle.mu_fibre_density_per_mm2), iz_jitter_mm=float(a.muscle.iz_jitter_mm),
            end_jitter_mm=float(a.muscle.end_jitter_mm), onset_ms=float(onset_ms), n_src=n_src,
            centre_x_mm=float(g.centre_x_mm), centre_z_mm=float(g.centre_z_mm), period_x_mm=float(period_x_mm),
            iap=_check_iap(iap),
        )

    def placed(self, rotation_deg=0.0, dz_mm=0.0, dx_mm=0.0) -> "Conductor":
        """Copy with the grid turned by ``rotation_deg`` (degrees, about its centre, same sense as the
        anatomy's ``[grid] rotation_deg``) and moved by ``dz_mm`` along / ``dx_mm`` across the fibres.

        Differentiable in all three (the electrode positions are leaves); a fitted placement maps
        back to the anatomy as ``rotation_deg += rotation_deg``, ``centre_z_mm += dz_mm``,
        ``centre_x_mm += dx_mm``.
        """
        ex, ez = placed_positions(self.ex, self.ez, self.centre_x_mm, self.centre_z_mm, rotation_deg, dz_mm, dx_mm)
        return eqx.tree_at(lambda c: (c.ex, c.ez), self, (ex, ez))

    def with_times(self, t_ms) -> "Conductor":
        """Copy that samples MUAPs at ``t_ms`` [T] (ms relative to the discharge; may start < 0)."""
        return eqx.tree_at(lambda c: c.t_ms, self, jnp.asarray(t_ms, self.t_ms.dtype))

    # ------------------------------------------------------------------ pieces
    @property
    def n_channels(self) -> int:
        return int(self.montage.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.t_ms.shape[0])

    def _ky_and_layers(self, tissue: Tissue):
        """(ky [Nkx,Nkz], layer factor [Nkx,Nkz]) with H = layer * exp(-ky d)."""
        kx2 = self.kx[:, None] ** 2
        kz2 = self.kz[None, :] ** 2
        nonzero = (kx2 + kz2) > 0
        k = jnp.sqrt(jnp.where(nonzero, kx2 + kz2, 1.0))
        ky = jnp.sqrt(jnp.where(nonzero, kx2 + tissue.sigma_z / tissue.sigma_r * kz2, 1.0))
        es, ef = jnp.exp(-2 * k * tissue.skin_mm), jnp.exp(-2 * k * tissue.fat_mm)
        ratio = tissue.sigma_skin / tissue.sigma_fat
        alpha = ((1 + es) * (1 + ef) + ratio * (1 - es) * (1 - ef)) / 4
        beta = tissue.sigma_fat * k * ((1 + es) * (1 - ef) + ratio * (1 - es) * (1 + ef)) / 4
        layer = jnp.exp(-k * (tissue.skin_mm + tissue.fat_mm)) / (beta + tissue.sigma_r * ky * alpha)
        return ky, jnp.where(nonzero, layer, 0.0)

    def _source_spectrum(self, cv, left_mm, right_mm, shift_ms):
        """Ŝ(kz, t) [T, Nkz] complex: kz-spectrum of the line current density relative to the IZ."""
        tau = self.t_ms - self.onset_ms - shift_ms  # [T]
        z = self.zs[None, :]
        front = cv * tau[:, None]  # distance travelled by each wave, mm
        eps0 = _SRC_DZ  # the IZ edge is sharp up to the sampling step
        epse = max(self.end_jitter_mm, _SRC_DZ)  # expected window over the fibre-end scatter
        w_r = ndtr(z / eps0) * ndtr((right_mm - z) / epse)
        w_l = ndtr(-z / eps0) * ndtr((z + left_mm) / epse)
        # ∂V/∂z of each travelling wave, windowed to its half of the fibre.
        psi = -_iap_slope(self.iap, front - z) * w_r + _iap_slope(self.iap, front + z) * w_l  # [T, Nz]
        nk = self.kz.shape[0]
        spec = jnp.fft.rfft(psi, axis=1)[:, :nk]
        # the grid starts at z = -n/2 dz and kz = m 2π/(n dz): that offset is the phase (-1)^m.
        sign = jnp.where(jnp.arange(nk) % 2 == 0, 1.0, -1.0)
        return spec * sign * (1j * self.kz) * _SRC_DZ

    def _field(self, territory, p, shift_ms, tissue):
        """Channels [Nch, T] from a territory transfer [Nkx, Nkz] (complex) and parameters ``p``."""
        depth, x0, logn, iz, cv, length = (p[i] for i in range(6))
        _, layer = self._ky_and_layers(tissue)
        F = territory * layer * self.elec_filter  # [Nkx, Nkz]
        px = jnp.exp(1j * self.kx[None, :] * (self.ex[:, None] - x0))  # [Ne, Nkx]
        A = px @ F  # [Ne, Nkz]
        A = A * jnp.exp(1j * self.kz[None, :] * (self.ez[:, None] - iz)) * self.kz_weight
        S = self._source_spectrum(cv, length / 2 + iz, length / 2 - iz, shift_ms)  # [T, Nkz]
        dk = (2 * np.pi / _PERIOD_MM) * (2 * np.pi / self.period_x_mm) / (4 * np.pi**2)
        phi = jnp.real(A @ S.T) * (dk * _SOURCE_GAIN)  # [Ne, T]
        return self.montage @ phi

    def _territory_radius(self, logn):
        return jnp.sqrt(jnp.exp(logn) / (np.pi * self.density))

    def _depth_in_muscle(self, y, tissue):
        # fibres cannot sit above the muscle surface: smooth clamp at 0 (width 0.25 mm)
        return jax.nn.softplus(4.0 * (y - tissue.skin_mm - tissue.fat_mm)) / 4.0

    # ------------------------------------------------------------------ public
    def muap(self, p: jax.Array, shift_ms: jax.Array | float = 0.0, tissue: Tissue | None = None) -> jax.Array:
        """Expected-potential MUAP [n_channels, T] µV of one MU with parameters ``p`` [6]."""
        tissue = self.tissue if tissue is None else tissue
        depth, logn = p[0], p[2]
        R = self._territory_radius(logn)
        ky, _ = self._ky_and_layers(tissue)
        d = self._depth_in_muscle(depth + R * self.quad_y, tissue)  # [Nq]
        att = jnp.exp(-ky[None] * d[:, None, None])  # [Nq, Nkx, Nkz] real
        # the points (±x, y) share a depth and their phases sum to 2 cos(kx R x): half the
        # exponentials, and a real transfer (the costliest part of a MUAP and of its gradient)
        ph = self.quad_w[:, None] * jnp.cos(self.kx[None, :] * (R * self.quad_x[:, None]))  # [Nq, Nkx]
        terr = jnp.einsum("qab,qa->ab", att, ph) * (jnp.exp(logn) / jnp.sum(self.quad_w))
        terr = terr * jnp.exp(-0.5 * (self.kz * self.iz_jitter_mm) ** 2)[None, :]
        return self._field(terr, p, shift_ms, tissue)

    def muap_fibres(self, p: jax.Array, key: jax.Array, n_max: int, shift_ms=0.0,
                    tissue: Tissue | None = None, chunk: int = 64) -> jax.Array:
        """Per-fibre MUAP [n_channels, T] µV: round(exp(log_fibres)) fibres (<= ``n_max``) drawn with ``key``."""
        tissue = self.tissue if tissue is None else tissue
        depth, logn = p[0], p[2]
        R = self._territory_radius(logn)
        ky, _ = self._ky_and_layers(tissue)
        n_max = int(math.ceil(n_max / chunk) * chunk)
        k1, k2, k3 = jax.random.split(key, 3)
        rad = R * jnp.sqrt(jax.random.uniform(k1, (n_max,)))
        ang = 2 * np.pi * jax.random.uniform(k2, (n_max,))
        dz = self.iz_jitter_mm * jax.random.normal(k3, (n_max,))
        fx, fy = rad * jnp.cos(ang), depth + rad * jnp.sin(ang)
        mask = (jnp.arange(n_max) < jnp.round(jnp.exp(logn))).astype(ky.dtype)

        def chunk_sum(c):
            x, y, s, m = c
            d = self._depth_in_muscle(y, tissue)
            att = jnp.exp(-ky[None] * d[:, None, None]) * m[:, None, None]
            ph = jnp.exp(-1j * (self.kx[None, :, None] * x[:, None, None] + self.kz[None, None, :] * s[:, None, None]))
            return jnp.sum(att * ph, axis=0)

        def body(acc, c):
            # skip chunks past this MU's fibre count (MUs differ 30-fold in size)
            return acc + jax.lax.cond(c[3][0] > 0, chunk_sum, lambda c: jnp.zeros_like(acc), c), None

        resh = lambda v: v.reshape(-1, chunk)  # noqa: E731
        terr0 = jnp.zeros(ky.shape, jnp.complex64 if ky.dtype == jnp.float32 else jnp.complex128)
        terr, _ = jax.lax.scan(body, terr0, (resh(fx), resh(fy), resh(dz), resh(mask)))
        return self._field(terr, p, shift_ms, tissue)


def muaps(cond: Conductor, params, *, mode: str = "expected", key=None, n_max: int | None = None,
          batch_size: int = 16) -> jax.Array:
    """MUAPs [n_units, n_channels, T] µV for ``params`` [n_units, 6], batched to bound memory.

    mode: "expected" (smooth, deterministic) or "fibres" (random fibre layout from ``key``).
    """
    params = jnp.asarray(params, cond.kx.dtype)
    if mode == "expected":
        return _muaps_expected(cond, params, batch_size)
    if mode == "fibres":
        if key is None:
            raise ValueError("mode='fibres' needs a jax.random key")
        if n_max is None:
            n_max = int(np.ceil(np.exp(np.max(np.asarray(params[:, 2])))))
        keys = jax.random.split(key, params.shape[0])
        return _muaps_fibres(cond, params, keys, n_max)
    raise ValueError(f"unknown MUAP mode {mode!r}; use 'expected' or 'fibres'")


@eqx.filter_jit
def _muaps_expected(cond, params, batch_size):
    return jax.lax.map(cond.muap, params, batch_size=batch_size)


@eqx.filter_jit
def _muaps_fibres(cond, params, keys, n_max):
    # sequential over MUs (no vmap) so that empty fibre chunks are really skipped
    return jax.lax.map(lambda a: cond.muap_fibres(a[0], a[1], n_max), (params, keys))
