"""Time of the subject fit and the unit fit with and without compilation, on one recording.

    python experiments/diag_fit_time.py --json results/diag_fit_time.json

A 20 s x 64-channel biceps recording (per-fibre MUAPs, fat 4.5 mm against the nominal 3 mm), its
cbss units; ``bmiss.fitting.fit_subject`` twice (fat and skin held, as the pipeline fits it: the
second call reuses the compiled kernels of the same shape bucket), then ``fit_units`` on 10 and on
11 units (one padded bucket of 16: the second call compiles nothing).
"""
from __future__ import annotations

import argparse
import time

import bmiss
from bmiss import fitting
from bmiss.files import provenance, write_json
from bmiss.fitting import SubjectFitSettings
from bmiss.geometry import anatomy_for_recording


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    prov = provenance(**vars(a))
    rec = bmiss.simulate("biceps_brachii", duration_s=20, snr_db=20, seed=1, n_units=100,
                         tissue_overrides={"fat_thickness_mm": 4.5})
    dec = bmiss.decompose(rec, "cbss", progress=False, seed=1)
    base = anatomy_for_recording(rec)
    out = {"provenance": prov, "n_cbss_units": dec.n_units, "subject_fit": [], "unit_fit": []}
    for k in range(2):
        t = time.perf_counter()
        sf = fitting.fit_subject(rec, dec, anatomy=base, settings=SubjectFitSettings(fix=("fat_mm", "skin_mm")),
                                 progress=False)
        out["subject_fit"].append({"call": k + 1, "wall_s": round(time.perf_counter() - t, 2), "timing": sf.timing,
                                   "n_units": int(len(sf.unit_index)), "T": int(sf.model.T)})
        print(out["subject_fit"][-1], flush=True)
    for k, n in enumerate((10, 11)):
        t = time.perf_counter()
        uf = fitting.fit_units(sf, rec, dec.spikes[:n])
        out["unit_fit"].append({"call": k + 1, "n_units": n, "wall_s": round(time.perf_counter() - t, 2),
                                "timing": uf.timing})
        print(out["unit_fit"][-1], flush=True)
    if a.json:
        write_json(a.json, out)
        print("wrote", a.json)


if __name__ == "__main__":
    main()
