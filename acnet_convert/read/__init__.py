"""Turn a user's file into tensors or a graph: checkpoint folders and `.pdparams` (LoDTensor
files, the restricted unpickler), Paddle inference programs, the ResNet-ACNet train program.
May import `graph`, `nn` (the ResNet-ACNet plan and layers), `fold` and `common`."""
