"""Models: layered nets of weight blocks, built by name from the registry."""

import bioprop.models.spiking  # noqa: F401  (registers the spiking models)
from bioprop.models import conv, vgg  # noqa: F401  (importing registers the models)
from bioprop.models.activations import ACTIVATIONS, Activation, get_activation
from bioprop.models.mlp import mlp
from bioprop.models.net import Block, LayerTrace, Net, count_params
from bioprop.models.registry import MODELS, build_model, register_model

__all__ = [
    "ACTIVATIONS",
    "MODELS",
    "Activation",
    "Block",
    "LayerTrace",
    "Net",
    "build_model",
    "count_params",
    "get_activation",
    "mlp",
    "register_model",
]
