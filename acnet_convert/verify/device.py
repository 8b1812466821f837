"""Where `verify` runs: a CUDA GPU when one is really there, else the CPU.

Paddle and ONNX Runtime decide separately. Paddle runs on the GPU when it is compiled with
CUDA and sees a device. ONNX Runtime is handed `CUDAExecutionProvider` only when the CUDA
driver itself reports a device *and* the installed ORT has that provider: onnxruntime-gpu lists
the provider (and `get_device()` says "GPU") on machines without any GPU, so neither is taken
as evidence. The driver is asked directly through ctypes (`libcuda.so.1`, `cuInit`,
`cuDeviceGetCount`), independently of both frameworks.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from acnet_convert.common.errors import ConvertError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
_CUDA_ERROR_NO_DEVICE = 100
_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


@dataclass(frozen=True)
class Device:
    """What each framework will use. `name` is the report's device: Paddle's."""

    name: str  # "cpu" | "gpu"
    paddle_gpu: bool
    ort_providers: tuple[str, ...]
    notes: tuple[str, ...] = ()

    @property
    def paddle_place(self) -> str:
        return "gpu:0" if self.paddle_gpu else "cpu"


def driver_gpus() -> tuple[int, str]:
    """CUDA devices the NVIDIA driver reports, and why there are none when there are none."""
    library = None
    for name in _DRIVER_LIBRARIES:
        try:
            library = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if library is None:
        return 0, "the NVIDIA driver (libcuda.so.1) is not installed"
    try:
        status = library.cuInit(0)
        if status == _CUDA_ERROR_NO_DEVICE:
            return 0, "the CUDA driver finds no device"
        if status != 0:
            return 0, f"the CUDA driver failed to initialise (cuInit error {status})"
        count = ctypes.c_int(0)
        status = library.cuDeviceGetCount(ctypes.byref(count))
    except AttributeError:  # a stub library without the driver API
        return 0, "libcuda has no driver API (cuInit missing)"
    if status != 0:
        return 0, f"the CUDA driver cannot count devices (cuDeviceGetCount error {status})"
    if count.value < 1:
        return 0, "the CUDA driver finds no device"
    return count.value, f"{count.value} CUDA device(s)"


def paddle_cuda() -> tuple[bool, str]:
    """Whether this Paddle build can run on a GPU here."""
    from acnet_convert.common.quiet import import_paddle

    paddle = import_paddle()
    if not paddle.device.is_compiled_with_cuda():
        return False, "this Paddle build is CPU-only"
    if paddle.device.cuda.device_count() < 1:
        return False, "Paddle sees no CUDA device"
    return True, "Paddle sees a CUDA device"


def ort_providers() -> list[str]:
    """The execution providers this ONNX Runtime build has (not: that a GPU exists)."""
    from acnet_convert.common.quiet import silenced

    with silenced():
        import onnxruntime

        return list(onnxruntime.get_available_providers())


def detect_gpu() -> tuple[bool, str]:
    """Is a CUDA GPU really present? Asks the driver, not the frameworks."""
    count, reason = driver_gpus()
    return count > 0, reason


def resolve_device(requested: str = "auto", onnx: bool = True) -> Device:
    """What Paddle and ONNX Runtime will each use for `--device requested`.

    `auto` takes the GPU when there is one and says why not otherwise; `gpu` without a usable
    GPU for Paddle is a ConvertError; ONNX Runtime falls back to the CPU, with a note, when its
    build lacks the CUDA provider. `onnx=False` skips the ORT look-up (no model.onnx).
    """
    if requested not in ("auto", "cpu", "gpu"):
        raise ConvertError(f"unknown device {requested!r}; choose auto, cpu or gpu")
    cpu_only = (CPU_PROVIDER,)
    if requested == "cpu":
        return Device("cpu", False, cpu_only, ("using the CPU (--device cpu)",))
    present, reason = detect_gpu()
    if not present:
        if requested == "gpu":
            raise ConvertError(f"--device gpu: no CUDA GPU here ({reason})")
        return Device("cpu", False, cpu_only, (f"using the CPU (no CUDA GPU: {reason})",))
    paddle_gpu, paddle_reason = paddle_cuda()
    if not paddle_gpu and requested == "gpu":
        raise ConvertError(f"--device gpu: Paddle cannot use the GPU ({paddle_reason})")
    notes = [f"Paddle: using the GPU ({reason})" if paddle_gpu else f"Paddle: using the CPU ({paddle_reason})"]
    providers = cpu_only
    if onnx:
        if CUDA_PROVIDER in ort_providers():
            providers = (CUDA_PROVIDER, CPU_PROVIDER)
            notes.append("ONNX Runtime: using the GPU (CUDAExecutionProvider)")
        else:
            notes.append("ONNX Runtime: using the CPU (this onnxruntime build has no CUDAExecutionProvider)")
    return Device("gpu" if paddle_gpu else "cpu", paddle_gpu, providers, tuple(notes))
