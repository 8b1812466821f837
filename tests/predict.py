"""paddle.inference on the CPU, as a deployment runs a saved model: the tests' own runner,
written with Paddle's API alone (not the package's runners, which they check)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def paddle_predict(program: Path | str, params: Path | str, images: np.ndarray, *, ir_optim: bool = True,
                   onednn: bool = True) -> tuple[list[np.ndarray], list[str]]:
    """Every output of the one-input model `program` on `images`, and the output names."""
    import paddle.inference as pi

    config = pi.Config(str(program), str(params))
    config.disable_glog_info()
    if not ir_optim:
        config.switch_ir_optim(False)
    if not onednn:
        config.disable_onednn()
    predictor = pi.create_predictor(config)
    (name,) = predictor.get_input_names()
    handle = predictor.get_input_handle(name)
    handle.reshape(list(images.shape))
    handle.copy_from_cpu(images)
    predictor.run()
    names = predictor.get_output_names()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in names], names
