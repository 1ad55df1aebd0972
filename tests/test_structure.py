"""The package's structure stays as the README describes it: no import circle (function-local
imports counted), and ``import bmiss.cli`` loads no numerical library."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_import_cycle_among_the_package_modules():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import import_graph
    finally:
        sys.path.pop(0)
    g = import_graph.edges(import_graph.modules())
    for m in list(g):
        g[m] = {t for t in g[m] if not t.startswith(m + ".")}
    assert import_graph.sccs(g) == []
    assert "bmiss.geometry" in g and "bmiss.anatomy" in g["bmiss.geometry"]  # the graph is read, not empty


def test_cli_import_is_light():
    code = "import sys, bmiss.cli; print(sorted(m for m in ('jax', 'numpy', 'optax', 'equinox') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
