#!/usr/bin/env python3
"""Part 6: `acnet-convert verify` of ResNet-50 ACNet at 224, 64 random images (8 batches of 8),
train + Paddle deploy + ONNX, before and after the verify rewrite, interleaved round by round.

  before  the verify of commit BASELINE (the last before the graph rewrite; its own `fuse --onnx`
          output), run from a `git archive` of that commit: wall time and peak RSS (wait4);
  after   today's console script on today's `fuse --onnx` output: wall time and peak RSS;
  split   today's `verify()` in a child with its phase timings (`VerifyReport.timings`) and
          Paddle's import, and the same once more with Paddle's BatchNorm folding left on in
          the train graph (what `before` measured as its "train graph", see runners.py).

Both runs compare the same three graphs on the same 64 images; `before`'s train graph had its
BatchNorms folded by Paddle's oneDNN passes (switch_ir_optim(False) does not stop them), today's
runs every BatchNorm as written.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, CLI, PYTHON, ROOT, Row, checkpoint_dir, fused_dir, median, mib, note, run_part

BASELINE = "94c53a1157f7063e58b7ca5deb1fe76ecf7da8fe"
ARGS = ["--batch-size", "8", "--batches", "8", "--device", "cpu"]


def spawn(cmd: list[str], env: dict | None = None) -> dict:
    """Wall time and peak RSS (wait4) of `cmd`; its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code not in (0, 1):  # 1: a mismatch is still a measured run
            raise RuntimeError(f"{' '.join(cmd)} exited {code}:\n{err.read().decode(errors='replace')[-2000:]}")
        return {"wall": wall, "rss": usage.ru_maxrss * 1024, "stdout": out.read().decode(errors="replace")}


def baseline(ckpt: Path) -> tuple[Path, Path] | None:
    """The baseline package (git archive) and its own fuse --onnx output, cached."""
    root = CACHE / "verify_baseline"
    src, out = root / "src", root / "out"
    if (out / "manifest.json").is_file() and (src / "acnet_convert").is_dir():
        return src, out
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        note("no git checkout: the 'before' run is skipped")
        return None
    shutil.rmtree(root, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "acnet_convert"], capture_output=True)
    if archive.returncode != 0:
        note(f"commit {BASELINE[:10]} is not in this clone: the 'before' run is skipped")
        return None
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    note(f"fusing {ckpt.name} with the baseline package into {out}")
    subprocess.run([PYTHON, "-m", "acnet_convert", "-q", "fuse", str(ckpt), str(out), "--onnx"],
                   env={**os.environ, "PYTHONPATH": str(src)}, check=True)
    return src, out


def current(ckpt: Path) -> Path:
    """Today's `fuse --onnx` output (cached, redone when the package changes)."""
    return fused_dir(ckpt, CACHE / "verify_current_onnx", ckpt / ".complete", "--onnx", "--paddle-format", "pir")


def split_child(out: str, fold: bool) -> None:
    """In a child: Paddle's import, then verify() with its phase timings, as JSON on stdout."""
    start = time.perf_counter()
    from acnet_convert.common import quiet

    quiet.configure(False)
    quiet.import_paddle()
    imported = time.perf_counter() - start
    if fold:
        from acnet_convert.verify import runners

        runners.BN_FOLDING_PASSES = ()
    from acnet_convert.commands.verify import verify

    report = verify(Path(out), batch_size=8, batches=8, device="cpu")
    print(json.dumps({"paddle import": imported, **report.timings, "ok": report.ok}))


def run(quick: bool) -> tuple[list[Row], str]:
    ckpt = checkpoint_dir(50, 1000)
    before = baseline(ckpt)
    after = current(ckpt)
    rounds = 1 if quick else 3
    samples: dict[str, list[dict]] = {"before": [], "after": [], "split": [], "split-folded": []}
    commands = {
        "after": ([CLI, "-q", "verify", str(after), *ARGS], None),
        "split": ([PYTHON, __file__, "--split", str(after)], None),
        "split-folded": ([PYTHON, __file__, "--split-folded", str(after)], None),
    }
    if before is not None:
        src, out = before
        commands["before"] = ([PYTHON, "-m", "acnet_convert", "-q", "verify", str(out), *ARGS],
                              {**os.environ, "PYTHONPATH": str(src)})
    names = list(commands)
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            cmd, env = commands[name]
            note(f"round {r + 1}/{rounds}: {name}")
            samples[name].append(spawn(cmd, env))

    rows: list[Row] = []
    lines = [f"verify ResNet-50 ACNet, 64 random images at 224 (8 x 8), train + paddle-deploy + onnx, {rounds} round(s)"]
    after_wall = median([s["wall"] for s in samples["after"]])
    after_rss = median([s["rss"] for s in samples["after"]])
    if samples["before"]:
        before_wall = median([s["wall"] for s in samples["before"]])
        before_rss = median([s["rss"] for s in samples["before"]])
        ratio_wall = median([a["wall"] / b["wall"] for a, b in zip(samples["after"], samples["before"])])
        ratio_rss = after_rss / before_rss
        lines.append(f"  before ({BASELINE[:10]}): {before_wall:.1f} s, peak RSS {mib(before_rss)}")
        rows.append(Row("6 verify", "wall, after / before", f"{after_wall:.1f} s vs {before_wall:.1f} s",
                        f"{ratio_wall:.2f}", "< 1", ratio_wall < 1))
        rows.append(Row("6 verify", "peak RSS, after / before", f"{mib(after_rss)} vs {mib(before_rss)}",
                        f"{ratio_rss:.2f}", "< 1", ratio_rss < 1))
    else:
        rows.append(Row("6 verify", "wall (no baseline)", f"{after_wall:.1f} s"))
        rows.append(Row("6 verify", "peak RSS (no baseline)", mib(after_rss)))
    lines.append(f"  after: {after_wall:.1f} s, peak RSS {mib(after_rss)}")
    for name in ("split", "split-folded"):
        phases = [json.loads(s["stdout"].strip().splitlines()[-1]) for s in samples[name]]
        keys = [k for k in phases[0] if k != "ok"]
        split = {k: median([p[k] for p in phases]) for k in keys}
        label = "split" if name == "split" else "split, train graph with Paddle's BN folding (as before)"
        lines.append(f"  {label}: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
        if name == "split":
            for k, v in split.items():
                rows.append(Row("6 verify", f"phase: {k}", f"{v:.2f} s"))
        else:
            rows.append(Row("6 verify", "phase: train run if Paddle folded its BNs (before's reference)",
                            f"{split['train run']:.2f} s"))
    return rows, "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--split", "--split-folded"):
        split_child(sys.argv[2], fold=sys.argv[1] == "--split-folded")
    else:
        run_part(run, __doc__)
