"""How far the unit fits move when their units are split over 2 devices (the tolerances of
tests/test_devices.py).

    nice -n 10 python experiments/devices_fit_diff.py --json results/devices_fit_diff.json

Runs in one process with 2 forced CPU host devices (``XLA_FLAGS=--xla_force_host_platform_
device_count=2``, added here when absent). For each tiny simulated recording (3 s biceps, 10 MUs,
the true discharges) and each L-BFGS step count, :func:`bmiss.fitting.fit_units` runs with
sharding off (``BMISS_SHARD=0``, every array on one device: the same numbers as a 1-device
process) and on (units split 2 ways); the largest difference per parameter over the fitted
units, of the explained variance, and (with ``--laplace``) of the Laplace std are reported.
The subject model is held at the base anatomy's nominal values (tests/devices_child.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

FLAG = "--xla_force_host_platform_device_count"
if FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {FLAG}=2").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["3:3.0", "4:3.0", "3:0.5"],
                    help="SEED:MIN_TEMPLATE_SNR per recording (0.5 keeps 9 units, 3.0 two to seven)")
    ap.add_argument("--steps", type=int, nargs="+", default=[15, 100])
    ap.add_argument("--laplace", action="store_true", help="also compare the Laplace std (at the largest step count)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import jax
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from devices_child import quick_subject

    import bmiss
    from bmiss.fitting import UnitFitSettings, fit_units
    from bmiss.files import provenance, write_json

    prov = provenance(cases=a.cases, steps=a.steps, laplace=a.laplace)
    if jax.device_count() < 2:
        raise SystemExit(f"JAX sees {jax.device_count()} device; this needs 2 (XLA_FLAGS={os.environ['XLA_FLAGS']!r})")
    rows = []
    for case in a.cases:
        seed, snr = int(case.split(":")[0]), float(case.split(":")[1])
        rec = bmiss.simulate("biceps_brachii", duration_s=3, snr_db=30, seed=seed, n_units=10,
                             excitation="constant:0.6")
        sf = quick_subject(rec, rec.true_spikes)
        for n in a.steps:
            lap = a.laplace and n == max(a.steps)
            res = {}
            for flag in ("0", "1"):
                os.environ["BMISS_SHARD"] = flag
                res[flag] = fit_units(sf, rec, list(rec.true_spikes),
                                      settings=UnitFitSettings(n_steps=n, laplace=lap, min_template_snr=snr))
            os.environ.pop("BMISS_SHARD")
            one, two = res["0"], res["1"]
            ok = np.array(one.status) == "fitted"
            r = {"seed": seed, "min_template_snr": snr, "n_steps": n, "n_fitted": int(ok.sum()),
                 "same_status": one.status == two.status, "devices": [one.timing["devices"], two.timing["devices"]],
                 "param_max_abs_diff": dict(zip(rec.param_names,
                                                np.nanmax(np.abs(one.params - two.params)[ok], axis=0).tolist())),
                 "ev_max_abs_diff": float(np.nanmax(np.abs(one.explained_variance - two.explained_variance)[ok]))}
            if lap:
                r["std_max_rel_diff"] = float(np.nanmax(np.abs(one.std - two.std)[ok] / np.abs(one.std[ok])))
            rows.append(r)
            print(r, flush=True)
    names = list(rows[0]["param_max_abs_diff"])
    summary = {"param_max_abs_diff": {k: max(r["param_max_abs_diff"][k] for r in rows) for k in names},
               "ev_max_abs_diff": max(r["ev_max_abs_diff"] for r in rows)}
    print(summary)
    if a.json:
        write_json(a.json, {"provenance": prov, "rows": rows, "summary": summary}, force=True)
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
