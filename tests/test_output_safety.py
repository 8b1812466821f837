"""Nothing the tool did not create is ever deleted: OUT apart from SOURCE, `--force` only over an
earlier fuse output or an empty folder, a commit that never replaces what it did not check, and
staging folders judged stale by their lock, not by a pid (issue 12, rows 1-3 and 9)."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acnet_convert.out import staging
from acnet_convert.common.errors import ConvertError
from tests.conftest import TEST_INPUT
from tests.test_hostile_inputs import assert_one_line_error as one_error, fuse


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_output(folder: Path, *extra: str) -> Path:
    """A folder that passes for an earlier fuse output (what --force may replace)."""
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"tool": "acnet-convert"}))
    (folder / "deploy.pdparams").write_bytes(b"old weights")
    for name in extra:
        (folder / name).write_text("the user's own file")
    return folder


@pytest.fixture
def ckpt(checkpoints, tmp_path: Path) -> Path:
    return Path(shutil.copytree(checkpoints(18, "vars"), tmp_path / "ck"))


# --- OUT and SOURCE never overlap ----------------------------------------------------------------
# old: `fuse ck ck --force` replaced the 446-file checkpoint with 4 files, exit 0; `fuse p/ck p
# --force` deleted the checkpoint and the files beside it; OUT inside CKPT wrote into it.


def test_fuse_into_its_own_source_is_refused(ckpt: Path) -> None:
    before = snapshot(ckpt)
    one_error(fuse(ckpt, ckpt, "--force"), f"OUT {ckpt}", f"source {ckpt}")
    assert snapshot(ckpt) == before


def test_out_above_the_source_is_refused(ckpt: Path, tmp_path: Path) -> None:
    parent = tmp_path / "p"
    parent.mkdir()
    ckpt = Path(shutil.move(ckpt, parent / "ck"))
    (parent / "other").write_text("unrelated")
    before = snapshot(parent)
    one_error(fuse(ckpt, parent, "--force"), f"OUT {parent} contains the source {ckpt}")
    assert snapshot(parent) == before


def test_out_inside_or_linked_to_the_source_is_refused(ckpt: Path, tmp_path: Path) -> None:
    before = snapshot(ckpt)
    one_error(fuse(ckpt, ckpt / "deploy"), "is inside the source")
    (tmp_path / "link").symlink_to(ckpt)
    one_error(fuse(ckpt, tmp_path / "link", "--force"), f"OUT {tmp_path / 'link'} is the source")
    one_error(fuse(tmp_path / "link", tmp_path, "--force"), "contains the source")
    assert snapshot(ckpt) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "link"]


# --- what --force may replace ---------------------------------------------------------------------
# old: --force replaced any folder (a user's files, another tool's output) and the user's own files
# inside an earlier output; an OUT that is a file got "pass --force", which then refused.


@pytest.mark.parametrize("kind", ["user-folder", "foreign-manifest", "output-plus-user-file"])
def test_force_replaces_only_an_earlier_output_or_an_empty_folder(ckpt: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    if kind == "user-folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        needle = "no manifest.json of ours"
    elif kind == "foreign-manifest":
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps({"tool": "another-tool"}))
        needle = "no manifest.json of ours"
    else:
        fake_output(out, "notes.txt")
        needle = "holds notes.txt, which fuse did not write"
    before = snapshot(out)
    for args in ((), ("--force",)):
        line = one_error(fuse(ckpt, out, *args), str(out), needle)
        assert "pass --force" not in line
    assert snapshot(out) == before


def test_without_force_an_earlier_output_asks_for_it(ckpt: Path, tmp_path: Path) -> None:
    out = fake_output(tmp_path / "out")
    one_error(fuse(ckpt, out), f"{out} already exists (pass --force to replace it)")


def test_out_that_is_a_file_is_refused_without_suggesting_force(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("keep me")
    for args in ((), ("--force",)):
        line = one_error(fuse(ckpt, tmp_path / "afile", *args), "is a file, not a folder")
        assert "--force" not in line
    assert (tmp_path / "afile").read_text() == "keep me"


def test_dangling_symlink_out_is_one_line(ckpt: Path, tmp_path: Path) -> None:
    # old: internal error: NotADirectoryError (exit 4) after the whole run
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for args in ((), ("--force",)):
        one_error(fuse(ckpt, tmp_path / "dangling", *args), "symbolic link", "does not exist")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "dangling"]


def test_out_dot_is_refused_and_nothing_is_left(checkpoints, tmp_path: Path, monkeypatch) -> None:
    # old: internal error: OSError [Errno 16] Device or resource busy (exit 4), and an empty
    # `..partial-PID-old-*` folder left inside the output
    ckpt = checkpoints(18, "vars")  # not under tmp_path: ".." must be refused for being above the cwd
    out = fake_output(tmp_path / "out")
    before = snapshot(tmp_path)
    monkeypatch.chdir(out)
    for target in (".", "..", "../out"):
        one_error(fuse(ckpt, target, "--force"), "current folder")
    assert snapshot(tmp_path) == before and sorted(os.listdir(out)) == ["deploy.pdparams", "manifest.json"]


def test_mount_point_out_is_refused(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    out = fake_output(tmp_path / "out")
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real_ismount(p))
    one_error(fuse(ckpt, out, "--force"), "mount point")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out"]


# --- the commit never replaces what it did not check --------------------------------------------
# old: the commit replaced whatever was at OUT by then (`os.replace` after an `exists()` test),
# --force or not, and deleted it.


@pytest.fixture(params=["renameat2", "lock"])
def commit_mode(request, monkeypatch) -> str:
    """Both commits: renameat2 (NOREPLACE / EXCHANGE), and the lock where the kernel or file
    system has none."""
    if request.param == "lock":
        def missing(*_args):
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

        monkeypatch.setattr(staging, "_renameat2", missing)
    return request.param


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.endswith(".tmp")]


def test_out_that_appears_during_the_run_is_kept(tmp_path: Path, commit_mode: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="appeared while this run worked"):
        with staging.staged_dir(out) as stage:
            (stage / "manifest.json").write_text("new")
            out.mkdir()  # another process, or a second fuse
            (out / "theirs").write_text("precious")
    assert (out / "theirs").read_text() == "precious" and sorted(os.listdir(out)) == ["theirs"]
    assert _leftovers(tmp_path) == []


def test_force_does_not_replace_a_folder_that_appeared_unchecked(tmp_path: Path, commit_mode: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="no manifest.json of ours"):
        with staging.staged_dir(out, force=True) as stage:
            (stage / "manifest.json").write_text("new")
            out.mkdir()
            (out / "theirs").write_text("precious")
    assert sorted(os.listdir(out)) == ["theirs"] and _leftovers(tmp_path) == []


def test_force_swaps_back_an_output_that_changed_after_the_check(tmp_path: Path, commit_mode: str) -> None:
    out = fake_output(tmp_path / "out")
    with pytest.raises(ConvertError, match="holds notes.txt, which fuse did not write"):
        with staging.staged_dir(out, force=True) as stage:
            (stage / "manifest.json").write_text("new")
            (out / "notes.txt").write_text("written while fuse ran")
    assert sorted(os.listdir(out)) == ["deploy.pdparams", "manifest.json", "notes.txt"]
    assert (out / "deploy.pdparams").read_bytes() == b"old weights" and _leftovers(tmp_path) == []


def test_force_replaces_an_earlier_output_or_an_empty_folder(tmp_path: Path, commit_mode: str) -> None:
    for out in (fake_output(tmp_path / "out"), tmp_path / "empty"):
        out.mkdir(exist_ok=True)
        with staging.staged_dir(out, force=True) as stage:
            (stage / "manifest.json").write_text("new")
        assert sorted(os.listdir(out)) == ["manifest.json"] and (out / "manifest.json").read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_commit_file_never_replaces_without_leave(tmp_path: Path, commit_mode: str) -> None:
    target = tmp_path / "model.onnx"
    staging.write_file(target, b"one")
    target.write_bytes(b"theirs")
    with pytest.raises(ConvertError, match="appeared"):
        staging.write_file(target, b"two")
    assert target.read_bytes() == b"theirs"
    staging.write_file(target, b"three", replace=True)
    assert target.read_bytes() == b"three" and _leftovers(tmp_path) == []


def test_two_fuses_to_one_out_one_wins_the_other_leaves_it(ckpt: Path, tmp_path: Path) -> None:
    # old: both exited 0; the second replaced the first's output
    out = tmp_path / "out"
    command = [sys.executable, "-m", "acnet_convert", "fuse", str(ckpt), str(out), "--input-size", str(TEST_INPUT)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    refused = next(err for code, err in results if code == 3)
    assert "already exists" in refused or "appeared while this run worked" in refused
    assert (out / "manifest.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out"]


# --- staleness by lock, not by pid ------------------------------------------------------------------


def test_staging_folder_of_a_live_run_in_another_pid_namespace_is_kept(tmp_path: Path) -> None:
    # old: a staging folder named after a pid this namespace does not have was deleted as stale
    out = tmp_path / "out"
    alive = tmp_path / ".out.partial-999999-live"
    alive.mkdir()
    (alive / "inference.pdiparams").write_bytes(b"being written")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", str(alive)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with staging.staged_dir(out) as stage:
            (stage / "manifest.json").write_text("{}")
        assert (alive / "inference.pdiparams").read_bytes() == b"being written"
    finally:
        holder.communicate("")
    # its run is gone now (the lock is free): the next run removes it
    shutil.rmtree(out)
    with staging.staged_dir(out) as stage:
        (stage / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_our_own_staging_folder_is_locked_while_we_write(tmp_path: Path) -> None:
    with staging.staged_dir(tmp_path / "out") as stage:
        fd = os.open(stage, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        staging.remove_stale_staging(tmp_path / "out")  # what a second run does first
        assert stage.is_dir()


@pytest.mark.parametrize("step", ["_flock", "_still_at"])
def test_a_signal_while_the_staging_folder_is_made_leaves_nothing(tmp_path: Path, monkeypatch, step: str) -> None:
    """Old: SIGTERM between mkdtemp and the caller holding the stage left `.out.partial-*` (seen in
    test_cli_safety's SIGTERM test on a busy machine): the folder is removed with the interrupt."""
    real, calls = getattr(staging, step), []

    def interrupted(*args):  # the signal lands once, in this step
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(staging, step, interrupted)
    with pytest.raises(KeyboardInterrupt):
        staging.open_stage(staging.check_destination(tmp_path / "out", False))
    assert list(tmp_path.iterdir()) == []


def test_a_staging_folder_taken_for_stale_before_it_is_locked_is_made_again(tmp_path: Path, monkeypatch) -> None:
    """Two fuses into one OUT: the second's stale-folder sweep may remove the first's staging
    folder between its mkdtemp and its lock. Old: 'cannot create a staging folder ...: No such
    file or directory'. Now the first makes another and goes on."""
    import tempfile

    real_mkdtemp, swept = tempfile.mkdtemp, []

    def mkdtemp_then_swept(**kwargs):
        folder = real_mkdtemp(**kwargs)
        if not swept:  # the other run's sweep, once
            os.rmdir(folder)
            swept.append(folder)
        return folder

    monkeypatch.setattr(staging.tempfile, "mkdtemp", mkdtemp_then_swept)
    folder, fd = staging.locked_folder(tmp_path, ".out.partial-")
    try:
        assert swept and folder.is_dir() and str(folder) != swept[0]
        assert [p.name for p in tmp_path.iterdir()] == [folder.name]
    finally:
        os.close(fd)
