"""The dygraph API users import: `ACBlock`, `reparameterize` and the ResNet-ACNet models, with
the family's plan (names and shapes described once, no Paddle). May import `fold` and `common`.

    from acnet_convert.nn import ACBlock, reparameterize, resnet50_acnet

The names load on first use, so `acnet_convert.nn.plan` is read without importing Paddle.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ACBlock": "blocks", "ConvBN": "blocks", "reparameterize": "blocks",
    "ResNetACNet": "models", "resnet18_acnet": "models", "resnet34_acnet": "models",
    "resnet50_acnet": "models", "resnet101_acnet": "models", "resnet152_acnet": "models",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
