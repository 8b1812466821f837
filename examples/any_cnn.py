"""ACBs in a paddle.vision model: train, export the train form, fuse, verify.

    python examples/any_cnn.py [--steps 20] [--out build/any_cnn] [--size 64]

Every depthwise 3x3 conv + BN of paddle.vision's MobileNetV2 becomes an `ACBlock` (3x3, 3x1
and 1x3 depthwise branches, each with its BN). The script trains a few steps on random data,
exports the train-form model with `paddle.jit.save` (what any Paddle user already does), and
runs `acnet-convert fuse` and `acnet-convert verify` on it.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np


def with_acbs(model):  # noqa: ANN001, ANN201 - a paddle.nn.Layer
    """Swap each depthwise 3x3 Conv2D + BatchNorm2D pair for an ACBlock (+ Identity)."""
    from paddle import nn

    from acnet_convert.nn import ACBlock

    for layer in model.sublayers(include_self=True):
        children = list(layer.named_children())
        for (name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2D) and isinstance(bn, nn.BatchNorm2D) and conv._kernel_size == [3, 3] and conv._groups > 1:
                setattr(layer, name, ACBlock(conv._in_channels, conv._out_channels, 3, conv._stride, groups=conv._groups))
                setattr(layer, bn_name, nn.Identity())
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("build/any_cnn"))
    args = parser.parse_args(argv)

    from acnet_convert.common import quiet

    paddle = quiet.import_paddle()
    from paddle.vision.models import mobilenet_v2

    model = with_acbs(mobilenet_v2(num_classes=10, scale=0.5))
    optimizer = paddle.optimizer.Momentum(0.01, parameters=model.parameters())
    rng = np.random.default_rng(0)
    for _ in range(args.steps):  # a stand-in for real training: the BN statistics move
        images = paddle.to_tensor(rng.normal(size=(8, 3, args.size, args.size)).astype(np.float32))
        labels = paddle.to_tensor(rng.integers(10, size=(8, 1)))
        loss = paddle.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
    model.eval()
    spec = paddle.static.InputSpec([None, 3, args.size, args.size], "float32", "image")
    paddle.jit.save(model, str(args.out / "train" / "inference"), input_spec=[spec])

    cli = [sys.executable, "-m", "acnet_convert"]
    deploy = args.out / "deploy"
    subprocess.run([*cli, "fuse", str(args.out / "train"), str(deploy), "--force"], check=True)
    return subprocess.run([*cli, "verify", str(deploy)], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
