"""bmiss: decompose HD-EMG into motor-unit spike trains by inverting a differentiable forward model.

Notebook API::

    import bmiss
    rec = bmiss.simulate("biceps_brachii", duration_s=20, snr_db=20, seed=0)
    dec = bmiss.decompose(rec, method="bmiss")
    report = bmiss.evaluate(dec, rec)
    bmiss.export(dec, "units.csv")
"""
__version__ = "0.1.0"

from .api import decompose, evaluate, export, simulate  # noqa: E402
from .io import load_decomposition, load_recording, save_decomposition, save_recording  # noqa: E402
from .batch import batch  # noqa: E402  (the function; the package is bmiss.batch in sys.modules)

__all__ = ["simulate", "decompose", "evaluate", "export", "load_recording", "save_recording",
           "load_decomposition", "save_decomposition", "batch"]
