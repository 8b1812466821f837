"""Writing outputs without ever losing what was there: check the destination, write beside it,
commit into place without replacing anything that was not checked.

* The destination is checked first (`destination`: apart from every source, and replaceable).
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
import hashlib
import os
import platform
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from acnet_convert.out import artifacts
from acnet_convert.common import signals
from acnet_convert.out.destination import Destination, any_regular_file, check_destination, resolve, why_not_replaceable_any
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "ppc64le": 357, "s390x": 347}
# renameat2 missing from the kernel or libc, or its flags not supported by the file system
_NO_RENAMEAT2 = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP}
_LOCK_WAIT = 30.0  # seconds to wait for a lock another run of this tool holds briefly
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NAME_MAX = 255

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


def fitting(name: str, room: int) -> str:
    """`name`, or a shortened form unique to it, in at most `room` bytes: the temporary names
    made from OUT's or a file's name (".NAME.partial-...") must fit NAME_MAX (255 bytes) when
    NAME itself is up to 255 bytes long."""
    if len(os.fsencode(name)) <= room:
        return name
    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    cut = name
    while len(os.fsencode(cut)) > room - len(tag):
        cut = cut[:-1]
    return cut + tag


def _staging_prefix(real: Path) -> str:
    # ".NAME.partial-" + pid (up to 7 digits) + "-" + mkdtemp's 8 characters
    return f".{fitting(real.name, _NAME_MAX - 26)}.partial-"


def remove_stale_staging(real: Path) -> None:
    """Remove staging folders beside `real` whose run is dead (their lock is free)."""
    remove_stale(real.parent, _staging_prefix(real))


def remove_stale(parent: Path, prefix: str) -> None:
    """Remove the folders in `parent` named `prefix`... whose run is dead (their lock is free)."""
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix)]
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


def locked_folder(parent: Path, prefix: str, mode: int | None = None) -> tuple[Path, int]:
    """A fresh, empty folder in `parent` named `prefix`..., and the descriptor holding its lock
    for the life of the run (`remove_stale` leaves it alone while the lock is held). `mode`
    None: the permissions mkdir gives."""
    umask = os.umask(0)
    os.umask(umask)
    for _ in range(100):
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = -1
        try:
            try:
                fd = _open_dir(folder)
            except FileNotFoundError:  # another run took it for stale before it was locked: make another
                continue
            _flock(fd, _LOCK_WAIT)
            if _still_at(fd, folder):  # not removed as stale between mkdtemp and flock
                os.fchmod(fd, (0o777 & ~umask) if mode is None else mode)
                return folder, fd
        except BaseException:  # a signal (or an error) before the caller holds it: the empty folder goes too
            if fd < 0 or _still_at(fd, folder):
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
            if fd >= 0:
                os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EAGAIN, "staging folders keep vanishing", str(parent))


def _new_staging(real: Path) -> tuple[Path, int]:
    """A fresh, locked, empty staging folder beside `real`, with the permissions mkdir gives."""
    return locked_folder(real.parent, f"{_staging_prefix(real)}{os.getpid()}-")


# ---------------------------------------------------------------------------------------------
# commits


def _appeared(dest: Destination, what: str) -> ConvertError:
    why = why_not_replaceable_any(dest.real)
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


@dataclass
class Stage:
    """A staging folder beside a destination, locked (flock on `fd`) for the life of its run."""

    path: Path
    dest: Destination
    fd: int


def open_stage(dest: Destination) -> Stage:
    """A fresh, empty, locked staging folder beside `dest` (left-over ones whose run is dead are
    removed first)."""
    remove_stale_staging(dest.real)
    try:
        path, fd = _new_staging(dest.real)
    except OSError as err:
        raise ConvertError(f"cannot create a staging folder beside {printable(dest.shown)}: {err.strerror}") from None
    return Stage(path, dest, fd)


def commit_stage(stage: Stage, force: bool, what: str = "OUT", check: Callable[[Path], str | None] = why_not_replaceable_any,
                 inner: str | None = None) -> None:
    """Move the stage (or the file `inner` inside it) into place (see the module docstring),
    then close it; a signal that arrived meanwhile raises once the commit is done."""
    with signals.deferred():
        signals.raise_if_received()  # interrupted, though a library swallowed the exception
        if inner is None:
            _commit(stage.path, stage.dest, force, what, check)
        else:
            _commit(stage.path / inner, stage.dest, force, what, check)
            discard_stage(stage)


def discard_stage(stage: Stage) -> None:
    """Remove the stage and everything in it (if it is still ours: not the old OUT a failed
    swap-back left there)."""
    with signals.deferred():
        if stage.fd >= 0:
            if _still_at(stage.fd, stage.path):
                shutil.rmtree(stage.path, ignore_errors=True)
            os.close(stage.fd)
            stage.fd = -1


def close_stage(stage: Stage) -> None:
    """Forget a committed stage (its folder is OUT now)."""
    if stage.fd >= 0:
        os.close(stage.fd)
        stage.fd = -1


@contextlib.contextmanager
def staged_dir(out: Path, force: bool = False, sources: Iterable[Path | None] = ()) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success it is committed into place (see the
    module docstring), on any error (including Ctrl-C and SIGTERM) it is removed and `out` is
    left as it was."""
    stage = open_stage(check_destination(out, force, list(sources)))
    try:
        yield stage.path
        commit_stage(stage, force)
    except BaseException:
        discard_stage(stage)
        raise
    finally:
        close_stage(stage)


def write_file(path: Path, data: bytes, replace: bool = False, what: str = "output",
               check: Callable[[Path], str | None] = any_regular_file) -> None:
    """Write `data` to `path` all at once: a temporary file beside it (resolved), fsync, then
    moved into place, never over what `check` refuses, and over an existing file only when
    `replace`."""
    dest = Destination(Path(path), resolve(Path(path), what))
    tmp = dest.real.with_name(f".{fitting(dest.real.name, _NAME_MAX - 22)}.{uuid.uuid4().hex[:16]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with signals.deferred():
            _commit(tmp, dest, replace, what, check)
    except BaseException as err:
        with signals.deferred(), contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise ConvertError(f"cannot write {printable(path)}: {err.strerror or err}") from None
        raise
