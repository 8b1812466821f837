"""How an image becomes the deploy model's input: PaddleClas's ResizeImage + CropImage +
NormalizeImage + ToCHWImage, as OUT/inference.yml writes it (`deploy_config`) and verify
`--images` applies it (`verify.images`). Pure Python."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.sizes import SizeLike, as_size, size_text
from acnet_convert.common.text import printable

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCALE = 0.00392157  # 1/255 as PaddleClas writes it
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class Preprocess:
    """PaddleClas's ResizeImage + CropImage(size) + NormalizeImage + ToCHWImage. ResizeImage
    either scales the short side to `resize_short` or, with `resize` (H, W), the whole image to
    that size; `crop` (H, W) is the centre crop (equal to `resize`: no crop)."""

    resize_short: int | None
    crop: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    scale: float = SCALE
    interpolation: str = "bilinear"
    resize: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", as_size(self.crop))
        if self.resize is not None:
            object.__setattr__(self, "resize", as_size(self.resize))
        if min(self.crop) < 1:
            raise ConvertError(f"preprocessing: the crop size {size_text(self.crop)} must be >= 1")
        if (self.resize_short is None) == (self.resize is None):
            raise ConvertError("preprocessing: ResizeImage needs resize_short or size, one of them")
        if self.resize_short is not None and self.resize_short < max(self.crop):
            raise ConvertError(f"preprocessing: the short side ({self.resize_short}) must be at least the crop "
                               f"size ({size_text(self.crop)}) on both sides")
        if self.resize is not None and any(c > r for c, r in zip(self.crop, self.resize)):
            raise ConvertError(f"preprocessing: the crop {size_text(self.crop)} is larger than the resized image "
                               f"{size_text(self.resize)}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConvertError("preprocessing: mean and std need three values (R, G, B)")
        if any(not math.isfinite(s) or s <= 0 for s in self.std) or any(not math.isfinite(m) for m in self.mean):
            raise ConvertError("preprocessing: std must be positive and mean finite")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ConvertError("preprocessing: scale must be positive")
        if self.interpolation not in INTERPOLATIONS:
            raise ConvertError(f"preprocessing: interpolation {printable(self.interpolation)}: choose one of "
                               f"{', '.join(INTERPOLATIONS)}")

    def with_crop(self, crop: SizeLike) -> "Preprocess":
        """The same preprocessing for another crop (`--crop`): the short side, or the resized
        image, grows with it in proportion (ImageNet's 256/224)."""
        h, w = as_size(crop)
        if self.resize is not None:
            return replace(self, crop=(h, w), resize=(h, w))
        short = int(round(max(h, w) * self.resize_short / max(self.crop)))
        return replace(self, crop=(h, w), resize_short=max(short, h, w))


def default_preprocess(input_size: SizeLike) -> Preprocess:
    """ImageNet evaluation preprocessing for input size S: short side S * 256 / 224, crop S; a
    non-square H x W: the image resized to H x W."""
    h, w = as_size(input_size)
    if h != w:
        return Preprocess(resize_short=None, resize=(h, w), crop=(h, w))
    return Preprocess(resize_short=int(round(h * 256 / 224)), crop=(h, w))
