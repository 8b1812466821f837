"""Session fixtures: the CNNs of fixtures/cnn_models.py exported as train-form Paddle inference
models (fixtures/export_model.py), and their dygraph reference outputs.

Use them from a test module with ``from tests.cnn_fixtures import cnn_models, cnn_reference``
(pytest finds fixtures imported into a module), or list the module in the root conftest's
``pytest_plugins``.

    prefix = cnn_models("mobilenet_v2_acb", "legacy")  # .../legacy/mobilenet_v2_acb/inference
    ref = cnn_reference("mobilenet_v2_acb", images)     # float32 NCHW -> outputs
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")

from fixtures.cnn_models import MODELS  # noqa: E402
from fixtures.export_model import FORMATS, export_many, reference_outputs  # noqa: E402

SEED = 0


@pytest.fixture(scope="session")
def cnn_models(tmp_path_factory: pytest.TempPathFactory):
    """cnn_models(name, fmt="pir") -> path prefix of the exported model, cached for the session.

    The first request of a format exports every model in that format in one child process
    (a Paddle import is most of the cost of one export)."""
    return exported(MODELS, tmp_path_factory.mktemp("cnn_models"))


def exported(models: dict, root: Path) -> Callable[..., Path]:
    """get(name, fmt="pir") -> the path prefix of `models[name]` exported in `fmt` under `root`;
    the first request of a format exports every model in one child process."""
    made: dict[tuple, Path] = {}

    def get(name: str, fmt: str = "pir") -> Path:
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
        if name not in models:
            raise KeyError(f"unknown model {name!r}; known: {', '.join(models)}")
        if (name, fmt) not in made:
            for n, prefix in export_many(models, root / fmt, fmt, seed=SEED).items():
                made[(n, fmt)] = prefix
        return made[(name, fmt)]

    return get


@pytest.fixture(scope="session")
def cnn_reference():
    """cnn_reference(name, images) -> the dygraph model's outputs (eval mode), the oracle."""

    def run(name: str, images):
        return reference_outputs(name, images, seed=SEED)

    return run
