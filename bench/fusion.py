#!/usr/bin/env python3
"""Part 1: the numpy fold of the ResNet-50 / ResNet-152 ACNet graph.

Ours is what `fuse` runs: `acnet_convert.graph.reparam.fold_graph` on the checkpoint's train
graph (plan -> Paddle train program -> `read_graph`, the graph `fuse` reads; built once with
Paddle in a child and cached, so this process never loads Paddle): constant folding, the
affine regions, each collapsed in float64 (one cast at the end, plus the input / output
finiteness checks) and proven on probes. Its time is given whole and without the proofs
(`Prover.region` / `Prover.terms`, timed inside the same calls), which the baseline does not do. The baseline is written in the style of PaddleCV's original weights
aggregator: one block at a time, float32 throughout, each branch's BN folded with float32 numpy
and the Kx1 / 1xK kernels added into the KxK one by slicing. Both produce the same fused
tensors (17 ACBs and 36 1x1 conv+BN on ResNet-50; the FC is untouched by both). Timed
interleaved in one process; accuracy is judged against a float64 ground truth computed the
slow way (asymmetric kernels zero-padded to KxK, then summed).

Weights are random with the plan's shapes (He-normal kernels) and realistic BN statistics
(positive gammas, running variances spread over several decades, non-zero means).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import Row, interleaved, median, note, paired_ratio, resnet_graph, run_part

from acnet_convert.graph import prove
from acnet_convert.graph.reparam import fold_graph
from acnet_convert.nn.plan import BN_FIELDS, BRANCHES, Plan, resnet

EPS = 1e-5
TARGET_R50_S = 0.2
PROOFS: list[float] = []  # seconds spent in proofs, per timed call
_IN_PROOFS = [0.0]  # seconds spent in proofs so far


def _timed_proofs() -> None:
    """Count the time of every proof in _IN_PROOFS."""
    for name in ("region", "terms"):
        original = getattr(prove.Prover, name)

        def wrapper(*args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                _IN_PROOFS[0] += time.perf_counter() - start

        setattr(prove.Prover, name, wrapper)


def ours(graph) -> dict[str, np.ndarray]:
    out = {}
    for f in fold_graph(graph).fused:
        out[f.weight], out[f.bias] = f.kernel, f.bias_value
    return out


def fold(graph) -> None:
    before = _IN_PROOFS[0]
    fold_graph(graph)
    PROOFS.append(_IN_PROOFS[0] - before)


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
    graph = resnet_graph(depth)  # weights: synthetic_tensors(plan), float32
    tensors = graph.weights
    assert "paddle" not in sys.modules, "part 1 must run without Paddle"
    started = time.perf_counter()
    folding = fold_graph(graph)
    t_once = time.perf_counter() - started
    fused = folding.fused
    convs = list(plan.convs())
    assert len(fused) == len(convs) and not folding.declined, \
        f"fold_graph fused {len(fused)} convs (the plan has {len(convs)}), declined {len(folding.declined)}"
    n_sum = sum(c.is_acb for c in convs)
    nbytes = sum(a.nbytes for a in tensors.values())
    mine, ref = ours(graph), reference_weights(plan, tensors)  # warm-up + results
    assert set(mine) == set(ref), f"ours and the reference differ in tensors: {sorted(set(mine) ^ set(ref))[:4]}"
    PROOFS.clear()
    times = interleaved({"ours": lambda: fold(graph), "reference": lambda: reference_weights(plan, tensors)}, rounds)
    times["ours less proofs"] = [t - p for t, p in zip(times["ours"], PROOFS)]
    t_ours, t_ref, t_bare = median(times["ours"]), median(times["reference"]), median(times["ours less proofs"])
    r_ours = paired_ratio(times, "ours", "reference")
    r_bare = paired_ratio(times, "ours less proofs", "reference")
    acc = compare(plan, mine, ref, ground_truth(plan, tensors))
    closer = "ours" if acc["err_ours"] < acc["err_ref"] else ("reference" if acc["err_ref"] < acc["err_ours"] else "tie")
    part = "1 fusion"
    rows = [
        Row(part, f"ResNet-{depth} `fold_graph` ({n_sum} ACB sums + {len(convs) - n_sum} conv+BN, each proven) vs float32 "
            f"per-block reference ({nbytes / 2**20:.0f} MiB of weights, {rounds} interleaved rounds)",
            f"{t_ours:.3f} s vs {t_ref:.3f} s", f"{r_ours:.2f}x", "info (the reference proves nothing)", None),
        Row(part, f"ResNet-{depth} `fold_graph` less its proofs (constants, regions, collapse, cast, checks) vs the same reference",
            f"{t_bare:.3f} s vs {t_ref:.3f} s", f"{r_bare:.2f}x",
            ("< 0.2 s and " if depth == 50 else "") + "<= 1.00x",
            (t_bare < TARGET_R50_S if depth == 50 else True) and r_bare <= 1.0),
        Row(part, f"ResNet-{depth} fused kernels: max abs diff ours vs reference; max abs error vs float64 truth (ours / reference)",
            f"{acc['diff']:.2e}; {acc['err_ours']:.2e} / {acc['err_ref']:.2e}",
            f"{acc['err_ours'] / acc['err_ref']:.2f}x" if acc["err_ref"] else "",
            "ours closer to float64", closer == "ours"),
    ]
    detail = (
        f"ResNet-{depth}: ours {', '.join(f'{t:.3f}' for t in times['ours'])} s (proofs "
        f"{', '.join(f'{t:.3f}' for t in PROOFS)} s); reference {', '.join(f'{t:.3f}' for t in times['reference'])} s; "
        f"fold_graph on its {len(graph.nodes)}-node graph {t_once * 1000:.0f} ms (first call)\n"
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
    _timed_proofs()
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
