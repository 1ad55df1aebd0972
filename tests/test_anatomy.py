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
    assert {"biceps_brachii", "tibialis_anterior", "forearm_flexors", "vastus_lateralis"} <= set(names)
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


def test_anatomies_are_real_package_data():
    """No symlink: checkouts without symlinks (Windows) and wheels must ship the TOMLs."""
    from pathlib import Path

    assert anatomy.ANATOMY_DIR.is_dir() and not anatomy.ANATOMY_DIR.is_symlink()
    assert all(not p.is_symlink() for p in anatomy.ANATOMY_DIR.glob("*.toml"))
    assert anatomy.list_anatomies() == ["biceps_brachii", "forearm_flexors", "tibialis_anterior", "vastus_lateralis"]
    root = Path(anatomy.__file__).resolve().parents[1]
    if (root / "setup.py").is_file():  # a source checkout: the top-level anatomy/ folder installs as package data
        assert anatomy.ANATOMY_DIR == (root / "anatomy").resolve()
        text = (root / "setup.py").read_text()
        assert '"bmiss.anatomies": "anatomy"' in text and '"*.toml"' in text


def test_unknown_section_and_key_suggest():
    raw = _raw()
    raw["grdi"] = raw.pop("grid")
    with pytest.raises(AnatomyError, match=r"unknown section \[grdi\] \(did you mean 'grid'\?\)"):
        anatomy.from_dict(raw, source="x.toml")
    raw = _raw()
    raw["layers"]["fat_thicknes_mm"] = raw["layers"].pop("fat_thickness_mm")
    with pytest.raises(AnatomyError, match="did you mean 'fat_thickness_mm'"):
        anatomy.from_dict(raw, source="x.toml")
    raw = _raw()
    raw["grid"]["montage"] = "monopolr"
    with pytest.raises(AnatomyError, match="did you mean 'monopolar'"):
        anatomy.from_dict(raw)
    with pytest.raises(FileNotFoundError, match="did you mean 'biceps_brachii'"):
        anatomy.load("biceps_brachi")


def test_vastus_lateralis_uses_gr08mm1305():
    from bmiss import electrodes as E

    a = anatomy.load("vastus_lateralis")
    lay = E.load_layout("GR08MM1305", 180)
    assert a.grid.electrode == "GR08MM1305" and a.grid.orientation == 180 and a.grid.n_channels == 64
    np.testing.assert_array_equal(a.grid.electrode_positions()[1], lay.channel_map)
    assert a.muscle.fibre_length_mm == 99.0 and a.layers.fat_thickness_mm == 5.0
    b = anatomy.from_dict(tomllib.loads(anatomy.to_toml(a)))
    assert b.grid == a.grid


def test_electrode_key_fills_and_checks_the_grid():
    raw = _raw()
    for k in ("rows", "cols", "ied_mm", "missing"):
        raw["grid"].pop(k)
    raw["grid"]["electrode"] = "GR08MM1305"
    raw["grid"]["orientation"] = 0
    a = anatomy.from_dict(raw)
    assert (a.grid.rows, a.grid.cols, a.grid.ied_mm, a.grid.missing) == (13, 5, 8.0, ((12, 4),))
    raw["grid"]["rows"] = 8
    with pytest.raises(AnatomyError, match="contradicts electrode GR08MM1305"):
        anatomy.from_dict(raw)
    raw = _raw()
    raw["grid"]["electrode"] = "GR99MM1305"
    with pytest.raises(AnatomyError, match="unknown electrode"):
        anatomy.from_dict(raw)
    raw = _raw()
    raw["grid"]["orientation"] = 90
    with pytest.raises(AnatomyError, match="0 or 180"):
        anatomy.from_dict(raw)


def test_with_layout_and_with_grid():
    from bmiss import electrodes as E

    a = anatomy.load("tibialis_anterior").with_layout(E.load_layout("GR10MM0808", 0))
    assert a.grid.electrode == "GR10MM0808" and a.grid.electrode_radius_mm == 2.0
    assert a.grid.electrode_positions()[1][0].tolist() == [0, 7]  # channel 1 at orientation 0: top right
    b = a.with_grid(rows=4, cols=4)  # a new size drops the amplifier order
    assert b.grid.channel_order == () and b.grid.electrode == "" and b.grid.n_channels == 16
    assert anatomy.load(a) is a
    with pytest.raises(AnatomyError, match="falls off the muscle"):
        anatomy.load("biceps_brachii").with_layout(E.load_layout("GR10MM0808"))


def test_folders_do_not_shadow_or_crash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "biceps_brachii").mkdir()  # a folder named like a shipped anatomy
    assert anatomy.load("biceps_brachii").name == "biceps_brachii"
    with pytest.raises(AnatomyError, match="is a folder"):
        anatomy.load(tmp_path)


def test_custom_and_recording_layouts_round_trip_through_toml():
    """Layouts without a registry code (row-major, a recording's own map, a custom file) survive
    to_toml/from_dict: the electrode value is then a label and channel_order carries the order."""
    from bmiss import electrodes as E
    from bmiss.io import Recording

    cm = E.load_layout("GR08MM1305").channel_map[::-1]
    rec = Recording(emg=np.zeros((64, 1000), np.float32), fs=2048.0, channel_map=cm, ied_mm=8.0)
    a = anatomy.load("biceps_brachii").with_layout(E.layout_of(rec))
    assert a.grid.electrode == "recording"
    b = anatomy.from_dict(tomllib.loads(anatomy.to_toml(a)))
    assert b.grid == a.grid
    np.testing.assert_array_equal(b.grid.electrode_positions()[1], cm)
    raw = _raw()
    raw["grid"]["electrode"] = "my-grid"  # a label without channel_order: not a known code
    with pytest.raises(AnatomyError, match="unknown electrode"):
        anatomy.from_dict(raw)
