#!/usr/bin/env python3
"""Part 1: the numpy fusion pass on ResNet-50 / ResNet-152 ACNet weights.

Ours (`acnet_convert.reparam.deploy_weights`, float64 arithmetic, one cast at the end) against a
straightforward baseline in the style of PaddleCV's original weights aggregator: one block at a
time, float32 throughout, each branch's BN folded with float32 numpy and the Kx1 / 1xK kernels
added into the KxK one by slicing. Both produce the same tensor set (ACBs and the 1x1 conv+BNs
folded, FC copied). Timed interleaved in one process; accuracy is judged against a float64
ground truth computed the slow way (asymmetric kernels zero-padded to KxK, then summed).

Weights are random with the plan's shapes (He-normal kernels) and realistic BN statistics
(positive gammas, running variances spread over several decades, non-zero means).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import Row, interleaved, median, note, paired_ratio, run_part

from acnet_convert.plan import BN_FIELDS, BRANCHES, Plan, resnet
from acnet_convert.reparam import deploy_weights

EPS = 1e-5
TARGET_R50_S = 0.2


def synthetic_tensors(plan: Plan, seed: int = 0) -> dict[str, np.ndarray]:
    """Float32 train-form tensors of `plan` with trained-looking statistics."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name, shape in plan.train_tensors().items():
        if len(shape) == 4:  # conv kernel, He-normal
            fan_in = shape[1] * shape[2] * shape[3]
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif name.endswith("_scale"):
            a = np.abs(rng.normal(0.6, 0.3, shape)) + 1e-3
        elif name.endswith("_offset"):
            a = rng.normal(0.0, 0.2, shape)
        elif name.endswith("_mean"):
            a = rng.normal(0.0, 0.5, shape)
        elif name.endswith("_variance"):
            a = np.exp(rng.normal(-1.5, 1.5, shape))  # ~1e-3 .. 10: small ones amplify rounding
        elif name == "fc_0.w_0":
            a = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(1.0 / shape[0]))
        else:  # fc bias
            a = rng.normal(0.0, 0.01, shape)
        out[name] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def reference_weights(plan: Plan, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The baseline: per block, float32 throughout, slicing (the original aggregator's way)."""
    out: dict[str, np.ndarray] = {}
    for conv in plan.convs():
        if conv.is_acb:
            kernel, bias = None, 0
            for branch in BRANCHES:
                g, b, m, v = (tensors[f"{conv.bn}_{branch}_{f}"] for f in BN_FIELDS)
                t = g / (v + np.float32(EPS)) ** 0.5
                scaled = t.reshape(-1, 1, 1, 1) * tensors[f"{conv.name}_{branch}_weights"]
                bias = bias + (b - m * t)
                if kernel is None:
                    kernel = scaled
                    k = kernel.shape[2]
                elif branch == "acver":
                    kernel[:, :, :, k // 2 : k // 2 + 1] += scaled
                else:
                    kernel[:, :, k // 2 : k // 2 + 1, :] += scaled
        else:
            g, b, m, v = (tensors[f"{conv.bn}_{f}"] for f in BN_FIELDS)
            t = g / (v + np.float32(EPS)) ** 0.5
            kernel = t.reshape(-1, 1, 1, 1) * tensors[f"{conv.name}_weights"]
            bias = b - m * t
        out[conv.deploy_weight], out[conv.deploy_bias] = kernel, bias
    for name in plan.fc_tensors():
        out[name] = tensors[name].copy()
    return out


def ground_truth(plan: Plan, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float64, the slow way: every branch zero-padded to KxK, scaled, then summed."""
    out: dict[str, np.ndarray] = {}
    for conv in plan.convs():
        k = conv.kernel
        branches = BRANCHES if conv.is_acb else ("",)
        kernel = np.zeros((conv.out_channels, conv.in_channels // conv.groups, k, k))
        bias = np.zeros(conv.out_channels)
        for branch in branches:
            suffix = f"_{branch}" if branch else ""
            w = tensors[f"{conv.name}{suffix}_weights"].astype(np.float64)
            ph, pw = (k - w.shape[2]) // 2, (k - w.shape[3]) // 2
            w = np.pad(w, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            g, b, m, v = (tensors[f"{conv.bn}{suffix}_{f}"].astype(np.float64) for f in BN_FIELDS)
            t = g / np.sqrt(v + EPS)
            kernel += w * t[:, None, None, None]
            bias += b - m * t
        out[conv.deploy_weight], out[conv.deploy_bias] = kernel, bias
    return out


def compare(plan: Plan, ours, ref, truth) -> dict[str, float]:
    names = [c.deploy_weight for c in plan.convs()]
    diff = max(float(np.max(np.abs(ours[n].astype(np.float64) - ref[n]))) for n in names)
    err_ours = max(float(np.max(np.abs(ours[n] - truth[n]))) for n in names)
    err_ref = max(float(np.max(np.abs(ref[n] - truth[n]))) for n in names)
    closer_ours = sum(int(np.sum(np.abs(ours[n] - truth[n]) < np.abs(ref[n] - truth[n]))) for n in names)
    closer_ref = sum(int(np.sum(np.abs(ref[n] - truth[n]) < np.abs(ours[n] - truth[n]))) for n in names)
    total = sum(ours[n].size for n in names)
    bias_names = [c.deploy_bias for c in plan.convs()]
    bias_err_ours = max(float(np.max(np.abs(ours[n] - truth[n]))) for n in bias_names)
    bias_err_ref = max(float(np.max(np.abs(ref[n] - truth[n]))) for n in bias_names)
    return {"diff": diff, "err_ours": err_ours, "err_ref": err_ref, "closer_ours": closer_ours / total,
            "closer_ref": closer_ref / total, "bias_err_ours": bias_err_ours, "bias_err_ref": bias_err_ref}


def bench_depth(depth: int, rounds: int) -> tuple[list[Row], str]:
    plan = resnet(depth, 1000)
    tensors = synthetic_tensors(plan)
    nbytes = sum(a.nbytes for a in tensors.values())
    ours, ref = deploy_weights(plan, tensors), reference_weights(plan, tensors)  # warm-up + results
    assert set(ours) == set(ref) == set(plan.deploy_tensors()), "ours and the reference differ in tensors"
    times = interleaved({"ours": lambda: deploy_weights(plan, tensors),
                         "reference": lambda: reference_weights(plan, tensors)}, rounds)
    t_ours, t_ref = median(times["ours"]), median(times["reference"])
    r_ours = paired_ratio(times, "ours", "reference")
    acc = compare(plan, ours, ref, ground_truth(plan, tensors))
    closer = "ours" if acc["err_ours"] < acc["err_ref"] else ("reference" if acc["err_ref"] < acc["err_ours"] else "tie")
    part = "1 fusion"
    rows = [
        Row(part, f"ResNet-{depth} `deploy_weights` vs float32 per-block reference ({nbytes / 2**20:.0f} MiB of weights, {rounds} interleaved rounds)",
            f"{t_ours:.3f} s vs {t_ref:.3f} s", f"{r_ours:.2f}x",
            ("< 0.2 s and " if depth == 50 else "") + "<= 1.00x",
            (t_ours < TARGET_R50_S if depth == 50 else True) and r_ours <= 1.0),
        Row(part, f"ResNet-{depth} fused kernels: max abs diff ours vs reference; max abs error vs float64 truth (ours / reference)",
            f"{acc['diff']:.2e}; {acc['err_ours']:.2e} / {acc['err_ref']:.2e}",
            f"{acc['err_ours'] / acc['err_ref']:.2f}x" if acc["err_ref"] else "",
            "ours closer to float64", closer == "ours"),
    ]
    detail = (
        f"ResNet-{depth}: ours {', '.join(f'{t:.3f}' for t in times['ours'])} s; "
        f"reference {', '.join(f'{t:.3f}' for t in times['reference'])} s\n"
        f"  kernels: ours strictly closer to float64 on {acc['closer_ours']:.1%} of elements, reference on "
        f"{acc['closer_ref']:.1%}; biases max abs error ours {acc['bias_err_ours']:.2e}, reference {acc['bias_err_ref']:.2e}"
    )
    return rows, detail


def run(quick: bool) -> tuple[list[Row], str]:
    rows, details = [], []
    for depth, rounds in ((50, 3 if quick else 9), (152, 2 if quick else 5)):
        note(f"[fusion] ResNet-{depth}: {rounds} interleaved rounds")
        r, d = bench_depth(depth, rounds)
        rows += r
        details.append(d)
    return rows, "\n".join(details)


def main() -> None:
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
