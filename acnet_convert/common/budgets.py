"""The sizes Paddle and memory can honour, one budget for every way a size gets in: the options
(--input-size, --crop, --resize-short, --batch-size, --batches), a program's fixed input size,
OUT/manifest.json's input shapes, OUT/inference.yml's crop and short side, an image's decoded and
resized size, a conv's stride, dilation and padding. Checked where each arrives, against these."""
from __future__ import annotations

from acnet_convert.common.errors import ConvertError, UsageError
from acnet_convert.common.sizes import MAX_SIZE, SizeLike, as_size

MAX_SIDE = MAX_SIZE  # height or width of a model input, a crop, a resized short side
MAX_DIM = 1 << 20  # any other fixed dimension of a model input (channels, features)
BATCH_PIXELS = 1 << 24  # per batch: 16.7 Mpx, 200 MB of float32 input (334 images at 224)
TOTAL_PIXELS = 1 << 27  # random inputs in all: 134 Mpx, 1.6 GB (2674 images at 224)
# One image as decoded, and as resized before its centre crop: 64 Mpx (8192 x 8192), 192 MB
# of RGB bytes and 768 MB as float32; a 613-byte PNG may claim 550000 x 1 and resize to 4 GB.
IMAGE_PIXELS = 1 << 26


def check_verify_budget(size: SizeLike, batch_size: int, batches: int, from_file: bool) -> None:
    """Refuse image counts that memory cannot hold, before any work: checked by the command
    line with the sizes the options and the manifest give, and by verify again with the size it
    will feed (OUT/inference.yml's crop, an --inputs file's). Random inputs may add one batch at
    a second size of about as many pixels: counted. Too many images is a usage error (exit 2:
    --batch-size and --batches say how many); an image too large to feed is bad input."""
    height, width = as_size(size)
    per_image = height * width
    size_shown = f"{height}x{width}"
    if max(height, width) > MAX_SIDE:
        raise ConvertError(f"images of {size_shown} are larger than verify feeds: at most {MAX_SIDE}x{MAX_SIDE}")
    if batch_size * per_image > BATCH_PIXELS:
        raise UsageError(f"--batch-size {batch_size} of {size_shown} images is more than one batch may hold: at most "
                         f"{max(1, BATCH_PIXELS // per_image)}")
    if not from_file and (batches + 1) * batch_size * per_image > TOTAL_PIXELS:
        raise UsageError(f"--batches {batches} x --batch-size {batch_size} of {size_shown} images is more than one "
                         f"run may hold: at most {max(1, TOTAL_PIXELS // per_image)} images")


def input_shape_problem(shape: tuple[int, ...] | list[int]) -> str | None:
    """Why a model input's shape is beyond the budget (None: it is not): every dimension -1
    (dynamic) or positive, an image's height and width at most MAX_SIDE, any other at most
    MAX_DIM."""
    for axis, d in enumerate(shape):
        if type(d) is not int or d == 0 or d < -1:
            return f"dimension {axis} is {d}"
        limit = MAX_SIDE if len(shape) == 4 and axis >= 2 else MAX_DIM
        if d > limit:
            return f"dimension {axis} is {d}, more than {limit}"
    return None
