"""CLI options shared by `rose-memory eval` and the memory commands (no torch import here)."""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]   # model.DTYPES, plus auto


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, as `load_model` takes them."""
    parser.add_argument("--device", default="auto", metavar="D",
                        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="weights' dtype: auto is float32 on the CPU and bfloat16 on CUDA; "
                             "editing maths runs in float32 regardless")
