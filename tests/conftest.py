"""Shared fixtures: the real embedded model, loaded once per test session."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def lm():
    from rose_memory.model import load_cached

    return load_cached()
