"""Same recordings, same seeds, two source trees: do cbss and the default bmiss give the same units?

    python experiments/compare_trees.py --tree /path/to/old/checkout --out results/compare_old.json
    python experiments/compare_trees.py --out results/compare_new.json
    python experiments/compare_trees.py --compare results/compare_old.json results/compare_new.json

Runs ``cbss`` and ``bmiss`` on mismatch recordings of ``bench_mismatch`` (other model paths:
per-fibre MUAPs with perturbed tissue, short fibres, ...), records units found at RoA >= 0.9, false
units, every unit's discharges and the time; ``--compare`` prints a before/after table and whether
the discharge trains are identical. ``--tree`` imports bmiss from another checkout (a refactor's
"before").
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def run(a) -> int:
    if a.tree:
        sys.path.insert(0, a.tree)
    import bmiss
    from bmiss import api, metrics

    # the recording definitions of the same tree (an old tree's benchmark imports what that tree had)
    sys.path.insert(0, f"{a.tree}/experiments" if a.tree else __file__.rsplit("/", 1)[0])
    from bench_mismatch import RECORDINGS

    rows = []
    for spec in a.recordings:
        fam, snr = spec.split("@")
        rec = bmiss.simulate("biceps_brachii", duration_s=a.duration, snr_db=float(snr), seed=a.seed,
                             n_units=a.n_units, **RECORDINGS[fam])
        row = {"recording": spec, "methods": {}}
        for m in ("cbss", "bmiss"):
            t = time.perf_counter()
            dec = api.decompose(rec, m, progress=False, seed=a.seed)
            dt = time.perf_counter() - t
            s = metrics.evaluate(dec, rec)["summary"]
            row["methods"][m] = {"found_90": s["found_90"], "false": s["n_false"], "n_units": dec.n_units,
                                 "time_s": round(dt, 2), "spikes": [list(map(int, x)) for x in dec.spikes],
                                 "timing_s": dec.meta.get("timing_s")}
            print(spec, m, row["methods"][m]["found_90"], row["methods"][m]["false"], f"{dt:.1f} s", flush=True)
        rows.append(row)
    import os
    import platform
    import subprocess

    # the commit of the tree under test (an old tree's missing modules may resolve to this checkout's)
    commit = subprocess.run(["git", "-C", a.tree or os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    doc = {"rows": rows, "provenance": {"command": " ".join(sys.argv), "commit": commit, "tree": a.tree or "this checkout",
                                        "machine": platform.node(), "processor": platform.machine(),
                                        "cpu_count": os.cpu_count(), "load_avg": list(os.getloadavg()),
                                        "settings": {"duration_s": a.duration, "n_units": a.n_units, "seed": a.seed,
                                                     "recordings": a.recordings}}}
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, a.out)
    return 0


def compare(old_path: str, new_path: str) -> int:
    old, new = (json.load(open(p)) for p in (old_path, new_path))
    print("| recording | method | found before / after | false before / after | time s before / after | same trains |")
    print("|---|---|---|---|---|---|")
    same_all = True
    for ro, rn in zip(old["rows"], new["rows"]):
        for m in ("cbss", "bmiss"):
            a, b = ro["methods"][m], rn["methods"][m]
            same = a["spikes"] == b["spikes"]
            same_all &= same
            print(f"| {ro['recording']} | {m} | {a['found_90']} / {b['found_90']} | {a['false']} / {b['false']} | "
                  f"{a['time_s']} / {b['time_s']} | {'yes' if same else 'no'} |")
    return 0 if same_all else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", default=None)
    ap.add_argument("--recordings", nargs="+", default=["tissue@20", "short@10"], help="FAMILY@SNR")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare", nargs=2, default=None)
    a = ap.parse_args(argv)
    return compare(*a.compare) if a.compare else run(a)


if __name__ == "__main__":
    sys.exit(main())
