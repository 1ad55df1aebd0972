"""A short fuzz of the readers (the full benchmark is experiments/fuzz_readers.py) and the
regression of what it found: damaged MATLAB files that crashed scipy's compiled reader."""
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import exports
from bmiss import formats as F, reference as R
from bmiss.errors import BmissFileError
from bmiss.io import load_recording


def test_matlab_file_that_crashed_scipy_is_refused(tmp_path):
    """A numeric variable flagged complex without an imaginary part segfaulted scipy.io.loadmat
    (found by fuzz_readers); safe_loadmat refuses it in one line."""
    from scipy.io import savemat

    p = tmp_path / "x.mat"
    savemat(p, {"IPTs": np.ones((2, 8)), "fsamp": 2048.0, "MUPulses": np.array([[1.0, 3.0]])})
    raw = bytearray(p.read_bytes())
    i = 128
    while i < len(raw):  # set the complex flag (0x0800) of every variable's array flags
        t, n = struct.unpack("<II", raw[i:i + 8])
        assert t == 14
        raw[i + 8 + 8 + 1] |= 0x08
        i += 8 + n + (-n) % 8
    p.write_bytes(bytes(raw))
    with pytest.raises(BmissFileError, match=r"x.mat: corrupt MATLAB variable at byte 128 \(complex array with 1 data parts"):
        R.load_reference(p)
    # an unknown element type code (the other crash): refused too
    raw2 = bytearray((tmp_path / "x.mat").read_bytes())
    raw2[128:132] = struct.pack("<I", 8)
    p.write_bytes(bytes(raw2))
    with pytest.raises(BmissFileError, match="unknown type code 8"):
        F.safe_loadmat(p)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeds")
    return {"demuse": exports.demuse_mat(d / "demuse.mat", n_samples=300)[0].read_bytes(),
            "otb": exports.otbiolab_mat(d / "otb.mat", n_samples=300)[0].read_bytes()}


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(which=st.sampled_from(["demuse", "otb"]), cut=st.integers(0, 10 ** 6),
       flips=st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=8))
def test_damaged_mat_files_give_one_line(tmp_path_factory, seeds, which, cut, flips):
    data = bytearray(seeds[which])
    for pos, v in flips:
        data[pos % len(data)] = v
    if cut % 3 == 0:
        data = data[: cut % len(data)]
    p = tmp_path_factory.mktemp("f") / f"{which}.mat"
    p.write_bytes(bytes(data))
    read = R.load_reference if which == "demuse" else load_recording
    try:
        read(p)
    except BmissFileError as e:
        assert "\n" not in str(e) and str(p) in str(e)
