"""Real images for `verify --images DIR`: find them, read their labels, preprocess them the way
the deploy model expects (`deploy_config.Preprocess`), and stream them in batches.

DIR is flat (every image unlabelled, unless `--labels FILE`) or in the ImageFolder layout: one
folder per class, the sorted folder names are the class indices 0, 1, ... (images inside a
class folder may sit in subfolders). `--labels FILE` holds `name index` lines, `name` the
image's path relative to DIR with `/` separators (PaddleClas's `val_list.txt` form); it
overrides the folder classes. Images are files ending in .jpg, .jpeg, .png, .bmp or .webp (any
case), read in sorted order.

Memory does not grow with DIR: the walk keeps one folder's names at a time, and only one
batch of images is decoded at once. An image that cannot be decoded (corrupt, truncated, not
an image, larger than Pillow's decompression-bomb limit) is skipped and reported to the caller
with the reason; it never stops the run.

Preprocessing follows PaddleClas's ResizeImage(resize_short, or size) + CropImage +
NormalizeImage + ToCHWImage, arithmetic included: EXIF orientation applied, RGB, both sides
scaled by resize_short / short side and rounded (or the image resized to H x W), resized with Pillow (`paddle.vision.transforms`'
PIL backend, bilinear by default; PaddleClas's default backend is OpenCV, whose bilinear
resampling differs in the last bits of the pixels), the centre crop of H x W at
((w - W) // 2, (h - H) // 2), then (x * scale - mean) / std in float32 and HWC -> CHW.
"""
from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from acnet_convert.out.deploy_config import Preprocess
from acnet_convert.common.budgets import IMAGE_PIXELS
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import kind_of, not_a_file
from acnet_convert.common.text import one_line, printable

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_MAX_LABEL_BYTES = 256 << 20


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _sorted_entries(folder: Path) -> tuple[list[str], list[str]]:
    """(subfolders, image files) of one folder, sorted by name; symlinks to folders not followed."""
    folders, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.name)
            elif _is_image(entry.name):
                files.append(entry.name)
    return sorted(folders), sorted(files)


def _walk(folder: Path, prefix: str) -> Iterator[str]:
    """Relative names (with '/') of the images under `folder`, depth first, sorted."""
    folders, files = _sorted_entries(folder)
    for name in files:
        yield prefix + name
    for name in folders:
        yield from _walk(folder / name, f"{prefix}{name}/")


def read_labels(path: Path) -> dict[str, int]:
    """`name index` lines (blank lines and # comments skipped) -> {name: index}."""
    path = Path(path)
    why = not_a_file(path)
    if why:
        raise ConvertError(f"--labels {printable(path)} {why}")
    if path.stat().st_size > _MAX_LABEL_BYTES:
        raise ConvertError(f"--labels {printable(path)} is too large to be a label list")
    labels: dict[str, int] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is not part of the first name
    except UnicodeDecodeError:
        raise ConvertError(f"--labels {printable(path)} is not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):  # "²" is a digit, not a number
            raise ConvertError(f"--labels {printable(path)} line {number}: expected 'name index', got {printable(line, 80)}")
        labels[parts[0].replace("\\", "/")] = int(parts[1])
    if not labels:
        raise ConvertError(f"--labels {printable(path)} holds no 'name index' line")
    return labels


@dataclass
class ImageSet:
    """The images of DIR, their labels (-1 unknown), walked lazily."""

    root: Path
    labels: dict[str, int] | None = None  # from --labels
    classes: list[str] | None = None  # ImageFolder class folders

    @classmethod
    def open(cls, root: Path, labels_file: Path | None = None) -> "ImageSet":
        root = Path(root)
        if not root.is_dir():
            raise ConvertError(f"--images {printable(root)} is not a folder")
        folders, _files = _sorted_entries(root)
        labels = read_labels(labels_file) if labels_file is not None else None
        images = cls(root, labels, folders or None)
        if len(images) == 0:
            raise ConvertError(f"--images {printable(root)} holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return images

    def names(self) -> Iterator[str]:
        yield from _walk(self.root, "")

    def __len__(self) -> int:
        if not hasattr(self, "_count"):
            self._count = sum(1 for _ in self.names())
        return self._count

    def label(self, name: str) -> int:
        if self.labels is not None:
            return self.labels.get(name, -1)
        if self.classes is not None and "/" in name:
            return self.classes.index(name.split("/", 1)[0])
        return -1

    def check_labels(self, num_classes: int | None) -> None:
        """Class indices must name an output of the model."""
        if num_classes is None:
            return
        top = max(self.labels.values()) if self.labels else len(self.classes or []) - 1
        if top >= num_classes:
            where = "--labels" if self.labels else f"{printable(self.root)} (one folder per class)"
            raise ConvertError(f"{where} names class {top}, but the model has {num_classes} classes")


def load_image(path: Path, preprocess: Preprocess) -> np.ndarray:
    """One image file -> float32 [3, crop H, crop W]. Raises OSError/ValueError for a bad file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from acnet_convert.common.quiet import import_paddle

    import_paddle()
    import paddle.vision.transforms.functional as F

    # opened without blocking and checked before Pillow reads it: a FIFO named like an image
    # would block the run forever (links are followed: image folders are often links)
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)), "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(f"{kind_of(mode)}, not an image file")
        os.set_blocking(f.fileno(), True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                opened = Image.open(f)
            except UnidentifiedImageError:  # its message names the file object, not the file
                raise ValueError("not an image Pillow can read (unknown format or damaged header)") from None
            with opened:
                w, h = opened.size  # from the header: the budgets apply before anything is decoded
                size = _resized(w, h, preprocess)
                if w * h > IMAGE_PIXELS or size[0] * size[1] > IMAGE_PIXELS:
                    raise ValueError(f"{w}x{h} pixels, resized to {size[1]}x{size[0]} before the crop: more than "
                                     f"{IMAGE_PIXELS >> 20} Mpixel")
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")
    size = _resized(*image.size, preprocess)  # EXIF orientation may have swapped the sides
    image = F.resize(image, size, interpolation=preprocess.interpolation)
    ch, cw = preprocess.crop
    if (ch, cw) != size:
        image = F.crop(image, (size[0] - ch) // 2, (size[1] - cw) // 2, ch, cw)
    x = np.asarray(image, dtype=np.float32)
    mean = np.asarray(preprocess.mean, np.float32).reshape(1, 1, 3)
    std = np.asarray(preprocess.std, np.float32).reshape(1, 1, 3)
    x = (x * np.float32(preprocess.scale) - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _resized(w: int, h: int, preprocess: Preprocess) -> tuple[int, int]:
    """(h, w) of a w x h image after ResizeImage: the whole image to `resize`, or its short side
    to `resize_short`."""
    if preprocess.resize is not None:
        return preprocess.resize
    percent = preprocess.resize_short / max(1, min(w, h))
    return int(round(h * percent)), int(round(w * percent))


@dataclass
class Batch:
    names: list[str]
    images: np.ndarray  # float32 [n, 3, crop H, crop W]
    labels: np.ndarray  # int64 [n], -1 unknown


class Batches:
    """The images in batches of `batch_size` files (fewer images when some are skipped);
    `len()` is the number of batches, for a progress bar."""

    def __init__(self, images: ImageSet, preprocess: Preprocess, batch_size: int,
                 skipped: Callable[[str, str], None]) -> None:
        self.images, self.preprocess, self.batch_size, self.skipped = images, preprocess, batch_size, skipped

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        names: list[str] = []
        for name in self.images.names():
            names.append(name)
            if len(names) == self.batch_size:
                yield self._load(names)
                names = []
        if names:
            yield self._load(names)

    def _load(self, names: list[str]) -> Batch:
        kept, arrays = [], []
        for name in names:
            try:
                arrays.append(load_image(self.images.root / name, self.preprocess))
                kept.append(name)
            except Exception as err:  # noqa: BLE001 - Pillow's decoders raise many types on bad files
                self.skipped(name, f"{type(err).__name__}: {one_line(err)}")
        stacked = np.stack(arrays) if arrays else np.zeros((0, 3, *self.preprocess.crop), np.float32)
        labels = np.asarray([self.images.label(n) for n in kept], np.int64)
        return Batch(kept, stacked, labels)
