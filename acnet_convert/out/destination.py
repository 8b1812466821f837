"""Where a command may write, checked before any work: what it writes (fuse's OUT, export-onnx's
-o, verify's --json) and what it reads (SOURCE, OUT's own inputs) never overlap, in either
direction; paths are compared resolved (symlinks) and by inode (bind mounts). `--force`
replaces only an empty folder or an earlier fuse output (our manifest.json and nothing but the
files fuse writes); a file only with `--force` (verify's report: when it is an earlier report).
Anything else is refused, naming it. `staging` re-checks at the commit."""
from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from acnet_convert.out import artifacts
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import file_size, open_regular
from acnet_convert.common.text import printable

_MAX_REPORT_BYTES = 64 << 20


# ---------------------------------------------------------------------------------------------
# what a path is


def _identity(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _lineage(path: Path) -> set[tuple[int, int]]:
    """The inodes of `path` and of every folder above it, resolved."""
    real = Path(os.path.realpath(path))
    return {i for i in map(_identity, (real, *real.parents)) if i is not None}


def _regions(source: Path) -> list[Path]:
    """What a source occupies: the path itself, or for a path prefix (`dir/model` naming
    dir/model.json + dir/model.pdiparams) each file it names."""
    if os.path.lexists(source):
        return [source]
    try:
        return [p for p in source.parent.iterdir() if p.name.startswith(source.name + ".")]
    except OSError:
        return []


def check_apart(written: Path, sources: Iterable[Path | None], written_as: str = "OUT", source_as: str = "the source",
                shown: Path | None = None) -> None:
    """Refuse when `written` is, lies inside, or contains any of `sources` (exit 3, naming both);
    `shown` is how the user named `written`."""
    written = Path(written)
    shown = written if shown is None else shown
    above_written = _lineage(written)
    written_id = _identity(written)
    for source in sources:
        if source is None:
            continue
        for region in _regions(Path(source)):
            region_id = _identity(region)
            if region_id is None:
                continue
            if region_id == written_id:
                relation = "is"
            elif region_id in above_written:
                relation = "is inside"
            elif written_id is not None and written_id in _lineage(region):
                relation = "contains"
            else:
                continue
            raise ConvertError(f"{written_as} {printable(shown)} {relation} {source_as} {printable(source)}: "
                               f"choose another {written_as}, apart from it")


def resolve(path: Path, what: str) -> Path:
    """`path` with symbolic links resolved; a dangling or looping link is refused."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise ConvertError(f"cannot use {printable(path)} as {what}: {err.strerror}") from None
    if st is not None and stat.S_ISLNK(st.st_mode) and _identity(path) is None:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise ConvertError(f"{what} {printable(path)} is a symbolic link to {printable(target)}, which does not "
                           "exist: remove the link or choose another path")
    return Path(os.path.realpath(path))


def _check_parent(real: Path, shown: Path) -> None:
    parent = real.parent
    if not parent.is_dir():
        raise ConvertError(f"{printable(parent)} does not exist: cannot create {printable(shown)}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConvertError(f"{printable(parent)} is not writable: cannot create {printable(shown)}")


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a special file"


# ---------------------------------------------------------------------------------------------
# what --force may replace


def fuse_file_names() -> set[str]:
    """The names fuse writes into OUT (besides the persistables/ folder)."""
    prefix = artifacts.MODEL_PREFIX
    return {artifacts.MANIFEST, artifacts.DEPLOY_WEIGHTS, artifacts.ONNX_MODEL, artifacts.ONNX_DATA, artifacts.INFERENCE_CONFIG,
            *(prefix + suffix for suffix in (*artifacts.PROGRAM_SUFFIXES.values(), ".pdiparams", ".pdiparams.info"))}


def _read_small(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes (not through a link, not blocking), or None."""
    try:
        with open_regular(path) as f:
            return f.read(limit + 1) if file_size(f) <= limit else None
    except ConvertError:
        return None


def _json(data: bytes | None) -> object:
    try:
        return json.loads(data) if data else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def why_not_replaceable(folder: Path) -> str | None:
    """None when `folder` is empty or an earlier fuse output; else why not, for a message."""
    try:
        entries = {e.name: e for e in os.scandir(folder)}
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not entries:
        return None
    manifest = _json(_read_small(folder / artifacts.MANIFEST, artifacts.MAX_MANIFEST_BYTES))
    if not isinstance(manifest, dict) or manifest.get("tool") != artifacts.TOOL:
        return f"is not an output of {artifacts.TOOL} fuse (no manifest.json of ours)"
    ours = fuse_file_names()
    onnx_temp = f".{artifacts.ONNX_MODEL}."  # left by an interrupted export-onnx (a file or its stage)
    foreign = sorted(
        name for name, entry in entries.items()
        if not (name in ours and not entry.is_dir(follow_symlinks=False))
        and not (name == artifacts.PERSISTABLES and entry.is_dir(follow_symlinks=False))
        and not (name.startswith(onnx_temp) and (name.endswith(".tmp") or ".partial-" in name))
    )
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        return f"holds {printable(foreign[0])}{more}, which fuse did not write"
    return None


def why_not_replaceable_any(path: Path) -> str | None:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if not stat.S_ISDIR(mode):
        return f"is {_kind(mode)}, not a folder"
    return why_not_replaceable(path)


def any_regular_file(path: Path) -> str | None:
    """What `--force` lets export-onnx replace: a regular file."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else f"is {_kind(mode)}"


def verify_report(path: Path) -> str | None:
    """What verify's --json replaces without asking: an empty file or an earlier report."""
    why = any_regular_file(path)
    if why:
        return why
    try:
        if os.lstat(path).st_size == 0:
            return None
    except OSError:
        return None
    report = _json(_read_small(path, _MAX_REPORT_BYTES))
    if isinstance(report, dict) and "ok" in report and "pairs" in report:
        return None
    return "is not an earlier verify report"


# ---------------------------------------------------------------------------------------------
# checks before any work


@dataclass(frozen=True)
class Destination:
    shown: Path  # as the user named it, for messages
    real: Path  # resolved: where the commit happens


def check_destination(out: Path, force: bool, sources: Iterable[Path | None] = ()) -> Destination:
    """Fail before any work if OUT cannot be written, overlaps a source, or may not be replaced."""
    out = Path(out)
    shown = printable(out)
    real = resolve(out, "OUT")
    check_apart(real, sources, "OUT", shown=out)
    try:
        cwd = Path(os.path.realpath(os.getcwd()))
    except OSError:  # the current folder was removed: OUT cannot contain it
        cwd = Path("/nonexistent/current/folder")
    if real == cwd or real in cwd.parents:
        raise ConvertError(f"OUT {shown} is the current folder or above it: name a new folder for the output")
    if os.path.ismount(real):
        raise ConvertError(f"OUT {shown} is a mount point, which cannot be replaced: name a folder inside it")
    _check_parent(real, out)
    try:
        mode = os.lstat(real).st_mode
    except FileNotFoundError:
        return Destination(out, real)
    except OSError as err:
        raise ConvertError(f"cannot use {shown} as OUT: {err.strerror}") from None
    if not stat.S_ISDIR(mode):
        raise ConvertError(f"OUT {shown} exists and is {_kind(mode)}, not a folder: choose another OUT")
    why = why_not_replaceable(real)
    if why:
        raise ConvertError(f"OUT {shown} already exists and {why}: choose another OUT "
                           "(--force replaces only an earlier fuse output or an empty folder)")
    if not force:
        raise ConvertError(f"{shown} already exists (pass --force to replace it)")
    return Destination(out, real)


def check_file_destination(
    path: Path,
    force: bool,
    sources: Iterable[Path | None] = (),
    what: str = "output",
    replaceable: Callable[[Path], str | None] = any_regular_file,
    force_flag: str | None = "--force",
) -> Destination:
    """Fail before any work if the file `path` cannot be written: it overlaps a source, its
    folder is missing or not writable (tried, not guessed), or it exists and may not be replaced.
    `force_flag` None: `replaceable` alone decides (verify's report has no --force)."""
    path = Path(path)
    shown = printable(path)
    real = resolve(path, what)
    check_apart(real, sources, what, "the input", shown=path)
    _check_parent(real, path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".acnet-convert.", suffix=".probe", dir=real.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConvertError(f"cannot write {shown}: {err.strerror}") from None
    if os.path.lexists(real):
        why = replaceable(real)
        if why:
            raise ConvertError(f"{what} {shown} exists and {why}: choose another path")
        if force_flag and not force:
            raise ConvertError(f"{what} {shown} already exists (pass {force_flag} to replace it)")
    return Destination(path, real)
