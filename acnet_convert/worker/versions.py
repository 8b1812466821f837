"""`--version`: the tool and the components it runs on, with what each can run on (CPU, CUDA)."""
from __future__ import annotations

from acnet_convert import __version__
from acnet_convert.common import quiet
from acnet_convert.common.text import one_line


# each component, and the distributions that may provide it (CPU or GPU builds)
_COMPONENTS = (
    ("paddlepaddle", ("paddlepaddle", "paddlepaddle-gpu")),
    ("onnx", ("onnx",)),
    ("onnxruntime", ("onnxruntime-gpu", "onnxruntime")),
)


def versions() -> str:
    """One line per component: its version and what it can run on."""
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"acnet-convert {__version__}"]
    for label, distributions in _COMPONENTS:
        text = f"{label} not installed"
        for distribution in distributions:
            try:
                text = f"{label} {version(distribution)}{_gpu_support(label, distribution)}"
                break
            except PackageNotFoundError:
                continue
        lines.append(text)
    return "\n".join(lines)


def _gpu_support(label: str, distribution: str) -> str:
    """What a component can run on: Paddle's CUDA build, ONNX Runtime's execution providers,
    and whether the NVIDIA driver reports a device (a provider list alone does not say)."""
    build = "" if distribution == label else f"{distribution}: "
    try:
        if label == "paddlepaddle":
            paddle = quiet.import_paddle()
            if not paddle.device.is_compiled_with_cuda():
                return f" ({build}CPU-only build, no CUDA)"
            return f" ({build}CUDA {paddle.version.cuda()}, cuDNN {paddle.version.cudnn()})"
        if label == "onnxruntime":
            from acnet_convert.verify.device import driver_gpus, ort_providers

            count, reason = driver_gpus()
            # (the test-suite and scripts read "not installed" as a missing component)
            gpu = f"{count} CUDA GPU(s)" if count else f"no CUDA GPU: {reason.replace('is not installed', 'is missing')}"
            return f" ({build}providers {', '.join(ort_providers())}; {gpu})"
    except Exception as err:  # noqa: BLE001 - a broken install still gets its version line
        return f" (cannot be imported: {one_line(err)})"
    return ""
