"""Notebook API safety: the recording fingerprint and the decomposition/recording pairing check,
atomic writes, and the .npz round trip of recordings and decompositions. No JAX work: fast."""
import gzip
import json

import numpy as np
import pytest

from bmiss import api
from bmiss import io as bio

FS = 2048.0


def _rec(seed=0, n_ch=4, n=4096, fs=FS, truth=True):
    rng = np.random.default_rng(seed)
    spikes = [np.sort(rng.choice(np.arange(50, n - 50), 20, replace=False)), np.array([], np.int64),
              np.array([100, 900, 2000])]
    return bio.Recording(emg=rng.normal(0, 5, (n_ch, n)), fs=fs, grid_shape=(2, 2), ied_mm=8.0,
                         true_spikes=spikes if truth else None,
                         true_muaps=rng.normal(size=(3, n_ch, 16)).astype(np.float32) if truth else None,
                         true_params=rng.normal(size=(3, 6)).astype(np.float32) if truth else None,
                         param_names=("depth_mm", "x_mm", "log_fibres", "iz_mm", "cv_m_s", "length_mm") if truth else None,
                         excitation=np.linspace(0, 0.3, n).astype(np.float32), meta={"anatomy": "toy", "seed": seed})


def _dec(rec, fingerprint=True):
    spikes = [rec.true_spikes[0] + 1, rec.true_spikes[2]]
    d = bio.Decomposition(spikes=spikes, sources=np.zeros((2, rec.n_samples), np.float32), fs=rec.fs, method="toy",
                          filters=np.ones((2, 12), np.float32), sil=np.array([0.9, 0.8]), pnr_db=np.array([30.0, 25.0]),
                          cov_isi=np.array([0.1, 0.2]), params=np.ones((2, 6)), param_std=np.full((2, 6), 0.1),
                          param_names=rec.param_names, meta={"channels_used": [0, 1, 2, 3]})
    if fingerprint:
        d.meta["recording"] = bio.recording_fingerprint(rec)
    return d


# ------------------------------------------------------------------ fingerprint and pairing
def test_fingerprint_survives_npz_round_trip(tmp_path):
    rec = _rec()
    fp = bio.recording_fingerprint(rec)
    assert fp["fs"] == FS and fp["n_samples"] == 4096 and fp["n_channels"] == 4 and len(fp["emg_sha256"]) == 64
    bio.save_recording(tmp_path / "r.npz", rec)
    assert bio.recording_fingerprint(bio.load_recording(tmp_path / "r.npz")) == fp
    other = _rec(seed=1)
    assert bio.recording_fingerprint(other)["emg_sha256"] != fp["emg_sha256"]


def test_check_pair_accepts_its_own_recording():
    rec = _rec()
    api.check_pair(_dec(rec), rec)
    api.check_pair(_dec(rec, fingerprint=False), rec)  # old file: fs / length / spike range agree


def test_check_pair_refuses_other_content():
    rec, other = _rec(0), _rec(1)
    with pytest.raises(api.RecordingMismatchError, match="content hash") as e:
        api.check_pair(_dec(rec), other, dec_name="d.npz", rec_name="r2.npz")
    assert "d.npz" in str(e.value) and "r2.npz" in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, bio.BmissFileError)  # a user error for the CLI


def test_check_pair_refuses_other_fs_and_length():
    rec = _rec()
    fast = bio.Recording(emg=rec.emg, fs=2 * FS, true_spikes=rec.true_spikes)
    with pytest.raises(api.RecordingMismatchError, match="fs 2048 Hz vs 4096 Hz"):
        api.check_pair(_dec(rec), fast)
    with pytest.raises(api.RecordingMismatchError, match="fs 2048 Hz vs 4096 Hz"):
        api.check_pair(_dec(rec, fingerprint=False), fast)
    short = bio.Recording(emg=rec.emg[:, :3000], fs=FS)
    with pytest.raises(api.RecordingMismatchError, match="n_samples 4096"):
        api.check_pair(_dec(rec), short)
    with pytest.raises(api.RecordingMismatchError, match="n_samples 4096"):
        api.check_pair(_dec(rec, fingerprint=False), short)


def test_check_pair_old_file_spike_range_and_source_count():
    rec = _rec()
    d = _dec(rec, fingerprint=False)
    d.spikes[1] = np.array([10, 5000])  # beyond the 4096 samples
    with pytest.raises(api.RecordingMismatchError, match="outside"):
        api.check_pair(d, rec)
    d = _dec(rec, fingerprint=False)
    d.sources = np.zeros((3, rec.n_samples), np.float32)
    with pytest.raises(api.RecordingMismatchError, match="3 sources for 2 spike trains"):
        api.check_pair(d, rec)


def test_evaluate_refuses_mismatch_and_recordings_without_truth(tmp_path):
    rec, other = _rec(0), _rec(1)
    rep = api.evaluate(_dec(rec), rec)
    assert rep["summary"]["n_true"] == 3 and rep["summary"]["found_90"] >= 2  # unit 0 shifted by 1, unit 2 exact
    with pytest.raises(api.RecordingMismatchError):
        api.evaluate(_dec(rec), other)
    assert api.evaluate(_dec(rec), other, check=False)["summary"]["n_true"] == 3  # explicit opt-out
    with pytest.raises(api.UserError, match="no ground truth"):
        api.evaluate(_dec(rec), _rec(truth=False))


def test_export_openhdemg_refuses_mismatch_and_writes_nothing(tmp_path):
    rec, other = _rec(0), _rec(1)
    out = tmp_path / "dec.json"
    with pytest.raises(api.RecordingMismatchError):
        api.export(_dec(rec), out, "openhdemg", rec=other)
    assert list(tmp_path.iterdir()) == []
    api.export(_dec(rec), out, "openhdemg", rec=rec)
    doc = json.loads(gzip.decompress(out.read_bytes()))
    assert "RAW_SIGNAL" in doc and "MUPULSES" in doc


def test_api_user_errors_are_user_errors(tmp_path):
    rec = _rec()
    with pytest.raises(api.UserError, match="--format"):
        api.export(_dec(rec), tmp_path / "x.weird")
    with pytest.raises(api.UserError, match="--recording"):
        api.export(_dec(rec), tmp_path / "x.json", "openhdemg")


def test_export_refuses_overwrite_without_force(tmp_path):
    out = tmp_path / "u.csv"
    out.write_text("keep me")
    rec = _rec()
    for fmt in ("csv", "tsv", "json"):
        p = tmp_path / f"u.{fmt}"
        p.write_text("keep me")
        with pytest.raises(FileExistsError):
            api.export(_dec(rec), p, fmt)
        assert p.read_text() == "keep me"
        api.export(_dec(rec), p, fmt, force=True)
        assert p.read_text() != "keep me"


# ------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path, exc):
    p = tmp_path / "out.json"
    p.write_text("old")

    def writer(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise exc

    with pytest.raises(type(exc)):
        bio.atomic_write(p, writer, force=True)
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind
    with pytest.raises(FileExistsError):
        bio.atomic_write(p, lambda tmp: open(tmp, "w").write("new"), force=False)
    assert p.read_text() == "old"
    bio.atomic_write(p, lambda tmp: open(tmp, "w").write("new"), force=True)
    assert p.read_text() == "new"


# ------------------------------------------------------------------ npz round trip
def test_recording_npz_round_trip(tmp_path):
    rec = _rec()
    p = bio.save_recording(tmp_path / "r.npz", rec)
    back = bio.load_recording(p)
    np.testing.assert_array_equal(back.emg, rec.emg)
    assert back.fs == rec.fs and back.grid_shape == (2, 2) and back.ied_mm == 8.0
    np.testing.assert_array_equal(back.channel_map, rec.channel_map)
    assert len(back.true_spikes) == 3 and len(back.true_spikes[1]) == 0  # an empty train survives CSR
    for a, b in zip(back.true_spikes, rec.true_spikes):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(back.true_muaps, rec.true_muaps)
    np.testing.assert_array_equal(back.true_params, rec.true_params)
    assert back.param_names == rec.param_names and back.meta == rec.meta
    np.testing.assert_array_equal(back.excitation, rec.excitation)
    with np.load(p, allow_pickle=False) as z:  # plain arrays, readable without pickle
        assert all(z[k].dtype != object for k in z.files)


def test_decomposition_npz_round_trip(tmp_path):
    rec = _rec()
    d = _dec(rec)
    d.spikes.append(np.array([], np.int64))
    d.sources = np.zeros((3, rec.n_samples), np.float32)
    d.param_interval = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    p = bio.save_decomposition(tmp_path / "d.npz", d)
    back = bio.load_decomposition(p)
    assert back.n_units == 3 and back.method == "toy" and back.fs == FS
    for a, b in zip(back.spikes, d.spikes):
        np.testing.assert_array_equal(a, b)
    assert back.param_interval.shape == (2, 6, 4)
    for k in ("sources", "filters", "sil", "pnr_db", "cov_isi", "params", "param_std", "param_interval"):
        np.testing.assert_allclose(getattr(back, k), getattr(d, k), rtol=1e-6)
    assert back.param_names == d.param_names
    assert back.meta == d.meta and back.meta["recording"] == bio.recording_fingerprint(rec)
