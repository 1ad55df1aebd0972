"""Before/after regression benchmark: this tree's decomposers against an earlier source tree.

    git archive 9dafb0a | tar -x -C /tmp/base      # the tree to compare against
    python experiments/bench_regression.py --baseline /tmp/base --snrs inf 20 10 \
        --methods cbss bmiss --json results/bench_regression.json

Each recording (biceps, per-fibre MUAPs, seeded, as ``bench_decompose.py``) is simulated once
by the baseline tree and saved; then every method runs on it in a fresh subprocess, once with the baseline tree on
``PYTHONPATH`` and once with this tree, interleaved (old, new, old, new), so both see the same
machine load.  Both are scored with this tree's metrics against the same true-MUAP oracle.  The
time is the wall time of the decompose call, compile included (each subprocess compiles anew).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

SIM = r"""
import sys, bmiss
out, anatomy, dur, snr, seed, n_units = sys.argv[1:7]
snr = None if snr.lower() in ("inf", "none") else float(snr)
rec = bmiss.simulate(anatomy, duration_s=float(dur), snr_db=snr, seed=int(seed), n_units=int(n_units))
bmiss.save_recording(out, rec)
print(bmiss.__file__)
"""

CHILD = r"""
import json, sys, time
import bmiss
from bmiss import api
rec_path, out_path, method = sys.argv[1:4]
rec = bmiss.load_recording(rec_path)
t = time.perf_counter()
dec = api.decompose(rec, method, progress=False)
dt = time.perf_counter() - t
bmiss.save_decomposition(out_path, dec)
print(json.dumps({"time_s": dt, "bmiss_file": bmiss.__file__}))
"""


def _run_child(tree: Path, rec_path: Path, out_path: Path, method: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    r = subprocess.run([sys.executable, "-c", CHILD, str(rec_path), str(out_path), method], env=env, cwd=rec_path.parent,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{method} in {tree} failed:\n{r.stderr[-3000:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    if not info["bmiss_file"].startswith(str(tree)):
        raise RuntimeError(f"child imported {info['bmiss_file']}, not the tree {tree}")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", required=True, help="source tree of the earlier version (has bmiss/)")
    ap.add_argument("--after", default=str(HERE), help="source tree of the new version (default: this one; pass a "
                    "`git archive` snapshot when the working tree may change while the benchmark runs)")
    ap.add_argument("--anatomy", default="biceps_brachii")
    ap.add_argument("--snrs", nargs="+", default=["inf", "20", "10"])
    ap.add_argument("--methods", nargs="+", default=["cbss", "bmiss"])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="results/bench_regression.json")
    a = ap.parse_args(argv)
    import bmiss
    from bmiss import api

    base = Path(a.baseline).resolve()
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="bmiss_regr_"))
    for snr in a.snrs:
        rec_path = tmp / f"rec_{snr}.npz"
        # simulated by the baseline tree: the recording file it writes is one both versions read
        r = subprocess.run([sys.executable, "-c", SIM, str(rec_path), a.anatomy, str(a.duration), snr, str(a.seed),
                            str(a.n_units)], env=dict(os.environ, PYTHONPATH=str(base)), cwd=tmp,
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"simulation failed:\n{r.stderr[-3000:]}")
        rec = bmiss.load_recording(rec_path)
        ident = api.oracle_identifiable(rec)
        for m in a.methods:
            for label, tree in (("before", base), ("after", Path(a.after).resolve())):
                out = tmp / f"dec_{snr}_{m}_{label}.npz"
                info = _run_child(tree, rec_path, out, m)
                dec = bmiss.load_decomposition(out)
                s = api.evaluate(dec, rec, oracle_found=ident)["summary"]
                rows.append({"snr_db": snr, "method": m, "version": label, "found_90": s["found_90"],
                             "found_80": s["found_80"], "identifiable": len(ident), "false": s["n_false"],
                             "duplicates": s["n_duplicates"], "n_est": s["n_est"], "time_s": round(info["time_s"], 2)})
                r = rows[-1]
                print(f"{snr:>4s} {m:6s} {label:6s} found90 {r['found_90']:3d}/{len(ident):3d} false {r['false']:3d} "
                      f"dup {r['duplicates']:3d} time {r['time_s']:7.1f} s", flush=True)
    ratios = {}
    for m in a.methods:
        tb = sum(r["time_s"] for r in rows if r["method"] == m and r["version"] == "before")
        ta = sum(r["time_s"] for r in rows if r["method"] == m and r["version"] == "after")
        ratios[m] = round(ta / tb, 3) if tb else None
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    doc = {"command": " ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])), "commit": commit,
           "baseline": str(base), "after_tree": str(Path(a.after).resolve()), "config": vars(a), "time_ratio_after_over_before": ratios,
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "load_avg_at_end": os.getloadavg()}, "rows": rows,
           "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(doc, indent=1))
    print("time ratio after/before:", ratios)
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
