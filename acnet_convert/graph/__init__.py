"""The network as one graph of ops, and what is found on it by structure: the groups that fold
into one conv, their geometry, and the deploy graph. Pure Python and numpy (no Paddle, no
ONNX); may import `fold` and `common` only."""
