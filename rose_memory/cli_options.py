"""CLI options shared by `rose-memory eval`, chat and the memory commands (no torch import here)."""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ["auto", "float32", "bfloat16", "float16"]   # model.DTYPES, plus auto
QUIET_HELP = "no progress on stderr (no stage lines, no bars); errors and the result still print"


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dtype, as `load_model` takes them."""
    parser.add_argument("--device", default="auto", metavar="D",
                        help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                        help="weights' dtype: auto is float32 on the CPU and bfloat16 on CUDA; "
                             "editing maths runs in float32 regardless")


def add_quiet_option(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """-q/--quiet, before the command (top=True, which carries the default) or after it (SUPPRESSed when
    absent, so that a --quiet given before the command is not overwritten by the command's default)."""
    parser.add_argument("-q", "--quiet", action="store_true", default=False if top else argparse.SUPPRESS,
                        help=QUIET_HELP)


def progress_on(args: argparse.Namespace) -> bool:
    """Whether the command says what it is doing on stderr: yes unless --quiet."""
    return not getattr(args, "quiet", False)
