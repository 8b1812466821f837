#!/usr/bin/env python3
"""Part 3: CPU inference latency with paddle.inference, ResNet-50 at 224x224, batch 1 and 8.

Three inference models, the same Config for all (CPU, 2 math threads, IR optimisation on,
oneDNN on, glog off), timed interleaved (train deploy plain train deploy plain ...):
  train   jit.save of ResNetACNet(plan) in train form (ACB branches + BN, eval mode) loaded with
          the checkpoint's weights, input spec as the deploy model's;
  deploy  OUT/inference.json from `acnet-convert fuse`;
  plain   paddle.vision.models.resnet50(pretrained=False) (conv+BN, no download), jit.saved
          with the same input spec: the same FLOPs as deploy.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import (
    CACHE,
    INPUT_SIZE,
    THREADS,
    Row,
    checkpoint_dir,
    deploy_dir,
    interleaved,
    median,
    ms,
    note,
    paired_ratio,
    ratio_spread,
    run_part,
)

TARGET_DEPLOY_PLAIN = 1.02
CONFIG_TEXT = f"CPU, {THREADS} math threads, switch_ir_optim(True), enable_onednn(), disable_glog_info()"


def _fresh(model_dir: Path, ckpt: Path) -> bool:
    model = model_dir / "inference.json"
    return model.is_file() and model.stat().st_mtime >= (ckpt / ".complete").stat().st_mtime


def _jit_save(paddle, layer, prefix: Path) -> None:
    from acnet_convert.quiet import silenced

    spec = paddle.static.InputSpec([None, 3, INPUT_SIZE, INPUT_SIZE], "float32", name="image")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with silenced():
        paddle.jit.save(layer, str(prefix), input_spec=[spec])


def models(ckpt: Path) -> dict[str, Path]:
    """The three inference model directories (made once, cached in build/bench/)."""
    from acnet_convert.quiet import configure, import_paddle

    configure(False)
    deploy = deploy_dir(ckpt)
    train = CACHE / (ckpt.name + "_train_graph")
    plain = CACHE / "plain_resnet50"
    if not _fresh(train, ckpt):
        note(f"[latency] saving the train graph of {ckpt.name} to {train}")
        paddle = import_paddle()
        from acnet_convert.checkpoint import read_checkpoint
        from acnet_convert.models import train_model
        from acnet_convert.validate import detect_plan

        checkpoint = read_checkpoint(ckpt)
        plan = detect_plan(checkpoint.tensors, str(ckpt))
        _jit_save(paddle, train_model(plan, checkpoint.tensors), train / "inference")
    if not (plain / "inference.json").is_file():
        note(f"[latency] saving a plain paddle.vision ResNet-50 to {plain}")
        paddle = import_paddle()
        paddle.seed(0)
        net = paddle.vision.models.resnet50(pretrained=False, num_classes=1000)
        net.eval()
        _jit_save(paddle, net, plain / "inference")
    return {"train": train, "deploy": deploy, "plain": plain}


class PaddlePredictor:
    """paddle.inference on the CPU with the benchmark's one Config; call it with a batch."""

    def __init__(self, model_dir: Path, threads: int = THREADS) -> None:
        from acnet_convert.quiet import import_paddle

        import_paddle()
        import paddle.inference as pi

        config = pi.Config(str(model_dir / "inference.json"), str(model_dir / "inference.pdiparams"))
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(threads)
        config.switch_ir_optim(True)
        config.enable_onednn()
        config.disable_glog_info()
        self.predictor = pi.create_predictor(config)
        self.input = self.predictor.get_input_handle(self.predictor.get_input_names()[0])
        self.output = self.predictor.get_output_handle(self.predictor.get_output_names()[0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.input.reshape(list(x.shape))
        self.input.copy_from_cpu(x)
        self.predictor.run()
        return self.output.copy_to_cpu()


_OP_FIELDS = re.compile(
    r'op_name:"([\w.]+)"|fuse_activation:"(\w*)"|fuse_residual_connection:(\w+)|strides:\[([\d,]*)\]|paddings:\[([\d,]*)\]'
)


def optimized_ops(model_dir: Path) -> list[str]:
    """The kernels paddle.inference runs for `model_dir` after its IR passes (same Config as the
    timings), one signature per op: name, fused activation, fused residual add, strides, paddings.
    Read from switch_ir_debug's printout of the final program, in a child process."""
    with tempfile.TemporaryDirectory(prefix="acnet-irdebug-") as tmp:
        env = dict(os.environ, GLOG_minloglevel="0")
        proc = subprocess.run([sys.executable, __file__, "--ops-child", str(model_dir)], cwd=tmp, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", check=False)
    marker = "IRPrinting on builtin.module after"
    if marker not in proc.stdout:
        raise RuntimeError(f"no IR printout for {model_dir} (exit {proc.returncode})")
    final = proc.stdout.rsplit(marker, 1)[1]
    ops = []
    for line in final.splitlines():
        if "op_name:" not in line:
            continue
        fields = ["", "", "", "", ""]
        for m in _OP_FIELDS.finditer(line):
            for i, g in enumerate(m.groups()):
                if g is not None and not fields[i]:
                    fields[i] = g
        ops.append("|".join(fields))
    return ops


def _ops_child(model_dir: Path) -> None:
    import paddle.inference as pi

    config = pi.Config(str(model_dir / "inference.json"), str(model_dir / "inference.pdiparams"))
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(THREADS)
    config.switch_ir_optim(True)
    config.enable_onednn()
    config.switch_ir_debug(True)
    pi.create_predictor(config)


def describe_ops(ops: list[str]) -> str:
    names = Counter(op.split("|")[0].split(".")[-1] for op in ops if not op.startswith(("pd_op.data", "builtin.")))
    return ", ".join(f"{n} {name}" for name, n in names.most_common())


def batch_input(batch: int) -> np.ndarray:
    return np.random.default_rng(batch).standard_normal((batch, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)


def rounds_for(batch: int, quick: bool) -> tuple[int, int]:
    """(interleaved rounds, best-of calls per round) for a batch size."""
    if batch == 1:
        return (5, 3) if quick else (20, 3)
    return (2, 1) if quick else (9, 2)


def run(quick: bool) -> tuple[list[Row], str]:
    dirs = models(checkpoint_dir(50, 1000))
    rows, details = [], []
    note("[latency] comparing the programs paddle.inference runs after its IR passes (switch_ir_debug)")
    ops = {name: optimized_ops(path) for name, path in dirs.items()}
    same = ops["deploy"] == ops["plain"]
    rows.append(Row("3 latency", "kernels paddle.inference runs after IR passes: deploy vs plain ResNet-50 "
                    "(op, fused activation, fused residual add, strides, paddings, in order)",
                    f"deploy: {describe_ops(ops['deploy'])}; train: {describe_ops(ops['train'])}",
                    "identical" if same else "DIFFERENT", "deploy == plain", same))
    for batch in (1, 8):
        x = batch_input(batch)
        predictors = {name: PaddlePredictor(path) for name, path in dirs.items()}
        outputs = {}
        for name, predict in predictors.items():  # warm-up: oneDNN primitives, first allocations
            for _ in range(2):
                outputs[name] = predict(x)
        rounds, best_of = rounds_for(batch, quick)
        note(f"[latency] batch {batch}: {rounds} interleaved rounds (best of {best_of}) of {', '.join(predictors)}")
        times = interleaved({name: (lambda p=p, x=x: p(x)) for name, p in predictors.items()}, rounds, best_of)
        t = {name: median(v) for name, v in times.items()}
        # ratios: median of the per-round paired ratios (each pair ran back to back)
        ratio = {n: paired_ratio(times, "deploy", n) for n in ("train", "plain")}
        agree = float(np.max(np.abs(outputs["deploy"] - outputs["train"])) / max(1e-12, float(np.max(np.abs(outputs["train"])))))
        part = "3 latency"
        rows += [
            Row(part, f"paddle.inference batch {batch}: deploy vs train graph ({rounds} interleaved rounds, best of {best_of})",
                f"{ms(t['deploy'])} vs {ms(t['train'])}", f"{ratio['train']:.2f}x ({ratio_spread(times, 'deploy', 'train')})", "< 1 (info)", None),
            Row(part, f"paddle.inference batch {batch}: deploy vs plain paddle.vision ResNet-50",
                f"{ms(t['deploy'])} vs {ms(t['plain'])}", f"{ratio['plain']:.3f}x ({ratio_spread(times, 'deploy', 'plain')})",
                f"<= {TARGET_DEPLOY_PLAIN:.2f}x", ratio["plain"] <= TARGET_DEPLOY_PLAIN),
        ]
        details.append(
            f"latency batch {batch}: " + "; ".join(f"{n} " + ", ".join(f"{v * 1000:.0f}" for v in times[n]) + " ms" for n in times)
            + f"\n  deploy vs train logits: max abs diff / max |logit| = {agree:.1e}"
        )
        del predictors
    details.append(f"Config for all: {CONFIG_TEXT}")
    return rows, "\n".join(details)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--ops-child":
        _ops_child(Path(sys.argv[2]))
        return
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
