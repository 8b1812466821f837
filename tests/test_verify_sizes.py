"""Every size the model takes (issue 21 §2): a model that takes any size is verified at the size it
was fused at and at a second, odd, non-square one (or the nearest its strides allow); `--inputs`
at another size runs where the models take it; a 48x160 model is 48x160 in the manifest,
inference.yml, inspect and verify; `--input-size` on a program fixed at another size is a usage
error. Tiny models at small sizes: ~15 s in all."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.commands.export_onnx import export_onnx
from acnet_convert.commands.fuse import fuse
from acnet_convert.commands.verify import verify
from acnet_convert.common.errors import UsageError
from acnet_convert.out.artifacts import Artifacts
from acnet_convert.verify.sizes import second_sizes


def _classes() -> dict:
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    from acnet_convert.nn import ACBlock

    class Net(nn.Layer):
        """Two stride-2 ACBs and a classifier head: any size."""

        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = ACBlock(3, 8, 3, stride=2), ACBlock(8, 8, 3, stride=2), nn.Linear(8, 5)

        def forward(self, image):
            x = F.relu(self.b(F.relu(self.a(image))))
            return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    class UNet(nn.Layer):
        """A skip concatenated with upsampled features: sizes that are multiples of 4 only."""

        def __init__(self):
            super().__init__()
            self.enc, self.mid, self.dec = ACBlock(3, 8, 3, stride=2), ACBlock(8, 8, 3, stride=2), nn.Conv2D(16, 4, 3, padding=1)

        def forward(self, image):
            a = F.relu(self.enc(image))
            up = F.interpolate(F.relu(self.mid(a)), scale_factor=2, mode="nearest")
            return self.dec(paddle.concat([up, a], axis=1))

    return {"Net": Net, "UNet": UNet}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(name, H, W) -> prefix of the model exported with that input size (-1: dynamic)."""
    import paddle

    root = tmp_path_factory.mktemp("sizes")
    made: dict = {}

    def get(name: str, h: int = -1, w: int = -1) -> Path:
        if (name, h, w) not in made:
            paddle.seed(0)
            layer = _classes()[name]()
            rng = np.random.default_rng(1)
            for p in layer.parameters():  # BN statistics away from their defaults, variances > 0
                v = rng.normal(0, 0.5, p.shape)
                p.set_value((np.abs(v) + 0.5 if p.name.endswith("w_2") else v).astype(np.float32))
            layer.eval()
            prefix = root / f"{name}_{h}x{w}" / "inference"
            spec = paddle.static.InputSpec([None, 3, None if h < 0 else h, None if w < 0 else w], "float32", "image")
            paddle.jit.save(layer, str(prefix), input_spec=[spec])
            made[(name, h, w)] = prefix
        return made[(name, h, w)]

    return get


def test_second_sizes_are_odd_and_not_square_then_stride_multiples() -> None:
    assert second_sizes((64, 64)) == [(55, 75), (64, 96)]
    assert second_sizes((224, 224)) == [(191, 259), (192, 256)]
    assert second_sizes((48, 160)) == [(41, 185), (32, 192)]
    for h, w in [(32, 32), (64, 64), (224, 224), (48, 160), (512, 384)]:
        odd, multiple = second_sizes((h, w))
        assert odd[0] % 2 and odd[1] % 2 and odd[0] != odd[1]
        assert multiple[0] % 32 == 0 and multiple[1] % 32 == 0 and multiple[0] != multiple[1]


def test_a_checkpoint_is_verified_at_its_size_and_an_odd_one(fused, tmp_path) -> None:
    """ResNet-18 fused at 64x64: also 55x75. Its model.onnx takes any size (the default for a
    checkpoint) and runs at both; one exported with --static-size is compared at 64x64 only."""
    report = verify(fused(18, "vars", onnx=True), batch_size=2, batches=1)
    assert report.ok, report.format_table()
    assert all(p.samples == 4 for p in report.pairs)
    out = Path(shutil.copytree(fused(18, "vars", onnx=True), tmp_path / "out"))
    export_onnx(Artifacts(out), static_size=True)
    report = verify(out, batch_size=2, batches=1)
    assert report.ok, report.format_table()
    assert report.sizes == [(64, 64, 2), (55, 75, 2)] and report.images == 4
    by_pair = {(p.a, p.b): p for p in report.pairs}
    assert by_pair[("train", "paddle-deploy")].samples == 4 and by_pair[("train", "onnx")].samples == 2
    assert any("onnx not compared at 55x75" in n for n in report.notes)
    assert "2 random images of 64x64 and 2 of 55x75 on the" in report.format_table()
    assert report.to_json()["sizes"] == [{"height": 64, "width": 64, "images": 2},
                                         {"height": 55, "width": 75, "images": 2}]


@pytest.mark.parametrize("name,second", [("Net", (41, 55)), ("UNet", (32, 64))])
def test_a_program_of_any_size_takes_the_first_size_its_strides_allow(exported, tmp_path, name, second) -> None:
    """Exported with H and W open, fused at 48x48: the plain net runs at 41x55; the U-Net's
    concat refuses odd sizes, so it is verified at 32x64 (multiples of 32)."""
    out = tmp_path / "out"
    fuse(exported(name), out, input_size=48, onnx=True)  # H and W open: the ONNX model's too
    report = verify(out, batch_size=2, batches=1)
    assert report.ok, report.format_table()
    assert report.sizes == [(48, 48, 2), (*second, 2)]
    assert all(p.samples == 4 for p in report.pairs)  # a dynamic-size ONNX model runs at both


def test_inputs_of_another_size_run_where_the_models_take_them(fused, tmp_path) -> None:
    inputs = tmp_path / "x.npy"
    np.save(inputs, np.random.default_rng(0).normal(size=(3, 3, 72, 88)).astype(np.float32))
    report = verify(fused(18, "vars", onnx=True), inputs=inputs, batch_size=2)
    assert report.ok and report.sizes == [(72, 88, 3)]
    assert {g for g, _ in report.graphs} == {"train", "paddle-deploy", "paddle-legacy", "onnx"}  # any size


def test_a_model_that_is_not_square_is_not_square_anywhere(exported, tmp_path) -> None:
    """A 48x160 program (a text recogniser's shape): the manifest, inference.yml, inspect and
    verify all say 48x160; asking fuse for another size is a usage error, exit 2."""
    source = exported("Net", 48, 160)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(source), str(out), "--onnx"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["input_size"] == [48, 160]
    assert "size: [160, 48]" in (out / "inference.yml").read_text()
    inspected = CliRunner().invoke(cli, ["inspect", str(out)])
    assert "input: 48x160" in inspected.output
    assert json.loads(CliRunner().invoke(cli, ["inspect", str(out), "--json"]).output)["input_size"] == [48, 160]
    report = verify(out, batch_size=2, batches=1)
    assert report.ok and report.sizes == [(48, 160, 2)]  # fixed: that size only
    assert "2 random images of 48x160 on the" in report.format_table()
    from tests.test_images import photo

    for i in range(2):
        photo(tmp_path / "photos" / f"{i}.jpg", (120 + 9 * i, 90), seed=i)
    report = verify(out, images=tmp_path / "photos", batch_size=2)  # as inference.yml says: resized to 48x160
    assert report.ok and report.sizes == [(48, 160, 2)] and report.image_set.preprocess.resize == (48, 160)
    with pytest.raises(UsageError, match="the crop is 48x150, but the deploy model takes 48x160 images only"):
        verify(out, images=tmp_path / "photos", crop=(48, 150))

    refused = CliRunner().invoke(cli, ["fuse", str(source), str(tmp_path / "other"), "--input-size", "160"])
    assert refused.exit_code == 2, refused.output
    assert "--input-size 160x160" in refused.output and "takes 48x160 images" in refused.output
    assert not (tmp_path / "other").exists()
    with pytest.raises(UsageError):
        fuse(source, tmp_path / "other", input_size=(48, 150))
    fuse(source, tmp_path / "same", input_size=(48, 160))  # its own size is fine
