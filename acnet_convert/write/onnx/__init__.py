"""The ONNX deploy model: the deploy graph translated op by op (`ops`) with the builder the
handlers write with (`builder`), checked and written by `writer`. Imports onnx, never Paddle."""
