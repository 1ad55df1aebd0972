"""Train the universal MUAP network (``bmiss.muapnet``) on analytic-conductor MUAPs.

    python experiments/train_surrogate.py --cache /work/cache_generator/run1 --n-train 24000 \
        --n-fibres 3000 --epochs 12 --ship

Steps: random draws over ``bmiss.muapgen.DOMAIN`` (tissue, conductivity ratios, fibre density and
scatter, MU, grid shape / IED / rotation / placement / electrode diameter, sampling rate; seed
``--seed``) -> conductor electrode potentials, expected mode for every draw and per-fibre mode
(random fibre layout, IZ shifts) for ``--n-fibres`` extra training draws -> cached in shards under
``--cache`` (generation resumes shard by shard) -> Adam + warmup-cosine on the per-MUAP normalised
squared error (per-fibre draws weighted ``--fibre-weight``: their scatter is noise to a
deterministic network) -> CACHE/muapnet.npz + .json with a validation table (held-out expected
draws by tissue depth, sampling rate, grid rotation), and with ``--ship``
``bmiss/data/surrogate_universal.npz/.json``.

Every epoch writes CACHE/checkpoint.npz atomically (weights, optimiser state, history, elapsed
time); rerunning the same command resumes after the last finished epoch. ``--budget-min`` stops
after the epoch that passes that many minutes of training (the schedule is set by ``--epochs``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from bmiss import muapgen as G
from bmiss import muapnet as N
from bmiss import surrogate as S

_CONFIG_KEYS = ("n_train", "n_fibres", "n_val", "n_test", "n_pool", "seed", "budget_min", "epochs", "batch", "lr", "hidden", "depth",
                "n_basis", "k_max", "period_mm", "fibre_weight", "train_electrodes", "init_from")
SHARD = 2000


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=24000, help="training draws, expected mode")
    ap.add_argument("--n-fibres", type=int, default=3000, help="extra training draws, per-fibre mode")
    ap.add_argument("--n-val", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--n-pool", type=int, default=34000,
                    help="draws made with --seed (the sets are taken from this pool: growing a set keeps the cache)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=32, help="draws (64 electrodes each) per step")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--n-basis", type=int, default=40)
    ap.add_argument("--k-max", type=float, default=2.75, help="highest profile frequency, rad/mm")
    ap.add_argument("--period-mm", type=float, default=448.0, help="period of the Fourier profiles, mm")
    ap.add_argument("--train-electrodes", type=int, default=24,
                    help="random electrodes of each draw's 64 per step (the loss is normalised by the whole grid's "
                         "energy, an unbiased estimate of the grid nRMSE^2)")
    ap.add_argument("--fibre-weight", type=float, default=0.3, help="loss weight of the per-fibre draws")
    ap.add_argument("--seed", type=int, default=0, help="data seed (draws, split); model init uses seed+1")
    ap.add_argument("--cache", default="out/muapnet", help="folder of the cached data, checkpoint and weights")
    ap.add_argument("--budget-min", type=float, default=None, help="stop after the epoch that passes this")
    ap.add_argument("--init-from", default=None,
                    help="start from these weights (a muapnet.npz of the same architecture) with a fresh schedule: "
                         "a second training stage; the earlier run's training settings and history go under "
                         "earlier_stage in the metadata")
    ap.add_argument("--ship", action="store_true", help="also write bmiss/data/surrogate_universal.npz/.json")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def normalised_errors(pred, target):
    """||pred - target|| / ||target|| per draw, [B]."""
    ax = tuple(range(1, pred.ndim))
    return jnp.sqrt(jnp.sum((pred - target) ** 2, ax) / (jnp.sum(target**2, ax) + 1e-20))


def _inputs_digest(d, ii) -> str:
    """sha256 of everything the conductor is fed for draws ``ii`` (MU, tissue, electrodes, rate)."""
    import hashlib

    h = hashlib.sha256(G.params_of(d, ii).tobytes())
    for k in (*N.TISSUE_KEYS, "ex", "ez", "radius_mm", "fs_hz"):
        h.update(np.ascontiguousarray(np.asarray(d[k][ii], np.float32)).tobytes())
    return h.hexdigest()


def _data(d, idx, mode, cache: Path, tag: str, seed: int, show: bool, log) -> tuple[np.ndarray, float]:
    """Targets [len(idx), 64, T] for draws ``idx``, generated (and cached) in shards.

    A cached shard is reused only if it was made from the same inputs (``_inputs_digest``): a
    changed domain or seed regenerates it. (Shards without a digest, written before it existed, are
    checked on their MU parameters only.)
    """
    out, secs = [], 0.0
    for s in range(0, len(idx), SHARD):
        f = cache / f"{tag}_{s // SHARD:03d}.npz"
        ii = idx[s:s + SHARD]
        dig = _inputs_digest(d, ii)
        if f.exists():
            with np.load(f, allow_pickle=False) as z:
                same = (str(z["inputs"]) == dig if "inputs" in z.files
                        else "p" not in z.files or np.array_equal(z["p"], G.params_of(d, ii)))
                if np.array_equal(z["idx"], ii) and same:
                    out.append(z["y"])
                    secs += float(z["secs"])
                    continue
        t = time.perf_counter()
        y = G.conductor_muaps(d, ii, mode, seed=seed + s, progress=show, desc=f"{tag} {s // SHARD + 1}")
        dt = time.perf_counter() - t
        S.atomic_savez(f, {"idx": ii, "p": G.params_of(d, ii), "inputs": np.array(dig), "y": y,
                           "secs": np.float64(dt)})
        log(f"{tag}: shard {s // SHARD + 1}: {len(ii)} MUAPs in {dt:.0f} s ({1e3 * dt / len(ii):.1f} ms each)")
        out.append(y)
        secs += dt
    return np.concatenate(out), secs


def main(argv=None) -> dict:
    args = parse(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in _CONFIG_KEYS}
    show = not args.no_progress
    log = (lambda *m: print(*m, flush=True))

    # ------------------------------------------------------------------ data (cached)
    n_exp = args.n_train + args.n_val + args.n_test
    if n_exp + args.n_fibres > args.n_pool:
        raise SystemExit(f"--n-pool {args.n_pool} is smaller than the draws asked for ({n_exp + args.n_fibres})")
    d = G.draw(args.n_pool, args.seed)
    idx_exp = np.arange(n_exp)
    idx_fib = np.arange(args.n_pool - args.n_fibres, args.n_pool)
    # per-fibre draws at one IZ / end scatter (2.0 / 2.5 mm): 3 compiles instead of 18 (slow ones)
    d["iz_jit_i"][idx_fib], d["end_jit_i"][idx_fib] = 1, 1
    d["iz_jitter_mm"][idx_fib], d["end_jitter_mm"][idx_fib] = G.IZ_JITTERS[1], G.END_JITTERS[1]
    Y, gen_s = _data(d, idx_exp, "expected", cache, f"exp{args.seed}", args.seed, show, log)
    if args.n_fibres:
        Yf, fib_s = _data(d, idx_fib, "fibres", cache, f"fib{args.seed}", args.seed + 7, show, log)
        Y = np.concatenate([Y, Yf])
        gen_s += fib_s
    log(f"data: {len(Y)} conductor draws ({args.n_fibres} per-fibre), {gen_s:.0f} s of generation")
    # rows of Y: the expected draws, then the per-fibre ones; R maps a row to its draw
    R = np.concatenate([idx_exp, idx_fib])
    tr = np.concatenate([np.arange(args.n_train), np.arange(n_exp, len(R))])
    va = np.arange(args.n_train, args.n_train + args.n_val)
    te = np.arange(args.n_train + args.n_val, n_exp)
    weight = np.where(np.arange(len(Y)) >= n_exp, args.fibre_weight, 1.0).astype(np.float32)

    P = G.params_of(d)
    TIS = np.stack([d[k] for k in N.TISSUE_KEYS], -1).astype(np.float32)
    TT = (np.arange(G.N_SAMPLES)[None] / d["fs_hz"][:, None] * 1e3).astype(np.float32)
    SR = np.full(len(P), G.SIGMA_R, np.float32)
    RAD = d["radius_mm"].astype(np.float32)
    EX, EZ = d["ex"], d["ez"]

    def batch(rows):
        b = R[rows]
        return (P[b], TIS[b], SR[b], EX[b], EZ[b], RAD[b], TT[b])

    # ------------------------------------------------------------------ model
    per_el = np.log(np.linalg.norm(Y[tr[:4000]], axis=-1) + 1e-12) - P[R[tr[:4000]], 2:3]
    arch = {"hidden": args.hidden, "depth": args.depth, "n_basis": args.n_basis, "k_max": args.k_max,
            "period_mm": args.period_mm}
    model = N.build(arch, float(np.median(per_el)), float(per_el.std()), seed=args.seed + 1)
    earlier = {}
    if args.init_from:
        src = Path(args.init_from)
        with np.load(src, allow_pickle=False) as z:
            S.load_flat_state(model, {k: z[k] for k in z.files})
        js = src.with_suffix(".json")
        if js.exists():
            em = json.loads(js.read_text())
            earlier = {"weights": str(src), "training": em.get("training"), "history": em.get("history"),
                       "validation_error": em.get("validation_error")}
            if em.get("earlier_stage"):  # keep the whole chain of stages, not only the last one
                earlier["earlier_stage"] = em["earlier_stage"]
        log(f"continuing from {src} ({len(earlier.get('history') or [])} earlier epochs)")
    graphdef, params, buffers = nnx.split(model, nnx.Param, N.Buffer)
    steps = len(tr) // args.batch
    total = max(args.epochs * steps, 2)
    warm = max(1, min(300, total // 10))
    def lr_at(i, spent_s):
        """Warmup, then cosine decay to 1 % over max(step fraction, budget fraction): the run ends decayed
        whether the epochs or the time budget end it."""
        if i < warm:
            return args.lr * (i + 1) / warm
        f = (i - warm) / max(total - warm, 1)
        if args.budget_min:
            f = max(f, spent_s / (60 * args.budget_min))
        f = min(f, 1.0)
        return args.lr * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * f)))

    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adam)(learning_rate=args.lr))
    opt_state = opt.init(params)

    def predict(params, x):
        return nnx.merge(graphdef, params, buffers).electrodes(*x)

    ENERGY = np.sum(Y.astype(np.float64) ** 2, axis=(1, 2)).astype(np.float32)  # per row, whole grid

    def loss_fn(params, x, y, w, energy):
        sq = jnp.sum((predict(params, x) - y) ** 2, axis=(1, 2)) / energy
        return jnp.sum(w * sq) / jnp.sum(w)

    @jax.jit
    def step(params, opt_state, x, y, w, energy, lr):
        opt_state[1].hyperparams["learning_rate"] = lr
        loss, g = jax.value_and_grad(loss_fn)(params, x, y, w, energy)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    @jax.jit
    def errors(params, x, y):
        return normalised_errors(predict(params, x), y)

    def all_errors(params, idx, chunk=128):
        out = []
        for i in range(0, len(idx), chunk):
            b = idx[i:i + chunk]
            pad = chunk - len(b)
            bp = np.concatenate([b, np.repeat(b[-1:], pad)]) if pad else b
            out.append(np.asarray(errors(params, batch(bp), Y[bp]))[:len(b)])
        return np.concatenate(out)

    def summary(e):
        return {"n": int(len(e)), "median": float(np.median(e)), "p95": float(np.percentile(e, 95)),
                "max": float(e.max()), "mean": float(e.mean())}

    # ------------------------------------------------------------------ resume
    ckpt = cache / "checkpoint.npz"
    start, history, train_s, train_cpu_s = 0, [], 0.0, 0.0
    if ckpt.exists():
        with np.load(ckpt, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta["config"] != config:
                raise SystemExit(f"{ckpt} belongs to another configuration ({meta['config']}); use another "
                                 f"--cache or delete it to start over (now: {config})")
            S.load_flat_state(model, {k[2:]: z[k] for k in z.files if k.startswith("m/")})
            leaves, tree = jax.tree_util.tree_flatten(opt_state)
            opt_state = jax.tree_util.tree_unflatten(
                tree, [jnp.asarray(z[f"o/{i}"], l.dtype) for i, l in enumerate(leaves)])
        _, params, buffers = nnx.split(model, nnx.Param, N.Buffer)
        start, history, train_s = meta["epoch"], meta["history"], meta["train_s"]
        train_cpu_s = meta.get("train_cpu_s", 0.0)
        log(f"resuming from {ckpt} after epoch {start}")

    def save_ckpt(epoch):
        nnx.update(model, params)
        arrays = {f"m/{k}": v for k, v in S.flat_state(model).items()}
        arrays.update({f"o/{i}": np.asarray(l) for i, l in enumerate(jax.tree_util.tree_leaves(opt_state))})
        meta = {"config": config, "epoch": epoch, "history": history, "train_s": train_s,
                "train_cpu_s": train_cpu_s}
        arrays["meta"] = np.array(json.dumps(meta))
        S.atomic_savez(ckpt, arrays)

    # ------------------------------------------------------------------ train
    for epoch in range(start, args.epochs):
        if args.budget_min is not None and train_s > 60 * args.budget_min * 0.98:
            log(f"training budget {args.budget_min} min spent after epoch {epoch}: stopping")
            break
        t, tc = time.perf_counter(), time.process_time()
        order = tr[np.random.default_rng([args.seed, epoch]).permutation(len(tr))]
        erng = np.random.default_rng([args.seed, epoch, 1])
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}", disable=not show, mininterval=2.0)
        run = None
        for i in bar:
            b = order[i * args.batch:(i + 1) * args.batch]
            spent = train_s + time.perf_counter() - t
            if args.budget_min is not None and spent > 60 * args.budget_min:
                log(f"training budget {args.budget_min} min spent in epoch {epoch + 1} (step {i}): ending it")
                break
            lr = np.float32(lr_at(epoch * steps + i, spent))
            ne = args.train_electrodes
            sel = np.argsort(erng.random((len(b), G.N_ELECTRODES)), 1)[:, :ne]  # random electrodes per draw
            x = batch(b)
            rr = np.arange(len(b))[:, None]
            x = x[:3] + (x[3][rr, sel], x[4][rr, sel]) + x[5:]
            params, opt_state, loss = step(params, opt_state, x, Y[b][rr, sel], weight[b],
                                           ENERGY[b] * (ne / G.N_ELECTRODES), lr)
            if i % 20 == 0 or i == steps - 1:
                loss = float(loss)
                run = loss if run is None else 0.9 * run + 0.1 * loss
                bar.set_postfix(loss=f"{run:.2e}", rel=f"{np.sqrt(run):.3f}")
        val = summary(all_errors(params, va))
        train_s += time.perf_counter() - t
        train_cpu_s += time.process_time() - tc
        history.append({"epoch": epoch + 1, "train_loss": run, "val": val, "elapsed_s": round(train_s, 1)})
        log(f"epoch {epoch + 1}: train loss {run:.3e}  val nRMSE median {val['median']:.4f} p95 {val['p95']:.4f}"
            f"  ({train_s:.0f} s)")
        save_ckpt(epoch + 1)

    # ------------------------------------------------------------------ final: validation table
    nnx.update(model, params)
    ev, et = all_errors(params, va), all_errors(params, te)
    e_all, i_all = np.concatenate([ev, et]), np.concatenate([va, te])
    table = {"held_out": summary(e_all)}
    for name, key, edges in (("muscle_top_mm", "top_mm", (1.5, 2.5, 4.0, 6.0, 10.0)),
                             ("fs_hz", "fs_hz", (2048, 3000, 5000, 7500, 10241)),
                             ("abs_rotation_deg", None, (0, 5, 10, 15, 20, 25.01)),
                             ("aniso", "aniso", (1.5, 2.0, 4.0, 7.0, 10.0, 12.01)),
                             ("depth_below_mm", "depth_below_mm", (0, 3, 8, 15, 26))):
        v = np.abs(d["rotation_deg"][R[i_all]]) if key is None else d[key][R[i_all]]
        table[name] = {f"[{lo:g}, {hi:g})": summary(e_all[(v >= lo) & (v < hi)])
                       for lo, hi in zip(edges[:-1], edges[1:]) if ((v >= lo) & (v < hi)).sum()}
    if args.n_fibres:
        fe = all_errors(params, np.arange(n_exp, len(R))[-min(500, args.n_fibres):])
        table["per_fibre_targets_train"] = summary(fe)
    n_par = int(sum(np.size(v) for v in jax.tree.leaves(nnx.to_pure_dict(params))))
    from bmiss.files import provenance

    meta = {
        "kind": "universal MUAP network (bmiss.muapnet)",
        "arch": {**arch, "n_freq": int(model.omega.shape[0]), "n_features": N.N_FEATURES, "activation": "silu",
                 "n_parameters": n_par,
                 "description": "per-electrode MLP -> 3 components (wave, right / left fibre end) x learned "
                                "Fourier profile basis, read at the physical delays; CV, sample times, fibre "
                                "count, conductivity level, rotation and montage exact"},
        "domain": {k: list(v) for k, v in G.DOMAIN.items()},
        "t_max_ms": G.T_MAX_MS,
        "param_names": list(N.TISSUE_KEYS),
        "training": {**config, "script": "experiments/train_surrogate.py", "data_seed": args.seed,
                     "command": "python experiments/train_surrogate.py " + " ".join(argv or sys.argv[1:]),
                     "sampling": "uniform over bmiss.muapgen.DOMAIN (fs log-uniform), grids of 64 electrodes",
                     "targets": "bmiss.conductor expected mode; per-fibre mode for n_fibres extra draws",
                     "optimiser": "adam, warmup + cosine decay, clip 1.0",
                     "loss": "weighted mean per-draw (||pred - conductor|| / ||conductor||)^2",
                     "data_generation_s": round(gen_s, 1), "training_s": round(train_s, 1),
                     "training_cpu_s": round(train_cpu_s, 1), "epochs_done": len(history),
                     "total_s": round(gen_s + train_s, 1)},
        "validation_table": table, "validation_error": summary(ev), "test_error": summary(et),
        "history": history, "provenance": provenance(**config),
    }
    if earlier:
        meta["earlier_stage"] = earlier
    npz, js = S.save_surrogate(cache / "muapnet", model, meta)
    log(f"saved {npz}: held-out median {table['held_out']['median']:.4f} p95 {table['held_out']['p95']:.4f}; "
        f"data {gen_s:.0f} s + training {train_s:.0f} s")
    if args.ship:
        shipped = S.save_surrogate(S.shipped_path().with_suffix(""), model, meta)
        log(f"shipped {shipped[0]}")
    return {"cache": str(cache), "weights": str(npz), "start_epoch": start, "val": summary(ev),
            "test": summary(et), "training_s": train_s, "data_generation_s": gen_s}


if __name__ == "__main__":
    main(sys.argv[1:])
