"""The `acnet-convert` command line: thin click commands over the library functions."""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from acnet_convert import __version__, destination, quiet, signals, staging
from acnet_convert.artifacts import ONNX_MODEL, Artifacts
from acnet_convert.text import one_line, printable, printable_lines
from acnet_convert.errors import ConvertError

EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a filter whose reader went away returns
_LINE = 2000  # characters of one printed line (an error naming a few paths)
ARCH_CHOICES = ["auto", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


class Output:
    """What the commands print: results on stdout, progress and notes on stderr, both muted by -q."""

    def __init__(self, quiet_mode: bool, verbose: bool) -> None:
        self.quiet = quiet_mode
        self.verbose = verbose

    def result(self, text: str) -> None:
        """A result on stdout. A block keeps its lines; no other control character passes."""
        if not self.quiet:
            click.echo(printable_lines(text))

    def note(self, text: str) -> None:
        """One line on stderr (progress, warnings), escaped: it cannot forge a second line."""
        if not self.quiet:
            click.echo(printable(text, _LINE), err=True)

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
        text = f"{label} not installed"
        for distribution in distributions:
            try:
                text = f"{label} {version(distribution)}{_gpu_support(label, distribution)}"
                break
            except PackageNotFoundError:
                continue
        lines.append(text)
    return "\n".join(lines)


def _gpu_support(label: str, distribution: str) -> str:
    """What a component can run on: Paddle's CUDA build, ONNX Runtime's execution providers,
    and whether the NVIDIA driver reports a device (a provider list alone does not say)."""
    build = "" if distribution == label else f"{distribution}: "
    try:
        if label == "paddlepaddle":
            paddle = quiet.import_paddle()
            if not paddle.device.is_compiled_with_cuda():
                return f" ({build}CPU-only build, no CUDA)"
            return f" ({build}CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()})"
        if label == "onnxruntime":
            from acnet_convert.device import driver_gpus, ort_providers

            count, reason = driver_gpus()
            # (the test-suite and scripts read "not installed" as a missing component)
            gpu = f"{count} CUDA GPU(s)" if count else f"no CUDA GPU: {reason.replace('is not installed', 'is missing')}"
            return f" ({build}providers {', '.join(ort_providers())}; {gpu})"
    except Exception as err:  # noqa: BLE001 - a broken install still gets its version line
        return f" (cannot be imported: {one_line(err)})"
    return ""


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_versions())
        ctx.exit()


def _say(line: str) -> None:
    """One line on stderr, escaped; nothing if stderr itself is gone."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(printable(line, _LINE), err=True)


def _input_error(err: BaseException) -> str:
    """What the standard library's errors about an input mean, in one line."""
    if isinstance(err, MemoryError):
        return "out of memory: the input is too large for this machine"
    if isinstance(err, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(err, OverflowError):
        return f"a number in the input is out of range ({one_line(err)})"
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        both = f"{printable(err.filename)} -> {printable(err.filename2)}" if err.filename2 else printable(err.filename)
        return f"{both}: {err.strerror}"
    return one_line(err)


def _stdout_closed() -> int:
    """stdout's reader went away (`| head`, `| true`): stop without a word, as a filter killed by
    SIGPIPE would; stdout goes to /dev/null so the flush at exit cannot complain either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def handled(command: Callable[..., int | None]) -> Callable[..., None]:
    """Turn every way a command can end into at most one line on stderr and the contract's exit
    code: bad input 3 (ConvertError, and the OSError, RecursionError, OverflowError and
    MemoryError an input provokes), mismatch 1, Ctrl-C 130, SIGTERM 143, a closed stdout 141
    (silently), anything else 4, "internal error" (with -v, after its traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        ui: Output = click.get_current_context().obj
        try:
            code = command(*args, **kwargs) or 0
            signals.raise_if_received()  # a library swallowed the interrupt: still one
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BaseException as err:  # noqa: BLE001 - every ending gets its line and code
            code = _ending(err, ui.verbose)
        # Paddle leaves millions of objects behind; collecting them at interpreter exit took
        # 0.7-2 s of every run (measured). Nothing needs them collected: freeze and go.
        gc.freeze()
        sys.exit(code)

    return wrapper


def _ending(err: BaseException, verbose: bool) -> int:
    """The line and exit code for a command that raised `err`."""
    # Paddle turns an interrupt raised inside its C++ callbacks into a RuntimeError: the signal
    # that arrived decides, whatever the exception became
    interrupt = signals.received() or (err if isinstance(err, KeyboardInterrupt) else None)
    if interrupt is not None:
        _say(signals.describe(interrupt))
        return signals.exit_code(interrupt)
    if isinstance(err, ConvertError):
        _say(f"error: {err}")
        return err.exit_code
    if isinstance(err, BrokenPipeError):
        return _stdout_closed()
    if isinstance(err, (OSError, RecursionError, OverflowError, MemoryError)):
        if verbose:
            traceback.print_exception(err)
        _say(f"error: {_input_error(err)}")
        return EXIT_BAD_INPUT
    if isinstance(err, Exception):
        if verbose:
            traceback.print_exception(err)
        hint = "" if verbose else " (rerun with -v for the traceback)"
        _say(f"internal error: {type(err).__name__}: {one_line(err)}{hint}")
        return EXIT_INTERNAL
    raise err  # SystemExit and the like: not ours to translate


class _FiniteFloat(click.FloatRange):
    """A FloatRange that also refuses NaN (which compares false with both bounds)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        result = super().convert(value, param, ctx)
        if math.isnan(result):
            self.fail(f"{value!r} is not a number", param, ctx)
        return result


# What Paddle and memory can honour. The manifest reader (artifacts) accepts input sizes to
# 8192 and class counts to 2**24; verify's images are bounded again by pixels, below.
INPUT_SIZE = click.IntRange(32, 8192)
NUM_CLASSES = click.IntRange(1, 1 << 24)
BATCH_SIZE = click.IntRange(1, 4096)
BATCHES = click.IntRange(1, 100_000)
SEED = click.IntRange(0, 2**32 - 1)
TOLERANCE = _FiniteFloat(0.0, 1e6)
BATCH_PIXELS = 1 << 24  # per batch: 16.7 Mpx, 200 MB of float32 input (334 images at 224)
TOTAL_PIXELS = 1 << 27  # random inputs in all: 134 Mpx, 1.6 GB (2674 images at 224)


def _check_verify_budget(input_size: int, batch_size: int, batches: int, from_file: bool) -> None:
    """Refuse, before any work, image counts that memory cannot hold."""
    per_image = input_size * input_size
    if batch_size * per_image > BATCH_PIXELS:
        raise ConvertError(f"--batch-size {batch_size} of {input_size}x{input_size} images is more than one batch "
                           f"may hold: at most {max(1, BATCH_PIXELS // per_image)}")
    if not from_file and batches * batch_size * per_image > TOTAL_PIXELS:
        raise ConvertError(f"--batches {batches} x --batch-size {batch_size} of {input_size}x{input_size} images is "
                           f"more than one run may hold: at most {max(1, TOTAL_PIXELS // per_image)} images")


def _fuse_output_files(out_dir: Path) -> list[Path]:
    """The files of OUT that export-onnx and verify read (and must not overwrite)."""
    return [out_dir / name for name in sorted(destination.fuse_file_names() - {ONNX_MODEL})]


def _source_files(manifest: Any) -> list[Path]:
    """The source fuse read (never overwritten): for a program, its parameters beside it too."""
    path = Path(manifest.source.path)
    return [path, path.with_suffix(".pdiparams")] if manifest.source.kind == "program" else [path]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the tool, Paddle, ONNX and ONNX Runtime versions and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show Paddle / ONNX Runtime logs and tracebacks.")
@click.option("-q", "--quiet", "quiet_mode", is_flag=True, help="Print nothing but errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet_mode: bool) -> None:
    """Fold the branches of a trained Paddle CNN (ACNet's asymmetric convolution blocks,
    RepVGG-style 1x1 and identity branches, every conv+BN) into a deploy model with one conv
    per block, prove it computes the same function, and export it to ONNX.

    Exit codes: 0 success, 1 verify mismatch, 2 usage, 3 bad input, 4 internal error,
    130 interrupted (Ctrl-C), 141 output pipe closed, 143 terminated (SIGTERM).
    """
    quiet.configure(verbose)
    ctx.obj = Output(quiet_mode, verbose)


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(ARCH_CHOICES), default="auto", show_default=True,
              help="Architecture; auto detects it from the tensor names.")
@click.option("--num-classes", type=NUM_CLASSES, default=None,
              help="Class count; default: read from fc_0.b_0.")
@click.option("--input-size", type=INPUT_SIZE, default=224, show_default=True,
              help="Height and width of the deploy model's input.")
@click.option("--onnx", "with_onnx", is_flag=True, help="Also write OUT/model.onnx.")
@click.option("--dynamic-size", is_flag=True, help="With --onnx: height and width symbolic (any input size).")
@click.option("--paddle-format", type=click.Choice(["auto", "pir", "legacy", "both"]), default="auto", show_default=True,
              help="Paddle deploy model: PIR inference.json, legacy inference.pdmodel (OpenVINO, Paddle Lite, "
                   "Paddle 2.x), or both (they share inference.pdiparams); auto: both when every op has a legacy "
                   "form, else PIR with a warning.")
@click.option("--reference-layout", is_flag=True,
              help="ResNet-ACNet: also write OUT/persistables/, the per-variable files the reference "
                   "resnet_acnet.py deploy program loads.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@click.option("--allow-nonfinite", is_flag=True, help="Convert even if weights hold NaN/Inf (warns).")
@click.pass_obj
@handled
def fuse(ui: Output, source: Path, **options: Any) -> None:
    """Fuse the trained model SOURCE into a deploy model in OUT.

    SOURCE is a train-form Paddle inference model of any CNN (PREFIX.json or PREFIX.pdmodel
    with PREFIX.pdiparams, from paddle.jit.save or save_inference_model; the folder or the
    prefix), or a ResNet-ACNet checkpoint: a folder of per-variable files
    (fluid.io.save_persistables) or a .pdparams file (paddle.save, paddle.static.save).
    Every sum of conv+BN / BN branches over one tensor (ACNet, RepVGG, ...) becomes one conv
    with a bias, and every other conv+BN pair one conv. OUT receives inference.json +
    inference.pdiparams, deploy.pdparams and manifest.json, written atomically.
    """
    options["onnx"] = options.pop("with_onnx")
    if options.get("dynamic_size") and not options["onnx"]:
        raise click.UsageError("--dynamic-size shapes the ONNX model: use it with --onnx (the Paddle model takes any size)")
    from acnet_convert.convert import fuse as run_fuse

    result = run_fuse(source, track=ui.progress, note=ui.note, **options)
    for warning in result.warnings:
        ui.note(f"warning: {printable(warning, 400)}")
    counts = result.counts
    what = result.manifest.arch or f"{printable(source)}"
    classes = f" ({result.manifest.num_classes} classes)" if result.manifest.num_classes else ""
    ignored = f"; ignored {result.source.ignored} non-weight variables" if result.source.kind == "checkpoint" else ""
    declined = f"; left {len(result.declined)} sums as they are (see inspect)" if result.declined else ""
    ui.result(
        f"fused {what}{classes}: {counts['sum']} branch sums and {counts['conv_bn']} conv+BN into "
        f"{counts['sum'] + counts['conv_bn']} convs{declined}{ignored}"
    )
    program = Artifacts(result.out_dir).program(result.manifest.formats[0])
    ui.result(f"deploy model: {printable(program)} (wrote {', '.join(result.files)})")


@cli.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Default: OUT/model.onnx.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--static-batch", is_flag=True, help="Fix the batch dimension to 1.")
@click.option("--dynamic-size", is_flag=True, help="Leave height and width symbolic: any input size.")
@click.option("--fp16", is_flag=True,
              help="Float16 weights and activations (inputs and outputs stay float32); refused when a weight "
                   "does not fit float16.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.pass_obj
@handled
def export_onnx(ui: Output, out_dir: Path, output: Path | None, force: bool, **options: Any) -> None:
    """Write an ONNX model of the deploy model in OUT (made by `fuse`)."""
    manifest = Artifacts(out_dir).read_manifest()
    target = out_dir / ONNX_MODEL if output is None else output
    destination.check_file_destination(target, force, [*_fuse_output_files(out_dir), *_source_files(manifest)],
                                   what="-o" if output is not None else "output")
    from acnet_convert.export import export_onnx as run_export

    done = run_export(Artifacts(out_dir), manifest, output, force=force, **options)
    if done.fp16:
        share = done.underflow / done.values if done.values else 0.0
        ui.result(f"float16: {done.underflow} of {done.values} weight values underflow to zero ({share:.2%})")
    size = "dynamic" if options["dynamic_size"] else f"{manifest.input_size}x{manifest.input_size}"
    ui.result(f"wrote {printable(done.path)} (opset {done.opset}, batch {'1' if options['static_batch'] else 'dynamic'}, "
              f"size {size}, {'float16' if done.fp16 else 'float32'})")


def _three_floats(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, ...] | None:
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


@cli.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--source", type=click.Path(path_type=Path), default=None,
              help="The train-form model or checkpoint; default: the one named in OUT/manifest.json.")
@click.option("--ckpt", type=click.Path(path_type=Path), default=None, help="Same as --source.")
@click.option("--onnx", type=click.Path(path_type=Path), default=None,
              help="An ONNX model to check instead of OUT/model.onnx (e.g. export-onnx -o).")
@click.option("--atol", type=TOLERANCE, default=1e-4, show_default=True)
@click.option("--rtol", type=TOLERANCE, default=1e-5, show_default=True,
              help="Pass when every |a-b| <= atol + rtol * (the image's largest |output|).")
@click.option("--batch-size", type=BATCH_SIZE, default=8, show_default=True,
              help=f"Images per batch; with the input size, at most {BATCH_PIXELS >> 20} Mpixel per batch.")
@click.option("--batches", type=BATCHES, default=4, show_default=True,
              help=f"Random batches; at most {TOTAL_PIXELS >> 20} Mpixel in all.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--inputs", type=click.Path(path_type=Path), default=None,
              help="Preprocessed images, float32 [N,3,H,W] .npy, instead of random ones.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="A folder of JPEG/PNG images (flat, or one folder per class), streamed; "
                   "preprocessed as OUT/inference.yml says.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="With --images: 'name index' lines giving each image's class.")
@click.option("--resize-short", type=INPUT_SIZE, default=None, help="With --images: short side before the crop.")
@click.option("--crop", type=INPUT_SIZE, default=None, help="With --images: centre crop size.")
@click.option("--mean", default=None, callback=_three_floats, help="With --images: R,G,B mean (of x / 255).")
@click.option("--std", default=None, callback=_three_floats, help="With --images: R,G,B std (of x / 255).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("--per-layer", is_flag=True, help="Also check every fused group alone and name the first that diverges.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the report as JSON ('-' for stdout).")
@click.pass_obj
@handled
def verify(ui: Output, out_dir: Path, json_path: Path | None, **options: Any) -> int:
    """Run the train-form model, every Paddle deploy model in OUT (paddle.inference) and
    model.onnx (if present) on the same inputs and check they agree. Exit 0 when they do,
    1 when not."""
    manifest = Artifacts(out_dir).read_manifest()
    streamed = options["inputs"] is not None or options["images"] is not None
    _check_verify_budget(options["crop"] or manifest.input_size, options["batch_size"], options["batches"], streamed)
    to_file = json_path is not None and str(json_path) != "-"
    if to_file:  # before the run, not after it
        read = [options[k] for k in ("source", "ckpt", "onnx", "inputs", "labels")] + _source_files(manifest)
        destination.check_file_destination(json_path, False, read, what="--json",
                                       replaceable=destination.verify_report, force_flag=None)
    from acnet_convert.verify import verify as run_verify

    report = run_verify(out_dir, note=ui.note, track=ui.progress, **options)
    if json_path is not None:
        text = json.dumps(report.to_json(), indent=2)
        if not to_file:
            click.echo(text)
        else:
            staging.write_file(json_path, (text + "\n").encode(), replace=True, what="--json", check=destination.verify_report)
    if str(json_path) != "-":
        ui.result(report.format_table())
    return 0 if report.ok else 1


@cli.command()
@click.argument("path", metavar="SOURCE|OUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--input-size", type=INPUT_SIZE, default=None,
              help="For multiply-add counts; default: the model's or the manifest's, else 224.")
@click.pass_obj
@handled
def inspect(ui: Output, path: Path, as_json: bool, input_size: int | None) -> None:
    """Describe a SOURCE or a fuse output: what folds (each group by kind), the sums left as
    they are and why, ops by type, parameter and multiply-add totals of the train and deploy
    graphs. Checkpoints and OUT folders are read without Paddle; a program needs it."""
    from acnet_convert.describe import describe, format_report

    report = describe(path, input_size=input_size)
    ui.result(json.dumps(report, indent=2) if as_json else format_report(report))


def main() -> None:
    """The console script: SIGTERM is handled like Ctrl-C from the start."""
    signals.install()
    try:
        code = cli.main(prog_name="acnet-convert", standalone_mode=False)
    except click.Abort as err:  # Ctrl-C or SIGTERM while click parsed, before `handled` was up
        interrupt = signals.received() or (err.__cause__ if isinstance(err.__cause__, KeyboardInterrupt) else KeyboardInterrupt())
        _say(signals.describe(interrupt))
        sys.exit(signals.exit_code(interrupt))
    except KeyboardInterrupt as err:
        _say(signals.describe(err))
        sys.exit(signals.exit_code(err))
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
