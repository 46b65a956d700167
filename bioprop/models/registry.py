"""Model registry: factories take ``input_shape`` and ``num_classes`` from the data set."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bioprop.errors import BiopropError
from bioprop.models.net import Net
from bioprop.registry import Registry, check_kwargs

MODELS: Registry[Callable[..., Net]] = Registry("model")
register_model = MODELS.register


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> Net:
    """Build a registered model; unknown options or impossible shapes are user errors."""
    factory = MODELS.get(name)
    check_kwargs(factory, kwargs, f"model {name!r}")
    try:
        return factory(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
    except (ValueError, TypeError, RuntimeError) as err:
        raise BiopropError(f"cannot build model {name!r} with {kwargs}: {err}") from err
