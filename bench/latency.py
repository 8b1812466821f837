#!/usr/bin/env python3
"""Part 3: CPU inference latency with paddle.inference at 224x224, batch 1 and 8.

Two networks, three inference models each, the same Config for all (CPU, 2 math threads, IR
optimisation on, oneDNN on, glog off), timed interleaved (train deploy plain train ...):
ResNet-50
  train   the checkpoint's network in train form (ACB branches + BN, eval mode), jit.saved
          (`_common.train_export_dir`, also part 2's exported SOURCE);
  deploy  OUT/inference.json from `acnet-convert fuse CKPT`;
  plain   paddle.vision.models.resnet50 (conv+BN, no download), jit.saved the same way: the
          same FLOPs as deploy.
MobileNetV2 (paddle.vision's, width 1.0, 1000 classes)
  train   every depthwise 3x3 conv+BN replaced by an ACB (depthwise 3x3 + 3x1 + 1x3 branches,
          each with its BN; calibrated random BN statistics), jit.saved;
  deploy  `acnet-convert fuse` of that exported train model (any-CNN path, by structure);
  plain   paddle.vision.models.mobilenet_v2 with the same shapes and calibrated BN.
Before timing, the kernels paddle.inference runs after its IR passes are compared, deploy vs
plain (switch_ir_debug's printout of the final program): they must be the same list.
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
    fused_dir,
    interleaved,
    median,
    ms,
    note,
    paired_ratio,
    ratio_spread,
    run_part,
    train_export_dir,
)

TARGET_DEPLOY_PLAIN = 1.02
CONFIG_TEXT = f"CPU, {THREADS} math threads, switch_ir_optim(True), enable_onednn(), disable_glog_info()"


def _jit_save(paddle, layer, prefix: Path) -> None:
    from acnet_convert.common.quiet import silenced

    spec = paddle.static.InputSpec([None, 3, INPUT_SIZE, INPUT_SIZE], "float32", name="image")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with silenced():
        paddle.jit.save(layer, str(prefix), input_spec=[spec])


def _stamp_ok(model_dir: Path, key: str) -> bool:
    stamp = model_dir / ".bench-stamp"
    return (model_dir / "inference.json").is_file() and stamp.is_file() and stamp.read_text() == key


def _calibrate_bn(paddle, net, seed: int) -> None:
    """Non-default BN statistics from numpy (gamma U(0.5, 1.5), beta U(-0.2, 0.2), mean
    N(0, 0.2), variance U(0.5, 2)), so a fusion that ignored them would show."""
    rng = np.random.default_rng(seed)
    for layer in net.sublayers():
        if isinstance(layer, paddle.nn.layer.norm._BatchNormBase):
            c = layer._mean.shape[0]
            layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.bias.set_value(rng.uniform(-0.2, 0.2, c).astype(np.float32))
            layer._mean.set_value(rng.normal(0.0, 0.2, c).astype(np.float32))
            layer._variance.set_value(rng.uniform(0.5, 2.0, c).astype(np.float32))


def mobilenet_v2(paddle, acb: bool, seed: int = 0):
    """paddle.vision's MobileNetV2 (eval mode, calibrated BN); with `acb`, every depthwise 3x3
    conv+BN (ConvNormActivation with groups == channels) becomes an ACB: depthwise 3x3, 3x1 and
    1x3 convs with the same stride, each followed by its own BN, summed."""
    from paddle import nn
    from paddle.vision.ops import ConvNormActivation

    class ACB(nn.Layer):
        def __init__(self, channels: int, stride) -> None:
            super().__init__()

            def conv(kernel, padding):
                return nn.Conv2D(channels, channels, kernel, stride, padding, groups=channels, bias_attr=False)

            self.square, self.square_bn = conv((3, 3), (1, 1)), nn.BatchNorm2D(channels)
            self.ver, self.ver_bn = conv((3, 1), (1, 0)), nn.BatchNorm2D(channels)
            self.hor, self.hor_bn = conv((1, 3), (0, 1)), nn.BatchNorm2D(channels)

        def forward(self, x):
            return self.square_bn(self.square(x)) + self.ver_bn(self.ver(x)) + self.hor_bn(self.hor(x))

    paddle.seed(seed)
    with paddle.utils.unique_name.guard():
        net = paddle.vision.models.mobilenet_v2(pretrained=False, num_classes=1000)
        replaced = 0
        for parent in net.sublayers():
            for key, layer in list(parent.named_children()):
                if not acb or not isinstance(layer, ConvNormActivation):
                    continue
                conv = layer[0]
                if conv._groups == conv._in_channels == conv._out_channels and list(conv._kernel_size) == [3, 3]:
                    parent._sub_layers[key] = nn.Sequential(ACB(conv._in_channels, conv._stride), layer[2])
                    replaced += 1
    if acb and replaced != 17:
        raise RuntimeError(f"expected 17 depthwise 3x3 conv+BN in MobileNetV2, replaced {replaced}")
    _calibrate_bn(paddle, net, seed)
    net.eval()
    return net


def models(ckpt: Path) -> dict[str, dict[str, Path]]:
    """network -> {train, deploy, plain} inference model directories (made once, cached in build/bench/)."""
    import hashlib
    import inspect

    from acnet_convert.common.quiet import configure, import_paddle

    configure(False)
    resnet = {"train": train_export_dir(ckpt), "deploy": deploy_dir(ckpt), "plain": CACHE / "plain_resnet50"}
    if not (resnet["plain"] / "inference.json").is_file():
        note(f"[latency] saving a plain paddle.vision ResNet-50 to {resnet['plain']}")
        paddle = import_paddle()
        paddle.seed(0)
        net = paddle.vision.models.resnet50(pretrained=False, num_classes=1000)
        net.eval()
        _jit_save(paddle, net, resnet["plain"] / "inference")
    mobile = {"train": CACHE / "mobilenet_v2_acb_train", "deploy": CACHE / "mobilenet_v2_acb_deploy",
              "plain": CACHE / "plain_mobilenet_v2"}
    key = hashlib.sha256((inspect.getsource(mobilenet_v2) + inspect.getsource(_calibrate_bn)).encode()).hexdigest()[:16]
    for form in ("train", "plain"):
        if not _stamp_ok(mobile[form], key):
            note(f"[latency] saving MobileNetV2 ({'ACB ' + form if form == 'train' else 'plain'}) to {mobile[form]}")
            paddle = import_paddle()
            _jit_save(paddle, mobilenet_v2(paddle, acb=form == "train"), mobile[form] / "inference")
            (mobile[form] / ".bench-stamp").write_text(key)
    fused_dir(mobile["train"], mobile["deploy"], mobile["train"] / ".bench-stamp")
    return {"ResNet-50": resnet, "MobileNetV2": mobile}


class PaddlePredictor:
    """paddle.inference on the CPU with the benchmark's one Config; call it with a batch."""

    def __init__(self, model_dir: Path, threads: int = THREADS) -> None:
        from acnet_convert.common.quiet import import_paddle

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


def rounds_for(batch: int, quick: bool, light: bool = False) -> tuple[int, int]:
    """(interleaved rounds, best-of calls per round) for a batch size; `light` models (a few
    ms a call) get more of both."""
    if light:
        return ((6, 5) if quick else (24, 7)) if batch == 1 else ((3, 3) if quick else (12, 4))
    if batch == 1:
        return (5, 3) if quick else (20, 3)
    return (2, 1) if quick else (9, 2)


def run(quick: bool) -> tuple[list[Row], str]:
    networks = models(checkpoint_dir(50, 1000))
    rows, details = [], []
    part = "3 latency"
    for net, dirs in networks.items():
        note(f"[latency] {net}: comparing the programs paddle.inference runs after its IR passes (switch_ir_debug)")
        ops = {name: optimized_ops(path) for name, path in dirs.items()}
        same = ops["deploy"] == ops["plain"]
        rows.append(Row(part, f"{net}: kernels paddle.inference runs after IR passes, deploy vs plain "
                        "(op, fused activation, fused residual add, strides, paddings, in order)",
                        f"deploy: {describe_ops(ops['deploy'])}; train: {describe_ops(ops['train'])}",
                        "identical" if same else "DIFFERENT", "deploy == plain", same))
        if not same:
            diff = next(i for i, (a, b) in enumerate(zip(ops["deploy"] + [""], ops["plain"] + [""])) if a != b)
            details.append(f"{net} kernel lists differ first at #{diff}: deploy {ops['deploy'][diff:diff + 2]} "
                           f"vs plain {ops['plain'][diff:diff + 2]}")
        for batch in (1, 8):
            x = batch_input(batch)
            predictors = {name: PaddlePredictor(path) for name, path in dirs.items()}
            outputs = {}
            for name, predict in predictors.items():  # warm-up: oneDNN primitives, first allocations
                for _ in range(2):
                    outputs[name] = predict(x)
            rounds, best_of = rounds_for(batch, quick, light=net == "MobileNetV2")
            note(f"[latency] {net} batch {batch}: {rounds} interleaved rounds (best of {best_of}) of {', '.join(predictors)}")
            times = interleaved({name: (lambda p=p, x=x: p(x)) for name, p in predictors.items()}, rounds, best_of)
            t = {name: median(v) for name, v in times.items()}
            # ratios: median of the per-round paired ratios (each pair ran back to back)
            ratio = {n: paired_ratio(times, "deploy", n) for n in ("train", "plain")}
            scale = max(1e-12, float(np.max(np.abs(outputs["train"]))))
            agree = float(np.max(np.abs(outputs["deploy"] - outputs["train"]))) / scale
            top1 = float(np.mean(outputs["deploy"].argmax(1) == outputs["train"].argmax(1)))
            rows += [
                Row(part, f"{net} batch {batch}: deploy vs train graph ({rounds} interleaved rounds, best of {best_of})",
                    f"{ms(t['deploy'])} vs {ms(t['train'])}", f"{ratio['train']:.2f}x ({ratio_spread(times, 'deploy', 'train')})", "< 1 (info)", None),
                Row(part, f"{net} batch {batch}: deploy vs plain paddle.vision {net}",
                    f"{ms(t['deploy'])} vs {ms(t['plain'])}", f"{ratio['plain']:.3f}x ({ratio_spread(times, 'deploy', 'plain')})",
                    f"<= {TARGET_DEPLOY_PLAIN:.2f}x", ratio["plain"] <= TARGET_DEPLOY_PLAIN),
            ]
            details.append(
                f"latency {net} batch {batch}: " + "; ".join(f"{n} " + ", ".join(f"{v * 1000:.1f}" for v in times[n]) + " ms" for n in times)
                + f"\n  deploy vs train logits: max abs diff / max |logit| = {agree:.1e} (max |logit| {scale:.1f}), top-1 agreement {top1:.0%}"
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
