"""Session fixture: the PyTorch nets of fixtures/torch_blocks.py exported to ONNX
(fixtures/export_onnx.py), each export made once per session and shared by every test module
that imports the fixture (``from tests.torch_onnx import onnx_export``).

    path = onnx_export("repvgg", "legacy_unfolded", opset=None, dynamic=None, external_data=None,
                       deployed=False)
"""
from __future__ import annotations

import pytest

from fixtures import export_onnx as E


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_onnx")
    made = {}

    def make(name, variant="legacy_folded", opset=None, dynamic=None, external_data=None, deployed=False):
        key = (name, variant, opset, dynamic, external_data, deployed)
        if key not in made:
            if variant == "dynamo":
                pytest.importorskip("onnxscript")
            made[key] = E.export(name, root, variant, opset, dynamic, external_data, deployed)
        return made[key]

    return make
