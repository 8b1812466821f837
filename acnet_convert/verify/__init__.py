"""What `verify` is made of: runners (Paddle, ONNX Runtime), feeds and images, the verdict and
its tolerances, the report, the per-layer check, the device. May import `write`, `out`, `read`,
`graph`, `nn`, `fold`, `common`."""
