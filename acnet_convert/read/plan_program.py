"""The ResNet-ACNet plan as a Paddle train-form program, for checkpoints that carry no program.

The program is built in static mode from the plan's layers (`models.ResNetACNet`, train form:
three branches and their BNs per ACB, BN in inference mode), its parameters are set from the
checkpoint, and it is then read and fused like any user's program: one path for both sources.
"""
from __future__ import annotations

from pathlib import Path
import numpy as np

from acnet_convert.nn.plan import INPUT_NAME
from acnet_convert.nn.plan import Plan
from acnet_convert.read.program import Program, static_mode
from acnet_convert.common.quiet import silenced
from acnet_convert.common.sizes import SizeLike, as_size

OUTPUT_NAME = "logits"


def build_train_program(plan: Plan, tensors: dict[str, np.ndarray], input_size: SizeLike | None) -> Program:
    """The train-form program of `plan` with `tensors` (legacy names) as its parameters, held
    as `Program.arrays` (not copied). The input is `image` [N, 3, H, W] (`input_size`: N, or
    (H, W); both dynamic when None); the output the logits."""
    legacy_bias = plan.stem.legacy_bias in tensors
    h, w = (-1, -1) if input_size is None else as_size(input_size)
    with static_mode() as paddle, silenced():
        from acnet_convert.nn.models import ResNetACNet  # imports paddle: after import_paddle, quietly

        main, startup, scope = paddle.static.Program(), paddle.static.Program(), paddle.static.Scope()
        with paddle.static.program_guard(main, startup), paddle.static.scope_guard(scope), \
                paddle.utils.unique_name.guard():
            image = paddle.static.data(INPUT_NAME, [-1, 3, h, w], "float32")
            model = ResNetACNet(plan, legacy_bias=legacy_bias)  # initialisers never run: no cost
            model.eval()
            paddle._pir_ops.fetch(model(image), OUTPUT_NAME, 0)
    return Program(main, scope, Path(f"<{plan.arch} built from the checkpoint>"), None, "built", arrays=tensors)
