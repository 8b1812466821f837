"""Real re-parameterisable blocks, ported from their upstream files (fixtures/rep_blocks.py), fused
from their exported train form as users export it: the deploy model computes what the user's
dygraph model computes, reaches the ideal op counts, and every twin that must be declined is,
with its reason, and stays correct."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from acnet_convert.commands.fuse import fuse
from acnet_convert.read.program import load_program
from acnet_convert.read.program_reader import read_graph
from fixtures.export_model import reference_outputs
from fixtures.rep_blocks import MODELS
from tests.predict import paddle_predict

SEED = 0
# models whose ideal is not reached yet, with the reason (none: the reader reads control flow and the
# writer applies the deploy graph by difference)
PENDING: dict[str, str] = {}


def _pending(name: str, *tests: str):
    return pytest.param(name, marks=pytest.mark.xfail(reason=PENDING[name], strict=True)) if name in PENDING and (
        not tests or name in tests) else name
# what each twin must be declined for (the manifest's reason)
DECLINED = {
    "neg_exclusive_avgpool": "excludes the padding",
    "neg_kxk_chain": "larger than the largest kernel",
    "neg_dynamic_scale": "computed from the input",
    "dbb_depthwise": "excludes the padding",
}


@pytest.fixture(scope="session")
def rep_exports(rep_models):
    """The session's exports (tests/rep_fixtures.py), shared with the writer tests."""
    return rep_models


@pytest.fixture(scope="session")
def rep_fused(rep_exports, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rep_fused")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, fmt: str = "pir") -> Path:
        if (name, fmt) not in made:
            out = root / f"{name}_{fmt}"
            fuse(rep_exports(name, fmt), out, paddle_format="pir")
            made[(name, fmt)] = out
        return made[(name, fmt)]

    return get


def _deploy_ops(out: Path) -> dict[str, int]:
    graph = read_graph(load_program(out / "inference.json", out / "inference.pdiparams"))
    return graph.op_counts()


def _ideal(name: str) -> dict[str, int]:
    """The fixture's ideal counts in the graph's names (depthwise convs are conv2d)."""
    ideal = dict(MODELS[name].ideal)
    ideal["conv2d"] = ideal.get("conv2d", 0) + ideal.pop("depthwise_conv2d", 0)
    return ideal


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
@pytest.mark.parametrize("name", [_pending(n, "ppyoloe_repvgg_alpha") for n in sorted(MODELS)])
def test_the_deploy_model_computes_the_users_model(rep_fused, name: str, fmt: str) -> None:
    out = rep_fused(name, fmt)
    images = np.random.default_rng(5).standard_normal((2, *MODELS[name].input_shape)).astype(np.float32)
    want = reference_outputs(name, images, seed=SEED)
    got = paddle_predict(out / "inference.json", out / "inference.pdiparams", images, onednn=False)[0][0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("name", [_pending(n) for n in sorted(MODELS)])
def test_the_ideal_deploy_graph_is_reached(rep_fused, name: str) -> None:
    ops, ideal = _deploy_ops(rep_fused(name)), _ideal(name)
    assert ops.get("conv2d", 0) == ideal["conv2d"], ops
    for op, count in ideal.items():
        if name == "neg_shared_intermediate" and op == "batch_norm":
            continue  # the shared intermediate is a BN's output: it stays (the fixture's "best case" is 0)
        assert ops.get(op, 0) <= count, (op, ops)
    manifest = json.loads((rep_fused(name) / "manifest.json").read_text())
    assert all(row["residual"] < 1e-6 for row in manifest["fused"])  # every fold proven


@pytest.mark.parametrize("name", sorted(DECLINED))
def test_twins_are_declined_with_the_reason(rep_fused, name: str) -> None:
    manifest = json.loads((rep_fused(name) / "manifest.json").read_text())
    assert any(DECLINED[name] in row["reason"] for row in manifest["declined"]), manifest["declined"]


@pytest.mark.parametrize("name", [_pending(n, "ppyoloe_repvgg_alpha")
                                  for n in sorted(set(MODELS) - set(DECLINED) - {"neg_shared_intermediate", "lcnetv3", "lcnetv3_rec"})])
def test_blocks_that_fold_whole_leave_nothing_declined(rep_fused, name: str) -> None:
    manifest = json.loads((rep_fused(name) / "manifest.json").read_text())
    assert manifest["declined"] == []
