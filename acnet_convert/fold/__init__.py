"""The numpy arithmetic of folding: BN into convs, branches into one kernel, in float64, cast
once by the caller. Imports numpy only: nothing of Paddle, ONNX or the rest of the package."""
