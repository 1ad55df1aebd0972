"""Amortized posterior of each motor unit's properties from its spike-triggered MUAP.

``unit_properties(templates, layout_positions_mm, electrode_diameter_mm, tissue)`` encodes every
unit's average (:mod:`bmiss.posterior.features`), runs the shipped network once over the batch and
returns each property's marginal posterior (mixture of Gaussians per property): mean, std and the
2.5/16/84/97.5 % quantiles, with a domain check per unit.

Conventions (those of :mod:`bmiss.fit` and :mod:`bmiss.conductor`):

* ``depth_mm``: depth of the territory centre below the skin surface (skin + fat + depth in muscle).
* ``x_mm``: across the fibres, relative to the grid centre (add the grid's ``centre_x_mm`` for the
  anatomy frame; pass it as ``tissue["grid_centre_x_mm"]`` to have it added).
* ``iz_mm``: IZ position along the fibres relative to the grid centre; ``tissue["grid_centre_z_mm"]``
  (the grid centre relative to the fibre midpoints: the anatomy's ``centre_z_mm`` + a subject fit's
  ``dz_mm``) turns it into bmiss's convention (relative to the fibre midpoint).
* ``log_fibres``: ln(number of fibres); ``cv_m_s``; ``length_mm``: fibre length.
Units: mm, m/s, µV, Hz.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import SurrogateMismatchError, UserError, did_you_mean
from . import features as F

PARAM_NAMES = ("depth_mm", "x_mm", "log_fibres", "iz_mm", "cv_m_s", "length_mm")
PARAM_UNITS = ("mm", "mm", "ln(fibres)", "mm", "m/s", "mm")
QUANTILES = (0.025, 0.16, 0.84, 0.975)
DEFAULT_WEIGHTS = Path(__file__).resolve().parents[1] / "data" / "posterior_v1"
TISSUE_ALLOWED = F.TISSUE_KEYS + ("rotation_deg", "grid_centre_x_mm", "grid_centre_z_mm")

# domain limits of the inputs (the training ranges, with the margin the network was seen to tolerate)
# peak-to-noise ratio of the average (largest |MUAP| / median noise std): training drew 3-400; below 5 the
# network is at its training floor. (An energy ratio over the 48-ms x 64-channel window was tried and
# refused clear, localised MUAPs: peak/noise 10 gives energy ratios near 1.)
MIN_PNR = 5.0
# ms of the fixed -10..38-ms span around the energy peak that the average's window may leave uncovered
# (before, after the peak): the 99th percentiles of the training examples' windows (validation chunks)
MAX_UNCOVERED_MS = (9.0, 36.0)


class PosteriorDomainError(SurrogateMismatchError):
    """The posterior network's weights or inputs do not fit (wrong version, grid, sampling rate)."""


@dataclass
class UnitPosterior:
    """Marginal posteriors of every unit's properties.

    Attributes
    ----------
    mean, std : [n_units, 6] in ``names`` order and ``units``
    q : dict ``"0.025" | "0.16" | "0.84" | "0.975"`` -> [n_units, 6] quantiles
    in_domain : [n_units] bool; ``reasons[i]`` lists why unit i is outside the training domain
    samples : [n_units, n_samples, 6] draws of the marginals (independent per property), or None
    names, units : property names (``bmiss.conductor.PARAM_NAMES``) and units
    meta : weights' name, time, the reference centre used per unit [n, 2] mm
    """

    mean: np.ndarray
    std: np.ndarray
    q: dict
    in_domain: np.ndarray
    reasons: list
    samples: np.ndarray | None = None
    names: tuple = PARAM_NAMES
    units: tuple = PARAM_UNITS
    meta: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """One dict per unit: ``{name: (mean, lo95, hi95)}``, ``in_domain`` and ``reasons``."""
        return [{**{n: (float(self.mean[i, j]), float(self.q["0.025"][i, j]), float(self.q["0.975"][i, j]))
                    for j, n in enumerate(self.names)}, "in_domain": bool(self.in_domain[i]),
                 "reasons": list(self.reasons[i])} for i in range(len(self.mean))]


# ----------------------------------------------------------------------------- mixtures
def _mix_parts(mix):
    mix = np.asarray(mix, np.float64)
    logit, mu, log_sd = mix[..., 0, :], mix[..., 1, :], mix[..., 2, :]
    w = np.exp(logit - logit.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return w, mu, np.exp(log_sd)


def _mix_quantiles(w, mu, sd, qs):
    from scipy.special import ndtr

    lo = (mu - 8 * sd).min(-1)
    hi = (mu + 8 * sd).max(-1)
    out = []
    for q in qs:
        a, b = lo.copy(), hi.copy()
        for _ in range(60):
            m = (a + b) / 2
            c = (w * ndtr((m[..., None] - mu) / sd)).sum(-1)
            a = np.where(c < q, m, a)
            b = np.where(c < q, b, m)
        out.append((a + b) / 2)
    return out


def summarise_mixture(mix: np.ndarray, n_samples: int = 0, seed: int = 0) -> dict:
    """Physical mean, std, quantiles (and optional draws) from network mixtures [n, 6, 3, K].

    x and IZ come out relative to the reference centre the features used.
    """
    from .network import TARGET_SCALE, TARGET_SHIFT

    w, mu, sd = _mix_parts(mix)
    sh, sc = TARGET_SHIFT.astype(np.float64), TARGET_SCALE.astype(np.float64)
    m = sh[:, None] + sc[:, None] * mu  # physical (ln length for the last)
    s = sc[:, None] * sd
    mean = (w * m).sum(-1)
    var = (w * (s**2 + m**2)).sum(-1) - mean**2
    # length: mixture of log-normals
    e1 = (w[:, 5] * np.exp(m[:, 5] + s[:, 5] ** 2 / 2)).sum(-1)
    e2 = (w[:, 5] * np.exp(2 * m[:, 5] + 2 * s[:, 5] ** 2)).sum(-1)
    mean[:, 5], var[:, 5] = e1, e2 - e1**2
    qz = _mix_quantiles(w, mu, sd, QUANTILES)
    q = {}
    for qq, z in zip(QUANTILES, qz):
        v = sh + sc * z
        v[:, 5] = np.exp(v[:, 5])
        q[f"{qq:g}"] = v
    out = {"mean": mean, "std": np.sqrt(np.maximum(var, 0.0)), "q": q}
    if n_samples:
        rng = np.random.default_rng(seed)
        n, P, K = w.shape
        cw = np.cumsum(w, -1)
        u = rng.random((n, P, n_samples, 1))
        k = np.minimum((u > cw[:, :, None, :]).sum(-1), K - 1)  # [n, P, S]
        g = np.take_along_axis(m, k.reshape(n, P, -1), -1) + np.take_along_axis(s, k.reshape(n, P, -1), -1) * \
            rng.standard_normal((n, P, n_samples))
        g[:, 5] = np.exp(g[:, 5])
        out["samples"] = g.transpose(0, 2, 1)
    return out


# ----------------------------------------------------------------------------- weights
@dataclass
class PosteriorModel:
    """Loaded network and its metadata (from ``posterior_*.npz`` + ``.json``)."""

    net: object
    meta: dict
    path: Path

    def mixtures(self, tokens, mask, glob) -> np.ndarray:
        return np.asarray(_predict(self.net, tokens, mask, glob))


def _predict(net, tokens, mask, glob):
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    global _PRED
    if "_PRED" not in globals():
        _PRED = eqx.filter_jit(lambda m, t, k, g: jax.vmap(m)(t, k, g))
    n = tokens.shape[0]
    pad = int(2 ** math.ceil(math.log2(max(n, 1)))) - n if n < 64 else (-n) % 64  # few compiled shapes
    t = np.concatenate([tokens, np.zeros((pad,) + tokens.shape[1:], tokens.dtype)])
    k = np.concatenate([mask, np.zeros((pad,) + mask.shape[1:], bool)])
    k[n:, 0] = True
    g = np.concatenate([glob, np.zeros((pad,) + glob.shape[1:], glob.dtype)])
    return np.asarray(_PRED(net, jnp.asarray(t), jnp.asarray(k), jnp.asarray(g)))[:n]


def load(path: str | Path | None = None) -> PosteriorModel:
    """Load shipped (default) or other posterior weights; refuse weights this code cannot serve.

    Raises
    ------
    PosteriorDomainError (a :class:`bmiss.errors.SurrogateMismatchError`)
        Missing files, another feature version or a network configuration that does not match.

    Examples
    --------
    >>> pm = load()  # doctest: +SKIP
    >>> pm.meta["validation"]["tissue_unknown"]["depth_mm"]["rmse"]  # doctest: +SKIP
    """
    return _load_cached(str(Path(path) if path is not None else DEFAULT_WEIGHTS))


@lru_cache(maxsize=4)
def _load_cached(path: str) -> PosteriorModel:
    from .network import TARGET_SCALE, TARGET_SHIFT, from_leaves

    p = Path(path)
    js, npz = p.with_suffix(".json"), p.with_suffix(".npz")
    if not js.is_file() or not npz.is_file():
        raise PosteriorDomainError(f"posterior weights {p} (.json + .npz) not found")
    meta = json.loads(js.read_text())
    if meta.get("format") != "bmiss posterior network":
        raise PosteriorDomainError(f"{js} is not a bmiss posterior network ({meta.get('format')!r})")
    if meta.get("feature_version") != F.FEATURE_VERSION:
        raise PosteriorDomainError(f"{js}: feature version {meta.get('feature_version')} but this code encodes "
                                   f"version {F.FEATURE_VERSION}; retrain (experiments/train_posterior.py)")
    fe = meta.get("features", {})
    want = {"T0_MS": F.T0_MS, "DT_MS": F.DT_MS, "N_T": F.N_T, "NE": F.NE, "POS_SCALE_MM": F.POS_SCALE_MM}
    bad = [k for k, v in want.items() if fe.get(k) != v]
    if bad or list(meta.get("param_names", [])) != list(PARAM_NAMES) or \
            not np.allclose(meta.get("target_shift"), TARGET_SHIFT) or not np.allclose(meta.get("target_scale"), TARGET_SCALE):
        raise PosteriorDomainError(f"{js}: encoding {bad or 'targets'} differ from this code's; retrain")
    with np.load(npz) as z:
        arrays = [z[k] for k in sorted(z.files)]
    try:
        net = from_leaves(arrays, meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise PosteriorDomainError(f"{npz}: {e}") from None
    return PosteriorModel(net=net, meta=meta, path=p)


# ----------------------------------------------------------------------------- inference
def _check_tissue(tissue: dict | None) -> dict:
    tissue = dict(tissue or {})
    for k in tissue:
        if k not in TISSUE_ALLOWED:
            raise UserError(f"unknown tissue key {k!r}{did_you_mean(k, TISSUE_ALLOWED)}; use {TISSUE_ALLOWED}")
    return tissue


def averages(emg, spikes, fs: float, *, min_discharges: int = 10, seed: int = 0):
    """Spike-triggered averages as the network reads them: every unit over the whole search window
    (20 ms before to 80 ms after each discharge, :data:`bmiss.templates.SEARCH_MS`).

    The network reads a fixed -10..38 ms around each MUAP's energy peak. ``spike_triggered_muaps``
    otherwise cuts the averages to the union of the units' supports, which for a few short MUAPs
    (35-mm fibres) is ~12 ms: on such averages the IZ came out 19 mm off
    (``experiments/diag_posterior_window.py``).

    Parameters
    ----------
    emg : [n_channels, n_samples] µV
    spikes : list of int arrays, discharge samples per unit
    fs : Hz
    min_discharges : units with fewer usable discharges raise ``ValueError``
    seed : seed of the noise floor's random triggers

    Returns
    -------
    bmiss.templates.Templates

    Examples
    --------
    >>> tpl = averages(rec.emg, rec.true_spikes, rec.fs)  # doctest: +SKIP
    >>> unit_properties(tpl, layout.positions_mm(), 1.0)  # doctest: +SKIP
    """
    from ..templates import search_bounds, spike_triggered_muaps

    pre, post = search_bounds(fs)
    return spike_triggered_muaps(emg, spikes, fs, window=(-pre, post), min_discharges=min_discharges, seed=seed)


def unit_properties(templates, layout_positions_mm, electrode_diameter_mm: float, tissue: dict | None = None, *,
                    n_samples: int = 0, seed: int = 0, weights: str | Path | None = None,
                    strict: bool = False) -> UnitPosterior:
    """Posterior of every unit's properties from its spike-triggered MUAP (amortized, no fitting).

    Parameters
    ----------
    templates : bmiss.templates.Templates
        Averages [n_units, n_channels, T] µV (monopolar, band-passed as the templates say) with their
        per-sample ``noise_std``, ``fs`` and ``onset``; :func:`averages` makes them over the whole
        window the network expects.
    layout_positions_mm : [n_channels, 2] mm
        Each channel's electrode (x across, z along the fibres when the grid is not turned; grid
        centre at 0), i.e. ``bmiss.electrodes.Layout.positions_mm()`` in the EMG's channel order.
    electrode_diameter_mm : float
    tissue : dict, optional
        What the caller knows: ``fat_mm``, ``skin_mm``, ``anisotropy`` (σz/σr) - each missing or None
        means unknown (the network then integrates over its training range); ``rotation_deg`` (grid
        rotation relative to the fibres, anatomy sense, default 0); ``grid_centre_x_mm``,
        ``grid_centre_z_mm`` (added to x and IZ; see the module docstring).
    n_samples : int
        Draws of each marginal to return in ``samples`` (0: none).
    seed : int
        Seed of those draws.
    weights : path, optional
        Other weights (``.npz`` + ``.json`` stem); default the shipped ``posterior_v1``.
    strict : bool
        Raise :class:`PosteriorDomainError` when any unit is outside the training domain (default:
        flag it in ``in_domain`` / ``reasons`` and still return its posterior).

    Returns
    -------
    UnitPosterior

    Examples
    --------
    >>> tpl = averages(rec.emg, rec.true_spikes, rec.fs)  # doctest: +SKIP
    >>> post = unit_properties(tpl, layout.positions_mm(), 1.0, {"fat_mm": 3.0})  # doctest: +SKIP
    >>> post.mean[:, 0], post.q["0.025"][:, 0], post.q["0.975"][:, 0]  # depth and its 95 % interval  # doctest: +SKIP
    """
    import time

    t0 = time.perf_counter()
    tissue = _check_tissue(tissue)
    pm = load(weights)
    M = np.asarray(templates.muaps, np.float32)
    if M.ndim != 3:
        raise UserError(f"templates.muaps must be [n_units, n_channels, T], got shape {M.shape}")
    n, C, T = M.shape
    pos = np.asarray(layout_positions_mm, np.float64)
    if pos.shape != (C, 2):
        raise UserError(f"layout_positions_mm must be [{C}, 2] (one (x, z) per channel), got {pos.shape}")
    if not np.isfinite(pos).all() or not np.isfinite(M).all():
        raise UserError("layout_positions_mm and templates.muaps must be finite")
    fs = float(templates.fs)
    t_ms = np.asarray(templates.t_ms, np.float64)
    rot = float(tissue.get("rotation_deg", 0.0) or 0.0)
    enc = F.encode(M, templates.noise_std, t_ms, pos, float(electrode_diameter_mm) / 2, fs, rotation_deg=rot)
    g = F.globals_with_tissue(enc["globals_base"], tissue)
    mix = pm.mixtures(enc["tokens"], enc["mask"], g)
    s = summarise_mixture(mix, n_samples=n_samples, seed=seed)
    cx = enc["centre"][:, 0] + float(tissue.get("grid_centre_x_mm", 0.0) or 0.0)
    cz = enc["centre"][:, 1] + float(tissue.get("grid_centre_z_mm", 0.0) or 0.0)
    for arr in [s["mean"]] + list(s["q"].values()):
        arr[:, 1] += cx
        arr[:, 3] += cz
    if "samples" in s:
        s["samples"][:, :, 1] += cx[:, None]
        s["samples"][:, :, 3] += cz[:, None]
    reasons = _domain_reasons(pm.meta, enc, templates, electrode_diameter_mm, fs, tissue, rot, s)
    in_dom = np.array([not r for r in reasons])
    if strict and not in_dom.all():
        bad = [f"unit {i}: {'; '.join(r)}" for i, r in enumerate(reasons) if r]
        raise PosteriorDomainError("outside the posterior network's training domain: " + " | ".join(bad[:5]))
    return UnitPosterior(mean=s["mean"], std=s["std"], q=s["q"], in_domain=in_dom, reasons=reasons,
                         samples=s.get("samples"),
                         meta={"weights": pm.path.name, "time_s": round(time.perf_counter() - t0, 3),
                               "centre_mm": np.stack([cx, cz], 1), "pnr": enc["pnr"], "n_electrodes": enc["n_used"],
                               "note": "marginal posteriors (a Gaussian mixture per property, no joint correlations)"})


def _domain_reasons(meta, enc, templates, diameter, fs, tissue, rot, s) -> list[list[str]]:
    R = meta["training_ranges"]
    glob = []
    fs_lo, fs_hi = R["fs_hz"]
    if not (0.9 * fs_lo <= fs <= 1.1 * fs_hi):
        glob.append(f"sampling rate {fs:g} Hz outside the training range {fs_lo:g}-{fs_hi:g} Hz")
    d_lo, d_hi = R["diameter_mm"]
    if not (d_lo <= diameter <= d_hi):
        glob.append(f"electrode diameter {diameter:g} mm outside {d_lo:g}-{d_hi:g} mm")
    if abs(rot) > 60:
        glob.append(f"grid rotation {rot:g} deg: the fibres do not run along the grid's z")
    for k, rk in (("fat_mm", "fat_mm"), ("skin_mm", "skin_mm"), ("anisotropy", "anisotropy")):
        v = tissue.get(k)
        if v is not None and np.isfinite(v) and not (R[rk][0] <= v <= R[rk][1]):
            glob.append(f"{k} = {v:g} outside the training range {R[rk][0]:g}-{R[rk][1]:g}")
    band = getattr(templates, "band", None)
    if band is None or band[1] > 0.45 * fs + 1 and band[1] > 600 or band[0] > 60:
        glob.append(f"band {band} is not the 20-500 Hz band-pass the network was trained on")
    esnr = enc["energy_snr"]
    out = []
    for i in range(len(esnr)):
        r = list(glob)
        ied = enc["ied_mm"][i]
        if not (0.85 * R["ied_mm"][0] <= ied <= 1.1 * R["ied_mm"][1]):
            r.append(f"inter-electrode distance {ied:.1f} mm outside {R['ied_mm'][0]:g}-{R['ied_mm'][1]:g} mm")
        if enc["n_used"][i] < 16:
            r.append(f"only {int(enc['n_used'][i])} electrodes (need >= 16)")
        if enc["pnr"][i] < MIN_PNR:
            r.append(f"average too noisy (peak/noise {enc['pnr'][i]:.1f}, energy SNR {esnr[i]:.1f}; need peak/noise "
                     f">= {MIN_PNR:g})")
        pre, post = enc["cover_ms"][i]
        if pre > MAX_UNCOVERED_MS[0] or post > MAX_UNCOVERED_MS[1]:
            r.append(f"the average's window misses {pre:.0f} ms before / {post:.0f} ms after its energy peak "
                     f"(training: <= {MAX_UNCOVERED_MS[0]:g} / {MAX_UNCOVERED_MS[1]:g} ms)")
        out.append(r)
    return out
