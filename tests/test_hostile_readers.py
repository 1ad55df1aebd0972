"""Issue 17's reader cases: each malformed file ends in one BmissFileError line that names the
file and the member/column (never a traceback, never a silently wrong value)."""
import gzip
import json

import numpy as np
import pytest

from bmiss import electrodes as E
from bmiss import formats as F
from bmiss.cli import main
from bmiss.errors import BmissFileError, LayoutError
from bmiss.io import (Decomposition, Recording, load_decomposition, load_recording, save_decomposition,
                      save_recording)

FS = 2048.0


def _one_line(e: pytest.ExceptionInfo, path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


@pytest.fixture(scope="module")
def rec():
    rng = np.random.default_rng(0)
    return Recording(emg=rng.standard_normal((8, 3000)).astype(np.float32), fs=FS, electrode=None)


def _openhdemg(tmp_path, rec, **override):
    p = tmp_path / "rec.json"
    F.save_openhdemg_recording(p, rec)
    with gzip.open(p, "rt") as f:
        d = json.load(f)
    d.update(override)
    with gzip.open(p, "wt") as f:
        json.dump(d, f)
    return p


def test_openhdemg_extras_orientation_90_refused(tmp_path):
    lay = E.load_layout("GR08MM1305", 0)
    r = Recording(emg=np.random.default_rng(1).standard_normal((64, 600)).astype(np.float32), fs=FS,
                  electrode="GR08MM1305", orientation=0)
    extras = json.dumps({"columns": ["electrode", "orientation"], "index": [0], "data": [["GR08MM1305", 90]]})
    p = _openhdemg(tmp_path, r, EXTRAS=extras)
    with pytest.raises(BmissFileError) as e:
        F.load_openhdemg(p)
    assert "EXTRAS column 'orientation' = 90" in _one_line(e, p)
    # the user's --orientation overrides the file's value
    r0 = load_recording(p, orientation=0)
    np.testing.assert_array_equal(r0.channel_map, lay.channel_map)


def test_openhdemg_raw_signal_not_a_dataframe(tmp_path, rec):
    p = _openhdemg(tmp_path, rec, RAW_SIGNAL="42")
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "RAW_SIGNAL must be a DataFrame" in _one_line(e, p)
    p = _openhdemg(tmp_path, rec, RAW_SIGNAL=json.dumps({"columns": [0], "index": [0, 1], "data": [[1], [1, 2]]}))
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "RAW_SIGNAL" in _one_line(e, p)


def test_openhdemg_expansion_ratio_capped(tmp_path):
    p = tmp_path / "bomb.json"
    raw = b'{"SOURCE": "' + b" " * (70 << 20) + b'"}'
    p.write_bytes(gzip.compress(raw, compresslevel=1))
    assert p.stat().st_size * F.MAX_EXPANSION < len(raw)
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "decompression bomb" in _one_line(e, p)


def test_truth_past_the_end_refused(tmp_path):
    p = tmp_path / "sim.npz"
    np.savez(p, emg=np.zeros((4, 3000), np.float32), fs=FS, true_spikes=np.array([10, 2999, 3000]),
             true_spikes_offsets=np.array([0, 1, 3]))
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "unit 1 has a discharge at sample 3000, outside the recording's 0..2999" in _one_line(e, p)


def test_decomposition_fingerprint_checked(tmp_path, rec):
    from bmiss.io import recording_fingerprint

    fp = recording_fingerprint(rec)
    good = Decomposition(spikes=[np.array([5, 50])], sources=np.zeros((1, 3000), np.float32), fs=4096.0,
                         method="cbss", meta={"recording": fp})
    p = tmp_path / "dec.npz"
    save_decomposition(p, good)
    with pytest.raises(BmissFileError) as e:
        load_decomposition(p)
    assert "fs = 4096 Hz but its recording fingerprint says 2048 Hz" in _one_line(e, p)
    for bad, what in (({**fp, "fs": "fast"}, "fs = 'fast'"), ({**fp, "n_samples": -3}, "n_samples = -3"),
                      ({**fp, "emg_sha256": 12}, "emg_sha256"), ("abc", "must be an object")):
        good.fs = FS
        good.meta = {"recording": bad}
        save_decomposition(p, good)
        with pytest.raises(BmissFileError) as e:
            load_decomposition(p)
        assert what in _one_line(e, p) and "meta_json 'recording'" in str(e.value)


def test_npz_fs_out_of_range_and_float32_overflow(tmp_path, capsys):
    p = tmp_path / "fast.npz"
    np.savez(p, emg=np.zeros((4, 3000), np.float32), fs=1e9)
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "implausibly high" in _one_line(e, p)
    assert main(["decompose", str(p), "--method", "cbss", "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    q = tmp_path / "huge.npz"
    emg = np.zeros((4, 3000))
    emg[2, 7] = 1e40
    np.savez(q, emg=emg, fs=FS)
    with pytest.raises(BmissFileError) as e:
        load_recording(q)
    assert "out of float32 range" in _one_line(e, q) and "NaN" not in str(e.value)


def test_truncated_npz_named_as_such(tmp_path, rec):
    p = tmp_path / "rec.npz"
    save_recording(p, rec)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "truncated or corrupt .npz" in _one_line(e, p)


@pytest.mark.parametrize("name,text,field", [
    ("m.json", json.dumps({"channel_map": [[0, 0], [0, 1]], "ied_mm": "ten"}), "'ied_mm' = 'ten'"),
    ("m.csv", "# ied_mm = abc\nchannel,row,col\n0,0,0\n1,0,1\n", "'ied_mm' = 'abc'"),
    ("m.csv", "# rows = x\n# ied_mm = 8\nchannel,row,col\n0,0,0\n1,0,1\n", "'rows' = 'x'"),
    ("m.json", json.dumps({"channel_map": [[0, 0], [0, 1]], "ied_mm": 8, "cols": 2.5}), "'cols' = 2.5"),
])
def test_channel_map_fields_checked(tmp_path, name, text, field):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(LayoutError) as e:
        E.load_channel_map(p)
    assert field in _one_line(e, p)


def test_mat_column_out_of_float32_range(tmp_path):
    """1e40 in an EMG column is named as out of float32 range; in a column the method does not
    need (a decomposition column) it does not stop the file."""
    import exports

    p, _, _ = exports.otbiolab_mat(tmp_path / "e.mat", n_samples=1024)
    from scipy.io import loadmat, savemat

    m = loadmat(p)
    data = m["Data"].copy()
    data[5, 70] = 1e40  # a source column
    savemat(p, {"Data": data, "SamplingFrequency": m["SamplingFrequency"], "Description": m["Description"]})
    assert load_recording(p).n_channels == 64
    data[5, 3] = 1e40  # EMG channel 4
    savemat(p, {"Data": data, "SamplingFrequency": m["SamplingFrequency"], "Description": m["Description"]})
    with pytest.raises(BmissFileError) as e:
        load_recording(p)
    assert "GR08MM1305 (4)[uV]'" in _one_line(e, p) and "out of float32 range" in str(e.value)


def test_openhdemg_malformed_extras_is_ignored(tmp_path, rec):
    """EXTRAS is optional metadata (found by fuzz_readers: data = true crashed the reader)."""
    p = _openhdemg(tmp_path, rec, EXTRAS=json.dumps({"columns": ["electrode"], "index": [0], "data": True}))
    assert load_recording(p).electrode is None
