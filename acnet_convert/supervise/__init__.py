"""The command process's side of supervision: runs each command's work in a child process
(`python -m acnet_convert.worker`) under memory and time limits, relays what it says, and turns
the way it ended into the command's outcome. Imports `out` and `common` only: never Paddle, onnx,
ONNX Runtime, nor the stages that import them."""
