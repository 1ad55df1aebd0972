"""Train the amortized MU-property posterior network (bmiss.posterior) on simulated MUAPs.

    python experiments/train_posterior.py --steps 2000 --out bmiss/data/posterior_v1

Data: chunks of encoded per-fibre MUAPs (bmiss.posterior.data / simulate: tissue, grid, fs, IAP
and unit parameters drawn wider than the shipped anatomies; noise at a spike-triggered average's
level) cached in --cache (outside the repository). Chunks are generated here if missing
(--chunks, --seed) or by parallel `python -c "from bmiss.posterior import data; data.generate(...)"`
workers; training reads whatever chunks exist at the start of each pass, so it can begin while
the data are still being made. Validation chunks use --val-seed (never trained on).
Training: AdamW, cosine learning rate over --steps, batches of --batch, random mirror of x and z
(both symmetries of the conductor) and a random "known tissue" mask (each of fat, skin, anisotropy
given with probability 1/2, with a 10 % log-normal error, else unknown). Checkpoints every
--ckpt-every steps in --cache (a rerun resumes). The shipped weights (npz) and their JSON (settings,
data seeds, training ranges, validation table) are written at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bmiss import files  # noqa: E402
from bmiss.posterior import data as D  # noqa: E402
from bmiss.posterior import features as F  # noqa: E402
from bmiss.posterior import network as N  # noqa: E402
from bmiss.posterior import simulate as S  # noqa: E402
from bmiss.posterior.api import summarise_mixture, PARAM_NAMES  # noqa: E402


def tissue_globals(batch, idx, rng):
    n = len(idx)
    t = {}
    for k in F.TISSUE_KEYS:
        v = batch[k][idx].astype(np.float64) * np.exp(0.1 * rng.standard_normal(n))
        v[rng.random(n) < 0.5] = np.nan
        t[k] = v
    return F.globals_with_tissue(batch["globals_base"][idx], t)


def make_batch(batch, idx, rng, augment=True):
    tok = batch["tokens"][idx].astype(np.float32)
    th = batch["theta"][idx].copy()
    if augment:
        fx = rng.random(len(idx)) < 0.5
        fz = rng.random(len(idx)) < 0.5
        tok[fx, :, F.N_T] *= -1
        th[fx, 1] *= -1
        tok[fz, :, F.N_T + 1] *= -1
        th[fz, 3] *= -1
    return tok, batch["mask"][idx], tissue_globals(batch, idx, rng), N.to_target(th)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default="/work/cache_posterior")
    ap.add_argument("--seed", type=int, default=1, help="training-data seed")
    ap.add_argument("--val-seed", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=0, help="generate this many training chunks first (0: use the cache)")
    ap.add_argument("--val-chunks", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--components", type=int, default=5)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--init-seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bmiss" / "data" / "posterior_v1"))
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    cache = Path(a.cache)
    t_start = time.perf_counter()
    if a.chunks:
        D.generate(cache, a.chunks, a.seed, progress=not a.quiet)
    val_paths = D.generate(cache, a.val_chunks, a.val_seed, progress=not a.quiet)
    val = D.load(val_paths)
    config = {"width": a.width, "depth": a.depth, "n_comp": a.components}
    model = N.PosteriorNet(jax.random.PRNGKey(a.init_seed), **config)
    sched = optax.warmup_cosine_decay_schedule(0.0, a.lr, min(50, a.steps // 4), a.steps, a.lr * 0.02)
    opt = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(sched, weight_decay=1e-4))
    params = eqx.filter(model, eqx.is_array)
    opt_state = opt.init(params)
    step0 = 0
    ck = cache / f"ckpt_w{a.width}_d{a.depth}_k{a.components}_s{a.seed}.eqx"
    if ck.exists():
        step0, model, opt_state = eqx.tree_deserialise_leaves(ck, (0, model, opt_state))
        step0 = int(step0)
        print(f"resumed from {ck} at step {step0}", flush=True)

    @eqx.filter_jit
    def train_step(model, opt_state, tok, mask, g, z):
        def loss(m):
            mix = jax.vmap(m)(tok, mask, g)
            return jnp.mean(jax.vmap(N.mixture_nll)(mix, z).sum(-1))

        l, gr = eqx.filter_value_and_grad(loss)(model)
        up, opt_state = opt.update(gr, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, up), opt_state, l

    predict = eqx.filter_jit(lambda m, tok, mask, g: jax.vmap(m)(tok, mask, g))
    rng = np.random.default_rng(a.seed * 7 + step0)
    train, n_train_chunks = None, 0
    losses = []
    bar = tqdm(total=a.steps, initial=step0, desc="train", disable=a.quiet)
    step = step0
    n_seen_chunks = []
    while step < a.steps:
        paths = sorted(cache.glob(f"chunk_s{a.seed}_*.npz"))
        if len(paths) != n_train_chunks:
            train = D.load(paths)
            n_train_chunks = len(paths)
        n = len(train["theta"])
        perm = rng.permutation(n)
        n_seen_chunks.append(n_train_chunks)
        for b in range(n // a.batch):
            if step >= a.steps:
                break
            idx = perm[b * a.batch:(b + 1) * a.batch]
            tok, mask, g, z = make_batch(train, idx, rng)
            model, opt_state, l = train_step(model, opt_state, jnp.asarray(tok), jnp.asarray(mask), jnp.asarray(g),
                                             jnp.asarray(z))
            step += 1
            losses.append(float(l))
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", chunks=n_train_chunks)
            if step % a.ckpt_every == 0 or step == a.steps:
                eqx.tree_serialise_leaves(ck, (step, model, opt_state))
            if step % 200 == 0:  # a new pass picks up freshly generated chunks
                break
    bar.close()
    # ---- validation table on the held-out chunks (known tissue: none, and all given)
    vrng = np.random.default_rng(12345)
    table = {}
    for mode in ("tissue_unknown", "tissue_known"):
        mixes = []
        for b in range(0, len(val["theta"]), 256):
            idx = np.arange(b, min(b + 256, len(val["theta"])))
            tok, mask, g, _ = make_batch(val, idx, vrng, augment=False)
            if mode == "tissue_unknown":
                g = F.globals_with_tissue(val["globals_base"][idx], {})
            else:
                g = F.globals_with_tissue(val["globals_base"][idx], {k: val[k][idx] for k in F.TISSUE_KEYS})
            mixes.append(np.asarray(predict(model, jnp.asarray(tok), jnp.asarray(mask), jnp.asarray(g))))
        summ = summarise_mixture(np.concatenate(mixes))
        th = val["theta"]
        rows = {}
        for j, name in enumerate(PARAM_NAMES):
            err = summ["mean"][:, j] - th[:, j]
            if name == "length_mm":
                err = summ["mean"][:, j] / th[:, j] - 1.0
            in68 = (th[:, j] >= summ["q"]["0.16"][:, j]) & (th[:, j] <= summ["q"]["0.84"][:, j])
            in95 = (th[:, j] >= summ["q"]["0.025"][:, j]) & (th[:, j] <= summ["q"]["0.975"][:, j])
            rows[name] = {"rmse": float(np.sqrt(np.mean(err**2))), "median_abs": float(np.median(np.abs(err))),
                          "cover68": float(in68.mean()), "cover95": float(in95.mean()),
                          "median_std": float(np.median(summ["std"][:, j]))}
            if name == "length_mm":
                rows[name]["unit"] = "relative"
        table[mode] = rows
        print(mode, json.dumps({k: {kk: round(vv, 3) if isinstance(vv, float) else vv for kk, vv in v.items()}
                                for k, v in rows.items()}), flush=True)
    # high-SNR subset (peak-to-noise >= 20), tissue unknown
    out = Path(a.out)
    arrays = N.leaves(model)
    np.savez_compressed(out.with_suffix(".npz"), **{f"a{i:03d}": x for i, x in enumerate(arrays)})
    meta = {
        "format": "bmiss posterior network", "feature_version": F.FEATURE_VERSION, "config": config,
        "features": {"T0_MS": F.T0_MS, "DT_MS": F.DT_MS, "N_T": F.N_T, "NE": F.NE, "POS_SCALE_MM": F.POS_SCALE_MM,
                     "globals": list(F.GLOBAL_NAMES), "tissue_keys": list(F.TISSUE_KEYS)},
        "target_shift": N.TARGET_SHIFT.tolist(), "target_scale": N.TARGET_SCALE.tolist(),
        "param_names": list(PARAM_NAMES),
        "training_ranges": {k: list(v) if isinstance(v, tuple) else v for k, v in S.RANGES.items()},
        "simulator": {"n_draw_fibres": S.N_DRAW, "fs_choices": list(S.FS_CHOICES), "band_hz": list(S.BAND),
                      "window_ms": [S.SIM_T0_MS, S.SIM_T1_MS], "iap": ["rosenfalck", "gamma2"]},
        "data": {"seed": a.seed, "val_seed": a.val_seed, "n_train": int(len(train["theta"])),
                 "n_val": int(len(val["theta"])), "chunks_seen_per_pass": n_seen_chunks, "cache": str(cache)},
        "training": {"steps": a.steps, "batch": a.batch, "lr": a.lr, "init_seed": a.init_seed,
                     "final_loss_mean_last100": float(np.mean(losses[-100:])) if losses else None,
                     "wall_s_this_run": round(time.perf_counter() - t_start, 1)},
        "validation": table,
        "provenance": files.provenance(**vars(a)),
    }
    files.write_json(out.with_suffix(".json"), meta)
    print(f"wrote {out.with_suffix('.npz')} ({out.with_suffix('.npz').stat().st_size / 1e6:.2f} MB) and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
