"""The deploy models: the Paddle program edited in place (`pir`), the legacy `.pdmodel`
(`legacy`), ONNX (`onnx`), and the reference layout. Each writer translates the graph with one
handler per op. May import `out`, `read`, `graph`, `nn`, `fold`, `common`."""
