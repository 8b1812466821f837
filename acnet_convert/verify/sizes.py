"""The image sizes `verify` feeds. A model fixed at one size is verified there; one that takes
any size (a ResNet-ACNet checkpoint, a program exported with H and W dynamic) is verified at the
size it was fused at AND at a second size, odd and not square where the model allows it: a fused
conv whose padding, crop or stride phase is wrong can agree at one size (even, square) and not
at another. Which second size the model allows is asked of the train graph itself (one image,
`accepted`): a U-Net whose skips concatenate upsampled features takes only multiples of its
total stride, so an odd size is tried first, then multiples of 32."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from acnet_convert.common.sizes import Size

ODD_SHRINK, ODD_GROW = 0.85, 1.15  # the second size: about the fused size's pixels, H < W
STRIDE = 32  # the fallback's sides are multiples of this (ResNets, U-Nets and most backbones)


def takes_any_size(manifest: Any) -> bool:
    """Whether the train-form model runs at any size: a checkpoint (its ResNet-ACNet program is
    built for whatever size is fed) or a program whose input leaves H and W open."""
    if manifest.source.kind == "checkpoint":
        return True
    shape = manifest.inputs[0].shape if len(manifest.inputs) == 1 else ()
    return len(shape) == 4 and shape[2] < 1 and shape[3] < 1


def second_sizes(size: Size) -> list[Size]:
    """The second sizes to try, in order: odd sides near (0.85 H, 1.15 W), then multiples of
    STRIDE near them; never square, never the fused size."""
    h, w = size

    def odd(x: float) -> int:
        n = max(33, int(round(x)))
        return n if n % 2 else n + 1

    def multiple(x: float) -> int:
        return STRIDE * max(1, int(round(x / STRIDE)))

    first = (odd(h * ODD_SHRINK), odd(w * ODD_GROW))
    second = (multiple(h * ODD_SHRINK), multiple(w * ODD_GROW))
    out = []
    for a, b in (first, second):
        if a == b:
            b += 2 if b % 2 else STRIDE
        if (a, b) != (h, w) and (a, b) not in out:
            out.append((a, b))
    return out


def accepted(run: Callable[[Any], Any], candidates: Sequence[Size], channels: int, seed: int
             ) -> tuple[Size | None, list[str]]:
    """The first candidate (H, W) on which `run` (the train graph as written) computes an
    output from one random image, and why each one before it was refused."""
    import numpy as np

    refused = []
    for h, w in candidates:
        probe = np.random.default_rng(seed).standard_normal((1, channels, h, w), dtype=np.float32)
        try:
            run(probe)
        except Exception as err:  # noqa: BLE001 - Paddle raises many types for a shape it cannot take
            from acnet_convert.common.text import one_line

            refused.append(f"{h}x{w}: {one_line(err, 120)}")
            continue
        return (h, w), refused
    return None, refused
