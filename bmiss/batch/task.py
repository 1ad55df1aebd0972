"""The work of one recording in a batch (runs in a Dask worker process).

:func:`run_one` reads the recording, decomposes it, writes the decomposition, the exports and the
figure (each atomically) and finally its status file, which is what marks it done. Every error is
caught and written as a ``failed`` status (one line; a traceback too when it is not a user error),
so one bad recording never stops the batch. The status is written as ``running`` first, so a run
killed mid-way leaves no status that reads ``done``.
"""
from __future__ import annotations

import os
import socket
import time
import traceback

_PINNED = [False]


def _setup_worker(jax_cache: str | None = None) -> None:
    """Once per worker process: JAX's persistent compilation cache (shared by the workers), and,
    with several threads per worker on a local cluster, this worker on its own cores (XLA sizes
    its thread pool from the affinity mask). Runs before the worker's first JAX computation."""
    if _PINNED[0]:
        return
    _PINNED[0] = True
    if jax_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", str(jax_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    t = int(os.environ.get("BMISS_BATCH_THREADS", "0") or 0)
    if t <= 1 or not hasattr(os, "sched_setaffinity"):
        return
    try:
        from distributed import get_worker

        idx = int(get_worker().name)
        cores = sorted(os.sched_getaffinity(0))
        mine = cores[idx * t:(idx + 1) * t]
        if len(mine) == t:
            os.sched_setaffinity(0, mine)
    except Exception:  # noqa: BLE001 - a worker that is not a LocalCluster's (name not an index)
        pass


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _finite(x):
    import math

    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def summarize(dec, rec) -> tuple[dict, list[dict]]:
    """(recording row, unit rows) of a decomposition: quality (SIL, PNR, CoV of ISI) and discharge
    rates per unit (:mod:`bmiss.quality`, :mod:`bmiss.recruitment`), MU properties when the method
    estimated them (``dec.params``)."""
    import numpy as np

    from .. import api, recruitment

    q = api._unit_quality(dec)  # the stored SIL/PNR/CoV, recomputed only where missing
    props = recruitment.decomposition_properties(dec, rec)
    units = []
    for i in range(dec.n_units):
        u = {"unit": i, "n_spikes": q[i]["n_spikes"], "rate_hz": q[i]["rate_hz"], "sil": q[i]["sil"],
             "pnr_db": q[i]["pnr_db"], "cov_isi": q[i]["cov_isi"]}
        for k, v in props["mu_properties"][i].items():
            if k not in ("unit", "n_discharges"):
                u[k] = v
        if dec.params is not None:
            for j, n in enumerate(dec.param_names or ()):
                u[n] = float(dec.params[i, j])
        units.append({k: (_finite(v) if isinstance(v, (float, np.floating)) else v) for k, v in u.items()})

    def med(k):
        v = np.asarray([u[k] for u in units if u.get(k) is not None], np.float64)
        return float(np.median(v)) if len(v) else None

    sil = [u["sil"] for u in units if u.get("sil") is not None]
    row = {"n_units": dec.n_units, "sil_median": med("sil"), "sil_min": min(sil) if sil else None,
           "pnr_median_db": med("pnr_db"), "cov_isi_median": med("cov_isi"), "rate_median_hz": med("rate_hz"),
           "n_channels": int(rec.n_channels), "fs_hz": float(rec.fs), "duration_s": float(rec.duration_s),
           "ref_unit": props["ref_unit"]}
    return row, units


def run_one(spec: dict) -> dict:
    """Decompose one recording of a batch; returns (and writes) its status dict. Never raises for
    a bad recording: the error is in ``status["error"]``."""
    _setup_worker(spec.get("jax_cache"))
    from ..files import write_json

    paths = spec["paths"]
    t0 = time.perf_counter()
    st = {"status": "running", "key": spec["key"], "path": spec["path"], "entities": spec["entities"],
          "method": spec["method"], "settings": spec["settings"], "settings_hash": spec["settings_hash"],
          "host": socket.gethostname(), "pid": os.getpid(), "started_utc": _now(), "recording": {}, "units": []}
    prev = None
    if spec["mode"] in ("check", "outputs"):
        from . import _read_status
        from pathlib import Path

        prev = _read_status(Path(paths["status"]))
    try:
        write_json(paths["status"], st)
        from pathlib import Path

        from .. import api, io
        from . import _stat

        src = Path(spec["path"])
        stat = _stat(src)
        rec = io.load_recording(src)
        fp = io.recording_fingerprint(rec)
        t_load = time.perf_counter() - t0
        times = {"load_s": round(t_load, 3)}
        mode = spec["mode"]
        if mode == "check" and (prev or {}).get("fingerprint") != fp:
            mode = "run"  # the EMG changed: decompose again
        if mode in ("check", "outputs"):
            dec = io.load_decomposition(paths["decomposition"])
            api.check_pair(dec, rec, dec_name=paths["decomposition"], rec_name=str(src))
            times["decompose_s"] = (prev or {}).get("times", {}).get("decompose_s")
        else:
            t1 = time.perf_counter()
            dec = api.decompose(rec, spec["method"], progress=False, **spec["settings"])
            times["decompose_s"] = round(time.perf_counter() - t1, 3)
            dec.meta["batch"] = {"settings_hash": spec["settings_hash"], "source": str(src),
                                 "entities": spec["entities"]}
            io.save_decomposition(paths["decomposition"], dec, force=True)
        t2 = time.perf_counter()
        for fmt in spec["exports"]:
            p = paths["export:" + fmt]
            if mode == "run" or not Path(p).exists():
                api.export(dec, p, fmt, rec=rec, force=True)
        if spec["figures"] and (mode == "run" or not Path(paths["figure"]).exists()):
            from .. import figures, recruitment

            ref, _ = recruitment.reference_signal(rec)
            figures.raster(dec.spikes, dec.fs, excitation=ref, path=paths["figure"], n_samples=rec.n_samples,
                           rates=True, title=f"{spec['key']}: {dec.n_units} MUs ({spec['method']})")
        times["outputs_s"] = round(time.perf_counter() - t2, 3)
        row, units = summarize(dec, rec)
        times["total_s"] = round(time.perf_counter() - t0, 3)
        st.update(status="done", fingerprint=fp, source_stat=stat, times=times, recording=row, units=units,
                  finished_utc=_now(), redone_from=spec["mode"] if mode != spec["mode"] else None, mode=mode)
        if mode != "run" and prev is not None:
            st["times"]["decompose_s"] = prev.get("times", {}).get("decompose_s")
    except Exception as e:  # noqa: BLE001 - one bad recording never stops the batch
        from ..errors import BmissError

        user = isinstance(e, (BmissError, OSError))
        msg = " ".join(str(e).split()) or type(e).__name__
        if isinstance(e, OSError) and e.filename and e.strerror:
            msg = f"{e.filename}: {e.strerror}"
        st.update(status="failed", error=msg, error_type=type(e).__name__, finished_utc=_now(),
                  times={"total_s": round(time.perf_counter() - t0, 3)})
        if not user:
            st["traceback"] = traceback.format_exc(limit=8)
    write_json(paths["status"], st)
    return st
