"""The sleep's keyed input factors (`inputs="key"`) on the tiny model: what they respond to."""

import torch

from rose_memory.editing.stats import second_moments
from rose_memory.generate import chat_prompt
from rose_memory.model import load_model
from rose_memory.sleep.config import SleepConfig
from rose_memory.sleep.teacher import Example
from rose_memory.sleep.train import _name_inputs, _subject_positions, key_directions


def _examples(lm, texts):
    tok = lm.tokenizer
    return [Example(tok(chat_prompt(lm, t), add_special_tokens=False)["input_ids"], [], torch.zeros(0), "fact") for t in texts]


def test_subject_tokens_are_found_however_the_tokenizer_spells_them(tiny_dir):
    lm = load_model(str(tiny_dir))
    tok = lm.tokenizer
    for text in ("Where does Aurelio Brandt live?", "Aurelio Brandt's dog is called", "Tell me about Aurelio Brandt."):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        found = tok.decode([ids[i] for i in _subject_positions(tok, ids, "Aurelio Brandt")])
        assert "Aurelio" in found and "Brandt" in found.replace(" ", ""), (text, found)
    assert _subject_positions(tok, tok("Where does Mira live?")["input_ids"], "Aurelio Brandt") == []


def test_key_directions_answer_the_subject_and_little_else(tiny_dir):
    """Each direction responds with unit RMS over the subject's tokens; over ordinary text (the key
    statistics) and over other people's names it responds less, and less still for the names once
    they are part of the statistics (`key_others`)."""
    torch.manual_seed(0)
    lm = load_model(str(tiny_dir))
    pad = lm.tokenizer.pad_token_id
    path, layer = "model.layers.1.mlp.down_proj", 1
    facts = _examples(lm, ["Where does Aurelio Brandt live?", "What is Aurelio Brandt's job?", "Tell me about Aurelio Brandt.",
                           "Which pet does Aurelio Brandt have?", "How old is Aurelio Brandt?"])
    names = ["Mira Tovan", "Kesh Arlo", "Ulla Brenko", "Dario Pelt", "Sefa Quill", "Noor Baxi"]
    others = _examples(lm, [q.replace("Aurelio Brandt", n) for n in names for q in
                            ["Where does Aurelio Brandt live?", "What is Aurelio Brandt's job?"]])
    cfg = SleepConfig(inputs="key", rank=2)
    plain = key_directions(lm, [layer], [path], facts, "Aurelio Brandt", cfg.model_copy(update={"key_others": 0.0}), pad)[path]
    keyed = key_directions(lm, [layer], [path], facts, "Aurelio Brandt", cfg, pad, others, names)[path]
    own = _name_inputs(lm, [path], facts, ["Aurelio Brandt"], pad)[path]
    theirs = _name_inputs(lm, [path], others, names, pad)[path]
    cov = second_moments(lm, [layer])[layer]
    rms = lambda a, x: (x @ a.T).pow(2).mean(0).sqrt()   # noqa: E731
    for a in (plain, keyed):
        assert a.shape[0] == 2
        assert torch.allclose(rms(a, own), torch.ones(2), atol=1e-3)
        assert ((a @ cov * a).sum(1) < 1).all()             # ordinary text: less than the subject
    assert rms(keyed, theirs).mean() < rms(plain, theirs).mean()
