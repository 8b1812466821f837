"""`verify --images DIR`: images found in both layouts, labels read, preprocessed the way
PaddleClas feeds its classifiers (checked against Pillow directly), corrupt files skipped and
named, batches streamed, and the accuracy of every graph reported. Images are made on the fly;
no package in the dependency tree ships sample photographs (networkx ships a few rendered PNG
plots as test baselines: they are used as real-world PNG files when present)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from acnet_convert.out.artifacts import Artifacts
from acnet_convert.cli import cli
from acnet_convert.out.deploy_config import Preprocess, default_preprocess, write_inference_config
from acnet_convert.common.errors import ConvertError, UsageError
from acnet_convert.verify.images import Batches, ImageSet, load_image, read_labels
from acnet_convert.commands.verify import verify
from tests.conftest import NUM_CLASSES, TEST_INPUT

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def photo(path: Path, size: tuple[int, int], seed: int, mode: str = "RGB") -> Path:
    """A smooth random image (a photo-like low-frequency field plus noise) saved at `path`."""
    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    noisy = np.clip(np.asarray(image, np.int16) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(noisy).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def image_folder(root: Path, classes: int = 3, per_class: int = 3) -> Path:
    for c in range(classes):
        for i in range(per_class):
            suffix = [".jpg", ".png", ".JPEG"][i % 3]
            photo(root / f"class_{c}" / f"img_{i}{suffix}", (80 + 7 * i, 70 + 5 * c), seed=10 * c + i)
    return root


# ------------------------------------------------------------------------------------------
# finding images and labels


def test_imagefolder_layout_gives_sorted_class_indices(tmp_path) -> None:
    root = image_folder(tmp_path / "imgs", classes=3, per_class=2)
    (root / "class_1" / "notes.txt").write_text("not an image")
    (root / "class_2" / ".hidden.jpg").write_bytes(b"")
    photo(root / "class_0" / "deeper" / "x.png", (40, 40), 99)
    images = ImageSet.open(root)
    names = list(images.names())
    assert names == ["class_0/img_0.jpg", "class_0/img_1.png", "class_0/deeper/x.png",
                     "class_1/img_0.jpg", "class_1/img_1.png", "class_2/img_0.jpg", "class_2/img_1.png"]
    assert len(images) == 7
    assert [images.label(n) for n in names] == [0, 0, 0, 1, 1, 2, 2]


def test_flat_folder_is_unlabelled_unless_a_label_file_says(tmp_path) -> None:
    for i in range(3):
        photo(tmp_path / "flat" / f"ILSVRC2012_val_{i:08d}.JPEG", (50, 60), i)
    images = ImageSet.open(tmp_path / "flat")
    assert [images.label(n) for n in images.names()] == [-1, -1, -1]
    labels = tmp_path / "val_list.txt"
    labels.write_text("# name index\nILSVRC2012_val_00000000.JPEG 65\n\nILSVRC2012_val_00000002.JPEG 3\n")
    images = ImageSet.open(tmp_path / "flat", labels)
    assert [images.label(n) for n in images.names()] == [65, -1, 3]
    with pytest.raises(ConvertError, match="names class 65, but the model has 10 classes"):
        images.check_labels(10)



def test_a_label_file_with_a_byte_order_mark_labels_its_first_image(tmp_path) -> None:
    """Notepad's UTF-8 starts with a BOM; it is not part of the first image's name."""
    labels = tmp_path / "labels.txt"
    labels.write_bytes("a.jpg 1\nb.jpg 2\n".encode("utf-8-sig"))
    assert read_labels(labels) == {"a.jpg": 1, "b.jpg": 2}

@pytest.mark.parametrize("text,needle", [
    ("a.jpg\n", "line 1: expected 'name index'"),
    ("a.jpg x\n", "line 1"),
    ("# only a comment\n", "holds no 'name index' line"),
])
def test_bad_label_files_are_refused_naming_the_line(tmp_path, text: str, needle: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ConvertError, match=needle):
        read_labels(path)
    with pytest.raises(ConvertError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")


def test_folder_without_images_is_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ConvertError, match="holds no image"):
        ImageSet.open(tmp_path / "empty")
    with pytest.raises(ConvertError, match="is not a folder"):
        ImageSet.open(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------
# preprocessing


@pytest.mark.parametrize("size", [(320, 240), (240, 321), (257, 257), (1000, 300)])
def test_preprocessing_is_paddleclas_resize_short_crop_normalise(tmp_path, size) -> None:
    """The oracle restates PaddleClas's ResizeImage/CropImage/NormalizeImage/ToCHWImage with
    Pillow calls of its own: both sides scaled by 256 / short side and rounded, centre crop at
    ((w - 224) // 2, (h - 224) // 2), (x / 255 - mean) / std, CHW."""
    path = photo(tmp_path / "p.png", size, seed=1)
    got = load_image(path, default_preprocess(224))
    w, h = size
    scale = 256 / min(w, h)
    rw, rh = int(round(w * scale)), int(round(h * scale))
    resized = Image.open(path).convert("RGB").resize((rw, rh), Image.BILINEAR)
    left, top = (rw - 224) // 2, (rh - 224) // 2
    x = np.asarray(resized.crop((left, top, left + 224, top + 224)), np.float32)
    expected = ((x * np.float32(0.00392157) - MEAN) / STD).transpose(2, 0, 1)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_grey_palette_and_alpha_images_become_rgb(tmp_path) -> None:
    for mode in ("L", "P", "RGBA", "CMYK"):
        suffix = ".jpg" if mode == "CMYK" else ".png"
        path = photo(tmp_path / f"{mode}{suffix}", (90, 70), 3, mode=mode)
        assert load_image(path, default_preprocess(64)).shape == (3, 64, 64), mode


def test_preprocess_values_are_checked() -> None:
    with pytest.raises(ConvertError, match="at least the crop"):
        Preprocess(resize_short=100, crop=224)
    with pytest.raises(ConvertError, match="std must be positive"):
        Preprocess(resize_short=256, crop=224, std=(0.2, 0.0, 0.2))
    with pytest.raises(ConvertError, match="interpolation"):
        Preprocess(resize_short=256, crop=224, interpolation="cubic-ish")


# ------------------------------------------------------------------------------------------
# streaming and corrupt files


def corrupt_files(root: Path) -> list[str]:
    good = photo(root / "ok" / "good.jpg", (120, 90), 5)
    data = good.read_bytes()
    (root / "bad").mkdir(parents=True, exist_ok=True)
    (root / "bad" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (root / "bad" / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "bad" / "empty.jpeg").write_bytes(b"")
    (root / "bad" / "text.webp").write_text("hello")
    return ["bad/empty.jpeg", "bad/random.png", "bad/text.webp", "bad/truncated.jpg"]


def test_corrupt_images_are_skipped_and_named(tmp_path) -> None:
    bad = corrupt_files(tmp_path)
    skipped: list[tuple[str, str]] = []
    batches = Batches(ImageSet.open(tmp_path), default_preprocess(64), 2, lambda n, why: skipped.append((n, why)))
    assert len(batches) == 3  # 5 files in batches of 2 files
    got = [b.names for b in batches]
    assert got == [[], [], ["ok/good.jpg"]]
    assert sorted(n for n, _ in skipped) == bad
    assert all(why for _, why in skipped)



def test_a_fifo_named_like_an_image_is_skipped_not_waited_for(tmp_path) -> None:
    """Opening a FIFO blocks until a writer comes: it must be skipped, not hang the run. A link
    to a real image is still read."""
    import os

    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "good.png")
    os.mkfifo(root / "fifo.jpg")
    os.symlink("good.png", root / "link.png")
    skipped: list[tuple[str, str]] = []
    batches = Batches(ImageSet.open(root), default_preprocess(32), 4, lambda n, why: skipped.append((n, why)))
    assert [b.names for b in batches] == [["good.png", "link.png"]]
    assert [n for n, _ in skipped] == ["fifo.jpg"] and "FIFO" in skipped[0][1]

def test_batches_are_decoded_lazily(tmp_path, monkeypatch) -> None:
    image_folder(tmp_path / "imgs", classes=2, per_class=5)
    decoded: list[str] = []
    import acnet_convert.verify.images as images_module

    real = images_module.load_image

    def counting(path, preprocess):
        decoded.append(Path(path).name)
        return real(path, preprocess)

    monkeypatch.setattr(images_module, "load_image", counting)
    it = iter(Batches(ImageSet.open(tmp_path / "imgs"), default_preprocess(64), 3, lambda *_: None))
    first = next(it)
    assert len(first.names) == 3 and len(decoded) == 3  # one batch at a time, never the folder
    assert first.images.shape == (3, 3, 64, 64) and list(first.labels) == [0, 0, 0]


def test_real_png_files_from_an_installed_package_are_read() -> None:
    networkx = pytest.importorskip("networkx")
    pngs = sorted(Path(networkx.__file__).parent.rglob("*.png"))[:3]
    if not pngs:
        pytest.skip("this networkx ships no PNG files")
    for path in pngs:
        x = load_image(path, default_preprocess(64))
        assert x.shape == (3, 64, 64) and np.isfinite(x).all()


# ------------------------------------------------------------------------------------------
# verify --images end to end


@pytest.fixture(scope="module")
def out18_images(fused, tmp_path_factory) -> Path:
    """ResNet-18 (64x64, 10 classes) fused with model.onnx, with an inference.yml."""
    out = tmp_path_factory.mktemp("images") / "out"
    shutil.copytree(fused(18, "vars", onnx=True), out)
    write_inference_config(Artifacts(out), input_size=TEST_INPUT, num_classes=NUM_CLASSES, model_name="resnet18_acnet")
    return out


def test_verify_images_reports_accuracy_and_skips_corrupt_files(out18_images, tmp_path) -> None:
    root = image_folder(tmp_path / "imgs", classes=3, per_class=3)
    (root / "class_2" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["verify", str(out18_images), "--images", str(root), "--batch-size", "4",
                                      "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["ok"] and report["inputs"] == "images" and report["images"] == 9
    s = report["image_set"]
    assert (s["found"], s["read"], s["skipped"], s["labelled"]) == (10, 9, 1, 9)
    assert s["skipped_files"][0]["name"] == "class_2/broken.jpg" and s["skipped_files"][0]["error"]
    assert s["preprocess"]["from"] == "inference.yml" and s["preprocess"]["crop"] == [TEST_INPUT, TEST_INPUT]
    accuracy = s["accuracy"]
    assert set(accuracy) == {"train", "paddle-deploy", "paddle-legacy", "onnx"}  # fuse writes both formats
    assert len({(a["top1"], a["top5"]) for a in accuracy.values()}) == 1  # the same images right in every graph
    assert all(p["top1_differs"] == 0 and p["top1_differs_names"] == [] for p in report["pairs"])
    assert any("skipped 1 unreadable image(s): class_2/broken.jpg" in n for n in report["notes"])
    assert "accuracy train" in result.stdout and "1 skipped" in result.stdout
    assert ": 9 images of 64x64 on the" in result.stdout and "images images" not in result.stdout


def test_verify_images_with_labels_and_flag_overrides(out18_images, tmp_path) -> None:
    for i in range(5):
        photo(tmp_path / "flat" / f"{i}.png", (100, 90 + i), seed=i)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i}.png {i}\n" for i in range(4)))
    tracked = []

    def track(items, label):
        tracked.append((len(items), label))
        return items

    report = verify(out18_images, images=tmp_path / "flat", labels=labels, batch_size=2, resize_short=80,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), track=track)
    assert report.ok and report.images == 5 and tracked == [(3, "images")]
    s = report.image_set
    assert s.labelled == 4 and s.preprocess.resize_short == 80 and s.preprocess.mean == (0.5, 0.5, 0.5)
    assert s.preprocess.origin == "inference.yml + --resize-short, --mean, --std"
    assert set(report.to_json()["image_set"]["accuracy"]) == {"train", "paddle-deploy", "paddle-legacy", "onnx"}


def test_verify_images_at_any_crop_the_models_take(out18_images, tmp_path) -> None:
    """A checkpoint's ResNet takes any size: --crop 72x88 runs every model there (its model.onnx
    takes any size too); an ONNX model fixed at 64x64 (export-onnx --static-size) is left out
    with a note, and named with --onnx it is an error."""
    from acnet_convert.commands.export_onnx import export_onnx

    image_folder(tmp_path / "imgs", classes=1, per_class=2)
    report = verify(out18_images, images=tmp_path / "imgs", crop=(72, 88))
    assert report.ok and report.sizes == [(72, 88, 2)] and report.image_set.preprocess.crop == (72, 88)
    assert {g for g, _ in report.graphs} == {"train", "paddle-deploy", "paddle-legacy", "onnx"}
    out = Path(shutil.copytree(out18_images, tmp_path / "out"))
    export_onnx(Artifacts(out), static_size=True)  # OUT/model.onnx fixed at 64x64
    report = verify(out, images=tmp_path / "imgs", crop=(72, 88))
    assert report.ok and {g for g, _ in report.graphs} == {"train", "paddle-deploy", "paddle-legacy"}
    assert any("takes input [N, 3, 64, 64]; verify feeds [N, 3, 72, 88]: not compared" in n for n in report.notes)
    with pytest.raises(ConvertError, match=r"takes input \[N, 3, 64, 64\]; verify feeds \[N, 3, 72, 88\]"):
        verify(out, images=tmp_path / "imgs", crop=(72, 88), onnx=out / "model.onnx")
    with pytest.raises(UsageError, match="--labels goes with --images"):
        verify(out18_images, labels=tmp_path / "labels.txt")


def test_verify_images_per_layer_checks_the_first_batch(out18_images, tmp_path) -> None:
    image_folder(tmp_path / "imgs", classes=1, per_class=5)
    report = verify(out18_images, images=tmp_path / "imgs", batch_size=2, per_layer=True)
    assert report.ok and report.images == 5
    assert report.per_layer_images == 2 and report.layers and all(layer.passed for layer in report.layers)

    # the twin: a deploy bias off by 1 is named by the per-layer check on the same images
    from tests.test_verify import PERTURBED_BIAS, PERTURBED_LAYER, _rewrite_inference_params

    broken = tmp_path / "broken"
    shutil.copytree(out18_images, broken)
    bias = Artifacts(broken).load_deploy_weights()[PERTURBED_BIAS].copy()
    bias[0] += 1.0
    _rewrite_inference_params(broken, {PERTURBED_BIAS: bias})
    report = verify(broken, images=tmp_path / "imgs", batch_size=2, per_layer=True)
    assert not report.ok and report.per_layer_images == 2
    assert [layer.name for layer in report.layers if not layer.passed] == [PERTURBED_LAYER]


def test_per_layer_uses_the_first_batch_that_holds_a_readable_image(out18_images, tmp_path) -> None:
    """The first batch's two files are both unreadable: --per-layer takes the next batch (it
    used to stop: "the first batch of images could not be read"); the bad files are named."""
    root = tmp_path / "imgs"
    for name in ("a0.jpg", "a1.png"):  # sorted first: the whole first batch of 2
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    for i in range(3):
        photo(root / f"b{i}.jpg", (90, 80), seed=i)
    report = verify(out18_images, images=root, batch_size=2, per_layer=True)
    assert report.ok and report.images == 3 and report.per_layer_images == 2
    assert [name for name, _ in report.image_set.skipped] == ["a0.jpg", "a1.png"]
    assert all("not an image Pillow can read" in why for _, why in report.image_set.skipped)  # not a file object
    for name in ("b0.jpg", "b1.jpg", "b2.jpg"):
        (root / name).unlink()
    with pytest.raises(ConvertError, match="--per-layer: no image could be read"):
        verify(out18_images, images=root, batch_size=2, per_layer=True)
