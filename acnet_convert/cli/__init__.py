"""The `acnet-convert` command line: thin click commands over the library functions."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from acnet_convert.cli.endings import handled, say
from acnet_convert.cli.options import (ARCH_CHOICES, BATCH_PIXELS, BATCH_SIZE, BATCHES, INPUT_SIZE, NUM_CLASSES, SEED,
                                       SIZE, TOLERANCE, TOTAL_PIXELS, check_verify_budget, fuse_output_files,
                                       source_files, three_floats)
from acnet_convert.cli.output import Output
from acnet_convert.cli.versions import print_version
from acnet_convert.common import quiet, signals
from acnet_convert.common.sizes import size_text
from acnet_convert.common.text import printable
from acnet_convert.out import destination, staging
from acnet_convert.out.artifacts import ONNX_MODEL, ONNX_SOURCE, Artifacts


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
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
@click.option("--input-size", type=SIZE, default=None,
              help="N or HxW, each side 32..8192: the input size where the model leaves it open (default "
                   "224; a program exported for one size keeps it).")
@click.option("--onnx", "with_onnx", is_flag=True, help="Also write OUT/model.onnx.")
@click.option("--static-size", is_flag=True,
              help="With --onnx: fix the ONNX input's height and width to --input-size (default: symbolic where "
                   "the model takes any size).")
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
    (fluid.io.save_persistables) or a .pdparams file (paddle.save, paddle.static.save), or
    a train-form MODEL.onnx from any framework (torch.onnx.export of the model in eval mode).
    Every sum of conv+BN / BN branches over one tensor (ACNet, RepVGG, ...) becomes one conv
    with a bias, and every other conv+BN pair one conv. OUT receives inference.json +
    inference.pdiparams, deploy.pdparams and manifest.json, written atomically; for an ONNX
    source, model.onnx (the source with its regions folded, every other node as it was) and
    manifest.json.
    """
    options["onnx"] = options.pop("with_onnx")
    if source.suffix.lower() == ".onnx":
        return _fuse_onnx(ui, source, options)
    if options.get("static_size") and not options["onnx"]:
        raise click.UsageError("--static-size shapes the ONNX model: use it with --onnx")
    from acnet_convert.commands.fuse import fuse as run_fuse

    result = run_fuse(source, track=ui.progress, note=ui.note, **options)
    for warning in result.warnings:
        ui.note(f"warning: {printable(warning, 400)}")
    ui.result(result.summary())
    program = Artifacts(result.out_dir).program(result.manifest.formats[0])
    ui.result(f"deploy model: {printable(program)} (wrote {', '.join(result.files)})")


def _fuse_onnx(ui: Output, source: Path, options: dict[str, Any]) -> None:
    """fuse MODEL.onnx OUT: the fused ONNX model only (no Paddle model, no Paddle)."""
    paddle_only = {"arch": "auto", "num_classes": None, "paddle_format": "auto", "reference_layout": False,
                   "static_size": False}
    for key, default in paddle_only.items():
        if options[key] != default:
            raise click.UsageError(f"--{key.replace('_', '-')} does not apply to an ONNX source: fuse writes the "
                                   "source model with its regions folded, dimensions as they were")
    from acnet_convert.commands.fuse_onnx import fuse_onnx

    result = fuse_onnx(source, options["out"], input_size=options["input_size"], force=options["force"],
                       allow_nonfinite=options["allow_nonfinite"], track=ui.progress, note=ui.note)
    for warning in result.warnings:
        ui.note(f"warning: {printable(warning, 400)}")
    ui.result(result.summary())
    ui.result(f"fused model: {printable(Artifacts(result.out_dir).onnx)} (wrote {', '.join(result.files)})")


@cli.command()
@click.argument("out_dir", metavar="OUT", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Default: OUT/model.onnx.")
@click.option("--opset", type=click.IntRange(13, 21), default=17, show_default=True)
@click.option("--static-batch", is_flag=True, help="Fix the batch dimension to 1.")
@click.option("--static-size", is_flag=True,
              help="Fix height and width to the manifest's input size (default: symbolic where the model takes "
                   "any size).")
@click.option("--fp16", is_flag=True,
              help="Float16 weights and activations (inputs and outputs stay float32); refused when a weight "
                   "does not fit float16.")
@click.option("--force", is_flag=True, help="Replace the output file if it exists.")
@click.pass_obj
@handled
def export_onnx(ui: Output, out_dir: Path, output: Path | None, force: bool, **options: Any) -> None:
    """Write an ONNX model of the deploy model in OUT (made by `fuse`)."""
    manifest = Artifacts(out_dir).read_manifest()
    if manifest.source.format == ONNX_SOURCE:
        raise click.UsageError(f"{printable(out_dir)} was fused from an ONNX model: its fused model is "
                               f"{printable(Artifacts(out_dir).onnx)} already")
    target = out_dir / ONNX_MODEL if output is None else output
    destination.check_file_destination(target, force, [*fuse_output_files(out_dir), *source_files(manifest)],
                                   what="-o" if output is not None else "output")
    from acnet_convert.commands.export_onnx import export_onnx as run_export

    done = run_export(Artifacts(out_dir), manifest, output, force=force, record=output is None, **options)
    if done.fp16:
        share = done.underflow / done.values if done.values else 0.0
        ui.result(f"float16: {done.underflow} of {done.values} weight values underflow to zero ({share:.2%})")
    hw = done.input_dims[2:]
    size = "dynamic" if done.dynamic_size else size_text(hw) if all(isinstance(d, int) for d in hw) else "x".join(map(str, hw))
    ui.result(f"wrote {printable(done.path)} (opset {done.opset}, batch {'1' if options['static_batch'] else 'dynamic'}, "
              f"size {size}, {'float16' if done.fp16 else 'float32'})")


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
@click.option("--crop", type=SIZE, default=None, help="With --images: centre crop, N or HxW.")
@click.option("--mean", default=None, callback=three_floats, help="With --images: R,G,B mean (of x / 255).")
@click.option("--std", default=None, callback=three_floats, help="With --images: R,G,B std (of x / 255).")
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("--per-layer", is_flag=True, help="Also check every fused group alone and name the first that diverges.")
@click.option("--allow-nonfinite", is_flag=True,
              help="For an OUT fused with --allow-nonfinite: read the source's NaN/Inf weights, and count outputs "
                   "that are NaN or Inf in both graphs alike as equal.")
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
    check_verify_budget(options["crop"] or manifest.input_hw, options["batch_size"], options["batches"], streamed)
    to_file = json_path is not None and str(json_path) != "-"
    if to_file:  # before the run, not after it
        read = [options[k] for k in ("source", "ckpt", "onnx", "inputs", "labels")] + source_files(manifest)
        destination.check_file_destination(json_path, False, read, what="--json",
                                       replaceable=destination.verify_report, force_flag=None)
    if manifest.source.format == ONNX_SOURCE:
        from acnet_convert.commands.verify_onnx import verify_onnx as run_verify
    else:
        from acnet_convert.commands.verify import verify as run_verify

    report = run_verify(out_dir, note=ui.note, track=ui.progress, **options)
    if json_path is not None:
        text = json.dumps(report.to_json(), indent=2)
        if not to_file:
            click.echo(text)
        else:
            staging.write_file(json_path, (text + "\n").encode(), replace=True, what="--json", check=destination.verify_report)
    if str(json_path) != "-":
        ui.result(report.format_table().rsplit("\n", 1)[0])  # the table, then its verdict line
        ui.verdict(report.verdict, always=not report.ok)
    return 0 if report.ok else 1


@cli.command()
@click.argument("path", metavar="SOURCE|OUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--input-size", type=SIZE, default=None,
              help="N or HxW, for multiply-add counts; default: the model's or the manifest's, else 224.")
@click.pass_obj
@handled
def inspect(ui: Output, path: Path, as_json: bool, input_size: tuple[int, int] | None) -> None:
    """Describe a SOURCE or a fuse output: what folds (each group by kind), the sums left as
    they are and why, ops by type, parameter and multiply-add totals of the train and deploy
    graphs. Checkpoints and OUT folders are read without Paddle; a program needs it."""
    from acnet_convert.commands.describe import describe, format_report

    report = describe(path, input_size=input_size)
    ui.result(json.dumps(report, indent=2) if as_json else format_report(report))


def main() -> None:
    """The console script: SIGTERM is handled like Ctrl-C from the start."""
    signals.install()
    try:
        code = cli.main(prog_name="acnet-convert", standalone_mode=False)
    except click.Abort as err:  # Ctrl-C or SIGTERM while click parsed, before `handled` was up
        interrupt = signals.received() or (err.__cause__ if isinstance(err.__cause__, KeyboardInterrupt) else KeyboardInterrupt())
        say(signals.describe(interrupt))
        sys.exit(signals.exit_code(interrupt))
    except KeyboardInterrupt as err:
        say(signals.describe(err))
        sys.exit(signals.exit_code(err))
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
