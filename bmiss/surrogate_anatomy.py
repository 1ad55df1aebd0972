"""Per-anatomy MUAP network (the first surrogate): one anatomy, one grid; kept for biceps_brachii.

:func:`bmiss.surrogate.load_surrogate` returns this network only with ``universal=False``, for an
anatomy that has its own shipped weights and matches them exactly (today: ``biceps_brachii`` as
shipped). It is faster there than the universal network (:mod:`bmiss.muapnet`) but, since that
network's second training stage, less accurate (README, "### Surrogate").

Original description:

Architecture (and why)
----------------------
A *shared per-electrode* MLP that places learned, band-limited profiles at physically computed
delays, for one grid geometry at a time. For electrode e and component c:

    (a_ec, u_ec) = MLP(f(p, e))                         log-scale, unit coefficient vector [K]
    F_ec         = u_ec @ basis_c                        Fourier coefficients [M] of a profile over v (mm)
    phi_e(t)     = Re sum_c exp(a_ec) sum_m F_ecm exp(i w_m (cv (t - onset) - s_ec))
    channels     = montage @ phi                         [n_channels, T] µV

* Components c: the wave front reaching the electrode (s = |z_e - iz|, smoothed), and the fronts
  reaching the right / left fibre end (s = L/2 -+ iz: extinction, the non-propagating terms).
* CV enters exactly, not learned: the conductor's potential depends on time only through the
  distance travelled by the fronts, cv (t - onset). The delays s_ec carry the IZ / length shifts.
  In Fourier form a delay is a phase rotation, so the read-out is a rotation plus one dense
  product with the MU's time basis: no gathers, smooth (C-infinity) in every parameter.
* ``f(p, e)``: the 6 parameters normalised to [0, 1] by the anatomy bounds, as geometry relative
  to the MU (squared lateral offset -> exact mirror symmetry in x; distance to the MU; offset from
  the IZ; distances to the fibre ends). The planar conductor is translation invariant, so one
  network serves all electrodes (64x the data per conductor call).
* Why not the simpler MLP over a fixed PCA basis of whole MUAPs: measured on biceps MUAPs, 256
  PCA components still leave 6 % median (19 % p95) truncation error, since IZ and lateral
  position *shift* the pattern over the grid and shifts are high-rank. A per-electrode MLP over
  a fixed temporal PCA basis (0.2 % truncation error at K = 48) trained to only 27 % median
  error: it has to learn time shifts and CV time-scaling; placing the profiles at the physical
  delays brought the same budget to 7 %.
* Amplitude in log space (a_ec), shape as a unit vector (u_ec): amplitudes span ~4 decades
  (depth, fibre count, electrode distance). The loss is the per-MUAP normalised squared error,
  the metric the benchmark reports. SiLU activations keep d(MUAP)/dp smooth for the inversion.

The log-amplitude standardisation, the frequency grid, the electrode positions, the montage and the
parameter bounds are non-trainable :class:`Buffer` variables stored with the weights\n(the profile basis is trained).

Shipped ``biceps_brachii`` model (experiments/bench_surrogate.py, 1000 held-out LHS draws):
normalised RMSE median 4.1 %, p95 4.8 %; Jacobian cosine >= 0.997 for every parameter against
a conductor with a 0.125 mm source grid (0.83 for d/d(cv) against the shipped 0.5 mm grid,
whose own d/d(cv) carries a grid-crossing ripple: 0.83 against the fine grid too).

Files: ``NAME.npz`` (flattened NNX state, arrays only, no pickle) + ``NAME.json`` (metadata:
anatomy, grid, n_channels, T, bounds, architecture, data seed, validation error, ...).
Shipped: ``bmiss/data/surrogate_<anatomy>.npz/.json`` (train with
``experiments/train_surrogate.py``).

Out-of-bounds parameters are CLIPPED to the training bounds (extrapolation is not trusted); a
``UserWarning`` is issued once per :class:`Surrogate` on the host side: directly when called with
concrete values, through ``jax.debug.callback`` when traced (disable with ``check_bounds=False``).
Units: lengths mm, CV m/s, time ms, potential µV. Parameter order: ``conductor.PARAM_NAMES``.
"""
from __future__ import annotations

from .errors import SurrogateMismatchError  # noqa: F401  (re-exported)
import json
import math
import os
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import anatomy as _anatomy
from .anatomy import Anatomy
from .conductor import PARAM_NAMES, Conductor, muaps

DATA_DIR = Path(__file__).resolve().parent / "data"
FORMAT_VERSION = 1
_LEN_SCALE = 50.0  # mm: scale of the geometric input features
N_FEATURES = 12
_N_COMP = 3  # propagating wave, right-end and left-end extinction
_ABS_EPS = 2.0  # mm: smoothing of |z - iz| (keeps the frame differentiable at the IZ)




class Buffer(nnx.Variable):
    """Non-trainable array stored with the weights (basis, bounds, geometry)."""


# --------------------------------------------------------------------------- training data
from .muapgen import bounds_array, latin_hypercube, sample_params  # noqa: E402,F401  (one home; re-exported)


def electrode_conductor(a: Anatomy) -> Conductor:
    """Conductor for ``a``'s grid with a monopolar montage: its channels are the electrodes."""
    return Conductor.from_anatomy(a.with_grid(montage="monopolar"))


def generate(a: Anatomy, params: np.ndarray, batch_size: int = 16, chunk: int = 2000,
             progress: bool = False) -> np.ndarray:
    """Electrode potentials [n, n_electrodes, T] µV of ``params`` [n, 6] from the analytic conductor."""
    cond = electrode_conductor(a)
    out = np.empty((len(params), cond.n_channels, cond.n_samples), np.float32)
    it = range(0, len(params), chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="conductor MUAPs", unit="chunk")
    for i in it:  # chunks of equal size keep one compiled shape and bound device memory
        p = params[i:i + chunk]
        pad = chunk - len(p) if len(params) > chunk else 0
        p = np.concatenate([p, np.repeat(p[-1:], pad, 0)]) if pad else p
        out[i:i + chunk] = np.asarray(muaps(cond, p, batch_size=batch_size))[:len(p) - pad]
    return out


def generate_cv_jacobian(a: Anatomy, params: np.ndarray, batch_size: int = 16, chunk: int = 2000,
                         progress: bool = False) -> np.ndarray:
    """d(electrode potentials)/d(cv) [n, n_electrodes, T] µV/(m/s) of ``params`` [n, 6] (forward mode).

    Training targets for the CV derivative: the surrogate must get the potential right *between*
    the samples too (d/d cv = (t - onset) d/du), which the values alone constrain only loosely.
    """
    import equinox as eqx

    cond = electrode_conductor(a)
    e_cv = jnp.zeros(6, jnp.float32).at[PARAM_NAMES.index("cv_m_s")].set(1.0)
    f = eqx.filter_jit(lambda c, p: jax.lax.map(lambda q: jax.jvp(c.muap, (q,), (e_cv,))[1], p,
                                                batch_size=batch_size))
    out = np.empty((len(params), cond.n_channels, cond.n_samples), np.float32)
    it = range(0, len(params), chunk)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="conductor d/d(cv)", unit="chunk")
    for i in it:
        p = params[i:i + chunk]
        pad = chunk - len(p) if len(params) > chunk else 0
        p = np.concatenate([p, np.repeat(p[-1:], pad, 0)]) if pad else p
        out[i:i + chunk] = np.asarray(f(cond, jnp.asarray(p)))[:len(p) - pad]
    return out


# --------------------------------------------------------------------------- the network
def _smooth_abs(x, eps):
    return jnp.sqrt(x * x + eps * eps)


class MuapNet(nnx.Module):
    """Per-electrode generator in the travelled-distance frame.

    ``__call__(pn [B, 6] in [0, 1]) -> channels [B, n_channels, T]`` µV.

    Electrode e, component c (propagating wave; extinction at the right / left fibre end) is a
    band-limited profile over v (mm), f(v) = Re sum_m F_m exp(i w_m v), w_m = 2 pi m / period,
    with F = u_ec @ basis_c (learned basis [C, K, M] complex, u_ec a unit vector from the MLP),
    scaled by exp(a_ec) and read at v = cv (t - onset) - s_ec, s_ec the distance the fronts travel
    before reaching the electrode (|z_e - iz|, smoothed) or the fibre end. In Fourier form the
    read-out is a phase rotation exp(-i w_m s_ec) and ONE dense product with the MUAP's time
    basis exp(i w_m cv (t - onset)) [M, T]: no gathers, smooth in every parameter.
    """

    def __init__(self, *, ex, ez, montage, lo, hi, t_ms, onset_ms: float, amp_mean: float, amp_std: float,
                 n_basis: int = 32, k_max: float = 1.25, hidden: int = 128, depth: int = 3, seed: int = 0):
        rngs = nnx.Rngs(seed)
        lo, hi, ex, ez, t_ms = (np.asarray(v, np.float64) for v in (lo, hi, ex, ez, t_ms))
        # the period must exceed the range of v any component reads (all bounds, electrodes, samples)
        u_min = min(lo[4] * (t_ms[0] - onset_ms), hi[4] * (t_ms[0] - onset_ms))
        u_max = hi[4] * (t_ms[-1] - onset_ms)
        s_max = max(np.max(np.abs(ez[:, None] - np.array([lo[3], hi[3]])[None])) + _ABS_EPS,
                    hi[5] / 2 + max(abs(lo[3]), abs(hi[3])))
        s_min = min(lo[5] / 2 - max(abs(lo[3]), abs(hi[3])), 0.0)
        period = float(np.ceil((u_max - s_min) - (u_min - s_max) + 20.0))
        n_freq = int(np.ceil(k_max * period / (2 * np.pi))) + 1
        sizes = [N_FEATURES] + [hidden] * depth
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:])])
        self.out = nnx.Linear(hidden, _N_COMP * (1 + n_basis), rngs=rngs,
                              kernel_init=nnx.initializers.variance_scaling(0.1, "fan_in", "normal"))
        w = 2 * np.pi * np.arange(n_freq) / period
        # random start with a decaying spectrum (smooth profiles), real and imaginary parts
        g = np.random.default_rng(seed)
        init = g.normal(size=(_N_COMP, n_basis, 2, n_freq)) * np.exp(-2.0 * w)
        # scale so that a unit coefficient vector gives a waveform of norm ~1 over T samples
        init = init.reshape(_N_COMP, n_basis, 2 * n_freq) / np.sqrt(np.mean(np.sum(init**2, (2, 3))) * len(t_ms) / 2)
        self.basis = nnx.Param(jnp.asarray(init, jnp.float32))  # [C, K, 2M]: real | imaginary parts
        f = lambda v: Buffer(jnp.asarray(v, jnp.float32))  # noqa: E731
        self.ex, self.ez, self.montage, self.lo, self.hi = f(ex), f(ez), f(montage), f(lo), f(hi)
        self.t_ms, self.omega = f(t_ms), f(w)
        self.frame = f([onset_ms, period])
        self.amp = f([amp_mean, amp_std])

    def features(self, pn):
        """Per-electrode input features [B, Ne, N_FEATURES] from normalised parameters [B, 6].

        Geometry only: CV enters exactly through the time axis (the conductor's potential is a
        function of cv * (t - onset)), so the MLP never has to learn a time scaling.
        """
        lo, hi = self.lo[...], self.hi[...]
        p = lo + pn * (hi - lo)
        depth, x, iz, length = (p[:, i, None] for i in (0, 1, 3, 5))
        ex, ez = self.ex[...][None], self.ez[...][None]
        dx2 = (ex - x) ** 2
        rho = jnp.sqrt(dx2 + depth**2)  # distance electrode -> MU axis, mm
        dz = ez - iz  # along the fibres from the IZ
        s = _LEN_SCALE
        shape = dx2.shape
        b = lambda v: jnp.broadcast_to(v, shape)  # noqa: E731
        cols = [dx2 / s**2, rho / s, jnp.log(rho / s), dz / s, _smooth_abs(dz, _ABS_EPS) / s,
                (ez + length / 2) / s, (length / 2 - ez) / s,  # electrode <- left / right fibre end
                b((length / 2 + iz) / s), b((length / 2 - iz) / s),  # IZ -> fibre ends
                b(pn[:, 0, None]), b(pn[:, 2, None]), b(pn[:, 5, None])]
        return jnp.stack(cols, -1)

    def electrodes(self, pn):
        """Electrode potentials [B, Ne, T] µV."""
        h = self.features(pn)
        for lin in self.layers:
            h = jax.nn.silu(lin(h))
        o = self.out(h)
        o = o.reshape(o.shape[:-1] + (_N_COMP, -1))  # [B, Ne, C, 1 + K]
        a = self.amp[0] + self.amp[1] * o[..., 0]
        u = o[..., 1:]
        u = u * (jnp.exp(a)[..., None] * jax.lax.rsqrt(jnp.sum(u * u, -1, keepdims=True) + 1e-12))
        lo, hi = self.lo[...], self.hi[...]
        p = lo + pn * (hi - lo)
        iz, cv, length = (p[:, i, None] for i in (3, 4, 5))
        w = self.omega[...]
        m = w.shape[0]
        bas = self.basis[...]  # [C, K, 2M]: real | imaginary Fourier coefficients
        # delay of each component: the front reaching the electrode (per electrode), the
        # right / left fibre end (per MU); [B, Ne or 1, C]
        dz = self.ez[...][None] - iz
        s0 = _smooth_abs(dz, _ABS_EPS)
        ph = [s0[..., None] * w, ((length / 2 - iz) * w)[:, None], ((length / 2 + iz) * w)[:, None]]
        gr = gi = 0.0
        for k in range(_N_COMP):
            f = u[:, :, k] @ bas[k]  # one plain GEMM per component (fast path)
            fr, fi = f[..., :m], f[..., m:]
            c, sn = jnp.cos(ph[k]), jnp.sin(ph[k])
            gr, gi = gr + fr * c + fi * sn, gi + fi * c - fr * sn  # F exp(-i w s), summed over components
        tph = (cv * (self.t_ms[...] - self.frame[0]))[:, None, :] * w[None, :, None]  # [B, M, T]
        # Re(G exp(i w u_t)) for all electrodes in one batched product
        return jnp.einsum("bnm,bmt->bnt", jnp.concatenate([gr, gi], -1),
                          jnp.concatenate([jnp.cos(tph), -jnp.sin(tph)], 1))

    def __call__(self, pn):
        return jnp.einsum("ce,bet->bct", self.montage[...], self.electrodes(pn))


def build_model(a: Anatomy, amp_mean=0.0, amp_std=1.0, *, n_basis=32, k_max=1.25, hidden=128, depth=3,
                seed=0, onset_ms=1.0) -> MuapNet:
    xz, _ = a.grid.electrode_positions()
    M, _ = a.grid.montage_matrix()
    lo, hi = bounds_array(a)
    g = a.grid
    t_ms = np.arange(g.muap_samples) / g.fs_hz * 1e3
    return MuapNet(ex=xz[:, 0], ez=xz[:, 1], montage=M, lo=lo, hi=hi, t_ms=t_ms, onset_ms=onset_ms,
                   amp_mean=amp_mean, amp_std=amp_std, n_basis=n_basis, k_max=k_max, hidden=hidden,
                   depth=depth, seed=seed)


def template_model(a: Anatomy, arch: dict) -> MuapNet:
    """A model of the right shapes to load weights into (values are overwritten)."""
    return build_model(a, n_basis=arch["n_basis"], k_max=arch["k_max"], hidden=arch["hidden"],
                       depth=arch["depth"], onset_ms=arch["onset_ms"])


from .weights import atomic_savez, flat_state, load_flat_state, load_npz_into, weight_files  # noqa: E402,F401  (one home; re-exported)


def atomic_write_text(path, text: str) -> None:
    from .files import write_text

    write_text(path, text)


def geometry_meta(a: Anatomy) -> dict:
    """What the weights depend on: anatomy name, grid, tissue, muscle (for the compatibility check)."""
    from dataclasses import asdict

    g = asdict(a.grid)
    g["missing"] = [list(m) for m in g["missing"]]
    return {"anatomy": a.name, "grid": g, "layers": asdict(a.layers), "muscle": asdict(a.muscle),
            "n_channels": a.grid.n_channels, "n_samples": a.grid.muap_samples,
            "param_names": list(PARAM_NAMES),
            "bounds": {k: list(v) for k, v in a.param_bounds().items()}}


def save_surrogate(stem, model: MuapNet, meta: dict) -> tuple[Path, Path]:
    """Write ``stem.npz`` (flat NNX state) and ``stem.json`` (metadata). Returns both paths."""
    stem = Path(stem)
    npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
    atomic_savez(npz, flat_state(model))
    meta = dict(meta, format_version=FORMAT_VERSION, weights=npz.name)
    atomic_write_text(js, json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return npz, js


def shipped_path(name: str) -> Path:
    return DATA_DIR / f"surrogate_{name}.npz"


def list_shipped() -> list[str]:
    return sorted(p.stem.removeprefix("surrogate_") for p in DATA_DIR.glob("surrogate_*.json")
                  if p.stem != "surrogate_universal")


def _check_compatible(meta: dict, a: Anatomy, where: Path) -> None:
    want = geometry_meta(a)
    diffs = []
    for sec in ("grid", "layers", "muscle", "bounds"):
        for k, v in want[sec].items():
            got = meta.get(sec, {}).get(k)
            if got is None or not _same(got, v):
                diffs.append(f"{sec}.{k}: weights {got!r} vs anatomy {v!r}")
    for k in ("n_channels", "n_samples"):
        if meta.get(k) != want[k]:
            diffs.append(f"{k}: weights {meta.get(k)!r} vs anatomy {want[k]!r}")
    if meta.get("anatomy") != a.name or diffs:
        raise SurrogateMismatchError(
            f"{where}: surrogate weights were trained for anatomy {meta.get('anatomy')!r} but were loaded for "
            f"anatomy {a.name!r}" + (f"; differences: {'; '.join(diffs[:6])}" + (" ..." if len(diffs) > 6 else "")
                                    if diffs else "")
            + f". Train one with: python experiments/train_surrogate.py --anatomy {a.name}")


def _same(x, y) -> bool:
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y))
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-9)
    return x == y


# --------------------------------------------------------------------------- public API
class Surrogate:
    """Trained MUAP generator bound to one anatomy; drop-in for :class:`Conductor`'s ``muap``.

    ``muap(p [6], shift_ms=0.0, tissue=None) -> [n_channels, T]`` µV, differentiable in ``p``.
    ``muaps(params [n, 6]) -> [n, n_channels, T]``, the batched form (jitted).
    """

    def __init__(self, model: MuapNet, meta: dict, check_bounds: bool = True, chunk: int = 100):
        self.model = model
        self.meta = meta
        self.check_bounds = check_bounds
        self._warned = False
        self.lo = np.asarray(model.lo[...])
        self.hi = np.asarray(model.hi[...])
        graphdef, state = nnx.split(model)
        self._graphdef, self._state = graphdef, state
        one = lambda p: self._forward(p[None])[0]  # noqa: E731
        self._single = jax.jit(one)  # inlined when traced from outside
        # chunks of ~100 MUAPs keep the [chunk, Ne, M] intermediates cache-sized (faster on CPU)
        self._batched = jax.jit(lambda p: jax.lax.map(one, p, batch_size=chunk))

    @property
    def n_channels(self) -> int:
        return int(self.model.montage.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.model.t_ms.shape[0])

    @property
    def anatomy_name(self) -> str:
        return self.meta.get("anatomy", "")

    def _forward(self, params):
        model = nnx.merge(self._graphdef, self._state)
        lo, hi = model.lo[...], model.hi[...]
        pn = (jnp.clip(params, lo, hi) - lo) / (hi - lo)
        return model(pn)

    def _warn(self, n_out: int, where: str = "") -> None:
        if n_out and not self._warned:
            self._warned = True
            names = ", ".join(f"{n} in [{l:.3g}, {h:.3g}]" for n, l, h in zip(PARAM_NAMES, self.lo, self.hi))
            warnings.warn(f"surrogate ({self.anatomy_name}): {n_out} parameter value(s){where} outside the "
                          f"training bounds were clipped to them ({names})", UserWarning, stacklevel=3)

    def _check(self, params) -> None:
        if not self.check_bounds:
            return
        if isinstance(params, jax.core.Tracer):
            lo, hi = self.lo, self.hi

            def host(p):
                p = np.asarray(p)
                self._warn(int(np.sum((p < lo * (1 - 1e-6) - 1e-6) | (p > hi * (1 + 1e-6) + 1e-6))))

            jax.debug.callback(host, params)
        else:
            p = np.asarray(params)
            self._warn(int(np.sum((p < self.lo - 1e-6 * np.abs(self.lo) - 1e-6)
                                  | (p > self.hi + 1e-6 * np.abs(self.hi) + 1e-6))))

    def muap(self, p, shift_ms=0.0, tissue=None) -> jax.Array:
        """MUAP [n_channels, T] µV of one MU, ``p`` [6] in ``PARAM_NAMES`` order (physical units).

        ``shift_ms`` and ``tissue`` are accepted for signature compatibility with
        ``Conductor.muap`` and IGNORED: the surrogate knows only the training tissue and the
        discharge at t = 0 (the inversion applies time shifts itself). Parameters outside the
        training bounds are clipped (warned once).
        """
        p = jnp.asarray(p, jnp.float32)
        self._check(p)
        return self._single(p)

    def muaps(self, params) -> jax.Array:
        """MUAPs [n, n_channels, T] µV for ``params`` [n, 6] (jitted; evaluated in chunks)."""
        params = jnp.asarray(params, jnp.float32)
        self._check(params)
        return self._batched(params)


def load_surrogate(anatomy: Anatomy | str = "biceps_brachii", path: str | os.PathLike | None = None,
                   check_bounds: bool = True) -> Surrogate:
    """Load trained weights for ``anatomy`` (an :class:`Anatomy` or a shipped name).

    ``path``: a ``.npz`` or ``.json`` of a trained surrogate (default: the shipped
    ``bmiss/data/surrogate_<name>.npz``). Raises :class:`SurrogateMismatchError` naming both
    anatomies when the weights were trained for another anatomy / grid / tissue, and
    ``FileNotFoundError`` when no weights exist for this anatomy. No network access.
    """
    a = _anatomy.load(anatomy) if isinstance(anatomy, str) else anatomy
    if path is None:
        npz = shipped_path(a.name)
        if not npz.with_suffix(".json").exists():
            shipped = list_shipped()
            raise FileNotFoundError(
                f"no shipped surrogate for anatomy {a.name!r} (shipped: {', '.join(shipped) or 'none'}; a "
                f"surrogate trained for {shipped[0] if shipped else 'another anatomy'!r} cannot serve "
                f"{a.name!r}). Train one with: python experiments/train_surrogate.py --anatomy {a.name} "
                "and pass path=.../surrogate.npz")
    else:
        npz = Path(path)
    npz, js = weight_files(npz)
    meta = json.loads(js.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise SurrogateMismatchError(f"{js}: surrogate format version {meta.get('format_version')!r}, "
                                     f"expected {FORMAT_VERSION}")
    _check_compatible(meta, a, js)
    model = template_model(a, meta["arch"])
    load_npz_into(model, npz)
    return Surrogate(model, meta, check_bounds=check_bounds)

