"""bioprop: biologically plausible learning rules for PyTorch, compared honestly with backprop."""

__version__ = "0.1.0"

from bioprop import data, models, rules

__all__ = ["__version__", "data", "models", "rules"]
