"""The bounds of the CLI's options, and the checks made on them before any work."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from acnet_convert.common.errors import UsageError
from acnet_convert.common.sizes import MAX_SIZE, MIN_SIZE, parse_size
from acnet_convert.out import destination
from acnet_convert.out.artifacts import ONNX_MODEL


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses NaN (which compares false with both bounds)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        result = super().convert(value, param, ctx)
        if math.isnan(result):
            self.fail(f"{value!r} is not a number", param, ctx)
        return result


class _Size(click.ParamType):
    """N or HxW (height x width), each side in MIN_SIZE..MAX_SIZE: (H, W)."""

    name = "N|HxW"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            return parse_size(value, param.opts[0] if param else "size")
        except UsageError as err:
            self.fail(str(err).split(": ", 1)[-1], param, ctx)


ARCH_CHOICES = ["auto", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]

# What Paddle and memory can honour (`common.sizes`, `common.budgets`, where every other way in
# is checked too).
INPUT_SIZE = click.IntRange(MIN_SIZE, MAX_SIZE)
SIZE = _Size()
NUM_CLASSES = click.IntRange(1, 1 << 24)
BATCH_SIZE = click.IntRange(1, 4096)
BATCHES = click.IntRange(1, 100_000)
SEED = click.IntRange(0, 2**32 - 1)
TOLERANCE = _FiniteFloat(0.0, 1e6)
TIME_LIMIT = click.IntRange(1, 10**7)  # seconds
MEMORY_LIMIT = click.IntRange(64, 1 << 30)  # MiB


def fuse_output_files(out_dir: Path) -> list[Path]:
    """The files of OUT that export-onnx and verify read (and must not overwrite)."""
    return [out_dir / name for name in sorted(destination.fuse_file_names() - {ONNX_MODEL})]


def source_files(manifest: Any) -> list[Path]:
    """The source fuse read (never overwritten): for a program, its parameters beside it too."""
    path = Path(manifest.source.path)
    return [path, path.with_suffix(".pdiparams")] if manifest.source.kind == "program" else [path]


def three_floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
    """'0.485,0.456,0.406' -> three finite floats (R, G, B)."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise click.BadParameter("expected three numbers R,G,B, e.g. 0.485,0.456,0.406", ctx, param)
    return numbers
