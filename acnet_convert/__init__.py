"""acnet-convert: fold ACNet asymmetric convolution blocks into deploy-mode Paddle and ONNX models."""

__version__ = "0.2.0"
