"""What a long operation is doing, on stderr: one line per stage, a bar where there is a count.

The library is silent unless asked: functions take `progress=` (ParametricMemory keeps it as
`memory.progress`) and pass it on. The `rose-memory` command turns it on unless `--quiet` is
given. Everything here writes to stderr only, so a command's `--json` output on stdout is never
mixed with it.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from functools import partial

from tqdm.auto import tqdm


def stage(text: str, on: bool = True) -> None:
    """One line on stderr saying what starts now ("loading the model ...")."""
    if on:
        print(f"rose-memory: {text}", file=sys.stderr, flush=True)


def bar(iterable=None, *, on: bool = True, **kwargs):
    """A tqdm bar on stderr (or a silent one): `bar(range(n), on=progress, desc=...)`, or `total=`.
    When on, tqdm's own TQDM_DISABLE=1 still silences it."""
    return tqdm(iterable, file=sys.stderr, **kwargs, **({} if on else {"disable": True}))


@contextmanager
def library_bars(on: bool):
    """Let transformers' own bars (loading the weights, de-quantizing a GGUF file) show only when `on`."""
    if on:
        yield
        return
    from transformers.utils import logging as hf_logging
    from transformers import modeling_gguf_pytorch_utils as gguf_utils  # draws its bar with a bare tqdm

    was_on, gguf_bar = hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = partial(gguf_bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_bar
        if was_on:
            hf_logging.enable_progress_bar()
