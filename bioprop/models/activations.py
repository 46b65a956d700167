"""Activations that know their derivative (rules without autograd need f'(z))."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from bioprop.registry import Registry

ACTIVATIONS: Registry[type[Activation]] = Registry("activation")


class Activation(nn.Module):
    """``forward(z)`` is f(z); ``derivative(z)`` is f'(z), elementwise."""

    def derivative(self, z: Tensor) -> Tensor:
        raise NotImplementedError


@ACTIVATIONS.register("identity")
class Identity(Activation):
    """f(z) = z (output layers)."""

    def forward(self, z: Tensor) -> Tensor:
        return z

    def derivative(self, z: Tensor) -> Tensor:
        return torch.ones_like(z)


@ACTIVATIONS.register("relu")
class ReLU(Activation):
    """f(z) = max(z, 0); f'(0) taken as 0, as autograd does."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.relu(z)

    def derivative(self, z: Tensor) -> Tensor:
        return (z > 0).to(z.dtype)


@ACTIVATIONS.register("tanh")
class Tanh(Activation):
    """f(z) = tanh(z)."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.tanh(z)

    def derivative(self, z: Tensor) -> Tensor:
        return 1 - torch.tanh(z) ** 2


@ACTIVATIONS.register("sigmoid")
class Sigmoid(Activation):
    """f(z) = 1 / (1 + exp(-z))."""

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z)

    def derivative(self, z: Tensor) -> Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)


@ACTIVATIONS.register("hard_sigmoid")
class HardSigmoid(Activation):
    """f(z) = clamp(z, 0, 1) (the CorInfoMax / equilibrium-propagation convention)."""

    def forward(self, z: Tensor) -> Tensor:
        return z.clamp(0, 1)

    def derivative(self, z: Tensor) -> Tensor:
        return ((z > 0) & (z < 1)).to(z.dtype)


@ACTIVATIONS.register("leaky_relu")
class LeakyReLU(Activation):
    """f(z) = max(z, 0.01 z)."""

    slope = 0.01

    def forward(self, z: Tensor) -> Tensor:
        return torch.nn.functional.leaky_relu(z, self.slope)

    def derivative(self, z: Tensor) -> Tensor:
        return torch.where(z > 0, 1.0, self.slope).to(z.dtype)


def get_activation(name: str) -> Activation:
    return ACTIVATIONS.get(name.replace("-", "_"))()
