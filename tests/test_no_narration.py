"""Docs, comments, docstrings and test names refer to dates, commits and option names, not to
work sittings or internal tracker numbers.

Every tracked text file (`git ls-files`) is searched for the word for a sitting or for a tracker
entry followed by a number (an optional space, hyphen or '#' between them, either case). Data is
left out: docs/results/, .jsonl files and binary files. A chat session with no number after it
is fine. No model is loaded.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = ("docs/results/",)
SKIP_SUFFIXES = (".jsonl", ".gz", ".png", ".jpg", ".jpeg", ".gif", ".pdf", ".safetensors", ".sqlite", ".gguf")
# The words are split so that this file does not match its own pattern.
NARRATION = re.compile(r"\b(" + "ses" + "sion|" + "is" + "sue" + r")s?[ \-]?#?\d", re.IGNORECASE)


def tracked_text_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        pytest.skip(f"not a git checkout ({err})")
    files = []
    for name in out.decode("utf-8", "surrogateescape").split("\0"):
        if not name or name.startswith(SKIP_DIRS) or name.lower().endswith(SKIP_SUFFIXES):
            continue
        path = ROOT / name
        if path.is_file():
            files.append(path)
    return files


def narration_hits(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that names a sitting or a tracker entry by number."""
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if NARRATION.search(line)]


def read_text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_pattern():
    word, tracker = "ses" + "sion", "is" + "sue"
    for bad in (f"{word} 8", f"{word.capitalize()} 12", f"{word}-8 default", f"{word}s 2-10",
                f"{tracker} 3", f"{tracker} #5", f"{tracker.upper()}#7", f"the {word}8 run"):
        assert narration_hits(bad), bad
    for fine in (f"a chat {word}", f"a new {word}: the prompt is empty", f"per test {word}",
                 f"{word} of 8 turns", f"an open {tracker}", "dev_batch_s12.json", "ChatSession(window=3)"):
        assert not narration_hits(fine), fine


def test_no_narration_in_tracked_files():
    hits = []
    for path in tracked_text_files():
        text = read_text(path)
        if text is None:
            continue
        rel = path.relative_to(ROOT).as_posix()
        hits += [f"{rel}:{n}: {line[:120]}" for n, line in narration_hits(text)]
    assert not hits, (
        "name the date, commit or option instead of a work sitting or tracker number:\n" + "\n".join(hits)
    )
