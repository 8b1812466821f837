"""Writing outputs without ever losing what was there: check the destination, write beside it,
commit into place without replacing anything that was not checked.

* What a command writes (fuse's OUT, export-onnx's -o, verify's --json) and what it reads
  (SOURCE, OUT's own inputs) never overlap, in either direction. Paths are compared resolved
  (symlinks) and by inode (bind mounts), before anything is written.
* `--force` replaces only an empty folder or an earlier fuse output: a manifest.json written by
  this tool and nothing but the files fuse writes. A file is replaced only with `--force` (or, for
  verify's report, when it is an earlier report). Anything else is refused, naming it.
* The commit is renameat2(RENAME_NOREPLACE); where replacing was allowed, RENAME_EXCHANGE followed
  by a re-check of what was swapped out, which is swapped back if it is not replaceable. So an OUT
  that appears or changes while the run works is never replaced unchecked, and never deleted.
  Where the file system has no renameat2, a lock on the parent folder, taken by every run of this
  tool, is held from the re-check to the commit.
* A staging folder is locked (flock) for the life of its run. Another run removes a left-over one
  only when it can take that lock: its owner is dead, whatever pid namespace it ran in.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import platform
import shutil
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from acnet_convert import artifacts, signals
from acnet_convert.errors import ConvertError
from acnet_convert.text import printable

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "ppc64le": 357, "s390x": 347}
# renameat2 missing from the kernel or libc, or its flags not supported by the file system
_NO_RENAMEAT2 = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
_LOCK_WAIT = 30.0  # seconds to wait for a lock another run of this tool holds briefly
_MAX_MANIFEST_BYTES = 64 << 20
_MAX_REPORT_BYTES = 64 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# ---------------------------------------------------------------------------------------------
# renameat2


_libc: Optional[ctypes.CDLL] = None


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE or RENAME_EXCHANGE; OSError(ENOSYS) where there is none."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    args = (ctypes.c_int(_AT_FDCWD), os.fsencode(src), ctypes.c_int(_AT_FDCWD), os.fsencode(dst), ctypes.c_uint(flags))
    function = getattr(_libc, "renameat2", None)
    if function is not None:
        result = function(*args)
    elif platform.machine() in _SYS_RENAMEAT2:  # glibc < 2.28: the raw system call
        result = _libc.syscall(ctypes.c_long(_SYS_RENAMEAT2[platform.machine()]), *args)
    else:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(src))
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dst))


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


def _resolve(path: Path, what: str) -> Path:
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
    return {artifacts.MANIFEST, artifacts.DEPLOY_WEIGHTS, artifacts.ONNX_MODEL, artifacts.INFERENCE_CONFIG,
            *(prefix + suffix for suffix in (*artifacts.PROGRAM_SUFFIXES.values(), ".pdiparams", ".pdiparams.info"))}


def _read_small(path: Path, limit: int) -> bytes | None:
    """A regular file's bytes (not through a link, not blocking), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            return None
        return f.read(limit + 1)


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
    manifest = _json(_read_small(folder / artifacts.MANIFEST, _MAX_MANIFEST_BYTES))
    if not isinstance(manifest, dict) or manifest.get("tool") != artifacts.TOOL:
        return f"is not an output of {artifacts.TOOL} fuse (no manifest.json of ours)"
    ours = fuse_file_names()
    onnx_temp = f".{artifacts.ONNX_MODEL}."  # left by an interrupted export-onnx
    foreign = sorted(
        name for name, entry in entries.items()
        if not (name in ours and not entry.is_dir(follow_symlinks=False))
        and not (name == artifacts.PERSISTABLES and entry.is_dir(follow_symlinks=False))
        and not (name.startswith(onnx_temp) and name.endswith(".tmp"))
    )
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        return f"holds {printable(foreign[0])}{more}, which fuse did not write"
    return None


def _why_not_replaceable_any(path: Path) -> str | None:
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
    real = _resolve(out, "OUT")
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
    real = _resolve(path, what)
    check_apart(real, sources, what, "the input", shown=path)
    _check_parent(real, path)
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".probe", dir=real.parent)
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


# ---------------------------------------------------------------------------------------------
# locks


def _open_dir(path: Path) -> int:
    return os.open(path, _DIR_FLAGS)


def _still_at(fd: int, path: Path) -> bool:
    st = os.fstat(fd)
    return _identity_nofollow(path) == (st.st_dev, st.st_ino)


def _identity_nofollow(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _flock(fd: int, wait: float) -> bool:
    """Take an exclusive flock on `fd`, waiting up to `wait` seconds; False if still held
    elsewhere. A file system without flock counts as locked by nobody."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):
                return True
            raise


@contextlib.contextmanager
def _locked_folder(path: Path, what: str) -> Iterator[None]:
    """Hold the flock of the folder at `path` (if it is one)."""
    try:
        fd = _open_dir(path)
    except OSError:  # not a folder, or gone: nothing a cleaner could take
        yield
        return
    try:
        if not _flock(fd, _LOCK_WAIT):
            raise ConvertError(f"{printable(what)} is locked by another run of {artifacts.TOOL}; try again when it ends")
        yield
    finally:
        os.close(fd)


def _staging_prefix(real: Path) -> str:
    return f".{real.name}.partial-"


def remove_stale_staging(real: Path) -> None:
    """Remove staging folders beside `real` whose run is dead (their lock is free)."""
    prefix = _staging_prefix(real)
    try:
        entries = [e for e in os.scandir(real.parent) if e.name.startswith(prefix)]
    except OSError:
        return
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False):
            continue
        try:
            fd = _open_dir(Path(entry.path))
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: its run is alive (or no flock here: leave it)
                continue
            if _still_at(fd, Path(entry.path)):
                with signals.deferred():
                    shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


def _new_staging(real: Path) -> tuple[Path, int]:
    """A fresh, locked, empty staging folder beside `real`, with the permissions mkdir gives."""
    umask = os.umask(0)
    os.umask(umask)
    for _ in range(100):
        stage = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(real)}{os.getpid()}-", dir=real.parent))
        fd = _open_dir(stage)
        try:
            _flock(fd, _LOCK_WAIT)
            if _still_at(fd, stage):  # not removed as stale between mkdtemp and flock
                os.fchmod(fd, 0o777 & ~umask)
                return stage, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, "staging folders keep vanishing", str(real.parent))


# ---------------------------------------------------------------------------------------------
# commits


def _appeared(dest: Destination, what: str) -> ConvertError:
    why = _why_not_replaceable_any(dest.real)
    hint = f"it {why}" if why else "pass --force to replace it"
    return ConvertError(f"{what} {printable(dest.shown)} appeared while this run worked; it was left as it is ({hint})")


def _changed(dest: Destination, what: str, why: str) -> ConvertError:
    return ConvertError(f"{what} {printable(dest.shown)} changed while this run worked: it now {why}; it was left as it is")


def _commit(new: Path, dest: Destination, force: bool, what: str, check: Callable[[Path], str | None]) -> None:
    """Move `new` to `dest.real`. Without `force`, only where nothing is; with it, the swapped-out
    entry must pass `check` (else it is swapped back), and is then removed."""
    for _ in range(10):
        try:
            _renameat2(new, dest.real, RENAME_NOREPLACE)
            return
        except OSError as err:
            if err.errno in _NO_RENAMEAT2:
                return _commit_locked(new, dest, force, what, check)
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if not force:
            raise _appeared(dest, what)
        with _locked_folder(dest.real, f"{what} {dest.shown}"):  # cleaners skip it once swapped out
            try:
                _renameat2(new, dest.real, RENAME_EXCHANGE)
            except FileNotFoundError:  # gone meanwhile: a plain no-replace move again
                continue
            why = check(new)  # `new` now names what was at dest
            if why:
                try:
                    _renameat2(new, dest.real, RENAME_EXCHANGE)
                except OSError as err:
                    raise ConvertError(f"{what} {printable(dest.shown)} changed while this run worked and could not be "
                                       f"put back ({err.strerror}): it is now at {printable(new)}") from None
                raise _changed(dest, what, why)
            _remove(new)
            return
    raise ConvertError(f"{what} {printable(dest.shown)} keeps changing while this run commits: left as it is")


def _commit_locked(new: Path, dest: Destination, force: bool, what: str, check: Callable[[Path], str | None]) -> None:
    """The commit where renameat2 is missing: under a lock on the parent folder that every run
    of this tool takes, re-check and move."""
    real = dest.real
    parent = _open_dir(real.parent)
    try:
        if not _flock(parent, _LOCK_WAIT):
            raise ConvertError(f"{printable(real.parent)} is locked by another run of {artifacts.TOOL}; try again when it ends")
        if not os.path.lexists(real):
            if new.is_dir() or not _link(new, real):
                os.rename(new, real)
            return
        if not force:
            raise _appeared(dest, what)
        with _locked_folder(real, f"{what} {dest.shown}"):
            why = check(real)
            if why:
                raise _changed(dest, what, why)
            old = new.with_name(new.name + "-old")
            os.rename(real, old)
            try:
                os.rename(new, real)
            except OSError as err:
                try:
                    os.rename(old, real)
                except OSError:
                    raise ConvertError(f"{what} {printable(dest.shown)} changed while this run worked; what it "
                                       f"held is now at {printable(old)}") from None
                raise ConvertError(f"cannot write {printable(dest.shown)}: {err.strerror}") from None
            _remove(old)
    finally:
        os.close(parent)


def _link(new: Path, real: Path) -> bool:
    """A file moved into place with link(2), which never replaces; False where links are not
    supported."""
    try:
        os.link(new, real)
    except OSError as err:
        if err.errno in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            return False
        raise
    os.unlink(new)
    return True


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


# ---------------------------------------------------------------------------------------------
# the two ways to write


@contextlib.contextmanager
def staged_dir(out: Path, force: bool = False, sources: Iterable[Path | None] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success it is committed into place (see the
    module docstring), on any error (including Ctrl-C and SIGTERM) it is removed and `out` is
    left as it was."""
    sources = list(sources)
    dest = check_destination(out, force, sources)
    remove_stale_staging(dest.real)
    try:
        stage, fd = _new_staging(dest.real)
    except OSError as err:
        raise ConvertError(f"cannot create a staging folder beside {printable(out)}: {err.strerror}") from None
    try:
        yield stage
        with signals.deferred():
            signals.raise_if_received()  # interrupted, though a library swallowed the exception
            _commit(stage, dest, force, "OUT", _why_not_replaceable_any)
    except BaseException:
        with signals.deferred():
            if _still_at(fd, stage):  # ours still: not the old OUT left there by a failed swap-back
                shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def commit_file(
    tmp: Path, path: Path, replace: bool = False, what: str = "output",
    check: Callable[[Path], str | None] = any_regular_file,
) -> None:
    """Move the finished file `tmp` to `path` (resolved), never over what `check` refuses, and
    over an existing file only when `replace`."""
    dest = Destination(Path(path), _resolve(Path(path), what))
    with signals.deferred():
        _commit(Path(tmp), dest, replace, what, check)


def write_file(path: Path, data: bytes, replace: bool = False, what: str = "output",
               check: Callable[[Path], str | None] = any_regular_file) -> None:
    """Write `data` to `path` all at once: a temporary file beside it, fsync, `commit_file`."""
    dest_real = _resolve(Path(path), what)
    tmp = temporary_beside(dest_real)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        commit_file(tmp, path, replace, what, check)
    except BaseException as err:
        with signals.deferred(), contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise ConvertError(f"cannot write {printable(path)}: {err.strerror or err}") from None
        raise
