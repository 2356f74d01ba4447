"""A run's model as the population engine reads it: the layer shapes and activation functions
(`Architecture`) and the initial weights, taken from the Keras builder under the run's seed.

The engine trains only what it can express exactly as Keras does, a stack of plain float32
Dense layers with bias; anything else raises `Unsupported` and goes to the keras engine. A
run's initial weights are one flat float32 vector in the order Keras lists the variables
(kernel, bias, kernel, bias, ...); a population stacks them and `Architecture.split` cuts the
[K, P] stack into one [K, *shape] tensor per variable, the form the program trains::

    >>> from sweep.spec import parse
    >>> from sweep.engines.population import initial_model
    >>> study = parse('[study]\\nname="d"\\nexample="exploding_gradients"', "d.toml")
    >>> arch, theta = initial_model(study, study.plan()[0].config, seed=0)
    >>> arch.shapes, theta.shape == (arch.n_params,)
    (((10, 128), (128, 64), (64, 1)), True)
    >>> [v.shape for v in arch.split(theta[None])]
    [(1, 10, 128), (1, 128), (1, 128, 64), (1, 64), (1, 64, 1), (1, 1)]
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...catalog import EXAMPLES
from ...spec import Config, Study
from .. import problem


class Unsupported(Exception):
    """A model or configuration this engine does not express; the keras engine trains it."""


@dataclass(frozen=True)
class Architecture:
    """The model as the program sees it: Dense layers (fan-in, units), their activation functions,
    and the kind of accuracy its metric computes."""

    shapes: tuple[tuple[int, int], ...]
    activations: tuple[Callable, ...]
    accuracy: str

    @property
    def variable_shapes(self) -> list[tuple[int, ...]]:
        return [s for i, o in self.shapes for s in ((i, o), (o,))]

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.variable_shapes)

    def split(self, theta: np.ndarray) -> list[np.ndarray]:
        """[K, P] flat weights -> the stacked variables [K, *shape], in the model's order."""
        out, start = [], 0
        for shape in self.variable_shapes:
            size = int(np.prod(shape))
            out.append(np.ascontiguousarray(theta[:, start:start + size].reshape(-1, *shape)))
            start += size
        return out

    def flops_per_sample(self) -> int:
        """Floating-point operations of one sample's forward and backward pass through the matmuls:
        2 per multiply-add, forward once, backward twice (weights' and inputs' gradients) except
        the first layer's input gradient, which training never needs."""
        forward = sum(2 * i * o for i, o in self.shapes)
        return 3 * forward - 2 * self.shapes[0][0] * self.shapes[0][1]


def read_model(model, accuracy: str) -> tuple[Architecture, np.ndarray]:
    """The architecture and the flat initial weights of a Keras stack of plain Dense layers."""
    import keras

    shapes, acts, weights = [], [], []
    for layer in model.layers:
        if type(layer) is not keras.layers.Dense or layer.bias is None or getattr(layer, "lora_enabled", False):
            raise Unsupported(f"layer {layer.name} ({type(layer).__name__}) is not a plain Dense layer with bias")
        if layer.kernel_regularizer or layer.bias_regularizer or layer.activity_regularizer \
                or layer.kernel_constraint or layer.bias_constraint or layer.dtype != "float32":
            raise Unsupported(f"layer {layer.name} has regularizers, constraints or a non-float32 dtype")
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        shapes.append(kernel.shape)
        acts.append(layer.activation)
        weights += [kernel.ravel(), bias]
    if not shapes:
        raise Unsupported("model has no layers")
    return Architecture(tuple(shapes), tuple(acts), accuracy), np.concatenate(weights)


@functools.lru_cache(maxsize=512)
def built_model(example: str, data_seed: int, activation: str, seed: int) -> tuple[Architecture, np.ndarray]:
    """The Keras build of one (example, activation, seed), read once and kept read-only."""
    from ...spec import config_from_dict

    config = config_from_dict({**EXAMPLES[example].defaults, "activation": activation})
    p = problem(_StudyView(example, data_seed), config, seed)  # type: ignore[arg-type]
    arch, theta = read_model(p.model, p.accuracy)
    theta.setflags(write=False)
    return arch, theta


@dataclass(frozen=True)
class _StudyView:
    """What `problem` reads of a study."""

    example: str
    data_seed: int


_build_lock = threading.Lock()


def initial_model(study: Study, config: Config, seed: int) -> tuple[Architecture, np.ndarray]:
    """The Keras builder's model for this run and seed, read as an architecture and flat weights.

    They depend on the layers and the seed only (the scaler keeps the feature count), so the
    model is built once per (example, activation, seed) and shared by every learning rate,
    clipping, scaler and schedule."""
    if study.example not in EXAMPLES:
        raise Unsupported(f"{study.example} is a user builder")
    with _build_lock:  # keras.utils.set_random_seed is process-wide
        return built_model(study.example, study.data_seed, config.activation, seed)
