"""The bmiss command keeps JAX's compiled kernels between runs (bmiss/jaxcache.py)."""
import os
import subprocess
import sys
from pathlib import Path

from bmiss import jaxcache


def test_cache_folder_rules(tmp_path):
    assert jaxcache.cache_dir({"BMISS_JAX_CACHE": "off"}) is None
    assert jaxcache.cache_dir({"BMISS_JAX_CACHE": str(tmp_path / "c")}) == tmp_path / "c"
    assert jaxcache.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "bmiss" / "jax"
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert jaxcache.enable_for_command(env) == tmp_path / "bmiss" / "jax"
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "bmiss" / "jax") and (tmp_path / "bmiss" / "jax").is_dir()
    mine = {"JAX_COMPILATION_CACHE_DIR": "/elsewhere", "XDG_CACHE_HOME": str(tmp_path)}
    assert jaxcache.enable_for_command(mine) == Path("/elsewhere")  # the user's own setting wins
    off = {"BMISS_JAX_CACHE": "off"}
    assert jaxcache.enable_for_command(off) is None and "JAX_COMPILATION_CACHE_DIR" not in off


def test_the_command_fills_the_cache_and_library_use_does_not(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION", "BMISS_JAX"))}
    env.update(XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    out = tmp_path / "rec.npz"
    r = subprocess.run([sys.executable, "-m", "bmiss", "simulate", "--anatomy", "biceps_brachii", "--duration", "1",
                        "--n-units", "5", "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    cache = tmp_path / "bmiss" / "jax"
    assert cache.is_dir() and any(cache.iterdir()), "the command compiled kernels but left none in the cache"
    lib = tmp_path / "lib"
    env_lib = dict(env, XDG_CACHE_HOME=str(lib))
    r = subprocess.run([sys.executable, "-c", "import bmiss; bmiss.simulate('biceps_brachii', duration_s=1, n_units=5)"],
                       env=env_lib, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not (lib / "bmiss").exists()  # importing the library leaves JAX's configuration alone
