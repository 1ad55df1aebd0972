"""Train the needle-EMG classifiers of bmiss.needle on EMGlab N2001 and ship them.

Builds (once) a cache of every recording's MUAP summary features and CNN input, then fits
(a) the logistic model on features and (b) the Flax 1-D CNN on all subjects, and writes
bmiss/data/needle_n2001.npz.  The leave-one-subject-out benchmark is experiments/bench_needle.py
(it reuses :func:`load_cache` and :func:`fit_all`).

Data: the 475 recordings of ChatMED/ALS-EMG (MIT), folder als_datasets/emglab_dataset_bb at
commit 484e65e, extracted OUTSIDE the repository, e.g.
    git --git-dir=<fetched repo> archive 484e65e als_datasets/emglab_dataset_bb | tar -x -C /work/data_n2001

    nice -n 5 python experiments/train_needle.py --data /work/data_n2001/als_datasets/emglab_dataset_bb
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bmiss.needle.classify import (CLASSES, cnn_input, default_weights, fit_features, save_classifier, segments,
                                   train_cnn)
from bmiss.needle.features import SUMMARY_KEYS, analyze_recording
from bmiss.needle.wfdb import load_wfdb

SEED = 0
CNN_STEPS = 300
CNN_WIDTH = 8
L2 = 1.0


def build_cache(data: Path, cache: Path, progress: bool = True) -> dict:
    from tqdm import tqdm

    heads = sorted(data.glob("*.hea"))
    if not heads:
        raise SystemExit(f"no .hea files in {data}")
    names, subj, y, X, sig, secs = [], [], [], [], [], []
    for h in tqdm(heads, desc="features", disable=not progress):
        rec = load_wfdb(h)
        t = time.perf_counter()
        _, _, s = analyze_recording(rec)
        secs.append(time.perf_counter() - t)
        names.append(rec.meta["record"])
        subj.append(rec.meta["subject"])
        y.append(CLASSES.index(rec.meta["diagnosis_class"]))
        X.append([s[k] for k in SUMMARY_KEYS])
        sig.append(cnn_input(rec.emg[0], rec.fs))
    n = min(len(s) for s in sig)
    out = {"names": np.array(names), "subjects": np.array(subj), "y": np.array(y), "X": np.array(X, np.float64),
           "sig": np.stack([s[:n] for s in sig]).astype(np.float16), "feature_seconds": np.array(secs),
           "keys": np.array(SUMMARY_KEYS)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def load_cache(data: Path, cache: Path | None = None) -> dict:
    cache = cache or data.parent / "bmiss_needle_cache.npz"
    if cache.exists():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    return build_cache(data, cache)


def balanced_weights(y: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """Each class weighs the same, and within a class each subject weighs the same."""
    w = np.zeros(len(y))
    for k in np.unique(y):
        subs = np.unique(subjects[y == k])
        for s in subs:
            m = (y == k) & (subjects == s)
            w[m] = 1.0 / (len(subs) * m.sum())
    return w


def fit_all(c: dict, train: np.ndarray, *, seed: int = SEED, steps: int = CNN_STEPS, progress: bool = False):
    """Fit (a) and (b) on the recordings ``train`` (bool mask) of cache ``c``."""
    y, subj = c["y"][train], c["subjects"][train]
    w = balanced_weights(y, subj)
    feat = fit_features(c["X"][train], y, list(c["keys"]), l2=L2, sample_weight=w)
    segs = [segments(s.astype(np.float32)) for s in c["sig"][train]]
    n = np.array([len(s) for s in segs])
    S = np.concatenate(segs)
    yS = np.repeat(y, n)
    wS = np.repeat(w / n, n)
    cnn = train_cnn(S, yS, seed=seed, steps=steps, width=CNN_WIDTH, sample_weight=wS, progress=progress)
    return feat, cnn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data_n2001/als_datasets/emglab_dataset_bb"))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=default_weights())
    ap.add_argument("--cache-only", action="store_true")
    a = ap.parse_args()
    c = load_cache(a.data, a.cache)
    print(f"{len(c['y'])} recordings, {len(np.unique(c['subjects']))} subjects; features "
          f"{np.median(c['feature_seconds']):.3f} s median per recording")
    if a.cache_only:
        return
    feat, cnn = fit_all(c, np.ones(len(c["y"]), bool), progress=True)
    meta = {"classes": list(CLASSES), "seed": SEED, "cnn_steps": CNN_STEPS, "width": CNN_WIDTH, "l2": L2,
            "trained_on": "EMGlab N2001 (ChatMED/ALS-EMG 484e65e), all 22 subjects, %d recordings" % len(c["y"])}
    p = save_classifier(a.out, feat, cnn, meta)
    print(f"wrote {p} ({p.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
