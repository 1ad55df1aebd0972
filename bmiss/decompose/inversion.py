"""BMISS: decomposition by inverting the forward model (``--method bmiss``).

A candidate MU is a vector of physical parameters θ (``PARAM_NAMES``: depth, lateral position,
log fibre count, IZ position, CV, fibre length) plus a time shift δ (samples). The forward model
(the analytic conductor, or its trained surrogate) turns θ into a MUAP; the MUAP is band-passed
like the data, delayed by δ (Fourier phase, so δ is continuous) and stacked into the extended
space as b. With ZCA whitening W = C^-1/2 the source is s = (W b)' z = b' C^-1 x_ext: the
model-informed separation filter. θ and δ are fitted by Adam so that s is as spiky as possible.

Differences from the reference implementation (see shared/reference.md, section 4):
* θ is kept inside physiological bounds from the anatomy by a sigmoid reparameterisation;
* the best iterate of every start is kept, not the last;
* the R-sample window of the MUAP that enters b is chosen by the continuous shift δ (probed
  on a grid first), rather than a hard-coded offset;
* C^-1 is regularised (eigenvalue floor of the whitening, as cbss);
* starts come from a Latin-hypercube probe of thousands of MUAPs, picked for contrast AND
  diversity (no two starts whose probe sources correlate);
* accepted units are peeled off the whitened extended data at every lag of their MUAP, so
  later rounds search among the remaining units; duplicates are removed blindly (>= 30 %
  shared discharges);
* spikes by peak detection + 2-means (as cbss), then optional CKC-style refinement from the
  spike-triggered mean of the whitened data; both results are reported (``meta['units']``).
"""
from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.signal
from tqdm.auto import tqdm

from .. import anatomy as anatomy_mod
from ..conductor import PARAM_NAMES, Conductor
from ..io import Decomposition, Recording
from .preprocess import prepare
from .spikes import cov_isi_np, detect_spikes


# ------------------------------------------------------------------------------ model
class FilterModel(eqx.Module):
    """θ, δ -> unit-norm whitened separation filter [n_ext]."""

    forward: eqx.Module  # has .muap(p) -> [n_channels, T]
    W: jax.Array  # [n_ext, n_ext] ZCA whitening (float32)
    chan: jax.Array  # [n_used] channel indices kept by preprocessing
    band: jax.Array  # [P//2+1] zero-phase band-pass magnitude response
    lo: jax.Array  # [6] bounds of θ
    hi: jax.Array
    R: int = eqx.field(static=True)
    lag0: int = eqx.field(static=True)
    P: int = eqx.field(static=True)
    max_shift: float = eqx.field(static=True)

    def theta(self, u):
        """Unconstrained u [7] -> (θ [6] physical, δ samples)."""
        th = self.lo + (self.hi - self.lo) * jax.nn.sigmoid(u[:6])
        return th, self.max_shift * jnp.tanh(u[6])

    def u_from(self, th, shift):
        f = jnp.clip((th - self.lo) / (self.hi - self.lo), 1e-4, 1 - 1e-4)
        return jnp.concatenate([jnp.log(f / (1 - f)), jnp.arctanh(jnp.clip(shift / self.max_shift, -0.999, 0.999))[None]])

    def muap(self, th, shift):
        """Band-passed, delayed MUAP of the used channels [n_used, T]."""
        m = self.forward.muap(th)[self.chan]
        T = m.shape[-1]
        f = jnp.fft.rfftfreq(self.P)
        M = jnp.fft.rfft(m, n=self.P, axis=-1) * self.band * jnp.exp(-2j * jnp.pi * f * shift)
        return jnp.fft.irfft(M, n=self.P, axis=-1)[:, :T]

    def filter(self, u):
        th, shift = self.theta(u)
        return self._filter_of(self.muap(th, shift))

    def _filter_of(self, m):
        b = m[:, self.lag0 - jnp.arange(self.R)].reshape(-1)  # b[ch*R + r] = m[ch, lag0 - r]
        v = self.W @ b
        return v / (jnp.linalg.norm(v) + 1e-12)

    def probe_filters(self, u6, shifts):
        """Filters [n_shifts, n_ext] of one θ (unconstrained u6 [6]) at several shifts (one MUAP)."""
        th = self.lo + (self.hi - self.lo) * jax.nn.sigmoid(u6)
        m = self.forward.muap(th)[self.chan]
        T = m.shape[-1]
        f = jnp.fft.rfftfreq(self.P)
        M = jnp.fft.rfft(m, n=self.P, axis=-1) * self.band
        ms = jax.vmap(lambda d: jnp.fft.irfft(M * jnp.exp(-2j * jnp.pi * f * d), n=self.P, axis=-1)[:, :T])(shifts)
        return jax.vmap(self._filter_of)(ms)


def _contrast(s, kind):
    if kind == "skew":
        return jnp.mean(s**3)
    if kind == "kurtosis":
        return jnp.mean(s**4) - 3.0
    if kind == "logcosh":  # sparse sources sit below the Gaussian value E[log cosh ν] = 0.3746
        return 0.3746 - jnp.mean(jnp.log(jnp.cosh(s)))
    raise ValueError(f"unknown contrast {kind!r}; use skew, kurtosis or logcosh")


@eqx.filter_jit
def _probe_filters(model: FilterModel, U6, shifts):
    """[n_probe, n_shifts, n_ext] filters; one forward-model call per probe."""
    return jax.lax.map(lambda u: model.probe_filters(u, shifts), U6, batch_size=32)


@eqx.filter_jit
def _scores(V, z, kind):
    S = V @ z
    return jax.vmap(lambda s: _contrast(s / (jnp.std(s) + 1e-12), kind))(S), S


@eqx.filter_jit
def _optimise(model: FilterModel, u0, z, kind, n_steps, lr):
    """Adam on a batch of starts u0 [K, 7]; returns (best u [K,7], best loss [K])."""
    opt = optax.adam(lr)

    def loss(u):
        s = z.T @ model.filter(u)
        return -_contrast(s, kind)

    vg = jax.vmap(jax.value_and_grad(loss))

    def step(carry, _):
        u, st, bu, bl = carry
        l, g = vg(u)
        better = l < bl
        bu = jnp.where(better[:, None], u, bu)
        bl = jnp.where(better, l, bl)
        upd, st = jax.vmap(opt.update)(g, st)
        u = optax.apply_updates(u, upd)
        return (u, st, bu, bl), l

    st = jax.vmap(opt.init)(u0)
    init = (u0, st, u0, jnp.full(u0.shape[0], jnp.inf, u0.dtype))
    (u, st, bu, bl), hist = jax.lax.scan(step, init, None, length=n_steps)
    lf = vg(u)[0]  # the final iterate may be the best one
    better = lf < bl
    return jnp.where(better[:, None], u, bu), jnp.where(better, lf, bl), hist


def _lhs(n, d, rng):
    """Latin hypercube in [0,1]^d: one point per stratum in every dimension."""
    cut = (np.arange(n)[:, None] + rng.random((n, d))) / n
    for j in range(d):
        cut[:, j] = cut[rng.permutation(n), j]
    return cut


def _shared_fraction(a, b, tol=1, max_lag=50):
    """Fraction of discharges two trains share (±tol samples after the best lag within ±max_lag)."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    d = (b[None, :] - a[:, None]).ravel()
    d = d[np.abs(d) <= max_lag]
    if len(d) == 0:
        return 0.0
    lag = np.bincount(d + max_lag).argmax() - max_lag
    j = np.searchsorted(b, a + lag - tol)
    hit = (j < len(b)) & (np.abs(b[np.minimum(j, len(b) - 1)] - (a + lag)) <= tol)
    return float(hit.sum()) / min(len(a), len(b))


# ------------------------------------------------------------------------------ driver
@dataclass
class _Unit:
    v: np.ndarray  # whitened filter (refined if refinement kept)
    spikes: np.ndarray
    source: np.ndarray
    sil: float
    cov: float
    theta: np.ndarray
    shift: float
    sil_model: float
    n_model: int
    members: list  # θ of every start that converged to this unit


def _resolve_anatomy(rec: Recording, anatomy, grid, ied_mm):
    if anatomy is None and rec.meta.get("anatomy_toml"):
        # the nominal anatomy of a simulation; its "tissue_overrides" (a simulated model mismatch)
        # are deliberately NOT given to the inverse model
        a = anatomy_mod.from_dict(tomllib.loads(rec.meta["anatomy_toml"]), source="recording meta")
    else:
        a = anatomy_mod.load(anatomy or "biceps_brachii")
    if grid is not None or ied_mm is not None:
        ch = {"missing": ()}
        if grid is not None:
            ch.update(rows=int(grid[0]), cols=int(grid[1]))
        if ied_mm is not None:
            ch["ied_mm"] = float(ied_mm)
        a = a.with_grid(**ch)
    if a.grid.n_channels != rec.n_channels:
        raise ValueError(
            f"the recording has {rec.n_channels} channels but anatomy {a.name!r} has a {a.grid.rows}x{a.grid.cols} "
            f"grid with {a.grid.n_channels} channels ({a.grid.montage}); pass --grid ROWSxCOLS --ied MM matching the "
            "recording (channels row-major over the grid)")
    if abs(a.grid.fs_hz - rec.fs) > 1e-6:
        a = a.with_grid(fs_hz=float(rec.fs))
    return a


def decompose_bmiss(rec: Recording, *, anatomy=None, grid=None, ied_mm=None, forward: str = "conductor",
                    n_rounds: int = 6, n_probe: int = 1024, probe_shifts=(-12.0, -4.0, 4.0, 12.0),
                    n_starts: int = 16, n_steps: int = 30, lr: float = 0.08, contrast: str = "skew",
                    sil_threshold: float = 0.85, min_spikes: int = 10, refine: bool = True,
                    fit_samples: int = 8192, probe_samples: int = 4096, R: int | None = None,
                    seed: int = 0, progress: bool = True, max_units: int = 128) -> Decomposition:
    """Model-informed decomposition. Returns units with spikes, sources and fitted MU properties.

    forward: "conductor" (analytic, expected-potential mode) or "surrogate" (trained network).
    Each round probes the parameter space, optimises ``n_starts`` diverse starts for ``n_steps``
    Adam steps on ``fit_samples`` samples, accepts units with SIL >= ``sil_threshold``.
    """
    t0 = time.perf_counter()
    timing = {}
    a = _resolve_anatomy(rec, anatomy, grid, ied_mm)
    prep = prepare(rec.emg, rec.fs, R=R)
    R = prep.R
    zt = np.ascontiguousarray(np.asarray(prep.z).T)  # [N, n_ext] float32 master copy (peeled in place)
    N, n_ext = zt.shape
    zt_dev = jnp.asarray(zt)
    rng = np.random.default_rng(seed)
    fit_idx = np.sort(rng.choice(N, size=min(fit_samples, N), replace=False))
    probe_idx = np.sort(rng.choice(N, size=min(probe_samples, N), replace=False))
    z_fit, z_probe = jnp.asarray(zt[fit_idx].T), jnp.asarray(zt[probe_idx].T)

    if forward == "conductor":
        fwd = Conductor.from_anatomy(a, fs=rec.fs)
    elif forward == "surrogate":
        from ..surrogate import load_surrogate

        fwd = load_surrogate(a)
    else:
        raise ValueError(f"unknown forward model {forward!r}; use 'conductor' or 'surrogate'")
    T = int(fwd.n_samples)
    P = int(2 ** np.ceil(np.log2(T + 64)))
    band = prep.band or (20.0, 500.0)
    sos = scipy.signal.butter(2, [band[0], min(band[1], 0.45 * rec.fs)], btype="bandpass", fs=rec.fs, output="sos")
    _, h = scipy.signal.sosfreqz(sos, worN=np.fft.rfftfreq(P) * rec.fs, fs=rec.fs)
    bounds = a.param_bounds()
    lo = np.array([bounds[n][0] for n in PARAM_NAMES], np.float32)
    hi = np.array([bounds[n][1] for n in PARAM_NAMES], np.float32)
    model = FilterModel(forward=fwd, W=jnp.asarray(prep.whitened.W), chan=jnp.asarray(prep.channels_used),
                        band=jnp.asarray(np.abs(h) ** 2, jnp.float32), lo=jnp.asarray(lo), hi=jnp.asarray(hi),
                        R=R, lag0=min(T - 1, T // 3 + R // 2), P=P, max_shift=float(T // 3))

    # --- probe: Latin hypercube over θ, a few discrete shifts each (filters computed once)
    tp = time.perf_counter()
    lhs = _lhs(n_probe, 6, rng)
    th = np.clip(lhs, 1e-3, 1 - 1e-3)
    u_th = np.log(th / (1 - th))
    shifts = np.asarray(probe_shifts, np.float32)
    V_probe = _probe_filters(model, jnp.asarray(u_th, jnp.float32), jnp.asarray(shifts)).reshape(-1, n_ext)
    U_probe = np.concatenate([np.repeat(u_th, len(shifts), 0),
                              np.tile(np.arctanh(shifts / model.max_shift), n_probe)[:, None]], 1).astype(np.float32)
    timing["probe_s"] = time.perf_counter() - tp

    units: list[_Unit] = []
    n_candidates = 0
    bar = tqdm(total=n_rounds, desc="bmiss", disable=not progress, unit="round")
    rounds: list[dict] = []
    empty = 0
    peeled = False
    for rnd in range(n_rounds):
        if peeled:  # the device copy follows the peeled master once per round
            zt_dev = jnp.asarray(zt)
            z_fit, z_probe = jnp.asarray(zt[fit_idx].T), jnp.asarray(zt[probe_idx].T)
            peeled = False
        ts = time.perf_counter()
        sc, S = _scores(V_probe, z_probe, contrast)
        sc, S = np.asarray(sc), np.asarray(S)
        timing["score_s"] = timing.get("score_s", 0.0) + time.perf_counter() - ts
        order = np.argsort(-sc)
        picked: list[int] = []
        Sn = S / (np.linalg.norm(S, axis=1, keepdims=True) + 1e-12)
        for i in order[: max(20 * n_starts, 200)]:
            if not np.isfinite(sc[i]):
                continue
            if picked and np.max(np.abs(Sn[picked] @ Sn[i])) > 0.3:
                continue
            picked.append(int(i))
            if len(picked) == n_starts:
                break
        u0 = jnp.asarray(U_probe[picked])
        to = time.perf_counter()
        ubest, lbest, _ = _optimise(model, u0, z_fit, contrast, n_steps, lr)
        ubest = np.asarray(ubest)
        timing["optimise_s"] = timing.get("optimise_s", 0.0) + time.perf_counter() - to
        Vb = np.asarray(jax.vmap(model.filter)(jnp.asarray(ubest)))
        n_new = 0
        tc = time.perf_counter()
        for k in np.argsort(np.asarray(lbest)):
            n_candidates += 1
            v = Vb[k]
            s = np.asarray(_source(zt_dev, jnp.asarray(v)))
            sp, silv = detect_spikes(s, rec.fs, flip=False)
            sil_model, n_model = silv, len(sp)
            cov = cov_isi_np(sp)
            thk, shk = (np.asarray(x) for x in model.theta(jnp.asarray(ubest[k])))
            if len(sp) < min_spikes or silv < min(0.6, sil_threshold):
                continue
            dup = next((j for j, un in enumerate(units) if _shared_fraction(sp, un.spikes) >= 0.3), None)
            if dup is not None and silv <= units[dup].sil:
                units[dup].members.append(thk)
                continue
            if refine:
                v, s, sp, silv, cov = _refine(zt, zt_dev, v, s, sp, silv, cov, rec.fs)
            if silv < sil_threshold or len(sp) < min_spikes:
                continue
            if dup is None:
                dup = next((j for j, un in enumerate(units) if _shared_fraction(sp, un.spikes) >= 0.3), None)
            if dup is not None:
                un = units[dup]
                un.members.append(thk)
                if silv > un.sil:  # keep the better estimate, its θ included
                    units[dup] = _Unit(v, sp, s, silv, cov, thk, float(shk), sil_model, n_model, un.members)
                continue
            if len(units) >= max_units:
                break
            units.append(_Unit(v, sp, s, silv, cov, thk, float(shk), sil_model, n_model, [thk]))
            n_new += 1
            tpl = time.perf_counter()
            _peel(zt, sp, T + R)
            zt_dev = jnp.asarray(zt)  # later candidates of this round see the peeled data
            timing["peel_s"] = timing.get("peel_s", 0.0) + time.perf_counter() - tpl
            peeled = True
        timing["candidates_s"] = timing.get("candidates_s", 0.0) + time.perf_counter() - tc
        bar.update(1)
        bar.set_postfix(units=len(units), new=n_new)
        rounds.append({"round": rnd, "starts": len(picked), "new_units": n_new, "units": len(units),
                       "best_loss": float(np.min(np.asarray(lbest)))})
        empty = empty + 1 if n_new == 0 else 0
        if empty >= 1:  # nothing was peeled, so another round would replay this one exactly
            break
    bar.close()

    sources = np.stack([u.source / (np.mean(u.source[u.spikes]) + 1e-12) for u in units]) if units else np.zeros((0, N), np.float32)
    params = np.stack([u.theta for u in units]) if units else np.zeros((0, 6), np.float32)
    pstd = np.stack([np.std(np.stack(u.members), 0) if len(u.members) > 1 else np.full(6, np.nan) for u in units]) \
        if units else np.zeros((0, 6), np.float32)
    try:
        from ..metrics import pnr

        pnr_db = np.array([pnr(u.source, u.spikes, rec.fs) for u in units], np.float32)
    except ImportError:  # pragma: no cover
        pnr_db = None
    timing["total_s"] = time.perf_counter() - t0
    meta = {
        "settings": {"anatomy": a.name, "forward": forward, "n_rounds": n_rounds, "n_probe": n_probe,
                     "probe_shifts": list(probe_shifts), "n_starts": n_starts, "n_steps": n_steps, "lr": lr,
                     "contrast": contrast, "sil_threshold": sil_threshold, "min_spikes": min_spikes,
                     "refine": refine, "fit_samples": int(len(fit_idx)), "R": R, "seed": seed},
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "n_candidates": n_candidates,
        "rounds": rounds,
        "channels_used": prep.channels_used,
        "excluded_channels": prep.report,
        "units": [{"sil_model": u.sil_model, "n_spikes_model": u.n_model, "sil": u.sil, "shift_samples": u.shift,
                   "n_starts_converged": len(u.members)} for u in units],
        "param_units": {"depth_mm": "mm", "x_mm": "mm", "log_fibres": "ln(fibres)", "iz_mm": "mm",
                        "cv_m_s": "m/s", "length_mm": "mm"},
        "param_std_meaning": "std of θ over the starts that converged to the unit (NaN: one start)",
    }
    return Decomposition(spikes=[u.spikes for u in units], sources=sources.astype(np.float32), fs=rec.fs,
                         method="bmiss", filters=np.stack([u.v for u in units]) if units else None,
                         sil=np.array([u.sil for u in units], np.float32), pnr_db=pnr_db,
                         cov_isi=np.array([u.cov for u in units], np.float32), params=params.astype(np.float32),
                         param_std=pstd.astype(np.float32), param_names=PARAM_NAMES, meta=meta)


def _peel(zt, spikes, max_lag):
    """Remove one accepted unit, in place, from the whitened extended data ``zt`` [N, n_ext].

    A discharge shows up at every lag of its extended MUAP, not only where its source peaks, so
    deflating one filter leaves the unit visible to a shifted filter (we measured: later rounds
    re-found the same units). We subtract the spike-triggered mean at every lag in
    [-max_lag, max_lag] whose energy stands above the noise floor of such a mean
    (E||mean of n white vectors||² = n_ext / n). Rows are samples, so each update is contiguous.
    """
    N, n_ext = zt.shape
    sp = np.asarray(spikes, np.int64)
    floor = 3.0 * n_ext / max(len(sp), 1)
    for lag in range(-max_lag, max_lag + 1):
        t = sp + lag
        t = t[(t >= 0) & (t < N)]
        if len(t) == 0:
            continue
        m = zt[t].mean(axis=0)
        if float(m @ m) > floor:
            zt[t] -= m


@jax.jit
def _source(zt, v):
    return zt @ v


def _refine(zt, zt_dev, v, s, sp, silv, cov, fs, max_iter=10):
    """CKC-style refinement: filter <- mean whitened sample at the discharges, while CoV of ISI drops.

    ``zt`` [N, n_ext] numpy (row gathers; no compile per spike count), ``zt_dev`` its device copy.
    """
    best = (v, s, sp, silv, cov)
    for _ in range(max_iter):
        w = zt[best[2]].mean(axis=0)
        w = w / (np.linalg.norm(w) + 1e-12)
        s2 = np.asarray(_source(zt_dev, jnp.asarray(w)))
        sp2, sil2 = detect_spikes(s2, fs, flip=False)
        cov2 = cov_isi_np(sp2)
        if len(sp2) < 2 or not (np.isfinite(cov2) and (not np.isfinite(best[4]) or cov2 < best[4])):
            break
        best = (w, s2, sp2, sil2, cov2)
    return best
