"""Recording/decomposition files: round trips, hostile inputs, atomic writes, the reader registry."""
import logging
import subprocess
import sys

import numpy as np
import pytest

from bmiss import files as bfiles
from bmiss import io as bio
from bmiss.io import BmissFileError, Decomposition, Recording

FS = 2048.0
# bmiss.files imports nothing from bmiss, so a child process can load it alone (fast: no jax)
_STANDALONE_IO = ("import importlib.util, os, sys\n"
                  f"spec = importlib.util.spec_from_file_location('bmiss_io_alone', {bfiles.__file__!r})\n"
                  "io = importlib.util.module_from_spec(spec); sys.modules['bmiss_io_alone'] = io\n"
                  "spec.loader.exec_module(io)\n")


def _emg(n_ch=64, n=2000, seed=0):
    return np.random.default_rng(seed).standard_normal((n_ch, n)).astype(np.float32)


def test_npz_round_trip_keeps_everything(tmp_path):
    n = 2000
    rec = Recording(emg=_emg(n=n), fs=FS, electrode="GR08MM1305", orientation=0,
                    ref_signal=np.linspace(0, 50, n), excitation=np.linspace(0, 1, n),
                    true_spikes=[np.array([3, 400]), np.array([], np.int64)], meta={"ref_unit": "%MVC"})
    assert rec.ied_mm == 8.0 and rec.grid_shape == (13, 5) and tuple(rec.channel_map[0]) == (11, 4)
    p = bio.save_recording(tmp_path / "r.npz", rec)
    r2 = bio.load_recording(p)
    np.testing.assert_array_equal(r2.emg, rec.emg)
    assert (r2.electrode, r2.orientation, r2.ied_mm, r2.grid_shape) == ("GR08MM1305", 0, 8.0, (13, 5))
    np.testing.assert_array_equal(r2.channel_map, rec.channel_map)
    np.testing.assert_allclose(r2.ref_signal, rec.ref_signal, rtol=1e-6)
    assert [s.tolist() for s in r2.true_spikes] == [[3, 400], []] and r2.meta["ref_unit"] == "%MVC"
    assert bio.recording_fingerprint(r2) == bio.recording_fingerprint(rec)
    # a flag overrides the file's layout
    r3 = bio.load_recording(p, electrode="GR08MM1305", orientation=180)
    assert r3.orientation == 180 and tuple(r3.channel_map[0]) == (1, 0)


def test_decomposition_round_trip_and_damage(tmp_path):
    dec = Decomposition(spikes=[np.array([1, 5, 9]), np.array([2])], sources=np.zeros((2, 20), np.float32),
                        fs=FS, method="cbss", sil=np.array([0.9, 0.8], np.float32), meta={"x": 1})
    p = bio.save_decomposition(tmp_path / "d.npz", dec)
    d2 = bio.load_decomposition(p)
    assert [s.tolist() for s in d2.spikes] == [[1, 5, 9], [2]] and d2.meta == {"x": 1} and d2.fs == FS
    z = dict(np.load(p))
    del z["spikes_offsets"]
    np.savez(tmp_path / "nooff.npz", **z)
    with pytest.raises(BmissFileError, match="spikes_offsets"):
        bio.load_decomposition(tmp_path / "nooff.npz")
    z = dict(np.load(p))
    z["spikes_offsets"] = np.array([0, 7, 2])
    np.savez(tmp_path / "badoff.npz", **z)
    with pytest.raises(BmissFileError, match="offsets"):
        bio.load_decomposition(tmp_path / "badoff.npz")


def test_not_an_npz_gives_no_pickle_advice(tmp_path):
    t = tmp_path / "text.npz"
    t.write_text("emg,fs\n1,2\n")
    with pytest.raises(BmissFileError) as e:
        bio.load_recording(t)
    assert "pickle" not in str(e.value) and "not an .npz archive" in str(e.value) and str(t) in str(e.value)
    one = tmp_path / "one.npz"
    with open(one, "wb") as f:
        np.save(f, _emg())
    with pytest.raises(BmissFileError, match="single .npy"):
        bio.load_recording(one)
    obj = tmp_path / "obj.npz"
    np.savez(obj, emg=np.array([np.zeros(3), np.zeros(4)], dtype=object), fs=FS)
    with pytest.raises(BmissFileError, match="Python objects"):
        bio.load_recording(obj)
    with pytest.raises(BmissFileError, match="directory"):
        bio.load_recording(tmp_path)


@pytest.mark.parametrize("fs,msg", [([], "empty"), ([2048.0, 4096.0], r"shape \(2,\)"), (-5.0, "positive"),
                                    (np.nan, "positive"), ("2048", "one number"), (100.0, "too low")])
def test_bad_fs(tmp_path, fs, msg):
    p = tmp_path / "r.npz"
    np.savez(p, emg=_emg(4), fs=np.asarray(fs))
    with pytest.raises(BmissFileError, match=msg) as e:
        bio.load_recording(p)
    assert str(p) in str(e.value)


def test_complex_and_non_numeric_emg_refused(tmp_path):
    with pytest.raises(BmissFileError, match="complex"):
        Recording(emg=_emg(4).astype(np.complex64), fs=FS)
    p = tmp_path / "c.npz"
    np.savez(p, emg=_emg(4) + 1j, fs=FS)
    with pytest.raises(BmissFileError, match="complex"):
        bio.load_recording(p)
    with pytest.raises(BmissFileError, match="numeric"):
        Recording(emg=np.full((4, 1000), "a"), fs=FS)


def test_geometry_validation():
    with pytest.raises(BmissFileError, match="grid_shape"):
        Recording(emg=_emg(), fs=FS, grid_shape=(-8, -8))
    with pytest.raises(BmissFileError, match="grid_shape"):
        Recording(emg=_emg(), fs=FS, grid_shape=(0, 0))
    with pytest.raises(BmissFileError, match="ied_mm"):
        Recording(emg=_emg(), fs=FS, ied_mm=0.0)
    with pytest.raises(BmissFileError, match="0 or 180"):
        Recording(emg=_emg(), fs=FS, electrode="GR08MM1305", orientation=90)
    with pytest.raises(BmissFileError, match="same electrode"):
        Recording(emg=_emg(2), fs=FS, channel_map=[[0, 0], [0, 0]])
    with pytest.raises(BmissFileError, match="32 channels"):
        Recording(emg=_emg(), fs=FS, electrode="GR10MM0804")
    with pytest.raises(BmissFileError, match="channel_map"):
        Recording(emg=_emg(), fs=FS, grid_shape=(8, 10))


def test_13x5_without_map_is_the_standard_grid_with_a_warning(tmp_path, caplog):
    p = tmp_path / "g.npz"
    np.savez(p, emg=_emg(), fs=FS, grid_shape=np.array([13, 5]), ied_mm=8.0)
    with caplog.at_level(logging.WARNING, logger="bmiss"):
        rec = bio.load_recording(p)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0] and "13x5" in lines[0] and "--electrode" in lines[0]
    assert rec.channel_map.shape == (64, 2) and tuple(rec.channel_map[0]) == (0, 1) and rec.has_geometry


def test_unusable_geometry_is_dropped_not_fatal(tmp_path, caplog):
    """A blind method must never be refused because of the grid description."""
    p = tmp_path / "g.npz"
    np.savez(p, emg=_emg(), fs=FS, grid_shape=np.array([-8, -8]))
    with caplog.at_level(logging.WARNING, logger="bmiss"):
        rec = bio.load_recording(p)
    assert rec.grid_shape is None and rec.channel_map is None and "geometry_ignored" in rec.meta
    assert any("ignored" in r.getMessage() for r in caplog.records)


def test_truth_without_offsets(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, emg=_emg(4), fs=FS, true_spikes=np.array([1, 2, 3]))
    with pytest.raises(BmissFileError, match="true_spikes_offsets"):
        bio.load_recording(p)


def test_fs_override(tmp_path):
    p = tmp_path / "nofs.npz"
    np.savez(p, emg=_emg(4))
    with pytest.raises(BmissFileError, match="'fs'"):
        bio.load_recording(p)
    assert bio.load_recording(p, fs=4096).fs == 4096.0
    q = tmp_path / "fs.npz"
    np.savez(q, emg=_emg(4), fs=FS)
    with pytest.raises(BmissFileError, match="2048 Hz but fs = 4096"):
        bio.load_recording(q, fs=4096)


def test_atomic_write_cleans_up(tmp_path):
    out = tmp_path / "x.txt"

    def boom(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bio.atomic_write(out, boom)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    bio.atomic_write(out, lambda tmp: open(tmp, "w").write("ok"))
    with pytest.raises(FileExistsError, match="--force"):
        bio.atomic_write(out, lambda tmp: open(tmp, "w").write("no"), force=False)
    assert out.read_text() == "ok"
    with pytest.raises(IsADirectoryError):
        bio.atomic_write(tmp_path, lambda tmp: None)


def test_killed_writer_leaves_no_permanent_tmp(tmp_path):
    """SIGKILL cannot be caught: the next write of the same output removes the orphan."""
    out = tmp_path / "r.npz"
    code = (_STANDALONE_IO + "def w(tmp):\n    open(tmp, 'w').write('partial'); os.kill(os.getpid(), 9)\n"
            "io.atomic_write(%r, w)\n") % str(out)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode != 0
    orphans = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].name.startswith(".r.npz.") and not out.exists()
    bio.save_recording(out, Recording(emg=_emg(4), fs=FS))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npz"]


def test_reader_registry(tmp_path):
    p = tmp_path / "x.mycsv"
    p.write_text("0")
    with pytest.raises(BmissFileError, match="unsupported file type"):
        bio.load_recording(p)
    seen = {}

    def reader(path, **kw):
        seen.update(kw)
        return Recording(emg=_emg(4), fs=FS, meta={"via": "custom"})

    bio.register_reader(".mycsv", reader)
    try:
        r = bio.load_recording(p, fs=FS)
        assert r.meta["via"] == "custom" and seen == {"fs": FS}
    finally:
        del bio.READERS[".mycsv"]
    # io imports no bmiss module at import time (no io <-> formats cycle): it loads on its own
    code = _STANDALONE_IO + "print(sorted(m for m in sys.modules if m.startswith('bmiss')))\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "['bmiss_io_alone']", out.stderr
