"""OUT/inference.yml: written in PaddleClas's deploy layout (deploy/configs/inference_cls.yaml),
read back by verify --images, and read from PaddleClas's own layout; the YAML subset reader
refuses what it does not understand, naming the line."""
from __future__ import annotations

import pytest

from acnet_convert.out.artifacts import Artifacts
from acnet_convert.out.deploy_config import (
    DeployConfig,
    Preprocess,
    default_preprocess,
    parse_inference_config,
    parse_yaml,
    read_inference_config,
    render,
    write_inference_config,
)
from acnet_convert.common.errors import ConvertError

# the layout of PaddleClas's deploy/configs/inference_cls.yaml, as its predict_cls.py reads it
PADDLECLAS = """\
Global:
  infer_imgs: "./images/ILSVRC2012_val_00000010.jpeg"
  inference_model_dir: "./models"
  batch_size: 1
  use_gpu: True
  enable_mkldnn: False   # a comment after a value
  cpu_num_threads: 10
PreProcess:
  transform_ops:
    - ResizeImage:
        resize_short: 256
    - CropImage:
        size: 224
    - NormalizeImage:
        scale: 0.00392157
        mean: [0.485, 0.456, 0.406]
        std: [0.229, 0.224, 0.225]
        order: ''
    - ToCHWImage:
PostProcess:
  name: Topk
  topk: 5
  class_id_map_file: "../ppcls/utils/imagenet1k_label_list.txt"
"""


def test_paddleclas_layout_is_read() -> None:
    config = parse_inference_config(PADDLECLAS)
    assert config.preprocess == Preprocess(resize_short=256, crop=224)
    assert config.topk == 5 and config.num_classes is None
    data = parse_yaml(PADDLECLAS)
    assert data["Global"]["use_gpu"] is True and data["Global"]["enable_mkldnn"] is False
    assert data["PreProcess"]["transform_ops"][3] == {"ToCHWImage": None}
    assert data["PostProcess"]["class_id_map_file"] == "../ppcls/utils/imagenet1k_label_list.txt"


def test_written_config_has_the_paddleclas_layout_and_reads_back(tmp_path) -> None:
    artifacts = Artifacts(tmp_path)
    path = write_inference_config(artifacts, input_size=320, num_classes=1000, model_name="resnet50_acnet")
    assert path == tmp_path / "inference.yml"
    data = parse_yaml(path.read_text())
    ops = data["PreProcess"]["transform_ops"]
    assert [next(iter(op)) for op in ops] == ["ResizeImage", "CropImage", "NormalizeImage", "ToCHWImage"]
    assert ops[0]["ResizeImage"] == {"resize_short": 366}  # 320 * 256 / 224
    assert ops[1]["CropImage"] == {"size": 320}
    assert ops[2]["NormalizeImage"] == {"scale": 0.00392157, "mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225], "order": ""}
    assert data["PostProcess"] == {"name": "Topk", "topk": 5}  # only keys PaddleClas's Topk takes
    assert data["Global"] == {"inference_model_dir": ".", "model_name": "resnet50_acnet", "class_num": 1000,
                              "image_shape": [3, 320, 320]}
    config = read_inference_config(artifacts)
    assert config == DeployConfig(default_preprocess(320), 1000, "resnet50_acnet", 5)


def test_dense_output_has_no_postprocess_and_few_classes_cap_topk(tmp_path) -> None:
    text = render(DeployConfig(default_preprocess(32), None))
    assert "PostProcess" not in text and "class_num" not in text
    assert "topk: 3" in render(DeployConfig(default_preprocess(32), 3))
    custom = Preprocess(resize_short=40, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125), interpolation="bicubic")
    assert parse_inference_config(render(DeployConfig(custom, 10))).preprocess == custom


def test_a_model_that_is_not_square_is_fed_resized_to_its_size(tmp_path) -> None:
    """A 48x160 model (a text recogniser): the whole image resized to 48x160, PaddleClas's
    ResizeImage size [W, H], no crop; image_shape [3, H, W]."""
    path = write_inference_config(Artifacts(tmp_path), input_size=(48, 160), num_classes=None)
    data = parse_yaml(path.read_text())
    ops = data["PreProcess"]["transform_ops"]
    assert [next(iter(op)) for op in ops] == ["ResizeImage", "NormalizeImage", "ToCHWImage"]
    assert ops[0]["ResizeImage"] == {"size": [160, 48]} and data["Global"]["image_shape"] == [3, 48, 160]
    config = read_inference_config(Artifacts(tmp_path))
    assert config.preprocess == default_preprocess((48, 160))
    assert config.preprocess.resize == (48, 160) and config.preprocess.crop == (48, 160)
    # a non-square crop after a short-side resize is CropImage [W, H], as PaddleClas reads it
    crop = Preprocess(resize_short=200, crop=(120, 180))
    text = render(DeployConfig(crop, 10))
    assert "size: [180, 120]" in text and parse_inference_config(text).preprocess == crop


def test_crop_flag_scales_the_resize_with_it() -> None:
    assert default_preprocess(224).with_crop(160) == Preprocess(resize_short=183, crop=160)
    assert default_preprocess(224).with_crop((97, 161)).resize_short == 184  # 161 * 256 / 224
    assert default_preprocess((48, 160)).with_crop((32, 100)) == Preprocess(resize_short=None, resize=(32, 100),
                                                                             crop=(32, 100))


def test_config_errors_name_the_file_once() -> None:
    text = PADDLECLAS.replace("resize_short: 256", "resize_short: -3")
    with pytest.raises(ConvertError) as caught:
        parse_inference_config(text, "OUT/inference.yml")
    assert str(caught.value).count("OUT/inference.yml") == 1
    text = PADDLECLAS.replace("resize_short: 256", "resize_short: 100")  # below the crop: Preprocess's own check
    with pytest.raises(ConvertError) as caught:
        parse_inference_config(text, "OUT/inference.yml")
    assert str(caught.value).startswith("OUT/inference.yml: preprocessing: the short side (100)")


def test_no_config_is_none(tmp_path) -> None:
    assert read_inference_config(Artifacts(tmp_path)) is None


@pytest.mark.parametrize("text,needle", [
    ("Global:\n  a: 1\n", "PreProcess.transform_ops is missing"),
    ("PreProcess:\n  transform_ops:\n    - RandCropImage:\n        size: 3\n", "RandCropImage is not supported"),
    ("PreProcess:\n  transform_ops:\n    - ResizeImage:\n        interpolation: bilinear\n    - CropImage:\n"
     "        size: 2\n    - NormalizeImage:\n", "must give resize_short .the short side. or size"),
    ("PreProcess:\n  transform_ops:\n    - ResizeImage:\n        size: [40, 30]\n    - CropImage:\n"
     "        size: [41, 20]\n    - NormalizeImage:\n", "the crop 20x41 is larger than the resized image 30x40"),
    ("PreProcess:\n  transform_ops:\n    - ResizeImage:\n        resize_short: 256\n    - CropImage:\n        size: -2\n"
     "    - NormalizeImage:\n", "CropImage.size must be an integer from 1 to 8192"),
    ("PreProcess:\n  transform_ops:\n    - ResizeImage:\n        resize_short: 256\n    - CropImage:\n        size: 224\n"
     "    - NormalizeImage:\n        order: chw\n", "order chw"),
    ("PreProcess:\n\ttransform_ops: []\n", "line 2: indentation with a tab"),
    ("a: &anchor 1\n", "line 1: &anchor 1: only plain block-style YAML"),
    ("a: 1\na: 2\n", "line 2: duplicate key a"),
    ("a: 'open\n", "line 1: unterminated string"),
    ("a:\n  b: 1\n    c: 2\n", "line 3: unexpected indentation"),
])
def test_what_is_not_understood_is_refused_naming_the_line(text: str, needle: str) -> None:
    with pytest.raises(ConvertError, match=needle):
        parse_inference_config(text, "OUT/inference.yml")


def test_scale_as_paddleclas_expression() -> None:
    text = PADDLECLAS.replace("scale: 0.00392157", "scale: '1.0/255.0'")
    assert parse_inference_config(text).preprocess.scale == pytest.approx(1 / 255)
