"""What `fuse` and `verify` read: SOURCE is a train-form inference program of any CNN, or a
checkpoint of the ResNet-ACNet family. Either way the result is a train-form Paddle program
and its graph (a checkpoint's program is built from the ResNet plan)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from acnet_convert.common.errors import ConvertError, UsageError
from acnet_convert.graph.ir import Graph
from acnet_convert.nn.plan import Plan
from acnet_convert.read.program import PARAMS_SUFFIX, Program, load_program, program_files
from acnet_convert.read.program_reader import read_graph
from acnet_convert.common.sizes import SizeLike
from acnet_convert.common.text import printable

CHECKPOINT, PROGRAM = "checkpoint", "program"
# files that may sit beside an inference model without being a second source
_BESIDE_A_PROGRAM = (".json", ".pdmodel", PARAMS_SUFFIX, ".info", ".yml", ".yaml", ".txt", ".md", ".log",
                     ".npy", ".onnx", ".png", ".jpg", ".jpeg")


@dataclass
class Source:
    path: Path  # what was read: the program file, or the checkpoint's folder or .pdparams file
    kind: str  # "checkpoint" | "program"
    format: str  # "per-variable" | "pdparams" | "pir" | "legacy"
    sha256: str
    program: Program  # the train-form program (the user's, or built from the plan)
    graph: Graph
    plan: Plan | None = None  # ResNet-ACNet checkpoints only
    ignored: int = 0  # non-weight variables of a checkpoint
    warnings: list[str] = field(default_factory=list)

    def release(self, name: str) -> None:
        """Forget train weight `name` (fuse is done with it): its array is freed unless the
        deploy model still reads it."""
        self.graph.weights.pop(name, None)
        if self.program.arrays is not None:
            self.program.arrays.pop(name, None)


def find_program(path: Path) -> tuple[Path, Path] | None:
    """The inference model `path` names, or None for a checkpoint. A folder that holds both an
    inference model and a checkpoint is refused: which one is meant?"""
    path = Path(path)
    found = program_files(path)
    if found is None or not path.is_dir():
        return found
    others = sorted(
        p.name for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".") and not p.name.endswith(_BESIDE_A_PROGRAM)
        and p.name not in ("README", "LICENSE")
    )
    if others:
        raise ConvertError(
            f"{printable(path)} holds an inference model ({printable(found[0].name)}) and other files that may be a "
            f"checkpoint ({printable(', '.join(others[:3]))}{', ...' if len(others) > 3 else ''}); "
            f"name one: {printable(found[0].with_suffix(''))} or a folder of its own"
        )
    return found


def open_source(
    path: Path,
    *,
    arch: str = "auto",
    num_classes: int | None = None,
    input_size: SizeLike | None = 224,
    allow_nonfinite: bool = False,
    digest: bool = True,
) -> Source:
    """Read SOURCE into a train-form program and its graph (an ONNX model is `onnx.source`'s)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        raise ConvertError(f"{printable(path)} is an ONNX model: it is read by read.onnx.source.open_onnx "
                           "(commands.fuse_onnx, commands.verify_onnx)")
    found = find_program(path)
    if found is not None:
        if arch != "auto" or num_classes is not None:
            raise UsageError("--arch and --num-classes describe ResNet-ACNet checkpoints; "
                               f"{printable(found[0])} is a program that describes itself")
        program = load_program(*found)
        return Source(found[0], PROGRAM, program.format, program.sha256, program, read_graph(program))
    from acnet_convert.read.checkpoint import read_checkpoint
    from acnet_convert.read.plan_program import build_train_program
    from acnet_convert.read.validate import check_tensors, detect_plan

    checkpoint = read_checkpoint(path, digest=digest)
    plan = detect_plan(checkpoint.tensors, printable(path), arch, num_classes)
    warnings = check_tensors(plan, checkpoint.tensors, printable(path), allow_nonfinite)
    program = build_train_program(plan, checkpoint.tensors, input_size)  # the program owns the arrays now
    graph = read_graph(program)
    return Source(checkpoint.path, CHECKPOINT, checkpoint.format, checkpoint.sha256, program, graph, plan,
                  len(checkpoint.ignored), warnings)
