"""Proving a collapse: the region as written, run in float64 by `evaluate` on the probes of
`fold.proof`, against the one conv it collapses into, run by `fold.numeric`. A region made for
one input size (its shapes baked into the program, as an export at a fixed size bakes a
BNAndPad's) is proven at that size instead."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from acnet_convert.fold import numeric
from acnet_convert.fold import proof as P
from acnet_convert.fold.affine import Conv, NotAConv
from acnet_convert.graph.evaluate import Unevaluable, evaluate
from acnet_convert.graph.ir import Graph


class Prover:
    """Proves collapses of one graph (its producers and readers computed once)."""

    def __init__(self, graph: Graph, producer: dict[str, int] | None = None,
                 readers: dict[str, list[int]] | None = None) -> None:
        self.g = graph
        self.producer = graph.producers() if producer is None else producer
        self.readers = graph.consumers() if readers is None else readers

    def region(self, x: str, y: str, conv: Conv) -> tuple[float, list[tuple[int, int]]]:
        needed = [self.g.nodes[j] for j in self.closure(x, y)]

        def written(probe: np.ndarray) -> np.ndarray:
            values: dict[str, Any] = {x: probe, **self.g.constants}
            values.update({t: self.g.weights[t] for n in needed for t in n.tensor_inputs() if t in self.g.weights})
            evaluate(self.g, needed, values)
            return np.asarray(values[y], np.float64)

        return self._compare(x, conv, written)

    def _compare(self, x: str, conv: Conv, written: Callable[[np.ndarray], np.ndarray]) -> tuple[float, list[tuple[int, int]]]:
        """The worst residual of `conv` against `written` over the probes. A region made for one
        input size (its shapes baked into the program) is proven at that size instead."""
        channels = int(conv.kernel.shape[1]) * conv.groups
        sizes = P.probe_sizes(conv)
        try:
            return self._worst(conv, written, channels, sizes), sizes
        except (Unevaluable, ValueError) as err:
            static = self._static_size(x)
            if static is None:
                raise NotAConv(f"the region cannot be evaluated on a {sizes[0][0]}x{sizes[0][1]} probe: {err}") from None
        try:
            return self._worst(conv, written, channels, [static]), [static]
        except (Unevaluable, ValueError) as err:
            raise NotAConv(f"the region cannot be evaluated: {err}") from None

    def _worst(self, conv: Conv, written: Callable[[np.ndarray], np.ndarray], channels: int,
               sizes: list[tuple[int, int]]) -> float:
        worst = 0.0
        try:
            for probe in P.probes(channels, sizes):
                reference = written(probe)
                fused = numeric.conv2d(probe, conv.kernel, conv.bias, conv.stride, conv.dilation, conv.padding, conv.groups)
                worst = max(worst, P.residual(reference, fused))
        finally:
            numeric.forget_folded()  # the probes share one channel vector: each kernel was folded once
        return worst

    def _static_size(self, x: str) -> tuple[int, int] | None:
        info = self.g.tensors.get(x)
        if info is None or len(info.shape) != 4 or min(info.shape[2:]) < 1:
            return None
        return int(info.shape[2]), int(info.shape[3])

    def closure(self, x: str, y: str) -> list[int]:
        """Every node `y` needs from `x`, weights and constants (fields and their shapes too)."""
        needed: set[int] = set()
        stack = [self.producer[y]]
        while stack:
            j = stack.pop()
            if j in needed:
                continue
            needed.add(j)
            for t in self.g.nodes[j].tensor_inputs():
                if t == x or t in self.g.weights or t in self.g.constants:
                    continue
                if t not in self.producer:
                    raise NotAConv(f"the region reads {t}, another input of the graph")
                stack.append(self.producer[t])
        return sorted(needed)

    def border_reason(self, nodes: tuple[int, ...], worst: float) -> str:
        for j in nodes:
            node = self.g.nodes[j]
            padded = any(int(p) for p in node.attrs.get("paddings", [0]))
            if node.op == "pool2d" and node.attrs.get("exclusive", True) and padded:
                return (f"{node.where()}: average pooling that excludes the padding is not a convolution at the "
                        f"border (the fused conv would differ by {worst:.2g} of scale)")
            if node.op == "pool2d" and node.attrs.get("ceil_mode"):
                return f"{node.where()}: a ceil-mode pool's last window is not a convolution's (off by {worst:.2g} of scale)"
        return (f"not a convolution at the border: a zero pad or pad value inside differs from what one conv "
                f"reads there (off by {worst:.2g} of scale)")

    def terms(self, x: str, terms: list[str], parts: dict[str, tuple[int, ...]], constant: Any, conv: Conv) -> tuple[float, list[tuple[int, int]]]:
        needed = {t: [self.g.nodes[j] for j in self.closure(x, t)] for t in terms if parts[t]}

        def written(probe: np.ndarray) -> np.ndarray:
            total = None
            for t in terms:
                if parts[t]:
                    values: dict[str, Any] = {x: probe, **self.g.constants}
                    values.update({w: self.g.weights[w] for n in needed[t] for w in n.tensor_inputs() if w in self.g.weights})
                    evaluate(self.g, needed[t], values)
                    value = np.asarray(values[t], np.float64)
                else:
                    value = probe
                total = value if total is None else total + value
            if constant is not None:
                total = total + np.asarray(constant).reshape(1, -1, 1, 1)
            return total  # type: ignore[return-value]

        return self._compare(x, conv, written)
