"""One module per command, each a library function the CLI calls: `fuse`, `verify`,
`export_onnx`, `describe` (inspect). May import every stage below; never the CLI."""
