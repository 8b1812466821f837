"""Write Paddle layers as Paddle inference programs (paddle.jit.save)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import paddle

from acnet_convert.manifest import INPUT_NAME, MODEL_PREFIX, program_file
from acnet_convert.models import deploy_model
from acnet_convert.plan import Plan


def save_program(layer: paddle.nn.Layer, prefix: Path, input_size: int) -> Path:
    """paddle.jit.save `layer` with input `image` [N,3,S,S] (N dynamic); returns the program
    file (PREFIX.json, or .pdmodel on Paddle 2.x) beside PREFIX.pdiparams."""
    spec = paddle.static.InputSpec([None, 3, input_size, input_size], "float32", name=INPUT_NAME)
    paddle.jit.save(layer, str(prefix), input_spec=[spec])
    return program_file(Path(prefix))


def save_inference_model(plan: Plan, weights: Mapping[str, np.ndarray], out_dir: Path, input_size: int) -> Path:
    """Write the deploy graph as OUT/inference.json + inference.pdiparams; returns the program."""
    return save_program(deploy_model(plan, weights), Path(out_dir) / MODEL_PREFIX, input_size)
