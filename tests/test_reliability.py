"""Issue 17, the API's and the command line's promises (no JAX work except one tiny simulation):
the API writers refuse output == input even with force and never overwrite by default; API errors
name the argument; output names bmiss cannot read back are refused before any work; one geometry
rule for simulate; messages that say what is true (ranges, options, files written)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bmiss
from bmiss import api, cli
from bmiss import io as bio
from bmiss.cli import main
from bmiss.errors import BmissError, UserError

FS = 2048.0
ROOT = Path(__file__).resolve().parents[1]


def _rec(seed=0, n_ch=4, n=4096):
    rng = np.random.default_rng(seed)
    spikes = [np.sort(rng.choice(np.arange(50, n - 50), 20, replace=False)), np.array([100, 900, 2000])]
    return bio.Recording(emg=rng.normal(0, 5, (n_ch, n)), fs=FS, grid_shape=(2, 2), ied_mm=8.0, true_spikes=spikes,
                         true_muaps=rng.normal(size=(2, n_ch, 16)).astype(np.float32), meta={"seed": seed})


def _dec(rec):
    d = bio.Decomposition(spikes=[rec.true_spikes[0] + 1, rec.true_spikes[1]],
                          sources=np.zeros((2, rec.n_samples), np.float32), fs=rec.fs, method="toy",
                          sil=np.array([0.9, 0.8]), pnr_db=np.array([30.0, 25.0]), cov_isi=np.array([0.1, 0.2]))
    d.meta["recording"] = bio.recording_fingerprint(rec)
    return d


@pytest.fixture()
def files(tmp_path):
    rec = _rec()
    bio.save_recording(tmp_path / "rec.npz", rec)
    bio.save_decomposition(tmp_path / "dec.npz", _dec(rec))
    return tmp_path, rec


# ------------------------------------------------------------------ the API keeps the CLI's output rules
def test_export_never_replaces_an_input_even_with_force(files):
    d, rec = files
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(BmissError, match="also an input|not an .npz"):
        bmiss.export(str(d / "dec.npz"), str(d / "dec.npz"), "csv", force=True)
    with pytest.raises(BmissError, match="also an input|not an .npz"):
        bmiss.export(_dec(rec), d / "rec.npz", "openhdemg", rec=str(d / "rec.npz"), force=True)
    with pytest.raises(BmissError, match="not an .npz"):  # in memory: the file it was read from is still safe
        bmiss.export(bmiss.load_decomposition(d / "dec.npz"), d / "dec.npz", "json", force=True)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_save_decomposition_does_not_overwrite_by_default_nor_its_recording_ever(files):
    d, rec = files
    dec = _dec(rec)
    before = (d / "rec.npz").read_bytes()
    with pytest.raises(FileExistsError, match="force=True"):
        bmiss.save_decomposition(d / "rec.npz", dec)
    with pytest.raises(UserError, match="holds the recording this decomposition was made from"):
        bmiss.save_decomposition(d / "rec.npz", dec, force=True)
    assert (d / "rec.npz").read_bytes() == before
    with pytest.raises(FileExistsError):
        bmiss.save_recording(d / "rec.npz", rec)
    bmiss.save_decomposition(d / "dec.npz", dec, force=True)  # its own earlier output: fine with force
    for bad in ("a37", "a38.txt", "newdir/"):
        with pytest.raises(UserError, match="path"):
            bmiss.save_decomposition(str(d / bad), dec)
        with pytest.raises(UserError, match="path"):
            bmiss.save_recording(str(d / bad), rec)
    assert not (d / "a37").exists() and not (d / "a38.txt").exists() and not (d / "newdir").exists()


def test_api_writers_default_to_no_overwrite():
    import inspect

    for f in (bmiss.export, bmiss.save_decomposition, bmiss.save_recording):
        assert inspect.signature(f).parameters["force"].default is False, f.__name__


# ------------------------------------------------------------------ API errors name the argument
@pytest.mark.parametrize("call, says", [
    (lambda r, d: bmiss.decompose(None), "rec must be a bmiss Recording"),
    (lambda r, d: bmiss.decompose(d), "rec is a Decomposition"),
    (lambda r, d: bmiss.decompose(r.emg, "cbss"), "wrap an EMG array: bmiss.io.Recording(emg="),
    (lambda r, d: bmiss.decompose(r, "cbs"), "method must be one of"),
    (lambda r, d: bmiss.decompose(r, "cbss", seed=-1), "seed must be an integer in 0..4294967295, got -1"),
    (lambda r, d: bmiss.decompose(r, "cbss", seed=1.5), "seed must be an integer"),
    (lambda r, d: bmiss.evaluate(r, d), "arguments are swapped"),
    (lambda r, d: bmiss.evaluate(None, r), "dec must be a bmiss Decomposition"),
    (lambda r, d: bmiss.export(d, None), "out must be a file path"),
    (lambda r, d: bmiss.export(d, "u.csv", "xls"), "unknown format 'xls'"),
    (lambda r, d: bmiss.simulate(seed=-1), "seed must be an integer in 0..4294967295, got -1"),
    (lambda r, d: bmiss.simulate(duration_s="abc"), "duration_s must be a finite number"),
    (lambda r, d: bmiss.simulate(duration_s=0.001), "duration_s=0.001 s is too short"),
    (lambda r, d: bmiss.simulate(""), "anatomy must be a shipped anatomy name"),
    (lambda r, d: bmiss.simulate(n_units=0), "n_units must be an integer in 1..2000"),
    (lambda r, d: bmiss.simulate(snr_db="loud"), "snr_db must be a number of dB"),
    (lambda r, d: api.fit(r, max_units=0), "max_units = 0: out of range; allowed in [2, 500]"),
    (lambda r, d: api.fit(r, seed=-1), "seed must be an integer"),
    (lambda r, d: bmiss.save_decomposition(d, "dec.npz"), "arguments swapped"),
])
def test_api_errors_name_the_argument(call, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rec = _rec()
    with pytest.raises(BmissError) as e:  # UserError, or SettingsError for a settings field
        call(rec, _dec(rec))
    assert says in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_swapped_file_arguments_are_named(files):
    d, _ = files
    with pytest.raises(UserError, match="swapped"):
        bmiss.evaluate(str(d / "rec.npz"), str(d / "dec.npz"))
    with pytest.raises(UserError, match="rec=.*is a decomposition file"):
        bmiss.decompose(str(d / "dec.npz"), "cbss")


def test_bmiss_names_resolve_to_the_api_functions():
    assert bmiss.decompose is api.decompose and bmiss.save_decomposition is api.save_decomposition
    assert bmiss.fit is api.fit  # the README's bmiss.fit is the function (the code is bmiss.fitting)
    assert callable(bmiss.simulate) and bmiss.simulate is api.simulate
    import bmiss.simulate as _  # noqa: F401  importing the submodule keeps the function
    assert bmiss.simulate is api.simulate


# ------------------------------------------------------------------ command line: names, ranges, messages
@pytest.mark.parametrize("argv, says", [
    (["simulate", "--out", "a37"], "has no suffix"),
    (["simulate", "--out", "a38.txt"], "not .txt"),
    (["decompose", "REC", "--out", "newdir/"], "is a folder"),
    (["decompose", "REC", "--out", "d.txt"], "not .txt"),
    (["fit", "REC", "--out", "subject"], "has no suffix"),
    (["simulate", "--anatomy", "", "--out", "a.npz"], "--anatomy: is empty"),
    (["decompose", "REC", "--anatomy", " "], "--anatomy: is empty"),
    (["simulate", "--duration", "0.001", "--out", "a.npz"], "allowed [0.1, 3600] s"),
    (["decompose", "REC", "--ied", "0.1", "--grid", "2x2"], "allowed [0.5, 100] mm"),
    (["decompose", "REC", "--method", "oracle", "--n-iter", "5"], "--n-iter applies to --method cbss"),
    (["decompose", "REC", "--emg-unit", "uV"], "--emg-unit applies to .mat files"),
    (["simulate", "--out", "a.npz", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_cli_refuses_before_any_work(argv, says, files, capsys, monkeypatch):
    d, _ = files
    monkeypatch.chdir(d)
    before = sorted(p.name for p in d.iterdir())
    argv = [str(d / "rec.npz") if a == "REC" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bmiss {argv[0]}: error: "), err
    assert says in err, err
    assert sorted(p.name for p in d.iterdir()) == before


def test_negative_snr_in_exponent_notation_is_a_value(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "cmd_simulate", lambda a: seen.setdefault("snr", a.snr) and 0)
    assert main(["simulate", "--snr", "-1e1", "--out", str(tmp_path / "a.npz")]) == 0
    assert seen["snr"] == -10.0


def test_help_ranges_match_the_checks():
    from bmiss import electrodes

    assert cli.MIN_DURATION_S == sys.modules["bmiss.simulate"].MIN_DURATION_S
    with pytest.raises(BmissError):
        electrodes.row_major(2, 2, cli.IED_MIN_MM - 0.01)
    electrodes.row_major(2, 2, cli.IED_MIN_MM)
    electrodes.row_major(2, 2, cli.IED_MAX_MM)
    parser = cli.build_parser()
    dec_help = parser._bmiss_subparsers["decompose"].format_help()
    assert "[0.5, 100]" in " ".join(dec_help.split())
    assert "on for --method bmiss, off for cbss and oracle" in " ".join(dec_help.split())
    from bmiss.pipeline import settings as S  # the --deconvolve help says what the methods do

    on = {m: bool(getattr(r.deconvolve, "enabled", r.deconvolve)) for m, r in S.METHOD_RULES.items()}
    assert on == {"bmiss": True, "cbss": False, "oracle": False}
    fit_help = " ".join(parser._bmiss_subparsers["fit"].format_help().split())
    assert "--min-sil" in fit_help  # the fit's "too few units" advice names an option that exists


def test_export_json_is_the_per_unit_json_even_with_a_recording(files, capsys):
    d, _ = files
    out = d / "units.json"
    assert main(["export", str(d / "dec.npz"), "--recording", str(d / "rec.npz"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["n_units"] == 2 and [u["unit"] for u in doc["units"]] == [0, 1]
    assert "per-MU JSON" in capsys.readouterr().out
    gz = d / "dec.json.gz"
    assert main(["export", str(d / "dec.npz"), "--recording", str(d / "rec.npz"), "--out", str(gz)]) == 0
    assert "openhdemg" in capsys.readouterr().out


def test_simulate_with_a_named_grid_stores_that_grids_geometry(tmp_path, capsys):
    """``--anatomy tibialis_anterior`` (10 mm grid) ``--electrode GR08MM1305``: the 8-mm grid wins, as in the API."""
    out = tmp_path / "ta.npz"
    assert main(["simulate", "--anatomy", "tibialis_anterior", "--electrode", "GR08MM1305", "--duration", "0.5",
                 "--n-units", "3", "--muap-mode", "expected", "--out", str(out)]) == 0
    rec = bio.load_recording(out)
    assert rec.electrode == "GR08MM1305" and rec.ied_mm == 8.0 and rec.n_channels == 64
    assert "GR08MM1305 @ 8 mm" in capsys.readouterr().out


def test_main_module_runs_the_command():
    r = subprocess.run([sys.executable, "-m", "bmiss", "anatomies"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "biceps_brachii" in r.stdout
