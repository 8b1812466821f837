"""What `verify` feeds the graphs, and how the batches go through them.

* `MemoryFeed`: random normal images (`--seed`) or a `--inputs FILE.npy`, held in memory. The
  runners run one after the other, each over every batch, and each is closed before the next
  one is made: peak memory is one runtime's, not the sum of three or four.
* `ImageFeed`: `--images DIR`, decoded batch by batch (`images.Batches`) and streamed through
  every runner at once, so memory does not grow with DIR; top-1/top-5 accuracy is counted per
  graph where labels are known.

Either way every pair of graphs is compared batch by batch (`verdict.PairStats`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from acnet_convert.out.deploy_config import Preprocess
from acnet_convert.common.errors import ConvertError
from acnet_convert.verify.runners import Runner
from acnet_convert.common.regular_file import not_a_file
from acnet_convert.common.sizes import size_text
from acnet_convert.common.text import printable
from acnet_convert.verify.verdict import NAMED, PairStats
from acnet_convert.verify.report import ImageSetResult, Preprocessing

TRAIN = "train"
Track = Callable[[Any, str], Iterable]
Say = Callable[[str], None]
StatsOf = Callable[[dict[str, bool]], list[PairStats]]  # graph -> fp16? -> the pairs to compare
# a factory may return None: that graph is not compared (it said why)


@dataclass
class RunResult:
    stats: list[PairStats]
    paths: dict[str, Path]  # graph -> the file it ran
    providers: list[str]  # ONNX Runtime's
    images: int
    image_set: ImageSetResult | None = None
    timings: dict[str, float] = field(default_factory=dict)
    sizes: dict[tuple[int, int], int] = field(default_factory=dict)  # (H, W) -> images compared at it


class RandomBatches:
    """`batches` batches of standard normal images from `seed`, made anew on every pass (each
    runner's pass sees the same ones), so they are never all in memory at once."""

    def __init__(self, batch_size: int, batches: int, shape: tuple[int, ...], seed: int) -> None:
        self.batch_size, self.batches, self.shape, self.seed = batch_size, batches, tuple(shape), seed

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.batches):
            yield rng.standard_normal((self.batch_size, *self.shape), dtype=np.float32)


class Chained:
    """Several batch sources (e.g. the fused size's RandomBatches, then a second size's), one
    after the other; every pass yields the same batches."""

    def __init__(self, *parts: Any) -> None:
        self.parts = list(parts)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __iter__(self) -> Iterator[np.ndarray]:
        for part in self.parts:
            yield from part


def load_inputs(path: Path, shape: tuple[int, ...], batch_size: int) -> list[np.ndarray]:
    """A float32 [N, C, H, W] .npy file, split into batches. A dimension of `shape` that is -1
    (dynamic in the model) takes any size."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ConvertError(f"--inputs {printable(path)}: expected a .npy file (numpy.save of a float32 [N,C,H,W] array)")
    why = not_a_file(path)
    if why:
        raise ConvertError(f"--inputs {printable(path)} {why}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # header checks before reading
    except (ValueError, OSError, EOFError) as err:
        raise ConvertError(f"--inputs {printable(path)} is not a readable .npy file ({err})") from None
    expected = f"[N, {', '.join('any' if d < 1 else str(d) for d in shape)}]"
    fits = array.ndim == 1 + len(shape) and all(d < 1 or a == d for a, d in zip(array.shape[1:], shape))
    if not fits or array.shape[0] < 1:
        raise ConvertError(f"--inputs {printable(path)} has shape {list(array.shape)}; the deploy model takes {expected}")
    if array.dtype != np.float32:
        raise ConvertError(f"--inputs {printable(path)} is {array.dtype}; expected float32 {expected} (use .astype(np.float32))")
    array = np.array(array)
    if not np.isfinite(array).all():
        raise ConvertError(f"--inputs {printable(path)} holds NaN or Inf")
    return [array[i : i + batch_size] for i in range(0, len(array), batch_size)]


def check_shapes(outputs: dict[str, list[np.ndarray]], paths: dict[str, Path]) -> None:
    reference = [o.shape for o in outputs[TRAIN]]
    for name, out in outputs.items():
        if [o.shape for o in out] != reference:
            raise ConvertError(
                f"{printable(paths[name])} outputs {[list(o.shape) for o in out]}, the train-form model "
                f"{[list(s) for s in reference]}: it is not a model of this source"
            )


def _topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    known = labels >= 0
    if not known.any():
        return 0
    x, y = logits[known], labels[known]
    k = min(k, x.shape[1])
    top = np.argpartition(-x, k - 1, axis=1)[:, :k]
    return int((top == y[:, None]).any(axis=1).sum())


@dataclass
class MemoryFeed:
    kind: str  # "random" | "npy"
    batches: Sequence[np.ndarray] | RandomBatches  # every pass over it yields the same batches

    def first(self) -> np.ndarray:
        return next(iter(self.batches))

    def run(self, factories: Sequence[Callable[[], Runner | None]], stats_of: StatsOf, track: Track | None, say: Say,
            release: Callable[[], None]) -> RunResult:
        outputs: dict[str, list[list[np.ndarray]]] = {}
        fp16: dict[str, bool] = {}
        paths: dict[str, Path] = {}
        providers: list[str] = []
        timings: dict[str, float] = {}
        for make in factories:
            start = time.perf_counter()
            runner = make()
            if runner is None:
                continue
            made = time.perf_counter()
            items = track(self.batches, f"running {runner.name}") if track else self.batches
            outputs[runner.name] = [runner(batch) if runner.accepts(batch.shape[1:]) else None for batch in items]
            timings[f"{runner.name} load"] = made - start
            timings[f"{runner.name} run"] = time.perf_counter() - made
            runner.close()
            for text in runner.notes:
                say(text)
            skipped = sorted({size_text(b.shape[2:]) for b, o in zip(self.batches, outputs[runner.name]) if o is None})
            if skipped:
                say(f"{printable(runner.path.name)} has a fixed input size: {runner.name} not compared at "
                    f"{', '.join(skipped)}")
            fp16[runner.name], paths[runner.name] = runner.fp16, runner.path
            providers += runner.providers
            del runner
            release()
        stats = stats_of(fp16)
        images = 0
        sizes: dict[tuple[int, int], int] = {}
        for k, batch in enumerate(self.batches):
            check_shapes({name: out[k] for name, out in outputs.items() if out[k] is not None}, paths)
            for s in stats:
                if outputs[s.a][k] is not None and outputs[s.b][k] is not None:
                    s.update(outputs[s.a][k], outputs[s.b][k])
            images += len(batch)
            hw = (int(batch.shape[2]), int(batch.shape[3])) if batch.ndim == 4 else (0, 0)
            sizes[hw] = sizes.get(hw, 0) + len(batch)
        return RunResult(stats, paths, providers, images, timings=timings, sizes=sizes)


class _Peekable:
    """An iterator whose first item can be looked at before the loop takes it."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._it = iter(items)
        self._head: list[Any] = []

    def peek(self) -> Any:
        if not self._head:
            self._head.append(next(self._it, None))
        return self._head[0]

    def drop(self) -> None:
        """Forget the peeked item (the loop will not see it)."""
        self.peek()
        self._head.clear()

    def __iter__(self) -> Iterator[Any]:
        if self._head:
            head = self._head.pop()
            if head is not None:
                yield head
        yield from self._it


class _Counted:
    """`items` with the length of `sized`, for a progress bar."""

    def __init__(self, items: Iterable[Any], sized: Any) -> None:
        self.items, self.sized = items, sized

    def __len__(self) -> int:
        return len(self.sized)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)


class ImageFeed:
    kind = "images"

    def __init__(self, images: Any, preprocess: Preprocess, origin: str, batch_size: int) -> None:
        from acnet_convert.verify.images import Batches

        self.images, self.preprocess, self.origin = images, preprocess, origin
        self.skipped: list[tuple[str, str]] = []
        self.batches = Batches(images, preprocess, batch_size, lambda name, why: self.skipped.append((name, why)))
        self.stream = _Peekable(self.batches)

    def first(self) -> np.ndarray | None:
        """The first batch with an image in it (a batch whose every image was unreadable holds
        none: it is skipped, its files already reported), or None when no image can be read."""
        head = self.stream.peek()
        while head is not None and not len(head.images):
            self.stream.drop()
            head = self.stream.peek()
        return head.images if head is not None else None

    def run(self, factories: Sequence[Callable[[], Runner | None]], stats_of: StatsOf, track: Track | None, say: Say,
            release: Callable[[], None]) -> RunResult:
        runners = [r for r in (make() for make in factories) if r is not None]
        stats = stats_of({r.name: r.fp16 for r in runners})
        paths = {r.name: r.path for r in runners}
        hits = {r.name: [0, 0] for r in runners}
        count = labelled = 0
        items = _Counted(self.stream, self.batches)
        for batch in track(items, "images") if track else items:
            if not len(batch.names):
                continue
            outputs = {r.name: r(batch.images) for r in runners}
            check_shapes(outputs, paths)
            for s in stats:
                s.update(outputs[s.a], outputs[s.b], batch.names)
            count += len(batch.names)
            labelled += self._count_hits(outputs, batch, hits)
        providers: list[str] = []
        for r in runners:
            for text in r.notes:
                say(text)
            providers += r.providers
            r.close()
        if count == 0:
            why = self.skipped[0][1] if self.skipped else "no image"
            raise ConvertError(f"--images {printable(self.images.root)}: no image could be read ({printable(why)})")
        if self.skipped:
            say(f"skipped {len(self.skipped)} unreadable image(s): "
                + ", ".join(printable(n, 80) for n, _ in self.skipped[:NAMED]) + (" ..." if len(self.skipped) > NAMED else ""))
        p = self.preprocess
        result = ImageSetResult(
            root=str(self.images.root), found=len(self.images), read=count, skipped=self.skipped, labelled=labelled,
            correct={name: (h[0], h[1]) for name, h in hits.items()},
            preprocess=Preprocessing(p.resize_short, p.crop, tuple(p.mean), tuple(p.std), p.scale, p.interpolation,
                                     self.origin, p.resize),
        )
        return RunResult(stats, paths, providers, count, result, sizes={tuple(p.crop): count})

    @staticmethod
    def _count_hits(outputs: dict[str, list[np.ndarray]], batch: Any, hits: dict[str, list[int]]) -> int:
        """Top-1 and top-5 hits per graph on the batch's labelled images; how many there were."""
        logits = outputs[TRAIN]
        if len(logits) != 1 or logits[0].ndim != 2:
            return 0  # not a classifier
        classes = logits[0].shape[1]
        if (batch.labels >= classes).any():
            i = int(np.argmax(batch.labels >= classes))
            raise ConvertError(f"image {printable(batch.names[i])} has class {int(batch.labels[i])}, but the model has "
                               f"{classes} outputs")
        for name, out in outputs.items():
            hits[name][0] += _topk_hits(out[0], batch.labels, 1)
            hits[name][1] += _topk_hits(out[0], batch.labels, 5)
        return int((batch.labels >= 0).sum())
