"""The BMISS paper's experiment in our setting: 10x32 forearm grid, 100 MUs, 10 s, noise-free then
30/20/10 dB; MUs found (RoA >= 0.9) by oracle, cbss and bmiss, wall time, property nRMSE.

    python experiments/paper_table.py [--snrs inf 30 20 10] [--n-units 100] [--duration 10] \
        [--json results/paper_table.json] [--figure results/paper_table.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench_decompose import run, table

from bmiss import figures, metrics


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anatomy", default="forearm_flexors")
    ap.add_argument("--snrs", nargs="+", default=["inf", "30", "20", "10"])
    ap.add_argument("--methods", nargs="+", default=["oracle", "cbss", "bmiss"])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--n-units", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="results/paper_table.json")
    ap.add_argument("--figure", default="results/paper_table.png")
    a = ap.parse_args(argv)
    rows = run([a.anatomy], a.snrs, a.methods, a.duration, a.n_units, a.seed)
    print(table(rows))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(metrics._jsonable({"config": vars(a), "rows": rows}), indent=1))
    res = {}
    for r in rows:
        res.setdefault(r["method"], {})[r["snr_db"]] = r["found_90"]
    figures.snr_yield(res, path=a.figure, title=f"{a.anatomy}: MUs found (RoA >= 0.9) vs SNR")
    print(f"wrote {a.json} and {a.figure}")


if __name__ == "__main__":
    main()
