"""The checks before native code runs (issue 20): the supervised child is the net, these are the
check. A hostile program (attributes no conv can have, a value id that names nothing, an array of
arrays, an op no dialect registers), a `.pdiparams` whose headers claim what the program does not
declare, a program file swapped for a FIFO after it was checked, a tampered OUT or label list, an
image or a size beyond the budget: each is one line naming the file and the op or tensor (exit 3),
before Paddle, onnx or ONNX Runtime see it.

Most are checked through the library (Paddle is already imported in the test process); one of
each kind goes through the CLI."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.common.errors import ConvertError
from acnet_convert.read.lod_tensor import tensor_desc
from acnet_convert.read.source import open_source
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parents[1]


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result, *needles: str, code: int = 3) -> str:
    assert result.exit_code == code, result.output
    line = result.output.strip().splitlines()[-1]
    assert "Traceback" not in result.output and line.startswith("error: "), result.output
    for needle in needles:
        assert needle in line, line
    return line


# --- hostile programs ------------------------------------------------------------------------------


def _ops(program: dict) -> list[dict]:
    return program["program"]["regions"][0]["blocks"][0]["ops"]


def _first(program: dict, name: str) -> dict:
    return next(op for op in _ops(program) if op["#"] == name)


def _attr(op: dict, name: str) -> dict:
    return next(a for a in op["A"] if a["N"] == name)


def _ints(values: list[Any]) -> dict:
    return {"#": "0.a_array", "D": [{"#": "0.a_i32", "D": v} for v in values]}


def _set(name: str, value: Any) -> Callable[[dict], None]:
    def edit(program: dict) -> None:
        _attr(_first(program, "1.conv2d"), name)["AT"] = value
    return edit


def _rename_relu(program: dict) -> None:
    _first(program, "1.relu")["#"] = "1.frobnicate"


def _dangle(program: dict) -> None:
    _first(program, "1.relu")["I"][0]["%"] = 99999


def _huge_input(program: dict) -> None:
    data = _first(program, "1.data")
    data["O"][0]["TT"]["D"][1] = [-1, 3, 100000, 100000]
    _attr(data, "shape")["AT"]["D"] = [-1, 3, 100000, 100000]


EDITS = {  # name -> (edit of the PIR JSON, what the one line says)
    "unknown op": (_rename_relu, "frobnicate is not an op this Paddle knows"),
    "groups 0": (_set("groups", {"#": "0.a_i32", "D": 0}), "conv2d: groups 0 must be a positive integer"),
    "groups -1": (_set("groups", {"#": "0.a_i32", "D": -1}), "conv2d: groups -1 must be a positive integer"),
    "groups 2**31": (_set("groups", {"#": "0.a_i32", "D": 2**31}), "conv2d attribute groups = 2147483648 is not a 32-bit"),
    "stride 0": (_set("strides", _ints([0, 0])), "conv2d: strides [0, 0] must be integers from 1"),
    "stride -1": (_set("strides", _ints([-1, 2])), "conv2d: strides [-1, 2] must be integers from 1"),
    "dilation 0": (_set("dilations", _ints([1, 0])), "conv2d: dilations [1, 0] must be integers from 1"),
    "dilation -1": (_set("dilations", _ints([-1, -1])), "conv2d: dilations [-1, -1] must be integers from 1"),
    "dilation 1e5": (_set("dilations", _ints([100000, 100000])), "conv2d: dilations [100000, 100000] must be"),
    "dangling value": (_dangle, "relu reads value %99999, which no op before it defines"),
    "nested array": (_set("strides", {"#": "0.a_array", "D": [_ints([2, 2]), _ints([2, 2])]}),
                     "conv2d attribute strides is an array of arrays"),
}


def edited_program(source: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the PIR program `source` (a path prefix) edited by `edit`; its prefix."""
    folder.mkdir(parents=True)
    program = json.loads(source.with_suffix(".json").read_text())
    edit(program)
    (folder / "inference.json").write_text(json.dumps(program))
    shutil.copy(source.with_suffix(".pdiparams"), folder / "inference.pdiparams")
    return folder / "inference"


@pytest.mark.parametrize("case", sorted(EDITS))
def test_hostile_program_attributes_are_refused_naming_the_op(cnn_models, tmp_path: Path, case: str) -> None:  # noqa: F811
    """Old: exit 4 "internal error" (a modulo by zero, Paddle's ValueError or NotImplementedError),
    a fuse that succeeded (groups -1, dilation 100000: then export-onnx exit 4 and a 2.5 TB
    allocation in verify), SIGSEGV in Paddle's save (an unknown op)."""
    edit, needle = EDITS[case]
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", edit)
    with pytest.raises(ConvertError, match="") as caught:
        open_source(prefix)
    message = str(caught.value)
    assert needle in message and str(prefix.parent) in message and "\n" not in message


def test_a_fixed_input_larger_than_any_verify_can_feed_is_refused_at_fuse(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """Old: fuse wrote an OUT (input size 100000 in its manifest) that its own verify and
    export-onnx refused. Refused at fuse, where the size comes in: the same budget as every other
    way in (--input-size, the manifest, inference.yml)."""
    from acnet_convert.commands.fuse import fuse

    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", _huge_input)
    with pytest.raises(ConvertError, match=r"inference.json: input image has shape \[-1, 3, 100000, 100000\]: dimension 2 "
                                           r"is 100000, more than 8192"):
        fuse(prefix, tmp_path / "out")
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_the_same_program_unedited_is_read(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """The twin: the copy itself is a program like any other."""
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", lambda program: None)
    assert open_source(prefix).graph.op_counts()["conv2d"] > 0


def test_an_unknown_op_is_one_line_and_leaves_nothing(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """Through the CLI: Paddle used to crash (SIGSEGV, exit 139) in its save, `.out.partial-*` left."""
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", _rename_relu)
    one_line(run("fuse", prefix, tmp_path / "out"), "op #", "frobnicate is not an op this Paddle knows")
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_tampered_deploy_program_is_refused_by_export_onnx(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """fuse, then OUT/inference.json edited to dilation 100000: old export-onnx exit 4 (ONNX's
    shape inference); the program reader refuses it, naming the op."""
    from acnet_convert.commands.export_onnx import export_onnx
    from acnet_convert.commands.fuse import fuse
    from acnet_convert.out.artifacts import Artifacts

    out = tmp_path / "out"
    fuse(cnn_models("repvgg"), out)
    program = json.loads((out / "inference.json").read_text())
    _set("dilations", _ints([100000, 100000]))(program)
    (out / "inference.json").write_text(json.dumps(program))
    with pytest.raises(ConvertError, match=r"inference.json: op #\d+ conv2d: dilations \[100000, 100000\]"):
        export_onnx(Artifacts(out))
    assert not (out / "model.onnx").exists()


# --- .pdiparams against its program -----------------------------------------------------------------


def _lod_header(shape: list[int], code: int = 5) -> bytes:
    desc = tensor_desc(code, tuple(shape))
    return struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc


def test_a_pdiparams_header_claiming_2_gib_is_refused_before_paddle_reads(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """Old: Paddle read the sparse 2 GiB whole (2.4 GB resident), then exit 3 in its own words."""
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", lambda program: None)
    params = prefix.with_suffix(".pdiparams")
    with open(params, "wb") as f:
        f.write(_lod_header([1 << 29]))
        f.truncate(f.tell() + (2 << 30))  # sparse: 2 GiB that cost no disk
    with pytest.raises(ConvertError, match=r"inference.pdiparams: tensor 1 is \[536870912\] float32 by its header, "
                                           r"but inference.json declares parameter .* as \["):
        open_source(prefix)


def test_a_pdiparams_of_another_program_is_refused(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", lambda program: None)
    shutil.copy(cnn_models("vgg_acb").with_suffix(".pdiparams"), prefix.with_suffix(".pdiparams"))
    with pytest.raises(ConvertError, match="not the parameters of this program|holds .* tensors, but"):
        open_source(prefix)


def test_legacy_program_parameters_are_checked_too(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    source = cnn_models("repvgg", "legacy")
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(source.with_suffix(".pdmodel"), folder / "inference.pdmodel")
    (folder / "inference.pdiparams").write_bytes(_lod_header([4, 4]) + bytes(64))
    with pytest.raises(ConvertError, match=r"tensor 1 is \[4, 4\] float32 by its header, but inference.pdmodel "
                                           r"declares parameter"):
        open_source(folder / "inference")


# --- a program swapped for a FIFO after the check ----------------------------------------------------

_SWAP = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import acnet_convert.read.program as program
    prefix = Path(sys.argv[1])
    real = program.static_mode

    def swapped(*args, **kwargs):  # between the check and Paddle's open: both names become FIFOs
        for suffix in (".json", ".pdiparams"):
            os.replace(prefix.with_suffix(suffix), prefix.with_suffix(suffix + ".moved"))
            os.mkfifo(prefix.with_suffix(suffix))
        return real(*args, **kwargs)

    program.static_mode = swapped
    loaded = program.load_program(prefix.with_suffix(".json"), prefix.with_suffix(".pdiparams"))
    print(len(loaded.ops), "ops")
""")


def test_a_program_swapped_for_a_fifo_after_the_check_is_not_what_paddle_reads(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """Old: Paddle opened the FIFO and blocked forever. Paddle reads the files that were opened
    and checked (through /proc/self/fd), whatever the names point at by then."""
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", lambda program: None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _SWAP, str(prefix)], capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ops") and Path(f"{prefix}.json.moved").is_file()


def test_a_fifo_where_the_program_should_be_is_refused(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    prefix = edited_program(cnn_models("repvgg"), tmp_path / "model", lambda program: None)
    prefix.with_suffix(".pdiparams").unlink()
    os.mkfifo(prefix.with_suffix(".pdiparams"))
    with pytest.raises(ConvertError, match="inference.pdiparams is a FIFO, expected a regular file"):
        open_source(prefix)


# --- a tampered OUT, a label list ---------------------------------------------------------------------


def _manifest(fused: Callable[[int, str], Path], tmp_path: Path, edit: Callable[[dict], None]) -> Path:
    out = Path(shutil.copytree(fused(18, "vars"), tmp_path / "out"))
    manifest = json.loads((out / "manifest.json").read_text())
    edit(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("edit, needle", [
    (lambda m: m.update(fused=[{}]), "fused[0] name must be a string"),
    (lambda m: m["fused"][0].update(deploy_tensors="w"), "deploy_tensors must be the names of a weight and a bias"),
    (lambda m: m["fused"][0].update(deploy_tensors=[1, 2]), "deploy_tensors must be the names of a weight and a bias"),
    (lambda m: m["fused"][0].update(stride=[0, 1]), "stride must be a list of integers from 1"),
    (lambda m: m["fused"][0]["branches"][0].update(bn=[1]), "bn must list its scale and offset"),
    (lambda m: m["fused"][0]["branches"][0].update(kind="magic"), "every branch must be a conv, identity or pool"),
    (lambda m: m["inputs"][0].update(shape=[-1, 3, 1 << 31, 64]), "dimension 2 is 2147483648, more than 8192"),
    (lambda m: m["inputs"][0].update(shape=[-1, 0, 64, 64]), "dimension 1 is 0"),
    (lambda m: m.update(declined=[{"op": 1}]), "declined[0] op and reason must be strings"),
])
def test_a_tampered_manifest_is_one_line_naming_it(fused, tmp_path: Path, edit, needle: str) -> None:
    """Old: exit 4 (KeyError, TypeError in inspect and verify --per-layer)."""
    from acnet_convert.out.artifacts import Artifacts

    out = _manifest(fused, tmp_path, edit)
    with pytest.raises(ConvertError) as caught:
        Artifacts(out).read_manifest()
    assert str(out / "manifest.json") in str(caught.value) and needle in str(caught.value)


def test_a_tampered_manifest_through_the_cli(fused, tmp_path: Path) -> None:
    out = _manifest(fused, tmp_path, lambda m: m.update(fused=[{}]))
    for command in ("inspect", "verify", "export-onnx"):
        one_line(run(command, out), "manifest.json is not a valid manifest: fused[0] name must be a string")


def test_inference_yml_scale_one_over_zero(tmp_path: Path) -> None:
    """Old: ZeroDivisionError, exit 4."""
    from acnet_convert.out.deploy_config import parse_inference_config
    from tests.test_verify_config import PADDLECLAS

    for scale in ("1/0", "1.0/0.0", "1/0.", "1e400"):
        with pytest.raises(ConvertError, match="OUT/inference.yml: (NormalizeImage.scale|preprocessing: scale)"):
            parse_inference_config(PADDLECLAS.replace("scale: 0.00392157", f"scale: {scale}"), "OUT/inference.yml")
    assert parse_inference_config(PADDLECLAS.replace("scale: 0.00392157", "scale: 1.0/255.0"))


def test_a_label_index_that_is_a_digit_but_not_a_number(tmp_path: Path) -> None:
    """Old: "²".isdigit() is true, int("²") raises: exit 4."""
    from acnet_convert.verify.images import read_labels

    labels = tmp_path / "labels.txt"
    for index in ("²", "٣", "1²"):
        labels.write_text(f"a.jpg 0\nb.jpg {index}\n", encoding="utf-8")
        with pytest.raises(ConvertError, match=f"--labels {labels} line 2: expected 'name index'"):
            read_labels(labels)
    labels.write_text("a.jpg 0\nb.jpg 12\n")
    assert read_labels(labels) == {"a.jpg": 0, "b.jpg": 12}


def test_inference_yml_that_is_a_link_is_refused_like_any_link_in_out(fused, tmp_path: Path) -> None:
    """Old: followed, and the target's first line printed in the error."""
    from acnet_convert.out.artifacts import Artifacts
    from acnet_convert.out.deploy_config import read_inference_config

    out = Path(shutil.copytree(fused(18, "vars"), tmp_path / "out"))
    secret = tmp_path / "secret.txt"
    secret.write_text("the first line of a secret\n")
    (out / "inference.yml").unlink()
    (out / "inference.yml").symlink_to(secret)
    with pytest.raises(ConvertError, match="inference.yml is a symbolic link") as caught:
        read_inference_config(Artifacts(out))
    assert "secret" not in str(caught.value)
    (out / "manifest.json").rename(out / "real.json")
    (out / "manifest.json").symlink_to(out / "real.json")
    one_line(run("inspect", out), "manifest.json is a symbolic link")


# --- sizes: one budget for every way a size gets in -----------------------------------------------------


def test_an_image_that_would_resize_to_gigabytes_is_skipped_and_named(tmp_path: Path) -> None:
    """A 613-byte 550000x1 PNG: old: resized before cropping, 4 GB resident (1x2,000,000: ~11 GB)."""
    from PIL import Image

    from acnet_convert.out.deploy_config import default_preprocess
    from acnet_convert.verify.images import Batches, ImageSet

    root = tmp_path / "imgs"
    root.mkdir()
    Image.new("L", (550000, 1)).save(root / "long.png")
    Image.new("RGB", (1, 2000000)).save(root / "tall.png")
    Image.new("RGB", (90, 80), (10, 200, 30)).save(root / "ok.png")
    assert (root / "long.png").stat().st_size < 1000
    skipped: list[tuple[str, str]] = []
    batches = list(Batches(ImageSet.open(root), default_preprocess(64), 4, lambda n, why: skipped.append((n, why))))
    assert [b.names for b in batches] == [["ok.png"]] and batches[0].images.shape == (1, 3, 64, 64)
    assert sorted(n for n, _ in skipped) == ["long.png", "tall.png"]
    assert all("more than 64 Mpixel" in why for _, why in skipped), skipped


@pytest.mark.parametrize("where", ["inference.yml crop", "manifest input shape"])
def test_a_size_that_bypassed_the_batch_budget_is_refused(fused, tmp_path: Path, where: str) -> None:
    """OUT/inference.yml's crop and the manifest's input shape of 8000x8000 bypassed the
    16-Mpixel batch budget (old: 2-7 GB resident)."""
    from acnet_convert.commands.verify import verify
    from acnet_convert.out.artifacts import Artifacts
    from acnet_convert.out.deploy_config import Preprocess, write_inference_config
    from PIL import Image

    out = Path(shutil.copytree(fused(18, "vars"), tmp_path / "out"))
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (90, 80)).save(images / "a.png")
    if where == "manifest input shape":
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["inputs"][0]["shape"] = [-1, 3, 8000, 8000]
        (out / "manifest.json").write_text(json.dumps(manifest))
        kwargs: dict = {}
    else:  # a model that takes any size, fed the crop OUT/inference.yml gives
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["inputs"][0]["shape"] = [-1, 3, -1, -1]
        (out / "manifest.json").write_text(json.dumps(manifest))
        write_inference_config(Artifacts(out), input_size=64, num_classes=10,
                               preprocess=Preprocess(resize_short=9000, crop=8000))
        kwargs = {"images": images}
    with pytest.raises(ConvertError, match=r"--batch-size 8 of 8000x8000 images is more than one batch may hold"):
        verify(out, **kwargs)


# --- names up to NAME_MAX --------------------------------------------------------------------------------


def test_outputs_named_with_255_characters(checkpoints, fused, tmp_path: Path) -> None:
    """OUT, -o and --json named with 230-255 characters: old: "File name too long" from the
    staging and temporary names built from them."""
    from acnet_convert.out import destination, staging

    for length in (230, 255):
        name = "o" * length
        stage = staging.open_stage(destination.check_destination(tmp_path / name, False))
        (stage.path / "manifest.json").write_text("{}")
        staging.commit_stage(stage, False)
        staging.close_stage(stage)
        assert (tmp_path / name / "manifest.json").is_file()
        report = tmp_path / ("r" * (length - 5) + ".json")
        destination.check_file_destination(report, False)
        staging.write_file(report, b"{}")
        assert report.read_bytes() == b"{}"
    out = tmp_path / ("x" * 255)
    result = run("fuse", checkpoints(18, "vars"), out, "--input-size", 64)
    assert result.exit_code == 0, result.output
    model = tmp_path / ("m" * 250 + ".onnx")
    result = run("export-onnx", fused(18, "vars"), "-o", model)
    assert result.exit_code == 0 and model.is_file(), result.output
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or p.endswith(".tmp")]
