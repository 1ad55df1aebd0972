"""The default bmiss's free refit of the subject (fat and skin fitted) through the network or the conductor.

The pipeline repeats the subject fit with fat and skin free wherever the fit with them held
explains less than ``subject_fit.min_ev`` (0.8) of the blind MUAPs' variance: on bench_mismatch's
short-fibre and non-physical (Hermite) recordings and on the real one. ``subject_fit.free_network``
chooses the MUAP model of that refit: the network bounded to its domain (true, the default) or the
conductor (false, before the tenth session). Each recording (bench_mismatch's families, 10 s,
60-MU pool) is decomposed with both, twice in one process (the first call compiles, the second is
warm), and the units found, the stage times and the kept model are recorded.

    python experiments/diag_free_refit.py --recordings short hermite --json results/diag_free_refit.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bmiss  # noqa: E402
from bmiss import api, metrics  # noqa: E402
from bmiss.files import provenance, write_json  # noqa: E402

from bench_mismatch import RECORDINGS  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recordings", nargs="+", default=["short", "hermite"], choices=sorted(RECORDINGS))
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    out = {"provenance": provenance(**vars(a)), "rows": []}
    for fam in a.recordings:
        rec = bmiss.simulate("biceps_brachii", duration_s=10, snr_db=a.snr, seed=a.seed, n_units=60, **RECORDINGS[fam])
        for call in ("first", "warm"):
            for net in (True, False):
                t = time.perf_counter()
                dec = api.decompose(rec, method="bmiss", progress=False, **{"subject_fit.free_network": net})
                total = time.perf_counter() - t
                sm = dec.meta["subject_model"]
                s = metrics.evaluate(dec, rec)["summary"]
                row = {"recording": fam, "snr_db": a.snr, "call": call, "free_network": net, "time_s": round(total, 2),
                       "subject_fit_s": dec.meta["timing_s"]["subject_fit"],
                       "unit_properties_s": dec.meta["timing_s"]["unit_properties"],
                       "refit_free": sm.get("refit_free"), "forward_model": sm.get("forward_model"),
                       "found_90": s["found_90"], "false": s["n_false"], "n_units": dec.n_units}
                out["rows"].append(row)
                print(f"{fam:8s} {call:5s} free_network={str(net):5s} {total:6.1f} s  subject fit "
                      f"{row['subject_fit_s']:5.1f} s  kept {(row['refit_free'] or {}).get('kept')}  "
                      f"found {s['found_90']} false {s['n_false']}", flush=True)
                if a.json:
                    write_json(a.json, out, force=True)
    return out


if __name__ == "__main__":
    main()
