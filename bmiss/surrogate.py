"""Neural surrogate of the volume conductor: MU parameters -> MUAP, for any anatomy, subject and grid.

:class:`Surrogate` binds the universal network (:mod:`bmiss.muapnet`, one set of weights shipped as
``bmiss/data/surrogate_universal.npz/.json``) to one anatomy: its tissue, muscle scatter, grid
(electrode positions after rotation and placement, electrode radius, montage) and sampling rate
(any rate, any number of samples within the trained window). It is a drop-in for
:class:`bmiss.conductor.Conductor`'s ``muap``: ``muap(p, shift_ms, tissue)`` honours the time shift
and a (differentiable) :class:`~bmiss.conductor.Tissue`.

Domain: an anatomy whose tissue, grid or sampling lie outside the training ranges (the weights'
metadata ``domain``: :data:`bmiss.muapgen.DOMAIN` when they were trained) is refused with
:class:`SurrogateMismatchError` naming the values;
MU parameters outside them are never clipped: :meth:`Surrogate.in_domain` returns the mask,
:meth:`Surrogate.muaps` raises on concrete out-of-domain values (``check_bounds=True``), and a traced
call warns through ``jax.debug.callback``.

Files: ``NAME.npz`` (flattened NNX state, arrays only) + ``NAME.json`` (metadata: architecture,
training script and data seed, domain, validation table). Train with
``experiments/train_surrogate.py``; benchmark with ``experiments/bench_surrogate.py``.
Units: lengths mm, CV m/s, time ms, potential µV. Parameter order: ``conductor.PARAM_NAMES``.

Examples
--------
>>> from bmiss.surrogate import load_surrogate
>>> s = load_surrogate("tibialis_anterior")            # doctest: +SKIP
>>> s.muap([6.0, 0.0, 5.0, 0.0, 4.0, 75.0]).shape        # doctest: +SKIP
(64, 96)
"""
from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from . import anatomy as _anatomy
from . import muapnet as N
from .anatomy import Anatomy
from .conductor import placed_positions
from .errors import SurrogateMismatchError  # noqa: F401  (re-exported)

DATA_DIR = Path(__file__).resolve().parent / "data"
FORMAT_VERSION = 2
UNIVERSAL = "universal"
Buffer = N.Buffer


from .muapgen import bounds_array, latin_hypercube, sample_params  # noqa: E402,F401  (one home; re-exported)
from .weights import atomic_savez, flat_state, load_flat_state, load_npz_into, weight_files  # noqa: E402,F401  (one home; re-exported)


def save_surrogate(stem, model: N.MuapNet, meta: dict) -> tuple[Path, Path]:
    """Write ``stem.npz`` (flat NNX state) and ``stem.json`` (metadata). Returns both paths."""
    from .files import write_json

    stem = Path(stem)
    npz, js = stem.with_suffix(".npz"), stem.with_suffix(".json")
    atomic_savez(npz, flat_state(model))
    write_json(js, dict(meta, format_version=FORMAT_VERSION, weights=npz.name), indent=2)
    return npz, js


def shipped_path(name: str = UNIVERSAL) -> Path:
    return DATA_DIR / f"surrogate_{name}.npz"


def list_shipped() -> list[str]:
    return sorted(p.stem.removeprefix("surrogate_") for p in DATA_DIR.glob("surrogate_*.json"))


def load_network(path: str | os.PathLike | None = None) -> tuple[N.MuapNet, dict]:
    """(network, metadata) from ``path`` (.npz or .json; default the shipped universal weights)."""
    npz, js = weight_files(shipped_path() if path is None else path)
    meta = json.loads(js.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise SurrogateMismatchError(
            f"{js}: surrogate format version {meta.get('format_version')!r}, expected {FORMAT_VERSION} (the "
            "universal network); retrain with experiments/train_surrogate.py")
    # an abstract model (shapes only): its random initialisers would compile only to be overwritten
    model = nnx.eval_shape(lambda: N.build(meta["arch"]))
    load_npz_into(model, npz)
    return model, meta


# --------------------------------------------------------------------------- public API
class Surrogate(eqx.Module):
    """The universal network bound to one anatomy / grid / sampling; drop-in for ``Conductor.muap``.

    ``muap(p [6], shift_ms=0.0, tissue=None) -> [n_channels, T]`` µV, differentiable in ``p``,
    ``shift_ms`` and ``tissue`` (a :class:`bmiss.conductor.Tissue`; default the anatomy's).
    ``muaps(params [n, 6]) -> [n, n_channels, T]``, the batched form (jitted).

    An Equinox module like the conductor: the weights, electrode positions, montage, sample times
    and tissue are array leaves, so a jitted function that takes it compiles once per shape, not
    once per recording or fitted subject.
    """

    state: nnx.State  # the network's weights and buffers
    ex: jax.Array  # [Ne] electrode positions across / along the fibres, mm (fibre frame)
    ez: jax.Array
    montage: jax.Array  # [n_channels, Ne]
    t_ms: jax.Array  # [T] sample times after the discharge, ms
    radius: jax.Array  # electrode radius, mm
    tis: jax.Array  # [8] tissue inputs (muapnet.TISSUE_KEYS)
    sigma_r: jax.Array  # radial muscle conductivity, S/m
    centre: jax.Array  # [2] the grid's centre (x across, z along the fibres), mm: what placed() turns about
    fs: float = eqx.field(static=True)
    graphdef: nnx.GraphDef = eqx.field(static=True)
    meta_json: str = eqx.field(static=True)  # the weights' metadata (JSON text: hashable, compared by value)
    label: "_Label" = eqx.field(static=True)  # the anatomy's name, for messages; never a reason to recompile
    check_bounds: bool = eqx.field(static=True)
    chunk: int = eqx.field(static=True)

    def __init__(self, model: N.MuapNet, meta: dict, a: Anatomy, *, fs: float | None = None,
                 n_samples: int | None = None, check_bounds: bool = True, chunk: int = 64, t_ms=None):
        g = a.grid
        self.meta_json = json.dumps(meta, sort_keys=True)
        self.label, self.check_bounds, self.chunk = _Label(a.name), bool(check_bounds), int(chunk)
        self.fs = float(fs or g.fs_hz)
        if t_ms is None:
            t_ms = np.arange(int(n_samples or g.muap_samples)) / self.fs * 1e3
        t_ms = np.asarray(t_ms, np.float64)
        if n_samples is not None and t_ms.shape != (int(n_samples),):
            raise ValueError(f"t_ms has shape {t_ms.shape} but n_samples = {n_samples}: give one of them")
        tis = N.tissue_of_anatomy(a)
        bad = N.setting_violations(tis, ied_mm=g.ied_mm, radius_mm=g.electrode_radius_mm,
                                   rotation_deg=g.rotation_deg, fs_hz=self.fs, t_max_ms=float(t_ms.max()),
                                   domain=meta.get("domain"))
        if bad:
            raise SurrogateMismatchError(
                f"anatomy {a.name!r} lies outside the surrogate's training domain: {'; '.join(bad)}. Use the "
                "analytic conductor (--forward conductor) or retrain (experiments/train_surrogate.py) wider")
        xz, _ = g.electrode_positions()
        M, _ = g.montage_matrix()
        self.ex, self.ez = jnp.asarray(xz[:, 0], jnp.float32), jnp.asarray(xz[:, 1], jnp.float32)
        self.montage = jnp.asarray(M, jnp.float32)
        self.t_ms = jnp.asarray(t_ms, jnp.float32)
        self.radius = jnp.float32(g.electrode_radius_mm)
        self.tis = jnp.asarray([tis[k] for k in N.TISSUE_KEYS], jnp.float32)
        self.sigma_r = jnp.float32(a.layers.muscle_conductivity_radial)
        self.centre = jnp.asarray([g.centre_x_mm, g.centre_z_mm], jnp.float32)
        self.graphdef, self.state = nnx.split(model)

    @property
    def meta(self) -> dict:
        """The weights' metadata (architecture, domain, training, validation table)."""
        return json.loads(self.meta_json)

    @property
    def model(self) -> N.MuapNet:
        return nnx.merge(self.graphdef, self.state)

    @property
    def domain(self) -> dict | None:
        """The ranges these weights were trained on (their metadata's ``domain``)."""
        return _domain_of(self.meta_json)

    @property
    def anatomy_name(self) -> str:
        return self.label.name

    @property
    def n_channels(self) -> int:
        return int(self.montage.shape[0])

    @property
    def n_samples(self) -> int:
        return int(self.t_ms.shape[0])

    def placed(self, rotation_deg=0.0, dz_mm=0.0, dx_mm=0.0) -> "Surrogate":
        """Copy with the grid turned by ``rotation_deg`` (degrees, about its centre) and moved by
        ``dz_mm`` along / ``dx_mm`` across the fibres: the same placement as
        :meth:`bmiss.conductor.Conductor.placed`, differentiable in all three. The network takes
        electrode positions as inputs, so this is exact up to its domain (rotation ±25° in all)."""
        ex, ez = placed_positions(self.ex, self.ez, self.centre[0], self.centre[1], rotation_deg, dz_mm, dx_mm)
        return eqx.tree_at(lambda s: (s.ex, s.ez), self, (ex, ez))

    def with_times(self, t_ms) -> "Surrogate":
        """Copy that samples MUAPs at ``t_ms`` [T] (ms relative to the discharge; may start < 0, where
        the MUAP is 0). Times past the trained window raise :class:`SurrogateMismatchError`."""
        if not isinstance(t_ms, jax.core.Tracer):
            bad = N.setting_violations({}, t_max_ms=float(np.max(np.asarray(t_ms))), domain=self.domain)
            if bad:
                raise SurrogateMismatchError(f"{'; '.join(bad)} (sample times after the discharge): use the "
                                             "analytic conductor for longer windows")
        return eqx.tree_at(lambda s: s.t_ms, self, jnp.asarray(t_ms, jnp.float32))

    def _inputs(self, tissue):
        if tissue is None:
            return self.tis, self.sigma_r
        tv = jnp.stack([tissue.skin_mm, tissue.fat_mm, tissue.sigma_z / tissue.sigma_r,
                        tissue.sigma_skin / tissue.sigma_fat, tissue.sigma_fat / tissue.sigma_r]).astype(jnp.float32)
        return jnp.concatenate([tv, self.tis[5:]]), tissue.sigma_r  # density, IZ / end scatter: not in Tissue

    def _forward(self, p, shift_ms=0.0, tissue=None):
        model = nnx.merge(self.graphdef, self.state)
        tv, sr = self._inputs(tissue)
        t = self.t_ms - shift_ms
        e = model.electrodes(p[None], tv[None], jnp.reshape(sr, (1,)), self.ex[None], self.ez[None],
                             jnp.reshape(self.radius, (1,)), t[None])[0]
        # nothing before the discharge (the conductor is exactly 0 there): the network was trained on
        # t >= 0 only, and its periodic profiles are not zero at earlier times
        return self.montage @ jnp.where(t >= 0, e, 0.0)

    def in_domain(self, params, tissue=None) -> np.ndarray:
        """Bool [n]: the MU parameters ``params`` [n, 6] lie in the training domain (under ``tissue``)."""
        tv = np.asarray(self._inputs(tissue)[0])
        return ~N.mu_domain_violations(params, tv, self.domain).any(1)

    def _check(self, params, tissue=None) -> None:
        if not self.check_bounds:
            return
        name, domain = self.anatomy_name, self.domain
        tv = self._inputs(tissue)[0]
        if any(isinstance(v, jax.core.Tracer) for v in (params, tv)):
            def host(p, tv):
                p = np.asarray(p).reshape(-1, 6)
                if N.mu_domain_violations(p, np.asarray(tv), domain).any():
                    # same text for the same names: Python's warning filter shows it once per place
                    warnings.warn(_message(name, p, np.asarray(tv), domain, count=False), UserWarning, stacklevel=2)

            jax.debug.callback(host, params, tv)
        else:
            p, tv = np.asarray(params).reshape(-1, 6), np.asarray(tv)
            if N.mu_domain_violations(p, tv, domain).any():
                raise SurrogateMismatchError(_message(name, p, tv, domain) + " (check_bounds=False to allow, or "
                                             "mask with Surrogate.in_domain)")

    def muap(self, p, shift_ms=0.0, tissue=None) -> jax.Array:
        """MUAP [n_channels, T] µV of one MU, ``p`` [6] in ``PARAM_NAMES`` order (physical units).

        ``shift_ms``: discharge time (ms) relative to the first sample; ``tissue``: a
        :class:`bmiss.conductor.Tissue` (default: the anatomy's). Concrete out-of-domain
        parameters raise :class:`SurrogateMismatchError`; traced ones warn (host callback).
        """
        p = jnp.asarray(p, jnp.float32)
        self._check(p, tissue)
        return _muap_one(self, p, shift_ms, tissue)

    def muaps(self, params) -> jax.Array:
        """MUAPs [n, n_channels, T] µV for ``params`` [n, 6] (jitted; evaluated in chunks)."""
        params = jnp.asarray(params, jnp.float32)
        self._check(params)
        return _muaps_batched(self, params)


class _Label:
    """A name carried for messages: every label compares equal, so a jitted function that takes a
    surrogate does not recompile for another anatomy (traced warnings name the first one traced)."""

    def __init__(self, name: str):
        self.name = str(name)

    def __eq__(self, other):
        return isinstance(other, _Label)

    def __hash__(self):
        return 0


@eqx.filter_jit
def _muap_one(sur: Surrogate, p, shift_ms, tissue):
    return sur._forward(p, shift_ms, tissue)


@eqx.filter_jit
def _muaps_batched(sur: Surrogate, P):
    return jax.lax.map(lambda p: sur._forward(p, 0.0, None), P, batch_size=sur.chunk)


@functools.lru_cache(maxsize=8)
def _domain_of(meta_json: str) -> dict | None:
    return json.loads(meta_json).get("domain")


def _message(name, p, tv, domain, count: bool = True) -> str:
    v = N.mu_domain_violations(p, tv, domain)
    names = [N.MU_DOMAIN_NAMES[j] for j in np.flatnonzero(v.any(0))]
    n = f"{int(v.any(1).sum())} " if count else ""
    return (f"surrogate ({name}): {n}MU parameter set(s) outside the training domain ({', '.join(names)}); "
            "values there are extrapolated, not clipped")


def load_surrogate(anatomy: Anatomy | str = "biceps_brachii", path: str | os.PathLike | None = None,
                   check_bounds: bool = True, *, fs: float | None = None, n_samples: int | None = None,
                   universal: bool = True, t_ms=None):
    """The universal surrogate bound to ``anatomy`` (an :class:`Anatomy`, e.g. a fitted subject, or a name).

    Parameters
    ----------
    anatomy : Anatomy or str
        Any anatomy whose tissue, grid (IED, electrode radius, rotation) and sampling lie in the
        training domain (the weights' ``domain``); shipped names and fitted subjects alike.
    path : str, optional
        ``.npz`` / ``.json`` of trained weights (default: ``bmiss/data/surrogate_universal.npz``).
    check_bounds : bool
        Refuse (concrete) or warn (traced) on MU parameters outside the domain.
    fs, n_samples : optional
        Sampling rate (Hz) and MUAP length (samples); default the anatomy grid's.
    t_ms : array [T], optional
        Sample times (ms after the discharge; may start < 0, where the MUAP is 0) instead of
        ``n_samples`` from 0: the trained window is checked against their latest, as
        :meth:`Surrogate.with_times`.
    universal : bool
        The universal network (default). ``False``: an anatomy that matches its own shipped
        per-anatomy weights exactly (``biceps_brachii`` as shipped, at its grid's rate) gets those
        (:mod:`bmiss.surrogate_anatomy`: 2.3x faster there, but 4.1 % against the universal
        network's 2.6 % median error since its second training stage); every other one the
        universal network.

    Raises
    ------
    SurrogateMismatchError
        The anatomy lies outside the training domain (names the values), or old-format weights.

    Examples
    --------
    >>> s = load_surrogate("biceps_brachii", fs=4096.0, n_samples=160)  # doctest: +SKIP
    >>> s.n_samples                                                        # doctest: +SKIP
    160
    """
    a = _anatomy.load(anatomy) if isinstance(anatomy, str) else anatomy
    if (path is None and not universal and t_ms is None and fs in (None, a.grid.fs_hz)
            and n_samples in (None, a.grid.muap_samples)):
        from . import surrogate_anatomy as _legacy

        if _legacy.shipped_path(a.name).with_suffix(".json").exists() and a.name != UNIVERSAL:
            try:
                return _legacy.load_surrogate(a, check_bounds=check_bounds)
            except SurrogateMismatchError:
                pass  # same name, other tissue / grid: the universal network serves it
    model, meta = load_network(path)
    return Surrogate(model, meta, a, fs=fs, n_samples=n_samples, check_bounds=check_bounds, t_ms=t_ms)
