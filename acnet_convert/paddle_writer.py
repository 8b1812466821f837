"""Write the deploy graph as a Paddle inference model (paddle.jit.save)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import paddle

from acnet_convert.models import deploy_model
from acnet_convert.plan import Plan

INPUT_NAME = "image"
MODEL_PREFIX = "inference"


def save_inference_model(plan: Plan, weights: Mapping[str, np.ndarray], out_dir: Path, input_size: int) -> Path:
    """Write OUT/inference.json (.pdmodel on Paddle 2.x) + inference.pdiparams; returns the prefix."""
    model = deploy_model(plan, weights)
    spec = paddle.static.InputSpec([None, 3, input_size, input_size], "float32", name=INPUT_NAME)
    prefix = Path(out_dir) / MODEL_PREFIX
    paddle.jit.save(model, str(prefix), input_spec=[spec])
    return prefix
