"""Train a ResNet-18 ACNet in Paddle dygraph, save it, fuse it, verify it.

    python examples/train_acnet.py [--steps 200] [--out build/example]

The data set is synthetic (no download): 32x32 images of four textures (horizontal stripes,
vertical stripes, a checkerboard, a centred blob) with random phase, colour and noise. The
script prints the accuracy of the trained ACNet, of the same network after
`acnet_convert.nn.blocks.reparameterize`, and of the deploy model `acnet-convert fuse` writes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from acnet_convert.common import quiet

CLASSES = ("horizontal", "vertical", "checker", "blob")
SIZE = 32


def synthetic_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(len(CLASSES), size=n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    images = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i, label in enumerate(labels):
        period = rng.uniform(3, 8)
        phase = rng.uniform(0, 2 * np.pi)
        pattern = {
            0: np.sin(2 * np.pi * yy / period + phase),
            1: np.sin(2 * np.pi * xx / period + phase),
            2: np.sign(np.sin(2 * np.pi * yy / period + phase) * np.sin(2 * np.pi * xx / period)),
            3: np.exp(-((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2) / (2 * (period * 1.5) ** 2)) * 2 - 1,
        }[int(label)]
        colour = rng.uniform(0.3, 1.0, size=(3, 1, 1)).astype(np.float32)
        images[i] = pattern[None] * colour + rng.normal(0, 0.3, (3, SIZE, SIZE))
    return images, labels.astype(np.int64)


def accuracy(predict, images: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predict(images).argmax(axis=1) == labels))


def train(steps: int, ckpt_dir: Path, batch_size: int = 32, seed: int = 0, log=print):
    """Train, then `paddle.save(model.state_dict(), ckpt_dir/model.pdparams)`; returns the model."""
    paddle = quiet.import_paddle()
    from acnet_convert.nn.models import resnet18_acnet

    paddle.seed(seed)
    rng = np.random.default_rng(seed)
    model = resnet18_acnet(num_classes=len(CLASSES))
    optimizer = paddle.optimizer.Momentum(learning_rate=0.05, momentum=0.9, parameters=model.parameters(), weight_decay=1e-4)
    model.train()
    for step in range(1, steps + 1):
        images, labels = synthetic_batch(rng, batch_size)
        loss = paddle.nn.functional.cross_entropy(model(paddle.to_tensor(images)), paddle.to_tensor(labels))
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        if step % 50 == 0 or step == steps:
            log(f"step {step:4d}  loss {float(loss):.3f}")
    model.eval()
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    paddle.save(model.state_dict(), str(ckpt_dir / "model.pdparams"))
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("build/example"))
    args = parser.parse_args(argv)
    quiet.configure(verbose=False)
    paddle = quiet.import_paddle()
    from acnet_convert.commands.fuse import fuse
    from acnet_convert.nn import reparameterize
    from acnet_convert.commands.verify import verify

    ckpt, out = args.out / "ckpt", args.out / "deploy"
    model = train(args.steps, ckpt)
    images, labels = synthetic_batch(np.random.default_rng(1234), 512)

    def dygraph(m):
        return lambda x: m(paddle.to_tensor(x)).numpy()

    trained = accuracy(dygraph(model), images, labels)
    fused_in_place = accuracy(dygraph(reparameterize(model)), images, labels)
    fuse(ckpt, out, input_size=SIZE, force=True)
    report = verify(out, batch_size=64, batches=2)
    predictor = _predictor(paddle, out)
    deployed = accuracy(predictor, images, labels)
    print(f"accuracy on 512 held-out images: trained ACNet {trained:.1%}, "
          f"after reparameterize() {fused_in_place:.1%}, deploy model {deployed:.1%}")
    print(report.format_table())
    return 0 if report.ok else 1


def _predictor(paddle, out: Path):
    config = paddle.inference.Config(str(out / "inference.json"), str(out / "inference.pdiparams"))
    config.disable_glog_info()
    with quiet.silenced():
        predictor = paddle.inference.create_predictor(config)

    def run(images: np.ndarray) -> np.ndarray:
        handle = predictor.get_input_handle("image")
        handle.reshape(images.shape)
        handle.copy_from_cpu(images)
        predictor.run()
        return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()

    return run


if __name__ == "__main__":
    sys.exit(main())
