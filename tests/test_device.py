"""Device choice for `verify`: the GPU only when the CUDA driver really has one, each framework
on its own terms, and never a CUDA provider handed to ONNX Runtime on a machine without one."""
from __future__ import annotations

import ctypes

import onnx
import pytest
from onnx import TensorProto, helper

from acnet_convert.verify import device
from acnet_convert.verify.device import CPU_PROVIDER, CUDA_PROVIDER, detect_gpu, driver_gpus, resolve_device
from acnet_convert.common.errors import ConvertError

BOTH = [CUDA_PROVIDER, CPU_PROVIDER]


def _fake(monkeypatch, gpus: int = 0, paddle: bool = False, providers: list[str] | None = None) -> None:
    driver = f"{gpus} CUDA device(s)" if gpus else "no driver here"
    build = "Paddle sees a CUDA device" if paddle else "this Paddle build is CPU-only"
    monkeypatch.setattr(device, "driver_gpus", lambda: (gpus, driver))
    monkeypatch.setattr(device, "paddle_cuda", lambda: (paddle, build))
    monkeypatch.setattr(device, "ort_providers", lambda: list(providers or BOTH))


def test_no_gpu_means_cpu_with_the_reason(monkeypatch) -> None:
    _fake(monkeypatch, gpus=0, providers=BOTH)  # onnxruntime-gpu lists CUDA even without a GPU
    chosen = resolve_device("auto")
    assert chosen.name == "cpu" and not chosen.paddle_gpu
    assert chosen.ort_providers == (CPU_PROVIDER,)
    assert chosen.notes == ("using the CPU (no CUDA GPU: no driver here)",)


def test_gpu_for_both_when_everything_is_there(monkeypatch) -> None:
    _fake(monkeypatch, gpus=1, paddle=True, providers=["TensorrtExecutionProvider", *BOTH])
    for requested in ("auto", "gpu"):
        chosen = resolve_device(requested)
        assert chosen.name == "gpu" and chosen.paddle_gpu and chosen.paddle_place == "gpu:0"
        assert list(chosen.ort_providers) == BOTH
        assert any("Paddle: using the GPU" in note for note in chosen.notes)


def test_ort_without_cuda_provider_stays_on_cpu(monkeypatch) -> None:
    _fake(monkeypatch, gpus=1, paddle=True, providers=[CPU_PROVIDER])
    chosen = resolve_device("auto")
    assert chosen.paddle_gpu and chosen.ort_providers == (CPU_PROVIDER,)
    assert any("ONNX Runtime: using the CPU" in note and CUDA_PROVIDER in note for note in chosen.notes)


def test_cpu_only_paddle_with_a_gpu(monkeypatch) -> None:
    _fake(monkeypatch, gpus=1, paddle=False)
    chosen = resolve_device("auto")
    assert chosen.name == "cpu" and not chosen.paddle_gpu and list(chosen.ort_providers) == BOTH
    assert any("Paddle: using the CPU (this Paddle build is CPU-only)" in note for note in chosen.notes)
    with pytest.raises(ConvertError, match="Paddle cannot use the GPU"):
        resolve_device("gpu")


def test_gpu_requested_without_one(monkeypatch) -> None:
    _fake(monkeypatch, gpus=0)
    with pytest.raises(ConvertError, match=r"--device gpu: no CUDA GPU here \(no driver here\)"):
        resolve_device("gpu")


def test_cpu_requested_probes_nothing(monkeypatch) -> None:
    def boom():
        raise AssertionError("probed")

    for name in ("driver_gpus", "paddle_cuda", "ort_providers"):
        monkeypatch.setattr(device, name, boom)
    assert resolve_device("cpu").ort_providers == (CPU_PROVIDER,)


def test_no_onnx_skips_the_ort_lookup(monkeypatch) -> None:
    _fake(monkeypatch, gpus=1, paddle=True)
    monkeypatch.setattr(device, "ort_providers", lambda: (_ for _ in ()).throw(AssertionError("asked ORT")))
    assert resolve_device("auto", onnx=False).ort_providers == (CPU_PROVIDER,)


def test_unknown_device() -> None:
    with pytest.raises(ConvertError, match="unknown device"):
        resolve_device("tpu")


class _FakeDriver:
    def __init__(self, init: int, count: int) -> None:
        self.init, self.count = init, count

    def cuInit(self, _flags: int) -> int:  # noqa: N802 - the driver's name
        return self.init

    def cuDeviceGetCount(self, out) -> int:  # noqa: N802
        out._obj.value = self.count
        return 0


@pytest.mark.parametrize(
    "driver,expected",
    [
        (_FakeDriver(0, 2), (2, "2 CUDA device(s)")),
        (_FakeDriver(100, 0), (0, "the CUDA driver finds no device")),
        (_FakeDriver(0, 0), (0, "the CUDA driver finds no device")),
        (_FakeDriver(3, 0), (0, "the CUDA driver failed to initialise (cuInit error 3)")),
        (None, (0, "the NVIDIA driver (libcuda.so.1) is not installed")),
    ],
)
def test_driver_probe(monkeypatch, driver, expected) -> None:
    def load(name):
        if driver is None:
            raise OSError(f"{name}: cannot open shared object file")
        return driver

    monkeypatch.setattr(ctypes, "CDLL", load)
    assert driver_gpus() == expected


def _identity_model(path) -> None:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_real_machine_never_asks_ort_for_cuda_without_a_gpu(monkeypatch, tmp_path, ort_providers_asked) -> None:
    """On this machine (no GPU, onnxruntime-gpu installed), the real detection keeps ORT on the CPU."""
    import numpy as np

    from acnet_convert.verify.runners import onnx_session

    present, reason = detect_gpu()
    if present:
        pytest.skip(f"this machine has a CUDA GPU ({reason})")
    chosen = resolve_device("auto")
    assert chosen.name == "cpu" and chosen.ort_providers == (CPU_PROVIDER,)
    assert chosen.notes[0].startswith("using the CPU (no CUDA GPU: ")

    asked = ort_providers_asked
    _identity_model(tmp_path / "m.onnx")
    run = onnx_session(tmp_path / "m.onnx", chosen)
    assert asked == [[CPU_PROVIDER]]
    x = np.ones((2, 3), np.float32)
    assert (run(x)[0] == x).all()
