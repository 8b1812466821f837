"""OUT/inference.yml: the preprocessing the deploy model expects and its label count, in the
layout of PaddleClas's deploy configs (`deploy/configs/inference_cls.yaml`), so PaddleClas's
Python predictor (`deploy/python/predict_cls.py -c OUT/inference.yml`), its serving configs and
FastDeploy's PaddleClasModel read it as theirs. This module alone writes and reads it.

    Global:
      inference_model_dir: "."      # the folder the file sits in
      model_name: resnet50_acnet    # when known
      class_num: 1000               # the label count (absent for dense outputs)
      image_shape: [3, 224, 224]
    PreProcess:
      transform_ops:
        - ResizeImage:
            resize_short: 256       # the short side, S * 256 / 224 for input size S
        - CropImage:
            size: 224               # centre crop
        - NormalizeImage:
            scale: 0.00392157       # 1/255
            mean: [0.485, 0.456, 0.406]
            std: [0.229, 0.224, 0.225]
            order: ''               # HWC, as decoded
        - ToCHWImage:
    PostProcess:
      name: Topk
      topk: 5

That is how Paddle's ImageNet classifiers are fed: RGB, short side resized (bilinear), centre
crop, (x * scale - mean) / std per channel, CHW. A model whose input is not square (a 48x160
text recogniser) is fed as such models are: the whole image resized to H x W, no crop
(`ResizeImage: size: [W, H]`, PaddleClas's order; `image_shape: [3, H, W]`); a non-square crop
is written `CropImage: size: [W, H]`. `Global` keys other than PaddleClas's own are
ignored by its tools; PostProcess takes only the keys Topk accepts.

No YAML library is a dependency: the writer emits the layout above, and the reader parses the
block-style subset it is written in (mappings, `- Op:` lists, `[a, b]` lists, scalars,
comments), which is also what PaddleClas's own configs use. Anything else is refused with the
line number. Nothing here imports Paddle.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acnet_convert.out.artifacts import Artifacts, read_small
from acnet_convert.common.budgets import MAX_SIDE
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.sizes import SizeLike
from acnet_convert.out.preprocess import (IMAGENET_MEAN, IMAGENET_STD, SCALE, Preprocess,  # noqa: F401 - re-exported
                                          default_preprocess)
from acnet_convert.common.text import printable

_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class DeployConfig:
    preprocess: Preprocess
    num_classes: int | None
    model_name: str | None = None
    topk: int = 5


# ------------------------------------------------------------------------------------------
# writing


def _number(x: float) -> str:
    return repr(float(x)) if float(x) != int(x) else f"{float(x):.1f}"


def render(config: DeployConfig) -> str:
    p = config.preprocess
    lines = ["# written by acnet-convert fuse: how the deploy model in this folder is fed (PaddleClas layout)",
             "Global:", '  inference_model_dir: "."']
    if config.model_name:
        lines.append(f"  model_name: {_quote(config.model_name)}")
    if config.num_classes is not None:
        lines.append(f"  class_num: {int(config.num_classes)}")
    h, w = p.crop
    lines += [
        f"  image_shape: [3, {h}, {w}]",
        "PreProcess:",
        "  transform_ops:",
        "    - ResizeImage:",
        f"        resize_short: {p.resize_short}" if p.resize is None else f"        size: [{p.resize[1]}, {p.resize[0]}]",
    ]
    if p.interpolation != "bilinear":
        lines.append(f"        interpolation: {p.interpolation}")
    if p.resize != p.crop:
        lines += ["    - CropImage:", f"        size: {h}" if h == w else f"        size: [{w}, {h}]"]
    lines += [
        "    - NormalizeImage:",
        f"        scale: {p.scale!r}",
        f"        mean: [{', '.join(_number(m) for m in p.mean)}]",
        f"        std: [{', '.join(_number(s) for s in p.std)}]",
        "        order: ''",
        "    - ToCHWImage:",
    ]
    if config.num_classes is not None:
        lines += ["PostProcess:", "  name: Topk", f"  topk: {min(config.topk, int(config.num_classes))}"]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_inference_config(
    artifacts: Artifacts,
    *,
    input_size: SizeLike,
    num_classes: int | None,
    model_name: str | None = None,
    preprocess: Preprocess | None = None,
) -> Path:
    """Write OUT/inference.yml for a model fed [N, 3, H, W] images, (H, W) = `input_size`, whose
    output has `num_classes` scores per image (None for dense outputs: no PostProcess)."""
    config = DeployConfig(preprocess or default_preprocess(input_size), num_classes, model_name)
    path = artifacts.inference_config
    path.write_text(render(config), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# reading


def read_inference_config(artifacts: Artifacts) -> DeployConfig | None:
    """OUT/inference.yml, or None when there is none (an OUT written before it existed)."""
    path = artifacts.inference_config
    if not os.path.lexists(path):
        return None
    try:
        text = read_small(path, _MAX_BYTES, "an inference config").decode("utf-8")
    except UnicodeDecodeError:
        raise ConvertError(f"{printable(path)} is not UTF-8 text") from None
    return parse_inference_config(text, printable(path))


def parse_inference_config(text: str, where: str = "inference.yml") -> DeployConfig:
    data = parse_yaml(text, where)
    if not isinstance(data, dict):
        raise ConvertError(f"{where}: expected a mapping with PreProcess (PaddleClas layout)")
    glob = data.get("Global") or {}
    pre = data.get("PreProcess")
    ops = pre.get("transform_ops") if isinstance(pre, dict) else None
    if not isinstance(ops, list):
        raise ConvertError(f"{where}: PreProcess.transform_ops is missing (PaddleClas layout)")
    found: dict[str, dict[str, Any]] = {}
    for op in ops:
        if not isinstance(op, dict) or len(op) != 1:
            raise ConvertError(f"{where}: every transform op is one 'Name:' entry")
        (name, params), = op.items()
        params = params or {}
        if not isinstance(params, dict):
            raise ConvertError(f"{where}: {printable(name)} takes named parameters")
        if name not in ("DecodeImage", "ResizeImage", "CropImage", "NormalizeImage", "ToCHWImage"):
            raise ConvertError(f"{where}: transform op {printable(name)} is not supported by verify "
                               "(ResizeImage, CropImage, NormalizeImage, ToCHWImage)")
        found[name] = params
    for needed in ("ResizeImage", "NormalizeImage"):
        if needed not in found:
            raise ConvertError(f"{where}: PreProcess lacks {needed}")
    resize, norm = found["ResizeImage"], found["NormalizeImage"]
    if resize.get("resize_short") is None and resize.get("size") is None:
        raise ConvertError(f"{where}: ResizeImage must give resize_short (the short side) or size")
    if resize.get("resize_short") is None:
        exact = _width_height(resize.get("size"), "ResizeImage.size", where)
    else:
        exact = None
        if "CropImage" not in found:
            raise ConvertError(f"{where}: PreProcess lacks CropImage (after ResizeImage resize_short)")
    crop = _width_height(found["CropImage"].get("size"), "CropImage.size", where) if "CropImage" in found else exact
    order = norm.get("order", "")
    if order not in ("", "hwc", None):
        raise ConvertError(f"{where}: NormalizeImage order {printable(order)}: verify normalises decoded HWC images "
                           "(order '')")
    values = dict(  # each names the file in its own message
        resize_short=None if exact else _int(resize["resize_short"], "ResizeImage.resize_short", where,
                                             2 * MAX_SIDE),
        resize=exact,
        crop=crop,
        mean=_floats(norm.get("mean", list(IMAGENET_MEAN)), "NormalizeImage.mean", where),
        std=_floats(norm.get("std", list(IMAGENET_STD)), "NormalizeImage.std", where),
        scale=_scale(norm.get("scale", SCALE), where),
        interpolation=str(resize.get("interpolation") or "bilinear").lower(),
    )
    try:
        preprocess = Preprocess(**values)
    except ConvertError as err:  # Preprocess's own checks do not know the file
        raise ConvertError(f"{where}: {err}") from None
    classes = glob.get("class_num") if isinstance(glob, dict) else None
    name = glob.get("model_name") if isinstance(glob, dict) else None
    post = data.get("PostProcess") if isinstance(data.get("PostProcess"), dict) else {}
    return DeployConfig(preprocess, None if classes is None else _int(classes, "Global.class_num", where),
                        None if name is None else str(name), _int(post.get("topk", 5), "PostProcess.topk", where))


def _int(value: Any, key: str, where: str, high: int = 1 << 24) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ConvertError(f"{where}: {key} must be an integer from 1 to {high}, not {printable(value)}")
    return value


def _width_height(value: Any, key: str, where: str) -> tuple[int, int]:
    """A PaddleClas size: N, or [W, H] (width first, as its CropImage and ResizeImage read it),
    as (H, W); each side within the budget (`common.budgets`)."""
    if isinstance(value, list) and len(value) == 2:
        return _int(value[1], key, where, MAX_SIDE), _int(value[0], key, where, MAX_SIDE)
    size = _int(value, key, where, MAX_SIDE)
    return size, size


def _floats(value: Any, key: str, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        raise ConvertError(f"{where}: {key} must be a list of numbers")
    return tuple(float(v) for v in value)


def _scale(value: Any, where: str) -> float:
    # PaddleClas also accepts an expression such as 1.0/255.0 (it eval()s strings): only that form
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*/\s*([0-9]*\.?[0-9]+)\s*", value)
        if not match or float(match.group(2)) == 0:
            raise ConvertError(f"{where}: NormalizeImage.scale {printable(value)} is not a number or a/b with b > 0")
        return float(match.group(1)) / float(match.group(2))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConvertError(f"{where}: NormalizeImage.scale must be a number")
    return float(value)


# ------------------------------------------------------------------------------------------
# the YAML subset


_SCALAR_WORDS = {"null": None, "~": None, "true": True, "false": False, "True": True, "False": False,
                 "Null": None, "NULL": None, "TRUE": True, "FALSE": False}


def _strip_comment(line: str) -> str:
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text: str, where: str, number: int) -> Any:
    text = text.strip()
    if text == "":
        return None
    if text[0] in "'\"":
        if len(text) < 2 or text[-1] != text[0]:
            raise ConvertError(f"{where} line {number}: unterminated string")
        body = text[1:-1]
        return body.replace("''", "'") if text[0] == "'" else body.replace('\\"', '"').replace("\\\\", "\\")
    if text.startswith("["):
        if not text.endswith("]"):
            raise ConvertError(f"{where} line {number}: unterminated [list]")
        inner = text[1:-1].strip()
        return [] if not inner else [_scalar(part, where, number) for part in inner.split(",")]
    if text.startswith(("{", "&", "*", "!", "|", ">")):
        raise ConvertError(f"{where} line {number}: {printable(text[:20])}: only plain block-style YAML is read")
    if text in _SCALAR_WORDS:
        return _SCALAR_WORDS[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_yaml(text: str, where: str = "inference.yml") -> Any:
    """Block-style YAML: nested mappings, lists of `- item` (scalars or mappings), flow lists of
    scalars, quoted and plain scalars, comments. Tabs, anchors, multi-line scalars and flow
    mappings are refused."""
    lines: list[tuple[int, int, str]] = []  # (line number, indent, content)
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ConvertError(f"{where} line {number}: indentation with a tab")
        content = _strip_comment(raw)
        if content.strip() in ("", "---"):
            continue
        lines.append((number, len(content) - len(content.lstrip(" ")), content.strip()))
    value, end = _block(lines, 0, lines[0][1] if lines else 0, where)
    if end != len(lines):
        number = lines[end][0]
        raise ConvertError(f"{where} line {number}: unexpected indentation")
    return value


def _block(lines: list[tuple[int, int, str]], i: int, indent: int, where: str) -> tuple[Any, int]:
    if i >= len(lines):
        return None, i
    if lines[i][2].startswith("- ") or lines[i][2] == "-":
        return _sequence(lines, i, indent, where)
    return _mapping(lines, i, indent, where)


def _split_key(content: str, where: str, number: int) -> tuple[str, str]:
    match = re.match(r"""^("[^"]*"|'[^']*'|[^:'"\[\]{}#,][^:]*?)\s*:(?:\s+(.*)|$)""", content)
    if not match:
        raise ConvertError(f"{where} line {number}: expected 'key: value', got {printable(content[:40])}")
    key = match.group(1)
    if key[0] in "'\"":
        key = key[1:-1]
    return key, (match.group(2) or "").strip()


def _mapping(lines: list[tuple[int, int, str]], i: int, indent: int, where: str) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    while i < len(lines) and lines[i][1] == indent:
        number, _, content = lines[i]
        if content.startswith("-"):
            raise ConvertError(f"{where} line {number}: a list item where a key was expected")
        key, rest = _split_key(content, where, number)
        if key in out:
            raise ConvertError(f"{where} line {number}: duplicate key {printable(key)}")
        i += 1
        if rest:
            out[key] = _scalar(rest, where, number)
        elif i < len(lines) and (lines[i][1] > indent or (lines[i][1] == indent and lines[i][2].startswith("-"))):
            out[key], i = _block(lines, i, lines[i][1], where)
        else:
            out[key] = None
    if i < len(lines) and lines[i][1] > indent:
        raise ConvertError(f"{where} line {lines[i][0]}: unexpected indentation")
    return out, i


def _sequence(lines: list[tuple[int, int, str]], i: int, indent: int, where: str) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(lines) and lines[i][1] == indent and (lines[i][2].startswith("- ") or lines[i][2] == "-"):
        number, _, content = lines[i]
        rest = content[1:].strip()
        if not rest:
            i += 1
            if i < len(lines) and lines[i][1] > indent:
                value, i = _block(lines, i, lines[i][1], where)
            else:
                value = None
            out.append(value)
            continue
        if re.match(r"""^("[^"]*"|'[^']*'|[^:'"\[\]{}#,][^:]*?)\s*:(\s|$)""", rest):
            # "- key: value" starts a mapping whose keys sit at the column after "- "
            inner = indent + (len(content) - len(rest))
            lines[i] = (number, inner, rest)
            value, i = _mapping(lines, i, inner, where)
            out.append(value)
        else:
            out.append(_scalar(rest, where, number))
            i += 1
    return out, i
