"""Train-form ONNX models from any framework: `model` finds, checks and loads the file, `reader`
turns it into the package's graph (one handler per op in `ops`, DBB's scattered pads made one
`pad` by `scatter_pad`)."""
