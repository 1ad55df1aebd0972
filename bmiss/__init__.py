"""bmiss: decompose HD-EMG into motor-unit spike trains by inverting a differentiable forward model."""
__version__ = "0.1.0"
