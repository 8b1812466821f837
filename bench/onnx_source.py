#!/usr/bin/env python3
"""Part o: what fusing a train-form ONNX model buys in ONNX Runtime, and what fusing costs.

1. Latency (ONNX Runtime, CPUExecutionProvider, its default graph optimisations, 2 threads,
   batch 1 and 8): for each net of fixtures/torch_blocks.py and each exporter variant, the
   model `acnet-convert fuse` makes of the train-form export against the upstream's own
   deployed model exported the same way (switch_to_deploy / reparameterize / fuse_model),
   timed interleaved in one run, with the train-form export beside them for what fusion buys.
   Target: fused within 1.02x of deployed. A model the region passes do not fold to the
   deployed Conv count yet keeps some train-form branches: its row says how many convs.
2. fuse of the ~100 MB wide RepVGG (fixtures/export_onnx.py large, the export without constant
   folding: 12 sums of conv+BN branches) against `onnx.load` + `onnx.save` of the same file,
   both in this process, interleaved. Target: within 2x. The phases of the last run say where
   the time goes (read, fusion = the region passes and their proofs, edit, write).
Exports are cached in build/bench/onnx/.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, THREADS, Row, interleaved, median, ms, note, paired_ratio, ratio_spread, run_part

NETS = ("acnet", "repvgg", "mobileone", "dbb", "yolov6")
VARIANTS = ("legacy_unfolded", "legacy_folded", "dynamo")
BATCHES = (1, 8)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export(name: str, variant: str, deployed: bool) -> Path:
    from fixtures import export_onnx as E

    out = CACHE / "onnx"
    path = out / E.file_name(name, variant, None, "batch", None, deployed)
    if not path.is_file():
        note(f"[onnx] exporting {path.name}")
        E.export(name, out, variant, None, "batch", None, deployed)
    return path


def _fused(source: Path, root: Path) -> tuple[Path, int]:
    from acnet_convert.commands.fuse_onnx import fuse_onnx

    result = fuse_onnx(source, root / source.stem)
    return result.out_dir / "model.onnx", sum(result.counts.values())


def latency(quick: bool) -> tuple[list[Row], list[str]]:
    import numpy as np

    from fixtures import export_onnx as E
    from fixtures import torch_blocks as tb

    rows, details = [], []
    rounds = 8 if quick else 30
    with tempfile.TemporaryDirectory(prefix="acnet-bench-onnx-") as tmp:
        for name in NETS:
            for variant in VARIANTS:
                train, deployed = _export(name, variant, False), _export(name, variant, True)
                fused, groups = _fused(train, Path(tmp))
                convs = {k: E.op_histogram(p)["Conv"] for k, p in (("fused", fused), ("deployed", deployed))}
                sessions = {k: _session(p) for k, p in (("train", train), ("fused", fused), ("deployed", deployed))}
                for batch in BATCHES:
                    x = tb.images(batch, seed=3)
                    feeds = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
                    for k, s in sessions.items():  # warm up
                        for _ in range(5):
                            s.run(None, feeds[k])
                    reps = 20 if batch == 1 else 5
                    runs = {k: (lambda s=s, f=feeds[k]: [s.run(None, f) for _ in range(reps)]) for k, s in sessions.items()}
                    times = interleaved(runs, rounds, best_of=3)
                    ratio = paired_ratio(times, "fused", "deployed")
                    what = f"{name} {variant}, batch {batch}: fused / upstream deployed"
                    kept = "" if convs["fused"] == convs["deployed"] else f" ({convs['fused']} convs, deployed {convs['deployed']}: waits for issue 18)"
                    rows.append(Row("o latency", what + kept,
                                    f"{ms(median(times['fused']) / reps)} vs {ms(median(times['deployed']) / reps)}",
                                    f"{ratio:.3f}x ({ratio_spread(times, 'fused', 'deployed')})", "<= 1.02x", ratio <= 1.02))
                    details.append(f"{name:9} {variant:15} b{batch}: train {ms(median(times['train']) / reps)}, fused "
                                   f"{ms(median(times['fused']) / reps)}, deployed {ms(median(times['deployed']) / reps)}; "
                                   f"train/deployed {paired_ratio(times, 'train', 'deployed'):.2f}x, fused/deployed "
                                   f"{ratio:.3f}x; {groups} groups folded")
                    same = np.abs(sessions["fused"].run(None, feeds["fused"])[0] - sessions["train"].run(None, feeds["train"])[0]).max()
                    details[-1] += f"; |fused - train| {same:.1e}"
                del sessions
    return rows, details


def large(quick: bool) -> tuple[list[Row], list[str]]:
    import onnx

    from acnet_convert.commands.fuse_onnx import fuse_onnx
    from fixtures import export_onnx as E

    source = CACHE / "onnx" / E.file_name("repvgg_wide", "legacy_unfolded", None, "batch")
    if not source.is_file():
        note("[onnx] exporting the ~100 MB wide RepVGG (once)")
        E.export_large(CACHE / "onnx", "legacy_unfolded")
    size = E.model_info(source)["size"]
    with tempfile.TemporaryDirectory(prefix="acnet-bench-onnx-") as tmp:
        copy, out = Path(tmp) / "copy.onnx", Path(tmp) / "out"
        runs = {"fuse": lambda: fuse_onnx(source, out, force=True),
                "load+save": lambda: onnx.save(onnx.load(str(source)), str(copy))}
        runs["fuse"]()
        times = interleaved(runs, 3 if quick else 9)
        timings = fuse_onnx(source, out, force=True).timings
    ratio = paired_ratio(times, "fuse", "load+save")
    rows = [Row("o fuse 100 MB", f"fuse of a {size / 1e6:.0f} MB ONNX (12 sums) / onnx.load + onnx.save of it",
                f"{ms(median(times['fuse']))} vs {ms(median(times['load+save']))}",
                f"{ratio:.2f}x ({ratio_spread(times, 'fuse', 'load+save')})", "<= 2x", ratio <= 2.0)]
    details = ["fuse phases (last run): " + ", ".join(f"{k} {ms(v)}" for k, v in timings.items())]
    return rows, details


def run(quick: bool) -> tuple[list[Row], str]:
    rows, details = large(quick)
    more_rows, more = latency(quick)
    return rows + more_rows, "\n".join(details + more)


if __name__ == "__main__":
    run_part(run, __doc__)
