import tomllib

import numpy as np
import pytest

from bmiss import anatomy
from bmiss.anatomy import AnatomyError


def _raw(name="biceps_brachii"):
    return tomllib.loads(anatomy.resolve(name).read_text())


@pytest.mark.parametrize("name", anatomy.list_anatomies())
def test_shipped_anatomies_load(name):
    a = anatomy.load(name)
    xz, rc = a.grid.electrode_positions()
    assert len(xz) == a.grid.rows * a.grid.cols - len(a.grid.missing)
    assert a.grid.n_channels == len(xz)  # all shipped grids are monopolar
    b = a.param_bounds()
    assert b["depth_mm"][0] > a.muscle_top_mm


def test_three_realistic_anatomies_shipped():
    names = anatomy.list_anatomies()
    assert {"biceps_brachii", "tibialis_anterior", "forearm_flexors"} <= set(names)
    assert anatomy.load("biceps_brachii").grid.n_channels == 64
    assert anatomy.load("forearm_flexors").grid.n_channels == 320


def test_missing_key_names_file_and_key(tmp_path):
    raw = _raw()
    del raw["layers"]["fat_thickness_mm"]
    with pytest.raises(AnatomyError, match=r"\[layers\] fat_thickness_mm is missing"):
        anatomy.from_dict(raw, source="x.toml")


def test_negative_thickness_gives_range():
    raw = _raw()
    raw["layers"]["skin_thickness_mm"] = -1.0
    with pytest.raises(AnatomyError, match=r"skin_thickness_mm = -1.0 is outside the allowed range"):
        anatomy.from_dict(raw, source="x.toml")


def test_unknown_montage():
    raw = _raw()
    raw["grid"]["montage"] = "laplacian"
    with pytest.raises(AnatomyError, match="not a known montage"):
        anatomy.from_dict(raw)


def test_grid_off_muscle():
    raw = _raw()
    raw["grid"]["centre_x_mm"] = 60.0
    with pytest.raises(AnatomyError, match="falls off the muscle"):
        anatomy.from_dict(raw)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shipped anatomy"):
        anatomy.load("no_such_muscle")
    with pytest.raises(FileNotFoundError):
        anatomy.load(tmp_path / "nope.toml")


def test_montage_matrices():
    a = anatomy.load("tibialis_anterior")
    sd = a.with_grid(montage="single_differential").grid
    M, rc = sd.montage_matrix()
    assert M.shape == (7 * 8, 64)
    np.testing.assert_allclose(M.sum(1), 0)
    dd = a.with_grid(montage="double_differential").grid
    assert dd.montage_matrix()[0].shape == (6 * 8, 64)
    # a missing electrode removes every channel that needs it
    b = anatomy.load("biceps_brachii").with_grid(montage="single_differential").grid
    assert b.montage_matrix()[0].shape[0] == 12 * 5 - 1


def test_to_toml_round_trip():
    a = anatomy.load("biceps_brachii").with_grid(rows=6, cols=5, montage="single_differential")
    b = anatomy.from_dict(tomllib.loads(anatomy.to_toml(a)))
    assert (b.layers, b.muscle, b.pool, b.grid) == (a.layers, a.muscle, a.pool, a.grid)
