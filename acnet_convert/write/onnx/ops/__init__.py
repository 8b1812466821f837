"""One translator per Paddle op kind, registered in `HANDLERS` (see `_common`): adding an op is
adding a function in the module of its family. Importing the package registers them all."""
from acnet_convert.write.onnx.ops import elementwise, nn, tensors  # noqa: F401 - registers the handlers
from acnet_convert.write.onnx.ops._common import HANDLERS, NO_HANDLER, REGISTRY, supported_ops

__all__ = ["HANDLERS", "NO_HANDLER", "REGISTRY", "supported_ops"]
