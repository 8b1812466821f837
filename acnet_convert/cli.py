"""The `acnet-convert` command line: thin click commands over the library functions."""
from __future__ import annotations

import functools
import gc
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from acnet_convert import __version__, quiet
from acnet_convert.errors import ConvertError, MismatchError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 4
ARCH_CHOICES = ["auto", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


class Output:
    """What the commands print: results on stdout, progress and notes on stderr, both muted by -q."""

    def __init__(self, quiet_mode: bool, verbose: bool) -> None:
        self.quiet = quiet_mode
        self.verbose = verbose

    def result(self, text: str) -> None:
        if not self.quiet:
            click.echo(text)

    def note(self, text: str) -> None:
        if not self.quiet:
            click.echo(text, err=True)

    def progress(self, items: list[Any], label: str) -> Iterator[Any]:
        """A progress bar on a terminal; nothing when piped or quiet."""
        if self.quiet or not sys.stderr.isatty():
            yield from items
            return
        with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
            yield from bar


# each component, and the distributions that may provide it (CPU or GPU builds)
_COMPONENTS = (
    ("paddlepaddle", ("paddlepaddle", "paddlepaddle-gpu")),
    ("onnx", ("onnx",)),
    ("onnxruntime", ("onnxruntime-gpu", "onnxruntime")),
)


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"acnet-convert {__version__}"]
    for label, distributions in _COMPONENTS:
        found = "not installed"
        for distribution in distributions:
            try:
                found = version(distribution)
                break
            except PackageNotFoundError:
                continue
        lines.append(f"{label} {found}")
    return "\n".join(lines)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_versions())
        ctx.exit()


def handled(command: Callable[..., int | None]) -> Callable[..., None]:
    """Turn our errors into one line on stderr and the contract's exit codes."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        ui: Output = click.get_current_context().obj
        try:
            code = command(*args, **kwargs) or 0
        except (ConvertError, MismatchError) as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as err:  # noqa: BLE001 - a bug must still end in one line, not a traceback
            if ui.verbose:
                raise
            click.echo(f"internal error: {type(err).__name__}: {err} (rerun with -v for the traceback)", err=True)
            sys.exit(EXIT_INTERNAL)
        # Paddle leaves millions of objects behind; collecting them at interpreter exit took
        # 0.7-2 s of every run (measured). Nothing needs them collected: freeze and go.
        gc.freeze()
        sys.exit(code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the tool, Paddle, ONNX and ONNX Runtime versions and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show Paddle / ONNX Runtime logs and tracebacks.")
@click.option("-q", "--quiet", "quiet_mode", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet_mode: bool) -> None:
    """Fold ACNet asymmetric convolution blocks of a trained Paddle checkpoint into a
    deploy-mode model, prove it computes the same function, and export it to ONNX.

    Exit codes: 0 success, 1 verify mismatch, 2 usage, 3 bad input, 130 interrupted.
    """
    quiet.configure(verbose)
    ctx.obj = Output(quiet_mode, verbose)


@cli.command()
@click.argument("ckpt", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default="auto", show_default=True,
              help="Architecture; auto detects it from the tensor names.")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Class count; default: read from fc_0.b_0.")
@click.option("--input-size", type=click.IntRange(min=32), default=224, show_default=True,
              help="Height and width of the deploy model's input.")
@click.option("--onnx", "with_onnx", is_flag=True, help="Also write OUT/model.onnx.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--allow-nonfinite", is_flag=True, help="Convert even if weights hold NaN/Inf (warns).")
@click.pass_obj
@handled
def fuse(ui: Output, ckpt: Path, **options: Any) -> None:
    """Fuse the ACNet checkpoint CKPT into a deploy model in OUT.

    CKPT is a directory holding either one file per variable (fluid.io.save_persistables,
    paddle.static.save_vars) or one PREFIX.pdparams (paddle.static.save, paddle.save).
    OUT receives inference.json + inference.pdiparams, deploy.pdparams and manifest.json,
    written atomically.
    """
    from acnet_convert.convert import fuse as run_fuse

    options["onnx"] = options.pop("with_onnx")
    result = run_fuse(ckpt, track=ui.progress, note=ui.note, **options)
    for warning in result.warnings:
        ui.note(f"warning: {warning}")
    plan = result.plan
    acbs = sum(conv.is_acb for conv in plan.convs())
    plain = sum(not conv.is_acb for conv in plan.convs())
    ui.result(
        f"fused {plan.arch} ({plan.num_classes} classes): {acbs} ACBs and {plain} conv+BN into "
        f"{acbs + plain} convs; ignored {len(result.checkpoint.ignored)} non-weight variables"
    )
    files = ", ".join(sorted(p.name for p in result.out_dir.iterdir()))
    ui.result(f"deploy model: {result.out_dir / 'inference.json'} (wrote {files})")


@cli.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Default: OUT/model.onnx.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--static-batch", is_flag=True, help="Fix the batch dimension to 1.")
@click.pass_obj
@handled
def export_onnx(ui: Output, out_dir: Path, output: Path | None, opset: int, static_batch: bool) -> None:
    """Write an ONNX model of the fused network in OUT (made by `fuse`)."""
    from acnet_convert.onnx_writer import export_onnx as run_export

    path = run_export(out_dir, output, opset=opset, static_batch=static_batch)
    ui.result(f"wrote {path} (opset {opset}, batch {'1' if static_batch else 'dynamic'})")


@cli.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="Source checkpoint; default: the one named in OUT/manifest.json.")
@click.option("--atol", type=float, default=1e-4, show_default=True)
@click.option("--rtol", type=float, default=1e-5, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--batches", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--inputs", type=click.Path(path_type=Path), default=None,
              help="Preprocessed images, float32 [N,3,H,W] .npy, instead of random ones.")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("--per-layer", is_flag=True, help="Also compare every layer and name the first that diverges.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON ('-' for stdout).")
@click.pass_obj
@handled
def verify(ui: Output, out_dir: Path, json_path: Path | None, **options: Any) -> int:
    """Run the train graph, the deploy model (paddle.inference) and model.onnx (if present)
    on the same inputs and check they agree. Exit 0 when they do, 1 when not."""
    from acnet_convert.verify import verify as run_verify

    report = run_verify(out_dir, note=ui.note, track=ui.progress, **options)
    if json_path is not None:
        text = json.dumps(report.to_json(), indent=2)
        if str(json_path) == "-":
            click.echo(text)
        else:
            json_path.write_text(text + "\n")
    if str(json_path) != "-":
        ui.result(report.format_table())
    return 0 if report.ok else 1


@cli.command()
@click.argument("path", metavar="CKPT|OUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--input-size", type=click.IntRange(min=32), default=None,
              help="For multiply-add counts; default: the manifest's, else 224.")
@click.pass_obj
@handled
def inspect(ui: Output, path: Path, as_json: bool, input_size: int | None) -> None:
    """Describe a checkpoint or a fuse output: format, architecture, layers, parameter and
    multiply-add totals for the train and deploy graphs. Does not import Paddle."""
    from acnet_convert.inspect import format_report, inspect_path

    report = inspect_path(path, input_size=input_size)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


def main() -> None:
    try:
        cli(prog_name="acnet-convert")
    except KeyboardInterrupt:  # while click parses, before a command's own handler is up
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
