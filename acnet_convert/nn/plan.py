"""The ResNet-ACNet family described once, as data.

A `Plan` lists every convolution of the network in execution order with its name, kernel,
stride and activation. Everything else is derived from it: the tensor names and shapes a
checkpoint must hold, the Paddle train and deploy graphs, the ONNX graph and `inspect`'s
table. Names follow PaddleCV's resnet_acnet.py so legacy checkpoints load as they are.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

BRANCHES = ("acsquare", "acver", "achor")
BN_FIELDS = ("scale", "offset", "mean", "variance")

# blocks per stage, and whether the blocks are bottlenecks
_FAMILY: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
DEPTHS = tuple(_FAMILY)
STAGE_WIDTHS = (64, 128, 256, 512)
FC = "fc_0"
INPUT_NAME = "image"  # the input of the train program built from the plan, and of its deploy model
FC_WEIGHT, FC_BIAS = "fc_0.w_0", "fc_0.b_0"


@dataclass(frozen=True)
class Conv:
    """One convolution followed by BN (train form) or carrying a bias (deploy form)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    relu: bool = False
    groups: int = 1

    @property
    def is_acb(self) -> bool:
        return self.kernel > 1

    @property
    def kind(self) -> str:
        return "acb" if self.is_acb else "conv1x1"

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def bn(self) -> str:
        return "bn_conv1" if self.name == "conv1" else "bn" + self.name[3:]

    @property
    def legacy_bias(self) -> str:
        """Auto-named pre-BN bias of the square conv in older resnet_acnet.py revisions."""
        return f"{self.name}.acsquare.conv2d.output.1.b_0"

    def branch_shape(self, branch: str) -> tuple[int, int, int, int]:
        kh = 1 if branch == "achor" else self.kernel
        kw = 1 if branch == "acver" else self.kernel
        return (self.out_channels, self.in_channels // self.groups, kh, kw)

    def train_tensors(self) -> dict[str, tuple[int, ...]]:
        """Required tensors of the train form, name -> shape (the legacy bias is optional)."""
        o = (self.out_channels,)
        if not self.is_acb:
            out = {f"{self.name}_weights": (self.out_channels, self.in_channels // self.groups, 1, 1)}
            out.update({f"{self.bn}_{f}": o for f in BN_FIELDS})
            return out
        out = {}
        for b in BRANCHES:
            out[f"{self.name}_{b}_weights"] = self.branch_shape(b)
            out.update({f"{self.bn}_{b}_{f}": o for f in BN_FIELDS})
        return out

    @property
    def deploy_weight(self) -> str:
        return f"{self.name}_acsquare_weights" if self.is_acb else f"{self.name}_weights"

    @property
    def deploy_bias(self) -> str:
        return f"{self.name}_acsquare_bias" if self.is_acb else f"{self.name}_bias"

    def deploy_tensors(self) -> dict[str, tuple[int, ...]]:
        k = self.kernel
        return {
            self.deploy_weight: (self.out_channels, self.in_channels // self.groups, k, k),
            self.deploy_bias: (self.out_channels,),
        }

    def output_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel) // self.stride + 1

    def macs(self, out_size: int, deploy: bool, out_width: int | None = None) -> int:
        """Multiply-adds for one image whose output is out_size x out_width (default square).
        The train form runs all three branches of an ACB (KxK, Kx1, 1xK, all at the output size)."""
        taps = self.kernel**2 + (0 if deploy or not self.is_acb else 2 * self.kernel)
        width = out_size if out_width is None else out_width
        return out_size * width * self.out_channels * (self.in_channels // self.groups) * taps

    def describe(self) -> dict[str, object]:
        """The row of this conv in layer tables (inspect, manifest)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "kernel": self.kernel,
            "stride": self.stride,
            "in": self.in_channels,
            "out": self.out_channels,
            "params_train": self.params(deploy=False),
            "params_deploy": self.params(deploy=True),
        }

    def params(self, deploy: bool) -> int:
        """Learned parameters (BN running statistics not counted)."""
        per_kernel = self.out_channels * (self.in_channels // self.groups)
        if deploy:
            return per_kernel * self.kernel**2 + self.out_channels
        kernels = self.kernel**2 + (2 * self.kernel if self.is_acb else 0)
        bns = 3 if self.is_acb else 1
        return per_kernel * kernels + 2 * self.out_channels * bns


@dataclass(frozen=True)
class Block:
    """A residual block: `body` convs in sequence, optional projection `shortcut`, add, ReLU."""

    name: str
    body: tuple[Conv, ...]
    shortcut: Conv | None


@dataclass(frozen=True)
class Pool:
    kernel: int
    stride: int
    padding: int

    def output_size(self, size: int) -> int:
        return (size + 2 * self.padding - self.kernel) // self.stride + 1


@dataclass(frozen=True)
class Plan:
    arch: str
    depth: int
    num_classes: int
    stem: Conv
    blocks: tuple[Block, ...]
    features: int  # channels into the FC head (after global average pooling)
    stem_pool: Pool = Pool(kernel=3, stride=2, padding=1)  # max-pool after the stem

    def convs(self) -> Iterator[Conv]:
        """Every conv in execution order: stem, then each block's body and its shortcut."""
        yield self.stem
        for block in self.blocks:
            yield from block.body
            if block.shortcut is not None:
                yield block.shortcut

    def output_sizes(self, input_size: int) -> Iterator[tuple[Conv, int]]:
        """Each conv, in `convs()` order, with its output height (= width) for a square input."""
        size = self.stem.output_size(input_size)
        yield self.stem, size
        size = self.stem_pool.output_size(size)
        for block in self.blocks:
            x = size
            for conv in block.body:
                x = conv.output_size(x)
                yield conv, x
            if block.shortcut is not None:
                yield block.shortcut, block.shortcut.output_size(size)
            size = x

    def macs(self, input_size: int | tuple[int, int], deploy: bool) -> int:
        """Multiply-adds for one image of input_size (N, or (H, W)): every conv and the FC (BN,
        bias, ReLU, pooling and the residual adds are not counted)."""
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        convs = sum(conv.macs(oh, deploy, ow)
                    for (conv, oh), (_, ow) in zip(self.output_sizes(h), self.output_sizes(w)))
        return convs + self.features * self.num_classes

    def fc_tensors(self) -> dict[str, tuple[int, ...]]:
        # Paddle's FC weight is in-by-out
        return {FC_WEIGHT: (self.features, self.num_classes), FC_BIAS: (self.num_classes,)}

    def train_tensors(self) -> dict[str, tuple[int, ...]]:
        return self._tensors(deploy=False)

    def deploy_tensors(self) -> dict[str, tuple[int, ...]]:
        return self._tensors(deploy=True)

    def _tensors(self, deploy: bool) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for conv in self.convs():
            out.update(conv.deploy_tensors() if deploy else conv.train_tensors())
        out.update(self.fc_tensors())
        return out


def _block_name(stage: int, index: int, depth: int) -> str:
    if depth in (101, 152) and stage == 4:
        return "res4a" if index == 0 else f"res4b{index}"
    return f"res{stage}{chr(ord('a') + index)}"


def resnet(depth: int, num_classes: int = 1000) -> Plan:
    """The ResNet-`depth` ACNet plan, as built by PaddleCV's resnet_acnet.py."""
    if depth not in _FAMILY:
        raise ValueError(f"unsupported ResNet depth {depth}; choose from {', '.join(map(str, DEPTHS))}")
    counts, bottleneck = _FAMILY[depth]
    stem = Conv("conv1", 3, 64, 7, stride=2, relu=True)
    blocks = []
    channels = 64
    for stage_index, (count, width) in enumerate(zip(counts, STAGE_WIDTHS)):
        stage = stage_index + 2
        for i in range(count):
            name = _block_name(stage, i, depth)
            stride = 2 if i == 0 and stage_index > 0 else 1
            if bottleneck:
                out = width * 4
                body = (
                    Conv(f"{name}_branch2a", channels, width, 1, relu=True),
                    Conv(f"{name}_branch2b", width, width, 3, stride=stride, relu=True),
                    Conv(f"{name}_branch2c", width, out, 1),
                )
                project = channels != out or stride != 1
            else:
                out = width
                body = (
                    Conv(f"{name}_branch2a", channels, width, 3, stride=stride, relu=True),
                    Conv(f"{name}_branch2b", width, width, 3),
                )
                project = channels != out or stride != 1 or (stage_index == 0 and i == 0)
            shortcut = Conv(f"{name}_branch1", channels, out, 1, stride=stride) if project else None
            blocks.append(Block(name, body, shortcut))
            channels = out
    return Plan(f"resnet{depth}", depth, num_classes, stem, tuple(blocks), channels)


def arch_depth(arch: str) -> int:
    """'resnet50' or '50' -> 50."""
    text = arch.lower().removeprefix("resnet")
    if not text.isdigit() or int(text) not in _FAMILY:
        raise ValueError(f"unknown architecture {arch!r}; choose from " + ", ".join(f"resnet{d}" for d in DEPTHS))
    return int(text)
