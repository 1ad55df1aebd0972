"""Model-informed proposer (BMISS): separation filters from forward-model MUAPs, fitted by Adam.

A candidate MU is a vector of physical parameters θ (``PARAM_NAMES``: depth, lateral position,
log fibre count, IZ position, CV, fibre length) plus a time shift δ (samples).  The forward
model (the analytic conductor, or its trained surrogate) turns θ into a MUAP; the MUAP is
band-passed like the data, delayed by δ (Fourier phase, so δ is continuous) and stacked into
the extended space as ``b``.  With ZCA whitening ``W = C^-1/2`` the source is
``s = (W b)' z = b' C^-1 x_ext``: the model-informed separation filter.  θ and δ are fitted by
Adam so that ``s`` is as spiky as possible (contrast on a random subset of the samples).

Rounds: each round scores a Latin-hypercube probe of θ (``scipy.stats.qmc``; a few discrete
shifts each) on the CURRENT, peeled data, picks ``n_starts`` starts for contrast AND diversity
(no two whose probe sources correlate above 0.3), optimises them and proposes the results.
The next round starts once every proposal was judged and peeled; the search stops after a
round with no new unit.  Differences from the reference implementation (shared/reference.md
§4): θ bounded by a sigmoid reparameterisation, the best iterate kept, a continuous shift
instead of a hard-coded window offset, regularised ``C^-1``, diverse starts, and the shared
refine/accept/dedupe/peel stages.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import logit
from scipy.stats import qmc

from ... import anatomy as anatomy_mod
from ...conductor import PARAM_NAMES, Conductor
from ...errors import BmissFileError
from ...filters import DEFAULT_BAND, band_power_response
from ..settings import ModelSettings, as_dict
from .base import AbstractProposer, Proposal, ProposerState

__all__ = ["FilterModel", "ModelProposer", "ModelState", "resolve_anatomy"]


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

    def muap(self, th, shift):
        """Band-passed, delayed MUAP of the used channels [n_used, T]."""
        m = self.forward.muap(th)[self.chan]
        f = jnp.fft.rfftfreq(self.P)
        M = jnp.fft.rfft(m, n=self.P, axis=-1) * self.band * jnp.exp(-2j * jnp.pi * f * shift)
        return jnp.fft.irfft(M, n=self.P, axis=-1)[:, : m.shape[-1]]

    def filter(self, u):
        return self._filter_of(self.muap(*self.theta(u)))

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
    # logcosh: sparse sources sit below the Gaussian value E[log cosh ν] = 0.3746
    return 0.3746 - jnp.mean(jnp.log(jnp.cosh(s)))


@eqx.filter_jit
def _probe_filters(model: FilterModel, U6, shifts):
    """[n_probe, n_shifts, n_ext] filters; one forward-model call per probe."""
    return jax.lax.map(lambda u: model.probe_filters(u, shifts), U6, batch_size=32)


@eqx.filter_jit
def _scores(V, z, kind):
    S = V @ z
    return jax.vmap(lambda s: _contrast(s / (jnp.std(s) + 1e-12), kind))(S), S


@jax.jit
def _unit_rows(S, rows):
    """Rows ``rows`` of ``S``, each scaled to unit norm."""
    R = S[rows]
    return R / (jnp.linalg.norm(R, axis=1, keepdims=True) + 1e-12)


@eqx.filter_jit
def _optimise(model: FilterModel, u0, z, kind, n_steps, lr):
    """Adam on a batch of starts u0 [K, 7] (Adam is elementwise, so the batch is one pytree);
    returns (best u [K, 7], best loss [K]) over all iterates, the final one included."""
    opt = optax.adam(lr)

    def total(u):
        # the starts' sources as one product [K, n_ext] @ [n_ext, n_fit]: a vmap of z.T @ v was a
        # matrix-vector product per start, 2.5x slower per Adam step on the CPU
        loss = -jax.vmap(lambda s: _contrast(s, kind))(jax.vmap(model.filter)(u) @ z)
        return jnp.sum(loss), loss  # the starts are independent: d(sum)/du_k = d(loss_k)/du_k

    vg0 = jax.value_and_grad(total, has_aux=True)

    def vg(u):
        (_, loss), g = vg0(u)
        return loss, g

    def step(carry, _):
        u, st, bu, bl = carry
        loss, g = vg(u)
        better = loss < bl
        bu = jnp.where(better[:, None], u, bu)
        bl = jnp.where(better, loss, bl)
        upd, st = opt.update(g, st)
        return (optax.apply_updates(u, upd), st, bu, bl), None

    init = (u0, opt.init(u0), u0, jnp.full(u0.shape[0], jnp.inf, u0.dtype))
    (u, _, bu, bl), _ = jax.lax.scan(step, init, None, length=n_steps)
    lf = vg(u)[0]
    better = lf < bl
    return jnp.where(better[:, None], u, bu), jnp.where(better, lf, bl)


@eqx.filter_jit
def _filters(model: FilterModel, U):
    """Filters [K, n_ext], θ [K, 6] and shifts [K] of the optimised starts U [K, 7] (one call: run
    eagerly, the network's operations were dispatched one by one, ~0.15 s a round)."""
    th, sh = jax.vmap(model.theta)(U)
    return jax.vmap(model.filter)(U), th, sh


def resolve_anatomy(rec, anatomy=None, grid=None, ied_mm=None):
    """The forward model's anatomy for ``rec``: an :class:`~bmiss.anatomy.Anatomy` as given
    (``bmiss.api.decompose`` resolves it with the recording's layout), else
    :func:`bmiss.geometry.anatomy_for_recording` (name/path, or the simulation's nominal
    anatomy, with the recording's electrode grid; refuses without a geometry)."""
    if not isinstance(anatomy, anatomy_mod.Anatomy):
        from ... import geometry

        return geometry.anatomy_for_recording(rec, anatomy, grid=grid, ied=ied_mm)
    a = anatomy
    if a.grid.n_channels != rec.n_channels:
        raise BmissFileError(
            f"the recording has {rec.n_channels} channels but anatomy {a.name!r} has a {a.grid.rows}x{a.grid.cols} "
            f"grid with {a.grid.n_channels} channels; pass --electrode CODE or --grid ROWSxCOLS --ied MM")
    if abs(a.grid.fs_hz - rec.fs) > 1e-6:
        a = a.with_grid(fs_hz=float(rec.fs))
    return a


def _forward_model(kind: str, a, fs: float):
    """``(forward model, note)``: the analytic conductor, or the trained surrogate at the recording's
    rate; a subject outside the surrogate's training domain (the subject fit may give fat up to
    12 mm, skin up to 3 mm) falls back to the conductor, and ``note`` says why.

    The search's parameter bounds (the anatomy's) may reach past the network's MU domain (e.g. a
    fitted subject's fibres longer than 160 mm): there the network extrapolates, without a warning
    per Adam step; each proposal's ``in_network_domain`` and each round's count record it."""
    if kind == "surrogate":
        from ...errors import SurrogateMismatchError
        from ...surrogate import load_surrogate

        try:
            return load_surrogate(a, fs=fs, check_bounds=False), "surrogate"
        except SurrogateMismatchError as e:
            return Conductor.from_anatomy(a, fs=fs), f"conductor (the surrogate refused this anatomy: {e})"
    return Conductor.from_anatomy(a, fs=fs), "conductor"


@dataclass(frozen=True, eq=False)  # arrays inside: compare by identity
class ModelState(ProposerState):
    """State of the model search.

    model : the :class:`FilterModel`; fit_idx, probe_idx : sample indices the loss / the probe
    scores use; V_probe [n_probe*n_shifts, n_ext], U_probe [n_probe*n_shifts, 7] : probe filters
    and their unconstrained parameters; queue : proposals of the current round not yet handed
    out; round : rounds started; new_in_round : units accepted in the current round; n_units :
    units accepted by this search; rounds : one summary per round; used : probe rows a round
    started from (never again); empty_rounds : rounds in a row without a new unit; done : exhausted.
    """

    model: FilterModel
    fit_idx: jax.Array
    probe_idx: jax.Array
    V_probe: jax.Array
    U_probe: np.ndarray
    queue: tuple = ()
    round: int = 0
    new_in_round: int = 0
    n_units: int = 0
    rounds: tuple = ()
    used: frozenset = frozenset()
    empty_rounds: int = 0
    done: bool = False
    forward: str = "conductor"


class ModelProposer(AbstractProposer):
    """BMISS proposer over an anatomy (see module docstring).

    ``anatomy`` is the model the search inverts: the base anatomy (``--init model``) or the
    subject model that the ``subject_fit`` stage fitted (the default ``bmiss``).
    """

    settings: ModelSettings
    anatomy: object

    def init(self, ws) -> ModelState:
        s, prep, a = self.settings, ws.prep, self.anatomy
        fs = ws.fs
        fwd, forward_note = _forward_model(s.forward, a, fs)
        T = int(fwd.n_samples)
        P = int(2 ** np.ceil(np.log2(T + 64)))
        bounds = a.param_bounds()
        lo = np.array([bounds[n][0] for n in PARAM_NAMES], np.float32)
        hi = np.array([bounds[n][1] for n in PARAM_NAMES], np.float32)
        R = prep.R
        h2 = band_power_response(np.fft.rfftfreq(P) * fs, fs, prep.band or DEFAULT_BAND)
        model = FilterModel(forward=fwd, W=jnp.asarray(prep.whitened.W), chan=jnp.asarray(prep.channels_used),
                            band=jnp.asarray(h2, jnp.float32), lo=jnp.asarray(lo), hi=jnp.asarray(hi),
                            R=R, lag0=min(T - 1, T // 3 + R // 2), P=P, max_shift=float(T // 3))
        rng = np.random.default_rng(s.seed)
        n_fit, n_probe = (min(int(round(sec * fs)), ws.N) for sec in (s.fit_s, s.probe_s))
        fit_idx = jnp.asarray(np.sort(rng.choice(ws.N, size=n_fit, replace=False)))
        probe_idx = jnp.asarray(np.sort(rng.choice(ws.N, size=n_probe, replace=False)))
        u_th = np.asarray(logit(jnp.asarray(np.clip(qmc.LatinHypercube(d=6, seed=rng).random(s.n_probe), 1e-3,
                                                            1 - 1e-3))))
        shifts = np.asarray(s.probe_shifts, np.float32)
        V_probe = _probe_filters(model, jnp.asarray(u_th, jnp.float32), jnp.asarray(shifts)).reshape(-1, ws.n)
        U_probe = np.concatenate([np.repeat(u_th, len(shifts), 0),
                                  np.tile(np.arctanh(shifts / model.max_shift), s.n_probe)[:, None]],
                                 1).astype(np.float32)
        return ModelState(model=model, fit_idx=fit_idx, probe_idx=probe_idx, V_probe=V_probe, U_probe=U_probe,
                          forward=forward_note)

    def _round(self, st: ModelState, ws) -> ModelState:
        """Score the probe on the current data, pick diverse starts, optimise them: the next round's queue."""
        s = self.settings
        sc, S = _scores(st.V_probe, ws.zt[st.probe_idx].T, s.contrast)
        sc = np.asarray(sc)
        order = np.argsort(-sc)[: max(20 * s.n_starts, 200)]
        # tabu: a round never restarts where an earlier one started (where the data did not change,
        # e.g. a weak unit below the peel floor, that round would only replay the earlier one)
        used = np.asarray(sorted(st.used), np.int64)
        # only the sources of the candidates and of the used starts come to the host (S is
        # [n_probe * n_shifts, n_samples]: 67 MB for the default probe); the used rows padded to
        # the most a search can use, so that every round gathers one shape (one compilation)
        pad = np.zeros(max(self.settings.n_rounds * s.n_starts, len(used)), np.int64)
        pad[: len(used)] = used
        Sn = np.asarray(_unit_rows(S, jnp.asarray(np.concatenate([order, pad]))))
        Sc, Su = Sn[: len(order)], Sn[len(order): len(order) + len(used)]
        picked: list[int] = []
        picked_pos: list[int] = []
        for pos, i in enumerate(order):
            if not np.isfinite(sc[i]) or int(i) in st.used:
                continue
            if picked_pos and np.max(np.abs(Sc[picked_pos] @ Sc[pos])) > 0.3:
                continue
            if len(used) and np.max(np.abs(Su @ Sc[pos])) > 0.9:
                continue
            picked.append(int(i))
            picked_pos.append(pos)
            if len(picked) == s.n_starts:
                break
        st = replace(st, used=st.used | frozenset(picked))
        if not picked:
            return replace(st, done=True)
        ubest, lbest = _optimise(st.model, jnp.asarray(st.U_probe[picked]), ws.zt[st.fit_idx].T, s.contrast,
                                 s.n_steps, s.lr)
        V, TH, SH = (np.asarray(x) for x in _filters(st.model, ubest))
        lbest = np.asarray(lbest)
        queue = list(st.queue)
        in_domain = getattr(st.model.forward, "in_domain", None)  # the network's; the conductor has none
        n_out = 0
        for k in np.argsort(lbest):
            th, sh = TH[k], SH[k]
            info = {"round": st.round, "loss": float(lbest[k]), "theta": th, "shift_samples": float(sh)}
            if in_domain is not None:
                info["in_network_domain"] = bool(in_domain(th[None])[0])
                n_out += not info["in_network_domain"]
            queue.append(Proposal(V[k].astype(np.float32), info))
        summary = {"round": st.round, "starts": len(picked), "best_loss": float(np.min(lbest))}
        if in_domain is not None:
            summary["outside_network_domain"] = n_out
        return replace(st, queue=tuple(queue), rounds=st.rounds + (summary,))

    def propose(self, st: ModelState, ws, k, idle):
        if not st.queue and idle and not st.done:
            if st.round > 0:
                last = dict(st.rounds[-1], new_units=st.new_in_round)
                empty = 0 if st.new_in_round else st.empty_rounds + 1
                st = replace(st, rounds=st.rounds[:-1] + (last,), empty_rounds=empty,
                             done=empty >= self.settings.patience or st.round >= self.settings.n_rounds)
            if not st.done and st.n_units < self.settings.max_units:
                st = self._round(st, ws)
                st = replace(st, round=st.round + 1, new_in_round=0)
        return replace(st, queue=st.queue[k:]), list(st.queue[:k])

    def update(self, st: ModelState, ws, done) -> ModelState:
        n = sum(d.verdict == "accepted" for d in done)
        st = replace(st, new_in_round=st.new_in_round + n, n_units=st.n_units + n)
        if st.n_units >= self.settings.max_units:
            st = replace(st, queue=(), done=True)
        return st

    def extras(self, st: ModelState, units):
        """The search's own record: its rounds (the units' properties are the ``unit_properties`` stage's)."""
        return {}, {"rounds": list(st.rounds), "anatomy": self.anatomy.name, "forward_model": st.forward}

    def settings_meta(self):
        d = as_dict(self.settings)
        d["anatomy"] = self.anatomy.name
        return d
