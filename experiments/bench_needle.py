"""Leave-one-subject-out benchmark of the needle-EMG classifiers on EMGlab N2001 (475 recordings,
22 subjects): (a) logistic model on MUAP features, (b) Flax 1-D CNN on raw segments, (c) combined.

For each of the 22 subjects, both models are refitted on the other 21 (same seeds and settings as
the shipped models, experiments/train_needle.py) and predict the held-out subject's recordings; a
subject's prediction is the mean log-probability over its recordings. Reports accuracy, balanced
accuracy (95 % bootstrap interval over subjects, 2000 resamples, seed 0) and confusion matrices at
recording and subject level, per-class recall, and the feature-extraction time per recording.

    nice -n 5 python experiments/bench_needle.py --data /work/data_n2001/als_datasets/emglab_dataset_bb
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_needle import CNN_STEPS, CNN_WIDTH, L2, SEED, fit_all, load_cache  # noqa: E402

from bmiss.files import provenance, write_json  # noqa: E402
from bmiss.needle.classify import (CLASSES, balanced_accuracy, bootstrap_ci, cnn_logprob, combine,  # noqa: E402
                                   confusion, segments, subject_logprob)


def evaluate(subjects, y, lp) -> dict:
    pred = lp.argmax(1)
    acc = lambda t, p: float(np.mean(t == p))  # noqa: E731
    out = {"n": int(len(y)), "accuracy": acc(y, pred), "balanced_accuracy": balanced_accuracy(y, pred),
           "accuracy_ci95": bootstrap_ci(subjects, y, pred, acc, seed=SEED),
           "balanced_accuracy_ci95": bootstrap_ci(subjects, y, pred, balanced_accuracy, seed=SEED),
           "confusion": confusion(y, pred).tolist()}
    C = np.array(out["confusion"])
    out["recall"] = {c: float(C[i, i] / C[i].sum()) for i, c in enumerate(CLASSES)}
    return out


def timing(out: Path) -> None:
    """Feature time of each shared N2001 record (22 x 11.2 s), with a baseline in the same run: one
    zero-phase band-pass of the same signal (the first stage), so that the ratio survives load."""
    import scipy.signal

    from bmiss.needle.features import analyze_recording
    from bmiss.needle.wfdb import load_wfdb

    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "n2001"
    rows = []
    load0 = list(os.getloadavg())
    for h in sorted(shared.glob("*.hea")):
        rec = load_wfdb(h)
        t = time.perf_counter()
        sos = scipy.signal.butter(2, [5.0, 5000.0], btype="bandpass", fs=rec.fs, output="sos")
        scipy.signal.sosfiltfilt(sos, rec.emg[0].astype(np.float64))
        base = time.perf_counter() - t
        t = time.perf_counter()
        dec, units, _ = analyze_recording(rec)
        rows.append({"record": rec.meta["record"], "seconds": time.perf_counter() - t, "baseline_s": base,
                     "n_units": len(units), "n_candidates": dec.n_candidates})
    sec = np.array([r["seconds"] for r in rows])
    ratio = sec / np.array([r["baseline_s"] for r in rows])
    res = provenance(what="needle feature time per 11.2-s recording (23,437.5 Hz), 22 shared records")
    res.update(records=rows, median_s=float(np.median(sec)), max_s=float(sec.max()),
               median_ratio_to_bandpass=float(np.median(ratio)), load_avg_start=load0,
               load_avg_end=list(os.getloadavg()))
    write_json(out, res)
    print(f"feature time median {np.median(sec):.3f} s, max {sec.max():.3f} s "
          f"({np.median(ratio):.1f} x one band-pass); load {load0} -> {os.getloadavg()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/data_n2001/als_datasets/emglab_dataset_bb"))
    ap.add_argument("--out", type=Path, default=Path("results/bench_needle.json"))
    ap.add_argument("--steps", type=int, default=CNN_STEPS)
    ap.add_argument("--timing-only", type=Path, metavar="JSON", help="only time the features of the shared records")
    a = ap.parse_args()
    if a.timing_only:
        return timing(a.timing_only)
    t0 = time.perf_counter()
    c = load_cache(a.data)
    subj, y = c["subjects"], c["y"]
    subs = np.unique(subj)
    K = len(CLASSES)
    lp = {m: np.zeros((len(y), K)) for m in ("features", "cnn")}
    for i, s in enumerate(subs):
        test = subj == s
        t = time.perf_counter()
        feat, cnn = fit_all(c, ~test, steps=a.steps)
        lp["features"][test] = feat.logprob(c["X"][test])
        for j in np.flatnonzero(test):
            lp["cnn"][j] = subject_logprob(cnn_logprob(cnn, segments(c["sig"][j].astype(np.float32))))
        ok = {m: bool(subject_logprob(v[test]).argmax() == y[test][0]) for m, v in lp.items()}
        print(f"[{i + 1}/{len(subs)}] {s} ({CLASSES[y[test][0]]}, {test.sum()} rec): {ok} "
              f"{time.perf_counter() - t:.0f} s", flush=True)
    lp["combined"] = combine(lp["features"], lp["cnn"])
    res = {}
    for m, v in lp.items():
        sl = np.stack([subject_logprob(v[subj == s]) for s in subs])
        sy = np.array([y[subj == s][0] for s in subs])
        res[m] = {"recording": evaluate(subj, y, v), "subject": evaluate(subs, sy, sl)}
    fs = c["feature_seconds"]
    out = provenance(data=str(a.data), seed=SEED, cnn_steps=a.steps, cnn_width=CNN_WIDTH, l2=L2,
                     protocol="leave-one-subject-out, 22 folds; subject = mean log-prob over recordings")
    out.update(classes=list(CLASSES), n_recordings=int(len(y)), n_subjects=int(len(subs)),
               subjects_per_class={cl: int(len(np.unique(subj[y == k]))) for k, cl in enumerate(CLASSES)},
               results=res,
               feature_seconds={"median": float(np.median(fs)), "p95": float(np.percentile(fs, 95)),
                                "max": float(np.max(fs)), "note": "measured while building the cache, on a CPU "
                                "shared with other jobs"},
               predictions={"names": c["names"].tolist(), "subjects": subj.tolist(), "y": y.tolist(),
                            **{m: np.round(np.exp(v), 4).tolist() for m, v in lp.items()}},
               wall_s=time.perf_counter() - t0, load_avg_end=list(os.getloadavg()))
    write_json(a.out, out)
    for m in res:
        r, s = res[m]["recording"], res[m]["subject"]
        print(f"{m:9s} recording acc {r['accuracy']:.3f} bal {r['balanced_accuracy']:.3f} "
              f"{r['balanced_accuracy_ci95']} | subject acc {s['accuracy']:.3f} bal {s['balanced_accuracy']:.3f} "
              f"{s['balanced_accuracy_ci95']}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
