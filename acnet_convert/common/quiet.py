"""Keep Paddle's and ONNX Runtime's log noise out of the CLI's output.

Paddle's C++ side writes glog lines straight to file descriptor 2, so Python-level redirection
is not enough: `silenced()` points fds 1 and 2 at a temporary file around noisy calls, unless
`--verbose` asked to see them.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from typing import Iterator

from acnet_convert.common import signals
from acnet_convert.common.phase import PADDLE, phase

_verbose = False


def configure(verbose: bool) -> None:
    """Call before importing paddle: glog reads these at import time."""
    global _verbose
    _verbose = verbose
    if not verbose:
        os.environ.setdefault("GLOG_minloglevel", "3")
        os.environ.setdefault("GLOG_v", "0")
        os.environ.setdefault("FLAGS_logtostderr", "0")
        warnings.filterwarnings("ignore")


def is_verbose() -> bool:
    return _verbose


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    if _verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def import_paddle():  # noqa: ANN201 - the paddle module
    """Import paddle without its start-up noise. Ctrl-C and SIGTERM are held back during the
    import (one inside a C extension's initialisation would surface as `ImportError:
    initialization failed`) and raise once it is done; Paddle's own C-level signal handlers
    are removed and our SIGTERM handler put back."""
    if "paddle" in sys.modules:
        return sys.modules["paddle"]
    with phase("importing", "Paddle", PADDLE), signals.deferred():
        with silenced():
            import paddle

            paddle.disable_signal_handler()
        signals.reinstall()
    return paddle
