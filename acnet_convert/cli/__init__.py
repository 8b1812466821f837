"""The `acnet-convert` command line: thin click commands that check what is cheap to check (the
destination, the option budgets, OUT's manifest), run the work in a supervised child
(`supervise`, `worker`), commit what it wrote, and print its outcome. This process never imports
Paddle, onnx or ONNX Runtime."""
from __future__ import annotations

from acnet_convert.common import signals

# First of all: from here on SIGINT, SIGTERM and SIGHUP end the run with 130/143 and leave
# nothing, even while the modules below are being imported.
signals.install()
try:
    import json
    import sys
    from dataclasses import replace
    from pathlib import Path
    from typing import Any

    import click

    from acnet_convert.cli.endings import handled, say
    from acnet_convert.cli.options import (ARCH_CHOICES, BATCH_SIZE, BATCHES, INPUT_SIZE, MEMORY_LIMIT, NUM_CLASSES,
                                           SEED, SIZE, TIME_LIMIT, TOLERANCE, fuse_output_files, source_files,
                                           three_floats)
    from acnet_convert.cli.output import Output
    from acnet_convert.common.budgets import BATCH_PIXELS, TOTAL_PIXELS, check_verify_budget
    from acnet_convert.common.sizes import as_size, size_text
    from acnet_convert.common.text import printable
    from acnet_convert.out import destination, staging
    from acnet_convert.out.artifacts import ONNX_MODEL, ONNX_SOURCE, Artifacts
    from acnet_convert.supervise.child import run as supervised
    from acnet_convert.supervise.limits import DEFAULT_TIME_LIMIT, MIB, Limits
except KeyboardInterrupt as interrupt:
    signals.exit_now(interrupt)

_LIMITS = "acnet_convert.limits"  # click's ctx.meta key: the limits the global options set


def _run(command: str, options: dict[str, Any], inputs: list[Path | None] = (), batch_pixels: int = 0) -> Any:
    """The command's work, in a supervised child under the run's limits (see `supervise`)."""
    ctx = click.get_current_context()
    ui: Output = ctx.obj if isinstance(ctx.obj, Output) else Output(False, False)
    limits: Limits = ctx.meta.get(_LIMITS, Limits())
    memory = limits.memory_for(inputs, batch_pixels)
    return supervised(command, _plain(options), ui, memory=memory, time_limit=limits.time, verbose=ui.verbose)


def _plain(value: Any) -> Any:
    """Options as JSON values: paths as strings, tuples (sizes, R,G,B) as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(_run("versions", {})["text"])
        ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the tool, Paddle, ONNX and ONNX Runtime versions and exit.")
@click.option("-v", "--verbose", is_flag=True, help="Show Paddle / ONNX Runtime logs and tracebacks.")
@click.option("-q", "--quiet", "quiet_mode", is_flag=True, help="Print nothing but errors.")
@click.option("--time-limit", type=TIME_LIMIT, default=DEFAULT_TIME_LIMIT, show_default=True, metavar="SECONDS",
              help="Stop the work when it goes this long without progress (one model loaded or saved, one batch "
                   "run): a hang ends in exit 3.")
@click.option("--memory-limit", type=MEMORY_LIMIT, default=None, metavar="MIB",
              help="Stop the work when it holds more memory than this (exit 3); default: from the size of the "
                   "inputs.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, quiet_mode: bool, time_limit: int, memory_limit: int | None) -> None:
    """Fold the branches of a trained Paddle CNN (ACNet's asymmetric convolution blocks,
    RepVGG-style 1x1 and identity branches, every conv+BN) into a deploy model with one conv
    per block, prove it computes the same function, and export it to ONNX.

    The work runs in a child process under a memory and a time limit: a crash or a hang of
    Paddle or ONNX Runtime on a hostile file is one line and exit 3, never a dead terminal.

    Exit codes: 0 success, 1 verify mismatch, 2 usage, 3 bad input, 4 internal error,
    130 interrupted (Ctrl-C), 141 output pipe closed, 143 terminated (SIGTERM, SIGHUP).
    """
    ctx.obj = Output(quiet_mode, verbose)
    ctx.meta[_LIMITS] = Limits(None if memory_limit is None else memory_limit * MIB, time_limit)


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
def fuse(ui: Output, source: Path, out: Path, **options: Any) -> None:
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
        return _fuse_onnx(ui, source, out, options)
    if options.get("static_size") and not options["onnx"]:
        raise click.UsageError("--static-size shapes the ONNX model: use it with --onnx")
    done = _staged_fuse("fuse", source, out, options, [source])
    for warning in done["warnings"]:
        ui.note(f"warning: {printable(warning, 400)}")
    ui.result(done["summary"])
    program = Artifacts(out).program(done["format"])
    ui.result(f"deploy model: {printable(program)} (wrote {', '.join(done['files'])})")


def _staged_fuse(job: str, source: Path, out: Path, options: dict[str, Any], inputs: list[Path]) -> Any:
    """The fuse work in the worker, written into a staging folder beside OUT made here, committed
    here once the work is done (removed whatever else happens)."""
    force = options["force"]
    stage = staging.open_stage(destination.check_destination(out, force, [source]))
    try:
        done = _run(job, {"source": source, "out": out, "into": stage.path, **options}, inputs)
        staging.commit_stage(stage, force)
    except BaseException:
        staging.discard_stage(stage)
        raise
    finally:
        staging.close_stage(stage)
    return done


def _fuse_onnx(ui: Output, source: Path, out: Path, options: dict[str, Any]) -> None:
    """fuse MODEL.onnx OUT: the fused ONNX model only (no Paddle model, no Paddle). onnx reads the
    untrusted model in the worker, as Paddle does a program."""
    paddle_only = {"arch": "auto", "num_classes": None, "paddle_format": "auto", "reference_layout": False,
                   "static_size": False}
    for key, default in paddle_only.items():
        if options[key] != default:
            raise click.UsageError(f"--{key.replace('_', '-')} does not apply to an ONNX source: fuse writes the "
                                   "source model with its regions folded, dimensions as they were")
    chosen = {k: options[k] for k in ("input_size", "force", "allow_nonfinite")}
    done = _staged_fuse("fuse-onnx", source, out, chosen, [source])
    for warning in done["warnings"]:
        ui.note(f"warning: {printable(warning, 400)}")
    ui.result(done["summary"])
    ui.result(f"fused model: {printable(Artifacts(out).onnx)} (wrote {', '.join(done['files'])})")


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
    artifacts = Artifacts(out_dir)
    manifest = artifacts.read_manifest()
    if manifest.source.format == ONNX_SOURCE:
        raise click.UsageError(f"{printable(out_dir)} was fused from an ONNX model: its fused model is "
                               f"{printable(artifacts.onnx)} already")
    target = out_dir / ONNX_MODEL if output is None else output
    what = "-o" if output is not None else "output"
    dest = destination.check_file_destination(target, force, [*fuse_output_files(out_dir), *source_files(manifest)],
                                              what=what)
    stage = staging.open_stage(dest)
    try:
        done = _run("export-onnx", {"out_dir": out_dir, "into": stage.path, **options},
                    [artifacts.params, *(p for _, p, _ in artifacts.paddle_models(manifest))])
        staging.commit_stage(stage, force, what=what, check=destination.any_regular_file, inner=ONNX_MODEL)
    except BaseException:
        staging.discard_stage(stage)
        raise
    dims = tuple(done["input_dims"])
    if output is None:  # OUT/manifest.json says what input its model.onnx takes (fuse --onnx records it too)
        data = json.dumps(replace(manifest, onnx_input=dims).to_json(), indent=2) + "\n"
        staging.write_file(artifacts.manifest_path, data.encode(), replace=True, what="manifest")
    if done["fp16"]:
        share = done["underflow"] / done["values"] if done["values"] else 0.0
        ui.result(f"float16: {done['underflow']} of {done['values']} weight values underflow to zero ({share:.2%})")
    hw = dims[2:]
    dynamic = len(dims) == 4 and all(isinstance(d, str) for d in hw)
    size = "dynamic" if dynamic else size_text(hw) if all(isinstance(d, int) for d in hw) else "x".join(map(str, hw))
    ui.result(f"wrote {printable(target)} (opset {done['opset']}, batch {'1' if options['static_batch'] else 'dynamic'}, "
              f"size {size}, {'float16' if done['fp16'] else 'float32'})")


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
    height, width = as_size(options["crop"] or manifest.input_hw)
    check_verify_budget((height, width), options["batch_size"], options["batches"], streamed)
    to_file = json_path is not None and str(json_path) != "-"
    if to_file:  # before the run, not after it
        read = [options[k] for k in ("source", "ckpt", "onnx", "inputs", "labels")] + source_files(manifest)
        destination.check_file_destination(json_path, False, read, what="--json",
                                       replaceable=destination.verify_report, force_flag=None)
    inputs = [options[k] for k in ("source", "ckpt", "onnx", "inputs")] + source_files(manifest) + [out_dir]
    done = _run("verify", {"out_dir": out_dir, **options}, inputs, options["batch_size"] * height * width)
    if json_path is not None:
        text = json.dumps(done["report"], indent=2)
        if not to_file:
            click.echo(text)
        else:
            staging.write_file(json_path, (text + "\n").encode(), replace=True, what="--json", check=destination.verify_report)
    if str(json_path) != "-":
        ui.result(done["table"])  # the table, then its verdict line
        ui.verdict(done["verdict"], always=not done["ok"])
    return 0 if done["ok"] else 1


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
    done = _run("inspect", {"path": path, "as_json": as_json, "input_size": input_size}, [path])
    ui.result(done["text"])


def main() -> None:
    """The console script: SIGTERM and SIGHUP are handled like Ctrl-C from the start."""
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
