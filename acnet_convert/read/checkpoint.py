"""Locating and reading a training checkpoint (DESIGN.md section 1).

A checkpoint is named by
* a folder of per-variable files (`fluid.io.save_persistables` / `paddle.static.save_vars`): every
  regular file is one variable, named by the variable, holding one serialized LoDTensor
  (lod_tensor.py);
* a `.pdparams` pickle (`paddle.static.save`, `fluid.save`, `paddle.save(dict)`): the file itself
  (`output/best_model.pdparams`), its prefix (`output/best_model`), or a folder holding exactly one.
  Its `.pdopt` / `.pdstates` / `.pdmodel` siblings are not read. The pickle is read by the
  restricted unpickler (pickle_reader.py).

Files are read only inside the checkpoint's folder: a symbolic link that leads out of it is
refused, and every file is opened as a regular file (regular_file.py). Every bad input raises
ConvertError with one line naming the file. Pure python + numpy: never imports paddle, so
`inspect` answers quickly.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.read.lod_tensor import looks_like_lod_tensor, read_lod_tensor
from acnet_convert.read.pickle_reader import read_pickle
from acnet_convert.common.regular_file import file_size, kind_of, open_regular
from acnet_convert.common.text import one_line, printable

PER_VARIABLE = "per-variable"
PDPARAMS = "pdparams"
_SUFFIX = ".pdparams"
# files that sit next to checkpoints but are not variables of a per-variable checkpoint
_NOT_A_VARIABLE = (".pdopt", ".pdstates", ".pdmodel", ".pdiparams", ".pdiparams.info", ".json",
                   ".onnx", ".txt", ".log", ".md", ".yaml", ".yml", ".npy", ".npz")
_TRAINING_SIDECARS = (".pdopt", ".pdstates")
_LISTED = 8  # names quoted in a message that lists files


@dataclass
class Checkpoint:
    """A checkpoint's tensors and what identifies it.

    sha256 covers the checkpoint's files in sorted name order, each as its name (UTF-8), NUL,
    its size (u64 little-endian), then its bytes. Training-state files of a per-variable folder
    (optimizer and LR state, never parsed) contribute their name and size only: a 400 GB optimizer
    state is not read to be hashed. A `.pdparams` checkpoint is its one `.pdparams` file.
    """

    path: Path  # what was read: the folder, or the .pdparams file a file or prefix named
    format: str  # "per-variable" | "pdparams"
    tensors: dict[str, np.ndarray]  # everything that is not training state
    ignored: list[str]  # names of non-weight variables (optimizer / LR state), sorted
    sha256: str
    files: list[Path] = field(default_factory=list)  # files that make up the checkpoint, sorted


_TRAINING_STATE_RE = re.compile(
    r"(?:"
    r"_velocity_\d+"  # Momentum
    r"|_moment1_\d+|_moment2_\d+|_moment2_max_\d+"  # Adam / AdamW / Lamb (+ amsgrad)
    r"|_beta1_pow_acc_\d+|_beta2_pow_acc_\d+"  # Adam family
    r"|_moment_\d+"  # Adagrad / DecayedAdagrad / Momentum variants
    r"|_mean_square_\d+|_mean_grad_\d+"  # RMSProp
    r"|_inf_norm_\d+"  # Adamax
    r"|_avg_squared_grad_\d+|_avg_squared_update_\d+"  # Adadelta
    r"|_fp32_master_\d+"  # multi-precision master weights
    r")$"
    r"|^learning_rate_\d+$"  # LR variables
)


def is_training_state(name: str) -> bool:
    """True for optimizer and LR-scheduler variables (not weights).

    `*_velocity_N`, `*_moment1_N`, `*_moment2_N`, `*_beta1_pow_acc_N`, `*_beta2_pow_acc_N`,
    a few other optimizers' accumulators, `learning_rate_N`, and any name containing `@`
    (`@LR_DECAY_COUNTER@`, gradient / internal variables).
    """
    return "@" in name or _TRAINING_STATE_RE.search(name) is not None


# suffixes of files that are not checkpoint variables (Paddle names those by variable, no suffix)
_OTHER_FILES = frozenset(".jpg .jpeg .png .bmp .webp .gif .tif .tiff .txt .md .json .yml .yaml .csv .npy .npz .onnx .pt "
                         ".pth .h5 .ckpt .zip .tar .gz .py".split())
# what SOURCE may be, for the messages that say it is none of them
SOURCE_FORMS = ("a train-form inference model (PREFIX.json or PREFIX.pdmodel with PREFIX.pdiparams: the folder, "
                "the prefix or the program file) or a ResNet-ACNet checkpoint (a folder of per-variable files, a "
                ".pdparams file or its prefix)")


def read_checkpoint(path: str | Path, digest: bool = True) -> Checkpoint:
    """Read the checkpoint `path` names: a per-variable folder, a `.pdparams` file, its prefix,
    or a folder holding one `.pdparams`. With `digest=False` the sha256 is left empty and
    training-state files are not even looked at, which is what `inspect` wants."""
    path = Path(path)
    if path.is_dir():
        listed = _list_dir(path)
        if not listed:
            raise ConvertError(f"{printable(path)} is empty")
        pickles = [f for f in listed if f.name.endswith(_SUFFIX)]
        if len(pickles) > 1:
            raise ConvertError(f"{printable(path)} holds {len(pickles)} checkpoints ({_names(pickles)}); which one? "
                               f"Name its file, e.g. {printable(pickles[0])}")
        if pickles:
            _refuse_mixed_formats(path, pickles[0], listed)
            return _read_pdparams(pickles[0], _inside(pickles[0], path), path, digest)
        return _read_per_variable(path, listed, digest)
    named = path if path.name.endswith(_SUFFIX) else Path(f"{path}{_SUFFIX}")
    if os.path.lexists(named):
        # named by the user: a symbolic link is theirs to follow
        return _read_pdparams(named, os.path.realpath(named), named, digest)
    if path.exists():
        what = "a file" if path.is_file() else kind_of(os.stat(path).st_mode)
        raise ConvertError(f"{printable(path)} is {what}, expected {SOURCE_FORMS}")
    raise ConvertError(f"{printable(path)} does not exist")


# --------------------------------------------------------------------------------------------
# finding the files


def _list_dir(folder: Path) -> list[Path]:
    """The folder's entries that may be variables, sorted: not hidden (.DS_Store, editor
    droppings), not folders. FIFOs and the like are kept, to be refused by name when opened."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise ConvertError(f"cannot list {printable(folder)}: {err.strerror or one_line(err)}") from None
    found = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():  # follows links: a link to a folder is not a variable either
                continue
        except OSError:
            pass
        found.append(folder / entry.name)
    return found


def _names(files: list[Path]) -> str:
    text = ", ".join(printable(f.name, 80) for f in files[:_LISTED])
    return text + (f", ... ({len(files)} in all)" if len(files) > _LISTED else "")


def _inside(path: Path, folder: Path) -> str:
    """What to open for `path`, an entry of `folder`: itself, or the target of a symbolic link
    that stays inside the folder. A link out of the checkpoint is refused, naming it."""
    if not path.is_symlink():
        return str(path)
    root, target = os.path.realpath(folder), os.path.realpath(path)
    if os.path.commonpath([root, target]) != root:
        raise ConvertError(f"{printable(path)} is a symbolic link to a file outside {printable(folder)}; "
                           "refusing to follow it")
    return target


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Whatever reading `path` raises because of what the file holds becomes one line naming it."""
    try:
        yield
    except ConvertError:
        raise
    except OSError as err:
        raise ConvertError(f"cannot read {printable(path)}: {err.strerror or one_line(err)}") from None
    except MemoryError:
        raise ConvertError(f"{printable(path)}: too large to load") from None
    except (RecursionError, OverflowError) as err:
        raise ConvertError(f"{printable(path)}: cannot be read ({type(err).__name__})") from None


def _open(path: Path, folder: Path) -> BinaryIO:
    return open_regular(_inside(path, folder), shown=path)


def _looks_like_lod_tensor(path: Path, folder: Path) -> bool:
    try:
        with _reading(path), _open(path, folder) as f:
            return looks_like_lod_tensor(f.read(24))
    except ConvertError:  # what cannot be opened here is not a tensor anyone could read
        return False


def _refuse_mixed_formats(folder: Path, pickle: Path, listed: list[Path]) -> None:
    others = [f for f in listed if f != pickle and not f.name.endswith(_NOT_A_VARIABLE)
              and _looks_like_lod_tensor(f, folder)]
    if others:
        raise ConvertError(f"{printable(folder)}: two checkpoint formats in one directory: {printable(pickle.name)} "
                           f"and per-variable tensor files ({_names(others)})")


# --------------------------------------------------------------------------------------------
# reading


def _hash_header(hasher: Any, name: str, size: int) -> None:
    if hasher is not None:
        hasher.update(os.fsencode(name) + b"\0" + struct.pack("<Q", size))


def _read_pdparams(pdparams: Path, target: str, named: Path, digest: bool) -> Checkpoint:
    """The checkpoint in `pdparams`, read from `target` (where a link in it leads)."""
    hasher = hashlib.sha256() if digest else None
    with _reading(pdparams), open_regular(target, shown=pdparams) as f:
        _hash_header(hasher, pdparams.name, file_size(f))
        loaded = read_pickle(f, str(pdparams), hasher)
    tensors: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for name, arr in loaded.items():
        if is_training_state(name):
            ignored.append(name)
        elif arr.dtype.kind == "c":
            raise ConvertError(f"{printable(pdparams)}: tensor '{printable(name)}' is {arr.dtype.name}; complex "
                               "tensors are not supported")
        else:
            tensors[name] = arr
    return Checkpoint(path=named, format=PDPARAMS, tensors=tensors, ignored=sorted(ignored),
                      sha256=hasher.hexdigest() if hasher else "", files=[pdparams])


def _read_per_variable(folder: Path, listed: list[Path], digest: bool) -> Checkpoint:
    variables = [f for f in listed if f.name != "__model__" and not f.name.endswith(".pdmodel")]
    combined = [f for f in variables if f.name.endswith(".pdiparams")]
    if combined:
        raise ConvertError(f"{printable(combined[0])} is the combined parameter file of an inference model "
                           "(paddle.jit.save / save_inference_model), not a training checkpoint")
    sidecars = [f for f in variables if f.name.endswith(_TRAINING_SIDECARS)]
    if sidecars:
        raise ConvertError(f"{printable(folder)} holds {printable(sidecars[0].name)} but no {_SUFFIX} file")
    if not variables:
        raise ConvertError(f"{printable(folder)} is empty (no checkpoint variables)")
    hasher = hashlib.sha256() if digest else None
    tensors: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for f in variables:  # sorted by name, the order of the hash
        if is_training_state(f.name):
            ignored.append(f.name)
            if digest:
                _hash_header(hasher, f.name, _size_of(f, folder))
            continue
        try:
            with _reading(f), _open(f, folder) as fh:
                _hash_header(hasher, f.name, file_size(fh))
                tensors[f.name] = read_lod_tensor(fh, str(f), hasher)
        except ConvertError:
            # a folder of something else (images, documents) is named as such; a damaged tensor
            # file among variables, or one swapped for a FIFO, keeps its own message
            if (not tensors and any(v.suffix.lower() in _OTHER_FILES for v in variables)
                    and not any(_looks_like_lod_tensor(v, folder) for v in variables)):
                raise ConvertError(f"{printable(folder)} holds no Paddle tensor file ({_names(variables)}): it is "
                                   f"not a model; expected {SOURCE_FORMS}") from None
            raise
    return Checkpoint(path=folder, format=PER_VARIABLE, tensors=tensors, ignored=sorted(ignored),
                      sha256=hasher.hexdigest() if hasher else "", files=variables)


def _size_of(path: Path, folder: Path) -> int:
    """The size of a file that is hashed by name and size only (training state)."""
    with _reading(path):
        st = os.stat(_inside(path, folder), follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise ConvertError(f"{printable(path)} is {kind_of(st.st_mode)}, expected a regular file")
    return st.st_size
