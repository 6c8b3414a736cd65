"""Batched greedy generation: a group's shared beginning runs once, and every row gets what it gets alone."""

import torch

from rose_memory import generate
from rose_memory.generate import chat_prompt, generate_scored
from rose_memory.model import load_model


def test_rows_without_the_shared_beginning_see_none_of_it(tiny_dir, single_thread, monkeypatch):
    """A group of chat prompts (the chat template's system turn in common) and raw text: the system
    turn is encoded once for the chat rows, the raw rows are masked from it and count their
    positions from 0; answers and scores equal each row's alone."""
    lm = load_model(str(tiny_dir))
    tok = lm.tokenizer
    prompts = [tok(chat_prompt(lm, q), add_special_tokens=False)["input_ids"]
               for q in ("Where does Aurelio Brandt live?", "What is Mira Tovan's job?", "Name three fruits.")]
    prompts += [tok(t)["input_ids"] for t in ("The capital of Germany is", "Mira Tovan works as a")]
    encoded = []
    real = generate.encode_prefix
    monkeypatch.setattr(generate, "encode_prefix", lambda model, prefix, device: encoded.append(len(prefix)) or real(model, prefix, device))
    answers, scores = generate_scored(lm, prompts, max_new_tokens=6)
    system = generate.common_prefix(prompts[:3])
    assert encoded == [system] and system >= generate.MIN_SHARED_PREFIX  # one group, its chat rows' beginning once
    for p, a, s in zip(prompts, answers, scores):
        [alone], [alone_s] = generate_scored(lm, [p], max_new_tokens=6)
        assert a == alone
        assert s.shape == alone_s.shape and torch.allclose(s, alone_s, atol=1e-4)
    assert encoded == [system]  # a row alone shares nothing


def test_the_beginning_most_rows_share_is_the_one_run_once():
    chat = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, k] for k in (11, 12, 13)]
    other = [[1, 2, 3, 4, 20, 21, 22, 23, 24, 25, 26], [30, 31]]
    assert generate._beginning(chat + other) == (10, [True, True, True, False, False])
    # rows that open alike share what they all share
    assert generate._beginning(chat + [[1, 2, 3, 4, 5, 6, 7, 8, 20]]) == (8, [True] * 4)
    assert generate._beginning([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [30, 31, 32]]) == (0, [False, False])  # one row alone
    assert generate._beginning([[1, 2, 3], [1, 2, 3, 4]]) == (0, [False, False])  # too short to be worth a forward
