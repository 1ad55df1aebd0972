"""bmiss batch: discovery (folders, globs, EMG-BIDS), a 2-worker Dask run with a corrupt file,
reruns that skip / redo only what changed or failed, and a worker SIGKILLed mid-batch.

Tiny recordings (16 channels x 3 s at 2048 Hz, 4 MUs, tests/synth.py), cbss with 6 iterations.
The workers share one JAX compilation cache (JAX_COMPILATION_CACHE_DIR), so only the first run
compiles.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from bmiss import metrics
from bmiss.batch import discover, entities_of, exit_status, plan_workers, settings_hash
from bmiss.cli import main
from bmiss.io import Recording, load_decomposition, load_recording, recording_fingerprint, save_recording

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synth import synth  # noqa: E402

pytest.importorskip("distributed")
ARGS = ["--method", "cbss", "--setting", "n_iter=6", "--seed", "0", "--workers", "2", "--quiet"]


def _rec(seed):
    emg, _, spikes = synth(dur=3.0, n_mu=4, seed=seed)
    return Recording(emg=emg, fs=2048.0, true_spikes=spikes)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    cache = root / "jax_cache"
    old = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    data = root / "data"
    data.mkdir()
    for i in range(4):
        save_recording(data / f"rec{i}.npz", _rec(i + 1))
    (data / "bad.npz").write_bytes(b"this is not a recording")
    yield root
    if old is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = old


def _status(out, key):
    return json.loads((out / f"{key}_cbss.status.json").read_text())


def _no_partial_files(out):
    left = [p for p in out.rglob("*.tmp")]
    assert not left, left
    for p in out.rglob("*_cbss.npz"):
        st = json.loads(Path(str(p)[:-4] + ".status.json").read_text())
        if st["status"] == "done":  # every decomposition marked done is whole and of its recording
            dec = load_decomposition(p)
            assert dec.meta["recording"] == recording_fingerprint(load_recording(st["path"]))


# ---------------------------------------------------------------- fast: no cluster
def test_discover_folder_glob_and_bids(tmp_path):
    bids = tmp_path / "bids"
    rec = _rec(1)
    for sub, ses, task in (("01", "1", "ramp"), ("01", "2", "ramp"), ("02", "1", "sine")):
        d = bids / f"sub-{sub}" / f"ses-{ses}" / "emg"
        save_recording(d / f"sub-{sub}_ses-{ses}_task-{task}_emg.npz", rec)
        (d / f"sub-{sub}_ses-{ses}_task-{task}_emg.json").write_text("{}")  # sidecar: not a recording
        (d / f"sub-{sub}_ses-{ses}_task-{task}_channels.tsv").write_text("name\n")
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    save_recording(bids / "derivatives" / "sub-01" / "emg" / "sub-01_task-ramp_emg.npz", rec)  # not raw data
    jobs = discover([bids])
    assert [j.key for j in jobs] == ["sub-01/ses-1/emg/sub-01_ses-1_task-ramp_emg",
                                     "sub-01/ses-2/emg/sub-01_ses-2_task-ramp_emg",
                                     "sub-02/ses-1/emg/sub-02_ses-1_task-sine_emg"]
    assert jobs[2].entities == {"subject": "02", "session": "1", "task": "sine"}
    assert entities_of("sub-3_task-x_run-2_emg.edf") == {"subject": "3", "task": "x", "run": "2"}
    # a glob keeps the structure below its fixed part; a plain folder takes every readable file
    g = discover([str(bids / "sub-*" / "ses-1" / "emg" / "*_emg.npz")])
    assert [j.key for j in g] == ["sub-01/ses-1/emg/sub-01_ses-1_task-ramp_emg",
                                  "sub-02/ses-1/emg/sub-02_ses-1_task-sine_emg"]
    plain = tmp_path / "plain"
    save_recording(plain / "a.npz", rec)
    save_recording(plain / "deep" / "b.npz", rec)
    (plain / "notes.txt").write_text("x")
    assert [j.key for j in discover([plain], exclude=plain / "deep")] == ["a"]
    assert [j.key for j in discover([plain])] == ["a", "deep/b"]
    with pytest.raises(FileNotFoundError):
        discover([tmp_path / "nope"])
    save_recording(tmp_path / "other" / "a.npz", rec)
    with pytest.raises(ValueError, match="share the output name"):
        discover([plain / "a.npz", tmp_path / "other" / "a.npz"])


def test_plan_exit_and_hash():
    assert plan_workers(4, cores=2) == (2, 1) and plan_workers(1, workers=2, cores=2) == (1, 2)
    assert plan_workers(1, cores=8) == (1, 8)
    assert plan_workers(20, workers=3, cores=12) == (3, 4)
    assert [exit_status(n) for n in (0, 1, 5, 1000)] == [0, 11, 15, 109]
    assert settings_hash("cbss", {"n_iter": 6, "seed": 0}) == settings_hash("cbss", {"seed": 0, "n_iter": 6})
    assert settings_hash("cbss", {"n_iter": 6}) != settings_hash("cbss", {"n_iter": 7})
    assert settings_hash("cbss", {}) != settings_hash("bmiss", {})


def test_bad_arguments_fail_before_work(tmp_path, capsys):
    save_recording(tmp_path / "d" / "a.npz", _rec(1))
    assert main(["batch", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--method", "cbss",
                 "--setting", "n_itre=3", "--quiet"]) == 2
    assert "did you mean 'n_iter'" in capsys.readouterr().err
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "a_cbss.npz").write_text("someone else's file")
    assert main(["batch", str(tmp_path / "d"), "--out", str(tmp_path / "o2"), "--method", "cbss", "--quiet"]) == 2
    assert "not a bmiss batch folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- cluster runs
def test_batch_run_isolates_a_corrupt_file(study):
    out = study / "out"
    rc = main(["batch", str(study / "data"), "--out", str(out), *ARGS, "--export", "mu-csv"])
    assert rc == exit_status(1) == 11  # one failure, reported in the exit status
    bad = _status(out, "bad")
    assert bad["status"] == "failed" and "bad.npz" in bad["error"] and "npz" in bad["error"]
    assert not (out / "bad_cbss.npz").exists()
    n_units = 0
    for i in range(4):
        st = _status(out, f"rec{i}")
        assert st["status"] == "done" and st["settings_hash"] == settings_hash("cbss", {"n_iter": 6, "seed": 0})
        rec = load_recording(study / "data" / f"rec{i}.npz")
        dec = load_decomposition(out / f"rec{i}_cbss.npz")
        assert st["fingerprint"] == recording_fingerprint(rec) == dec.meta["recording"]
        m = metrics.match_units(dec.spikes, rec.true_spikes, rec.fs)
        assert sum((r["roa"] or 0) >= 0.8 for r in m["per_true"]) >= 2, m  # the batch decomposes for real
        assert (out / f"rec{i}_cbss.png").stat().st_size > 1000 and (out / f"rec{i}_cbss_mu.csv").exists()
        assert st["recording"]["n_units"] == dec.n_units == len(st["units"])
        n_units += dec.n_units
    import csv

    recs = list(csv.DictReader((out / "study_recordings.csv").open()))
    units = list(csv.DictReader((out / "study_units.csv").open()))
    assert [r["key"] for r in recs] == ["bad", "rec0", "rec1", "rec2", "rec3"]
    assert recs[0]["status"] == "failed" and "npz" in recs[0]["error"] and recs[1]["status"] == "done"
    assert len(units) == n_units and all(0 < float(u["sil"]) <= 1 and float(u["rate_hz"]) > 3 for u in units)
    pa = pytest.importorskip("pyarrow.parquet")
    assert pa.read_table(out / "study_units.parquet").num_rows == n_units
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "rec3_cbss.png" in html and "bad.npz" in html
    summary = json.loads((out / "batch.json").read_text())
    assert summary["exit_status"] == 11 and summary["provenance"]["settings"]["method"] == "cbss"
    _no_partial_files(out)


def test_rerun_skips_done_and_redoes_changed_or_failed(study, capsys):
    out, data = study / "out", study / "data"
    if not (out / "batch.json").exists():
        pytest.skip("needs test_batch_run_isolates_a_corrupt_file's output (run the module)")
    before = {i: (out / f"rec{i}_cbss.npz").stat().st_mtime_ns for i in range(4)}
    save_recording(data / "bad.npz", _rec(9))  # the failed one is fixed
    save_recording(data / "rec3.npz", _rec(10))  # another one's EMG changes
    os.utime(data / "rec2.npz")  # touched, same content: checked by fingerprint, not redone
    capsys.readouterr()
    assert main(["batch", str(data), "--out", str(out), *ARGS[:-3], "--workers", "1", "--quiet"]) == 0
    s = json.loads((out / "batch.json").read_text())
    assert sorted(s["ran"]) == ["bad", "rec2", "rec3"] and sorted(s["skipped"]) == ["rec0", "rec1"]
    after = {i: (out / f"rec{i}_cbss.npz").stat().st_mtime_ns for i in range(4)}
    assert after[0] == before[0] and after[1] == before[1] and after[2] == before[2]
    assert after[3] != before[3] and _status(out, "rec2")["mode"] == "check"
    assert _status(out, "rec3")["fingerprint"] == recording_fingerprint(load_recording(data / "rec3.npz"))
    assert _status(out, "bad")["status"] == "done"
    # nothing left to do: no cluster starts; other settings are refused without --force
    assert main(["batch", str(data), "--out", str(out), *ARGS]) == 0
    assert json.loads((out / "batch.json").read_text())["ran"] == []  # no task, no cluster
    capsys.readouterr()
    assert main(["batch", str(data), "--out", str(out), *ARGS[:2], "--setting", "n_iter=7", "--quiet"]) == 2
    assert "--force" in capsys.readouterr().err
    _no_partial_files(out)


def test_killed_worker_on_a_bids_dataset(study):
    bids = study / "bids"
    for i, (sub, task) in enumerate((("01", "a"), ("01", "b"), ("02", "a"), ("02", "b"))):
        d = bids / f"sub-{sub}" / "ses-1" / "emg"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(study / "data" / f"rec{i}.npz", d / f"sub-{sub}_ses-1_task-{task}_emg.npz")
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    out = study / "out_kill"
    rc = []
    run = threading.Thread(target=lambda: rc.append(main(["batch", str(bids), "--out", str(out), *ARGS,
                                                          "--retries", "0", "--no-figures"])), daemon=True)
    run.start()
    killed = None
    t0 = time.time()
    try:
        while killed is None and run.is_alive() and time.time() - t0 < 240:
            for p in out.rglob("*.status.json") if out.exists() else ():
                try:
                    st = json.loads(p.read_text())
                except (OSError, ValueError):
                    continue
                if st["status"] == "running":
                    os.kill(st["pid"], signal.SIGKILL)  # the worker process decomposing this recording
                    killed = st["key"]
                    break
            time.sleep(0.02)
    finally:
        run.join(timeout=300)
    assert killed is not None and rc, "no worker was seen decomposing"
    statuses = {p.name: json.loads(p.read_text()) for p in out.rglob("*.status.json")}
    assert len(statuses) == 4 and all(s["status"] in ("done", "failed") for s in statuses.values())
    failed = sorted(s["key"] for s in statuses.values() if s["status"] == "failed")
    assert killed in failed and rc[0] == exit_status(len(failed))
    assert all(s["error_type"] == "KilledWorker" for s in statuses.values() if s["status"] == "failed")
    for p in out.rglob("*_cbss.npz"):  # none half-written: every decomposition file there is whole
        load_decomposition(p)
    # the rerun completes only the missing ones
    assert main(["batch", str(bids), "--out", str(out), *ARGS, "--no-figures"]) == 0
    s = json.loads((out / "batch.json").read_text())
    assert sorted(s["ran"]) == failed and len(s["skipped"]) == 4 - len(failed)
    _no_partial_files(out)
    import csv

    recs = list(csv.DictReader((out / "study_recordings.csv").open()))
    assert [(r["subject"], r["session"], r["task"]) for r in recs] == [("01", "1", "a"), ("01", "1", "b"),
                                                                       ("02", "1", "a"), ("02", "1", "b")]
