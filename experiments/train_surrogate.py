"""Train the MUAP surrogate (``bmiss.surrogate``) on analytic-conductor MUAPs.

    python experiments/train_surrogate.py --anatomy biceps_brachii --n-train 24000 --epochs 40 \
        --out out/surrogate_biceps_brachii --ship

Steps: LHS draws over the anatomy's parameter bounds -> conductor electrode potentials (cached in
OUT/data.npz) -> split train / validation / test by draw -> Adam + cosine decay on the per-MUAP
normalised squared error -> OUT/surrogate.npz + .json (and with ``--ship`` also
``bmiss/data/surrogate_<anatomy>.npz/.json``).

Every epoch writes OUT/checkpoint.npz atomically (weights, optimiser state, history, elapsed
time); rerunning the same command resumes after the last finished epoch. A checkpoint of another
configuration is refused rather than silently mixed.
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

from bmiss import anatomy as anatomy_mod
from bmiss import surrogate as S

_CONFIG_KEYS = ("anatomy", "n_train", "n_val", "n_test", "seed", "epochs", "batch", "lr", "hidden", "depth",
                "n_basis", "k_max", "diff_weight", "cv_jac_weight", "init_from")


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--anatomy", default="biceps_brachii", help="shipped anatomy name or TOML path")
    ap.add_argument("--n-train", type=int, default=24000, help="training draws (MUAPs)")
    ap.add_argument("--n-val", type=int, default=None, help="validation draws (default n_train/10, >= 16)")
    ap.add_argument("--n-test", type=int, default=None, help="test draws (default n_train/10, >= 16)")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32, help="MUAPs per step")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay to 1%%)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=3, help="hidden layers")
    ap.add_argument("--n-basis", type=int, default=32, help="learned profile basis size K (per component)")
    ap.add_argument("--k-max", type=float, default=1.25, help="highest spatial frequency of the profiles, rad/mm")
    ap.add_argument("--diff-weight", type=float, default=0.0,
                    help="weight of a second loss on first time-differences (sharpens d/dt, hence d/d(cv))")
    ap.add_argument("--cv-jac-weight", type=float, default=0.0,
                    help="weight of a loss on d(MUAP)/d(cv) against the conductor's (forward-mode targets, "
                         "cached in OUT/data_cv_jacobian.npz)")
    ap.add_argument("--init-from", default=None,
                    help="start from these surrogate weights (.npz, same architecture): fine-tuning")
    ap.add_argument("--seed", type=int, default=0, help="data seed (LHS, split); model init uses seed+1")
    ap.add_argument("--out", default=None, help="output folder (default out/surrogate_<anatomy>)")
    ap.add_argument("--ship", action="store_true", help="also write bmiss/data/surrogate_<anatomy>.npz/.json")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    hold = max(args.n_train // 10, 16)
    args.n_val = args.n_val or hold
    args.n_test = args.n_test or hold
    return args


def normalised_errors(pred, target):
    """||pred - target|| / ||target|| per MUAP, [B]."""
    ax = tuple(range(1, pred.ndim))
    return jnp.sqrt(jnp.sum((pred - target) ** 2, ax) / jnp.sum(target**2, ax))


def main(argv=None) -> dict:
    args = parse(argv)
    a = anatomy_mod.load(args.anatomy)
    out = Path(args.out or f"out/surrogate_{a.name}")
    out.mkdir(parents=True, exist_ok=True)
    config = {k: getattr(args, k) for k in _CONFIG_KEYS}
    config["anatomy"] = a.name
    show = not args.no_progress
    log = (lambda *m: print(*m, flush=True))

    # ------------------------------------------------------------------ data (cached)
    n_all = args.n_train + args.n_val + args.n_test
    data_key = {k: config[k] for k in ("anatomy", "n_train", "n_val", "n_test", "seed")}
    data_path = out / "data.npz"
    gen_s = 0.0
    if data_path.exists():
        with np.load(data_path, allow_pickle=False) as z:
            ok = json.loads(str(z["key"])) == data_key
            if ok:
                P, E, gen_s = z["params"], z["elec"], float(z["gen_s"])
                log(f"data: {len(P)} cached draws from {data_path}")
    if not data_path.exists() or not ok:
        P = S.sample_params(a, n_all, args.seed)
        t = time.perf_counter()
        E = S.generate(a, P, progress=show)
        gen_s = time.perf_counter() - t
        log(f"data: {n_all} conductor MUAPs in {gen_s:.1f} s ({1e3 * gen_s / n_all:.2f} ms each)")
        S.atomic_savez(data_path, {"params": P, "elec": E, "gen_s": np.float64(gen_s),
                                   "key": np.array(json.dumps(data_key))})
    J, jac_s = None, 0.0
    if args.cv_jac_weight:
        jac_path = out / "data_cv_jacobian.npz"
        J = None
        if jac_path.exists():
            with np.load(jac_path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == data_key:
                    J, jac_s = z["jac"], float(z["gen_s"])
                    log(f"data: cached d/d(cv) targets from {jac_path}")
        if J is None:
            t = time.perf_counter()
            J = S.generate_cv_jacobian(a, P, progress=show)
            jac_s = time.perf_counter() - t
            log(f"data: {n_all} conductor d/d(cv) in {jac_s:.1f} s")
            S.atomic_savez(jac_path, {"jac": J, "gen_s": np.float64(jac_s), "key": np.array(json.dumps(data_key))})
        gen_s += jac_s
    # split by draw: the LHS rows are already in random stratum order, but permute anyway
    perm = np.random.default_rng(args.seed + 12345).permutation(n_all)
    tr, va, te = np.split(perm, [args.n_train, args.n_train + args.n_val])
    lo, hi = S.bounds_array(a)
    PN = ((P - lo) / (hi - lo)).astype(np.float32)

    # ------------------------------------------------------------------ model
    lognorm = np.log(np.linalg.norm(E[tr], axis=-1) + 1e-12)  # start the log-scales at the data's
    model = S.build_model(a, float(lognorm.mean()), float(lognorm.std()), n_basis=args.n_basis,
                          k_max=args.k_max, hidden=args.hidden, depth=args.depth, seed=args.seed + 1)
    prev = None
    if args.init_from:
        with np.load(args.init_from, allow_pickle=False) as z:
            S.load_flat_state(model, {k: z[k] for k in z.files})
        pj = Path(args.init_from).with_suffix(".json")
        prev = json.loads(pj.read_text()) if pj.exists() else None
        log(f"initialised from {args.init_from}")
    graphdef, params, buffers = nnx.split(model, nnx.Param, S.Buffer)
    steps = args.n_train // args.batch
    total = max(args.epochs * steps, 2)
    warm = max(1, min(200, total // 10))
    sched = optax.warmup_cosine_decay_schedule(0.0, args.lr, warm, total, end_value=args.lr * 0.01)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))
    opt_state = opt.init(params)
    M = np.asarray(model.montage[...])

    i_cv = S.PARAM_NAMES.index("cv_m_s")
    e_cv = jnp.zeros(6, jnp.float32).at[i_cv].set(1.0 / float(hi[i_cv] - lo[i_cv]))

    def loss_fn(params, pn, y, jy=None):
        model = nnx.merge(graphdef, params, buffers)
        tgt = jnp.einsum("ce,bet->bct", M, y)
        if jy is None:
            pred = model(pn)
        else:  # value and d/d(cv) in one forward-mode pass
            pred, jp = jax.jvp(model, (pn,), (jnp.broadcast_to(e_cv, pn.shape),))
        loss = jnp.mean(normalised_errors(pred, tgt) ** 2)
        if jy is not None:
            loss += args.cv_jac_weight * jnp.mean(normalised_errors(jp, jnp.einsum("ce,bet->bct", M, jy)) ** 2)
        if args.diff_weight:  # the derivative in time is what d(MUAP)/d(cv) is made of
            loss += args.diff_weight * jnp.mean(normalised_errors(jnp.diff(pred), jnp.diff(tgt)) ** 2)
        return loss

    @jax.jit
    def step(params, opt_state, pn, y, jy=None):
        loss, g = jax.value_and_grad(loss_fn)(params, pn, y, jy)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    @jax.jit
    def errors(params, pn, y):
        pred = nnx.merge(graphdef, params, buffers)(pn)
        tgt = jnp.einsum("ce,bet->bct", M, y)
        return normalised_errors(pred, tgt), normalised_errors(jnp.diff(pred), jnp.diff(tgt))

    def evaluate(params, idx, chunk=256):
        errs = [errors(params, PN[idx[i:i + chunk]], E[idx[i:i + chunk]]) for i in range(0, len(idx), chunk)]
        e = np.concatenate([np.asarray(v[0]) for v in errs])
        d = np.concatenate([np.asarray(v[1]) for v in errs])
        return {"median": float(np.median(e)), "p95": float(np.percentile(e, 95)), "mean": float(e.mean()),
                "time_diff_median": float(np.median(d)), "time_diff_p95": float(np.percentile(d, 95))}

    # ------------------------------------------------------------------ resume
    ckpt = out / "checkpoint.npz"
    start, history, train_s, train_cpu_s = 0, [], 0.0, 0.0
    if ckpt.exists():
        with np.load(ckpt, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            # the epoch count may grow (train longer); anything else must match
            if {k: v for k, v in meta["config"].items() if k != "epochs"} != \
                    {k: v for k, v in config.items() if k != "epochs"}:
                raise SystemExit(f"{ckpt} belongs to another configuration ({meta['config']}); "
                                 f"use another --out or delete it to start over (now: {config})")
            S.load_flat_state(model, {k[2:]: z[k] for k in z.files if k.startswith("m/")})
            leaves, tree = jax.tree_util.tree_flatten(opt_state)
            opt_state = jax.tree_util.tree_unflatten(
                tree, [jnp.asarray(z[f"o/{i}"], l.dtype) for i, l in enumerate(leaves)])
        _, params, buffers = nnx.split(model, nnx.Param, S.Buffer)
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
        t, tc = time.perf_counter(), time.process_time()
        order = tr[np.random.default_rng([args.seed, epoch]).permutation(len(tr))]
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{args.epochs}", disable=not show, mininterval=1.0)
        run = None
        for i in bar:
            b = order[i * args.batch:(i + 1) * args.batch]
            params, opt_state, loss = step(params, opt_state, PN[b], E[b], None if J is None else J[b])
            if i % 20 == 0 or i == steps - 1:
                loss = float(loss)
                run = loss if run is None else 0.9 * run + 0.1 * loss
                bar.set_postfix(loss=f"{run:.2e}", rel=f"{np.sqrt(run):.3f}")
        val = evaluate(params, va)
        train_s += time.perf_counter() - t
        train_cpu_s += time.process_time() - tc  # all threads of this process (the machine is shared)
        history.append({"epoch": epoch + 1, "train_loss": run, "val": val, "elapsed_s": round(train_s, 1)})
        log(f"epoch {epoch + 1}: train loss {run:.3e}  val rel-RMSE median {val['median']:.4f} "
            f"p95 {val['p95']:.4f} (d/dt median {val['time_diff_median']:.4f})  ({train_s:.0f} s)")
        save_ckpt(epoch + 1)

    # ------------------------------------------------------------------ final
    nnx.update(model, params)
    val, test = evaluate(params, va), evaluate(params, te)
    meta = S.geometry_meta(a)
    meta.update({
        "arch": {"kind": "per-electrode MLP -> 3 components x learned Fourier profile basis, read at the "
                         "physical delays", "hidden": args.hidden, "depth": args.depth, "n_basis": args.n_basis,
                 "k_max": args.k_max, "n_freq": int(model.omega.shape[0]), "period_mm": float(model.frame[1]),
                 "onset_ms": float(model.frame[0]), "n_features": S.N_FEATURES,
                 "n_samples": a.grid.muap_samples, "activation": "silu",
                 "n_parameters": int(sum(np.size(v) for v in jax.tree.leaves(nnx.to_pure_dict(params))))},
        "training": {**config, "data_seed": args.seed, "sampling": "latin hypercube over param_bounds",
                     "optimiser": "adam, warmup + cosine decay, clip 1.0",
                     "loss": "mean per-MUAP (||pred - conductor|| / ||conductor||)^2",
                     "data_generation_s": round(gen_s, 1), "training_s": round(train_s, 1),
                     "training_cpu_s": round(train_cpu_s, 1),
                     "total_s": round(gen_s + train_s, 1), "machine_cpus": jax.device_count(),
                     "device": str(jax.devices()[0].platform)},
        "validation_error": val, "test_error": test, "history": history,
    })
    if prev is not None:  # fine-tuned: the time of the run it started from counts too
        pt = prev.get("training", {})
        meta["training"]["init_from"] = {"weights": str(args.init_from), "training": pt,
                                         "history": prev.get("history")}
        same_data = all(pt.get(k) == data_key[k] for k in data_key)  # fine-tuning on the base run's draws
        extra_s = jac_s if same_data else gen_s
        meta["training"]["total_s"] = round(pt.get("total_s", 0.0) + extra_s + train_s, 1)
        meta["training"]["total_cpu_s"] = round(pt.get("training_cpu_s", 0.0) + train_cpu_s, 1)
    npz, js = S.save_surrogate(out / "surrogate", model, meta)
    log(f"saved {npz} + {js.name}: val median {val['median']:.4f} p95 {val['p95']:.4f}; "
        f"test median {test['median']:.4f} p95 {test['p95']:.4f}; data {gen_s:.0f} s + training {train_s:.0f} s")
    if args.ship:
        shipped = S.save_surrogate(S.DATA_DIR / f"surrogate_{a.name}", model, meta)
        log(f"shipped {shipped[0]}")
    return {"out": str(out), "weights": str(npz), "start_epoch": start, "val": val, "test": test,
            "training_s": train_s, "training_cpu_s": train_cpu_s, "data_generation_s": gen_s}


if __name__ == "__main__":
    main(sys.argv[1:])
