"""All-or-nothing output folders: write into a hidden sibling, rename into place at the end."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from acnet_convert.errors import ConvertError


def _partial_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def _remove_stale_partials(out: Path) -> None:
    """Drop staging folders left by a run that was killed (its pid no longer exists)."""
    prefix = _partial_prefix(out)
    for entry in out.parent.glob(prefix + "*"):
        pid = entry.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_destination(out: Path, force: bool) -> None:
    """Fail before any work if OUT cannot be written."""
    if out.exists() and not force:
        raise ConvertError(f"{out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise ConvertError(f"{out} exists and is not a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConvertError(f"{parent} does not exist: cannot create {out}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConvertError(f"{parent} is not writable: cannot create {out}")


@contextlib.contextmanager
def staged_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `out`; on success it replaces `out`, on any error
    (including KeyboardInterrupt) it is removed and `out` is left as it was."""
    out = Path(out)
    check_destination(out, force)
    _remove_stale_partials(out)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{os.getpid()}-", dir=out.parent))
        # mkdtemp makes it 0700; OUT should get the permissions a plain mkdir would give it
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)
    except OSError as err:
        raise ConvertError(f"cannot create a staging folder beside {out}: {err.strerror}") from None
    try:
        yield stage
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{_partial_prefix(out)}{os.getpid()}-old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
