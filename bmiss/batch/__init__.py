"""Batch runs: decompose a whole study (files, folders, globs, an EMG-BIDS dataset) on Dask.

:func:`batch` (the CLI's ``bmiss batch``) sends every recording through
:func:`bmiss.api.decompose` as one Dask task, on a ``distributed.LocalCluster`` started for the
run (worker processes x threads chosen so JAX/XLA and BLAS do not oversubscribe the cores) or on
any running Dask scheduler (``scheduler="tcp://host:8786"``; the output folder must then be on a
file system the workers share).

Resumable and safe (see :func:`batch` for the rules): every output is written atomically, and a
recording's status file ``<key>_<method>.status.json`` is written last; it records the
recording's fingerprint (:func:`bmiss.io.recording_fingerprint`) and a hash of the settings, so a
rerun skips what is done and redoes what changed or failed. A bad file is reported in the study
table and the rest go on.

Outputs in ``out`` (``key`` = the recording's path relative to its input folder, suffix dropped;
for EMG-BIDS ``sub-01/ses-1/emg/sub-01_ses-1_task-x_emg``):

* ``<key>_<method>.npz``          the decomposition (:func:`bmiss.io.save_decomposition`)
* ``<key>_<method>.png``          raster + discharge rates (:func:`bmiss.figures.raster`)
* ``<key>_<method><export>``      optional exports (:data:`EXPORT_SUFFIX`)
* ``<key>_<method>.status.json``  status, fingerprint, settings hash, times, summary rows
* ``study_recordings.csv|.parquet``, ``study_units.csv|.parquet``  the study tables
* ``report.html`` (+ ``report_distributions.png``)  the offline study report
* ``batch.json``                  the run's summary and provenance

This module imports only the standard library at import time (``bmiss --help`` stays fast).
"""
from __future__ import annotations

import glob as _glob
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

__all__ = ["batch", "discover", "Job", "BatchResult", "settings_hash", "exit_status", "EXPORT_SUFFIX",
           "BIDS_ENTITIES"]

#: file name ending of each export format (``bmiss export --format``), after ``<key>_<method>``
EXPORT_SUFFIX = {"csv": "_units.csv", "json": "_units.json", "tsv": "_events.tsv",
                 "openhdemg": "_openhdemg.json.gz", "mu-csv": "_mu.csv", "mu-json": "_mu.json",
                 "drive-csv": "_drive.csv", "drive-json": "_drive.json"}
#: BIDS entities read from file names (``sub-01_ses-2_task-ramp_run-1_emg.edf``)
BIDS_ENTITIES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition", "run": "run",
                 "recording": "recording"}
_ENTITY_RE = re.compile(r"(?:^|_)(sub|ses|task|acq|run|recording)-([A-Za-z0-9]+)")
#: API-level keywords of bmiss.api.decompose that are not fields of the pipeline's settings
_API_KEYS = ("anatomy", "init", "electrode", "orientation", "grid", "ied_mm", "missing")
STATUS_SUFFIX = ".status.json"
MAX_EXIT_FAILED = 99


# ---------------------------------------------------------------- discovery
@dataclass
class Job:
    """One recording of a batch: where it is, its output key and its BIDS entities."""

    path: Path
    key: str  # output stem relative to ``out`` (posix separators, no suffix)
    entities: dict = field(default_factory=dict)


def _reader_suffixes() -> list[str]:
    from .. import io

    return sorted(io.READERS, key=len, reverse=True)


def _strip_suffix(name: str, suffixes) -> tuple[str, str] | None:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[:-len(s)], s
    return None


def entities_of(path: str | Path) -> dict:
    """BIDS entities of a file name: ``sub-01_ses-1_task-x_emg.edf`` -> ``{"subject": "01", ...}``.

    Examples
    --------
    >>> entities_of("sub-01/ses-1/emg/sub-01_ses-1_task-ramp_run-2_emg.edf")
    {'subject': '01', 'session': '1', 'task': 'ramp', 'run': '2'}
    """
    out = {}
    for k, v in _ENTITY_RE.findall(Path(path).name):
        out.setdefault(BIDS_ENTITIES[k], v)
    return out


def _is_bids(folder: Path) -> bool:
    return (folder / "dataset_description.json").is_file() or any(
        p.is_dir() for p in folder.glob("sub-*"))


def _skip_path(p: Path, root: Path, exclude: Path | None) -> bool:
    rel = p.relative_to(root).parts
    if any(part.startswith(".") for part in rel):
        return True
    if exclude is not None:
        try:
            p.resolve().relative_to(exclude)
            return True
        except ValueError:
            pass
    return False


def _folder_jobs(folder: Path, suffixes, exclude: Path | None) -> list[tuple[Path, Path]]:
    if _is_bids(folder):
        # EMG-BIDS: sub-<label>[/ses-<label>]/emg/sub-<label>[_ses-..]_task-<label>[...]_emg.<ext>;
        # .json/.tsv beside them are sidecars, derivatives/ and sourcedata/ are not raw data
        side = (".json", ".json.gz", ".tsv")
        found = []
        for p in sorted(folder.rglob("sub-*_emg.*")):
            rel = p.relative_to(folder).parts
            if (not p.is_file() or rel[0] in ("derivatives", "sourcedata") or len(rel) < 2 or rel[-2] != "emg"
                    or _skip_path(p, folder, exclude)):
                continue
            m = _strip_suffix(p.name, suffixes)
            if m and m[1] not in side:
                found.append((p, folder))
        return found
    return [(p, folder) for p in sorted(folder.rglob("*"))
            if p.is_file() and _strip_suffix(p.name, suffixes) and not _skip_path(p, folder, exclude)]


def discover(inputs, *, exclude: str | Path | None = None) -> list[Job]:
    """The recordings named by ``inputs``: files, folders (searched recursively), globs, EMG-BIDS datasets.

    A folder with ``dataset_description.json`` or ``sub-*`` folders is read as EMG-BIDS: only
    ``sub-*/[ses-*/]emg/*_emg.<ext>`` files are recordings (sidecars, ``derivatives/`` and
    ``sourcedata/`` are skipped), with any suffix :func:`bmiss.io.load_recording` reads. Other
    folders give every file with such a suffix (hidden files and ``exclude`` skipped). A file is
    taken as given, even with a suffix bmiss cannot read (its task then fails with a clear error).

    Returns one :class:`Job` per recording, in a stable order; its ``key`` is the path relative to
    the input folder (or the glob's fixed part, or the file's folder), without the suffix.
    Raises :class:`UserError` for an input that matches nothing or two recordings with one key.

    Examples
    --------
    >>> jobs = discover(["study_bids/"])  # doctest: +SKIP
    >>> jobs[0].key, jobs[0].entities  # doctest: +SKIP
    ('sub-01/ses-1/emg/sub-01_ses-1_task-ramp_emg', {'subject': '01', 'session': '1', 'task': 'ramp'})
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    suffixes = _reader_suffixes()
    ex = Path(exclude).resolve() if exclude is not None else None
    pairs: list[tuple[Path, Path]] = []
    for spec in inputs:
        spec = str(spec)
        p = Path(spec)
        if p.is_dir():
            got = _folder_jobs(p, suffixes, ex)
            if not got:
                raise UserError(f"folder {spec} holds no recording bmiss reads ({', '.join(sorted(suffixes))})")
        elif p.is_file():
            got = [(p, p.parent)]
        elif _glob.has_magic(spec):
            parts = Path(spec).parts
            fixed = next(i for i, part in enumerate(parts) if _glob.has_magic(part))
            base = Path(*parts[:fixed]) if fixed else Path(".")  # keys keep the structure below it
            got = []
            for m in sorted(_glob.glob(spec, recursive=True)):
                mp = Path(m)
                if mp.is_dir():
                    got += _folder_jobs(mp, suffixes, ex)
                elif mp.is_file():
                    got.append((mp, base))
            if not got:
                raise UserError(f"{spec} matches no recording")
        else:
            raise FileNotFoundError(f"{spec}: no such file or folder")
        pairs += got
    jobs: dict[str, Job] = {}
    seen: set[Path] = set()
    for path, root in pairs:
        rp = path.resolve()
        if rp in seen:
            continue
        seen.add(rp)
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        stem = _strip_suffix(rel, suffixes)
        key = stem[0] if stem else (rel.rsplit(".", 1)[0] if "." in Path(rel).name else rel)
        if key in jobs:
            raise UserError(f"two recordings would share the output name {key!r}: {jobs[key].path} and {path}; "
                            "pass their common folder instead, or rename one")
        jobs[key] = Job(path=path, key=key, entities=entities_of(path))
    return list(jobs.values())


# ---------------------------------------------------------------- settings and status
def settings_hash(method: str, settings: dict) -> str:
    """Short hash of what decides a decomposition: the method and its settings (canonical JSON).

    Examples
    --------
    >>> settings_hash("cbss", {"n_iter": 6}) == settings_hash("cbss", {"n_iter": 6})
    True
    """
    text = json.dumps({"method": method, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _paths(out: Path, key: str, method: str, exports=()) -> dict:
    base = out / f"{key}_{method}"
    d = {"decomposition": Path(str(base) + ".npz"), "status": Path(str(base) + STATUS_SUFFIX),
         "figure": Path(str(base) + ".png")}
    for fmt in exports:
        d["export:" + fmt] = Path(str(base) + EXPORT_SUFFIX[fmt])
    return d


def _read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def exit_status(n_failed: int) -> int:
    """The CLI's exit status: 0 when every recording is done, else ``10 + n_failed`` (at most 109).

    Examples
    --------
    >>> exit_status(0), exit_status(3), exit_status(500)
    (0, 13, 109)
    """
    return 0 if n_failed <= 0 else 10 + min(int(n_failed), MAX_EXIT_FAILED)


@dataclass
class BatchResult:
    """What a batch did. ``status[key]`` is each recording's status dict (``"status"``: ``"done"``
    or ``"failed"``, ``"error"``, ``"recording"`` row, ``"units"`` rows); ``ran`` the keys decomposed
    (or re-exported) in this run, ``skipped`` those already done; ``files`` the study outputs."""

    out: Path
    status: dict
    ran: list
    skipped: list
    files: dict
    wall_s: float
    dashboard: str | None = None

    @property
    def failed(self) -> list:
        return [k for k, s in self.status.items() if s.get("status") != "done"]

    @property
    def done(self) -> list:
        return [k for k, s in self.status.items() if s.get("status") == "done"]

    @property
    def exit_status(self) -> int:
        return exit_status(len(self.failed))


# ---------------------------------------------------------------- cluster
def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def plan_workers(n_jobs: int, workers: int | None = None, threads: int | None = None,
                 cores: int | None = None) -> tuple[int, int]:
    """``(worker processes, threads per worker)`` for a local cluster: workers x threads <= cores.

    Default: one single-threaded worker per core (a small recording keeps one core busy, and
    independent recordings scale better than threads inside one); with ``workers`` given, the
    cores are shared out among them. Never more workers than recordings.

    Examples
    --------
    >>> plan_workers(20, cores=16), plan_workers(3, cores=16), plan_workers(10, workers=4, cores=16)
    ((16, 1), (3, 5), (4, 4))
    """
    cores = cores or _cores()
    workers = max(1, min(cores if workers is None else workers, n_jobs))
    if threads is None:
        threads = max(1, cores // workers)
    return int(workers), int(threads)


def worker_env(threads: int, jax_cache: str | None = None) -> dict:
    """Environment of a worker process that may use ``threads`` cores: BLAS/OpenMP pools of that
    size and, for one thread, XLA's CPU client without its Eigen thread pool; ``jax_cache``: a
    folder for JAX's persistent compilation cache shared by the workers (a restarted worker, a
    rerun and recordings of one shape then compile once)."""
    env = {k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")}
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        extra = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = (flags + " " + extra).strip() if "multi_thread_eigen" not in flags else flags
    env["BMISS_BATCH_THREADS"] = str(threads)
    if jax_cache:
        env["BMISS_BATCH_JAX_CACHE"] = str(jax_cache)
    return env


def _start_cluster(n_workers: int, threads: int, retries: int, quiet: bool, jax_cache: str | None):
    import dask
    from distributed import Client, LocalCluster

    env = worker_env(threads, jax_cache)
    pre = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    pre.update({k: v for k, v in env.items() if k.endswith("_THREADS")})  # before numpy loads in the worker
    saved = {k: os.environ.get(k) for k in pre}  # Dask sets them in this process to spawn: put them back
    with dask.config.set({"distributed.nanny.pre-spawn-environ": pre,
                          "distributed.scheduler.allowed-failures": int(retries),
                          "distributed.worker.daemon": False,
                          "distributed.admin.system-monitor.gil.enabled": False}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, env=env,
                               dashboard_address=":0", silence_logs=50 if quiet else 40)
        client = Client(cluster)
    _restore_env(saved)
    cluster._bmiss_saved_env = saved  # a restarted worker sets them again: put back at the end too
    return cluster, client


def _restore_env(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---------------------------------------------------------------- the run
def _validate_settings(method: str, settings: dict) -> None:
    from .. import api
    from ..pipeline import settings as S

    if method not in api.METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(api.METHODS)}")
    skip = _API_KEYS if method == "bmiss" else _API_KEYS + ("forward",)
    S.resolve(method, **{k: v for k, v in settings.items() if k not in skip})


def batch(inputs, out, *, method: str = "bmiss", settings: dict | None = None, exports=(), figures: bool = True,
          workers: int | None = None, threads: int | None = None, scheduler: str | None = None,
          retries: int = 1, force: bool = False, report: bool = True, progress: bool = True,
          jax_cache: str | Path | None = "auto", log=None) -> BatchResult:
    """Decompose every recording of ``inputs`` into ``out``, as Dask tasks; resumable.

    Parameters
    ----------
    inputs : file, folder, glob or EMG-BIDS dataset, or a list of them (see :func:`discover`).
    out : output folder (created; see the module docstring for its files).
    method : "bmiss", "cbss" or "oracle" (:func:`bmiss.api.decompose`).
    settings : keywords for :func:`bmiss.api.decompose` (e.g. ``{"n_iter": 20, "seed": 0}``);
        part of the settings hash.
    exports : formats of :func:`bmiss.api.export` to write per recording (``"csv"``, ``"mu-csv"``, ...).
    figures : write each recording's raster/rate figure (shown in the report).
    workers, threads : local cluster size; default one single-threaded worker per core
        (:func:`plan_workers`). Ignored with ``scheduler``.
    scheduler : address of a running Dask scheduler (``tcp://host:8786``; ``dask-jobqueue``'s
        ``SLURMCluster().scheduler_address``); ``out`` must be on a file system its workers share.
    retries : times a recording is retried when its worker process dies (SIGKILL, out of memory)
        before it is reported failed (local cluster only; a remote scheduler keeps its own
        ``distributed.scheduler.allowed-failures``).
    jax_cache : folder of JAX's persistent compilation cache for the workers; ``"auto"`` (default):
        ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``out/.jax_cache``; ``None``: no cache.
    force : redo recordings that are done with OTHER settings (otherwise refused), and overwrite
        files at output names in a folder that is not a batch folder.
    report : write the study tables (CSV; Parquet with pyarrow) and ``report.html``.
    progress : one tqdm bar (stderr) for the whole batch.
    log : callable for one-line messages (default: print to stderr unless ``progress`` is False).

    Rules of a rerun: a recording whose status is ``done`` with the same settings hash, whose file
    is unchanged (size and mtime, else its fingerprint is recomputed) and whose outputs all exist
    is skipped; a ``failed`` one, or one left ``running`` by a killed run, is redone; one whose EMG
    changed is redone; missing exports or figures are written from the stored decomposition.

    Returns
    -------
    :class:`BatchResult`; ``result.exit_status`` is 0 when all are done, else 10 + number failed
    (at most 109).

    Examples
    --------
    >>> res = batch("study_bids/", "derivatives/bmiss", method="cbss", settings={"n_iter": 30})  # doctest: +SKIP
    >>> res.done, res.failed  # doctest: +SKIP
    """
    t_start = time.perf_counter()
    out = Path(out)
    settings = dict(settings or {})
    exports = tuple(exports or ())
    bad = [e for e in exports if e not in EXPORT_SUFFIX]
    if bad:
        from ..errors import did_you_mean

        raise UserError(f"unknown export format {bad[0]!r}{did_you_mean(bad[0], EXPORT_SUFFIX)}; "
                        f"choose from {', '.join(EXPORT_SUFFIX)}")
    if workers is not None and workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    if retries < 0:
        raise UserError(f"retries must be >= 0, got {retries}")
    if log is None:
        log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if progress else (lambda msg: None)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder")
    _validate_settings(method, settings)
    jobs = discover(inputs, exclude=out)
    shash = settings_hash(method, settings)
    is_batch_dir = (out / "batch.json").is_file()

    # -- plan: skip / check / run, before any work (refusals come first)
    plan: dict[str, str] = {}
    statuses: dict[str, dict] = {}
    other_settings, foreign = [], []
    for j in jobs:
        p = _paths(out, j.key, method, exports)
        st = _read_status(p["status"])
        if st is None:
            if not is_batch_dir and not force:
                foreign += [q for q in p.values() if q.exists()]
            plan[j.key] = "run"
            continue
        if st.get("status") == "done" and st.get("settings_hash") != shash and not force:
            other_settings.append((j.key, st.get("settings", {})))
        if st.get("status") != "done" or st.get("settings_hash") != shash or not p["decomposition"].exists():
            plan[j.key] = "run"
        elif st.get("source_stat") != _stat(j.path):
            plan[j.key] = "check"  # touched or replaced: compare fingerprints in the task
        elif any(not q.exists() for k, q in p.items() if k.startswith("export:")) or \
                (figures and not p["figure"].exists()):
            plan[j.key] = "outputs"
        else:
            plan[j.key] = "skip"
            statuses[j.key] = st
    if foreign:
        raise FileExistsError(f"{foreign[0]} exists and {out} is not a bmiss batch folder (no batch.json); pass "
                              f"--force to overwrite {len(foreign)} such file(s), or choose another --out")
    if other_settings:
        k, old = other_settings[0]
        diff = sorted(set(old) ^ set(settings) | {n for n in set(old) & set(settings) if old[n] != settings[n]})
        raise UserError(f"{len(other_settings)} recording(s) in {out} are done with other settings "
                        f"(e.g. {k}: differs in {', '.join(diff) or 'the method version'}); pass --force to redo them "
                        "with these settings, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from ..files import write_json

    if not is_batch_dir:  # mark the folder as a batch's at once: an interrupted first run resumes without --force
        write_json(out / "batch.json", {"state": "started", "method": method, "settings_hash": shash})
    todo = [j for j in jobs if plan[j.key] != "skip"]
    skipped = [j.key for j in jobs if plan[j.key] == "skip"]
    log(f"bmiss batch: {len(jobs)} recording(s): {len(skipped)} already done, {len(todo)} to do "
        f"(method {method}, settings {shash})")

    dashboard = None
    ran: list[str] = []
    if todo:
        from .task import run_one

        specs = [{"path": str(j.path.resolve()), "key": j.key, "entities": j.entities, "mode": plan[j.key],
                  "method": method, "settings": settings, "settings_hash": shash, "exports": list(exports),
                  "figures": bool(figures), "out": str(out.resolve()),
                  "paths": {k: str(v.resolve()) for k, v in _paths(out, j.key, method, exports).items()}}
                 for j in todo]
        if jax_cache == "auto":
            jax_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str((out / ".jax_cache").resolve())
        for s in specs:
            s["jax_cache"] = str(jax_cache) if jax_cache else None
        statuses.update(_run_on_dask(specs, workers=workers, threads=threads, scheduler=scheduler, retries=retries,
                                     progress=progress, n_skipped=len(skipped), log=log, run_one=run_one,
                                     jax_cache=jax_cache))
        ran = [j.key for j in todo]
        dashboard = _LAST_DASHBOARD[0]
    # keep the order of discovery
    statuses = {j.key: statuses[j.key] for j in jobs if j.key in statuses}
    files = {}
    if report:
        from .report import write_study

        files = write_study(out, jobs, statuses, method=method, settings=settings, figures=figures)
    res = BatchResult(out=out, status=statuses, ran=ran, skipped=skipped, files=files,
                      wall_s=time.perf_counter() - t_start, dashboard=dashboard)
    from ..files import provenance

    write_json(out / "batch.json", {
        "provenance": provenance(method=method, settings=settings, settings_hash=shash, exports=list(exports)),
        "inputs": [str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)],
        "n_recordings": len(jobs), "done": res.done, "failed": {k: statuses[k].get("error") for k in res.failed},
        "ran": ran, "skipped": skipped, "wall_s": round(res.wall_s, 3), "files": {k: str(v) for k, v in files.items()},
        "exit_status": res.exit_status})
    return res


_LAST_DASHBOARD: list = [None]


def _failed_status(spec: dict, error: str, kind: str) -> dict:
    from ..files import write_json

    st = {"status": "failed", "key": spec["key"], "path": spec["path"], "entities": spec["entities"],
          "method": spec["method"], "settings": spec["settings"], "settings_hash": spec["settings_hash"],
          "error": error, "error_type": kind, "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "recording": {}, "units": []}
    write_json(spec["paths"]["status"], st)
    return st


def _run_on_dask(specs, *, workers, threads, scheduler, retries, progress, n_skipped, log, run_one, jax_cache):
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UserError("bmiss batch runs on Dask: pip install 'bmiss[batch]' (or 'dask[distributed]')") from None
    from tqdm.auto import tqdm

    cluster = None
    _LAST_DASHBOARD[0] = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as e:
            raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        log(f"bmiss batch: scheduler {scheduler}, {len(client.scheduler_info().get('workers', {}))} worker(s)")
    else:
        n_w, n_t = plan_workers(len(specs), workers, threads)
        cluster, client = _start_cluster(n_w, n_t, retries, quiet=not progress, jax_cache=jax_cache)
        log(f"bmiss batch: local cluster, {n_w} worker process(es) x {n_t} core(s) each")
    try:
        _LAST_DASHBOARD[0] = client.dashboard_link
    except Exception:  # noqa: BLE001 - the dashboard needs bokeh; the batch does not
        _LAST_DASHBOARD[0] = None
    if _LAST_DASHBOARD[0]:
        import importlib.util

        note = "" if importlib.util.find_spec("bokeh") else " (pip install bokeh to see it)"
        log(f"bmiss batch: Dask dashboard at {_LAST_DASHBOARD[0]}{note}")
    results: dict[str, dict] = {}
    total = len(specs) + n_skipped
    bar = tqdm(total=total, initial=n_skipped, desc="bmiss batch", unit="rec", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    n_done, n_failed = n_skipped, 0
    futures = {}
    try:
        for s in specs:
            # pure=False: a retried batch must run again, never reuse a cached result
            futures[client.submit(run_one, s, key=f"bmiss-{s['settings_hash']}-{s['key']}", pure=False,
                                  retries=0)] = s
        for fut in as_completed(list(futures)):
            s = futures[fut]
            try:
                st = fut.result()
            except Exception as e:  # noqa: BLE001 - a dead worker (KilledWorker) or a lost task
                name = type(e).__name__
                msg = (f"the worker process died while decomposing this recording ({name}: {e}); "
                       "it may need more memory than a worker has") if name == "KilledWorker" else f"{name}: {e}"
                st = _failed_status(s, " ".join(msg.split()), name)
            results[s["key"]] = st
            if st.get("status") == "done":
                n_done += 1
            else:
                n_failed += 1
                bar.write(f"failed: {s['key']}: {st.get('error')}", file=sys.stderr) if progress else None
            bar.set_postfix(done=n_done, failed=n_failed, remaining=total - n_done - n_failed, refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        for f in futures:
            f.cancel()
        raise
    finally:
        bar.close()
        try:
            client.close(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        if cluster is not None:
            try:
                cluster.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
            _restore_env(getattr(cluster, "_bmiss_saved_env", {}))
    return results
