"""Building a network from a :class:`ModelConfig`, including user-supplied architectures.

Bring your own ``torch.nn.Module``
----------------------------------
Set ``ModelConfig.architecture`` to ``"package.module:builder"``, where ``builder(config)``
returns a module that maps ``(N, in_channels, [Z,] Y, X)`` to *logits* of shape
``(N, config.out_channels, [Z,] Y, X)`` for every input whose spatial sizes are multiples of
``config.spatial_multiple`` (derived from ``config.depth``/``z_poolings``; put any parameters of
your own in ``config.extra``). Everything else — training, keep-best, export to ONNX, tiled
prediction, the Fiji commands — then works unchanged::

    # mypkg/nets.py
    def tiny_net(config):
        return torch.nn.Conv2d(config.in_channels, config.out_channels, 3, padding=1)

    ModelConfig(classes=("mito",), architecture="mypkg.nets:tiny_net", depth=1)

Because a saved config names code to import, loading a model with a custom architecture
requires ``trust_custom_code=True`` (``--trust-custom-code`` on the command line).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from ...errors import ConfigError, ModelFileError
from .model_config import ModelConfig
from .unet import build_unet

__all__ = ["build_model", "resolve_builder", "check_output_shape"]

Builder = Callable[[ModelConfig], nn.Module]

_BUILTIN: dict[str, Builder] = {"unet": build_unet}


def resolve_builder(architecture: str, trust_custom_code: bool = True) -> Builder:
    """Return the builder for a built-in name or a ``module:attr`` import path."""
    if architecture in _BUILTIN:
        return _BUILTIN[architecture]
    if ":" not in architecture:
        raise ConfigError(
            f"unknown architecture {architecture!r}; use 'unet' or 'package.module:builder' for your own module")
    if not trust_custom_code:
        raise ModelFileError(
            f"this model uses custom code {architecture!r}; load it only if you trust its source, "
            "with trust_custom_code=True (--trust-custom-code)")
    module_name, _, attr = architecture.partition(":")
    try:
        module = importlib.import_module(module_name)
        builder = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ModelFileError(
            f"cannot import the model's architecture {architecture!r} ({exc}); install the package that provides it") from exc
    if not callable(builder):
        raise ConfigError(f"{architecture!r} is not callable; it must be a function or class taking a ModelConfig")
    return builder  # type: ignore[no-any-return]


def build_model(config: ModelConfig, trust_custom_code: bool = True) -> nn.Module:
    """A freshly initialised network (logits output) for *config*."""
    builder = resolve_builder(config.architecture, trust_custom_code)
    module = builder(config)
    if not isinstance(module, nn.Module):
        raise ConfigError(f"architecture {config.architecture!r} returned {type(module).__name__}, not a torch.nn.Module")
    if config.architecture != "unet":
        check_output_shape(module, config)
    return module


def check_output_shape(module: nn.Module, config: ModelConfig) -> None:
    """Custom modules must keep the spatial size and emit one channel per output."""
    def size(m: int, at_least: int) -> int:
        return max(2 * m, -(-at_least // m) * m)

    mz, my, mx = config.spatial_multiple
    yx = (size(my, 32), size(mx, 48))  # unequal sizes catch swapped axes
    shape = (1, config.in_channels, *yx) if config.dims == 2 else (1, config.in_channels, size(mz, 8), *yx)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(shape))
    except Exception as exc:
        raise ConfigError(f"architecture {config.architecture!r} failed on an input of shape {shape}: {exc}") from exc
    finally:
        module.train(was_training)
    expected = (1, config.out_channels, *shape[2:])
    if tuple(out.shape) != expected:
        raise ConfigError(
            f"architecture {config.architecture!r} maps {shape} to {tuple(out.shape)}; expected {expected} "
            "(same spatial size, one channel per class, plus background for softmax)")
