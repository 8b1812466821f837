"""Session fixtures: the models of fixtures/rep_blocks.py (upstream re-parameterisable blocks:
PP-YOLOE+ alpha with its `if`, RepViT, DBB, PP-LCNetV3, dilated ACBs, an ASPP head, the
negatives) exported as train-form Paddle inference models, and their dygraph outputs.

    prefix = rep_models("dilated_acb", "legacy")   # .../legacy/dilated_acb/inference
    ref = rep_reference("dilated_acb", images)      # float32 NCHW -> the dygraph model's outputs

tests/conftest.py registers them, so every module shares one export per format.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("GLOG_minloglevel", "2")

from fixtures.export_model import reference_outputs  # noqa: E402
from fixtures.rep_blocks import MODELS  # noqa: E402
from tests.cnn_fixtures import exported  # noqa: E402

SEED = 0


@pytest.fixture(scope="session")
def rep_models(tmp_path_factory: pytest.TempPathFactory):
    """rep_models(name, fmt="pir") -> path prefix of the exported model; the first request of a
    format exports all of them in one child process (about 6 s)."""
    return exported(MODELS, tmp_path_factory.mktemp("rep_blocks"))


@pytest.fixture(scope="session")
def rep_reference():
    """rep_reference(name, images) -> the dygraph model's output (eval mode): the oracle."""
    cache: dict[tuple[str, bytes], np.ndarray] = {}

    def run(name: str, images: np.ndarray) -> np.ndarray:
        key = (name, images.tobytes())
        if key not in cache:
            cache[key] = np.asarray(reference_outputs(name, images, seed=SEED))
        return cache[key]

    return run
