"""Shared fixtures: the real embedded model, loaded once per test session."""

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One process per core (pytest -n 2): a second torch thread in each would only contend.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def lm():
    from rose_memory.model import load_cached

    return load_cached()


@pytest.fixture(scope="session")
def tiny_dir():
    """A tiny random Llama with the embedded tokenizer, as a model folder (rose_memory.tiny; made once, kept)."""
    from rose_memory.tiny import save_tiny_model

    return save_tiny_model()


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-model tests: on a shared 2-core machine the thread pool's
    spinning costs more than it gains on 32-wide matrices (a property test ran 10x slower with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
