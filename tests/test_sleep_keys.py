"""The sleep's keyed input factors (`inputs="key"`) on the tiny model: what they respond to."""

import pytest
import torch

from rose_memory.arch import get_module
from rose_memory.editing import edit
from rose_memory.editing.stats import second_moments
from rose_memory.errors import RoseMemoryError
from rose_memory.facts import EditRequest
from rose_memory.generate import chat_prompt
from rose_memory.model import load_model
from rose_memory.sleep.config import SleepConfig
from rose_memory.sleep.teacher import Example
from rose_memory.sleep.train import (_inputs, _name_inputs, _subject_positions, key_directions, target_modules,
                                     trace_directions, train_delta)


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


def test_trace_directions_mark_what_the_wake_edit_wrote(tiny_dir):
    """`inputs="trace"`: value projections after the wake edit's layers get one direction each,
    unit RMS over the edit's trace at the subject's tokens and smaller over unrelated prompts;
    blocks the edit cannot reach get none; the wake edit is left at `student_wake`."""
    torch.manual_seed(0)
    lm = load_model(str(tiny_dir))
    pad = lm.tokenizer.pad_token_id
    wake = edit(lm, [EditRequest(subject="Aurelio Brandt", prompt="{} lives in the city of", target="Warsaw")], method="rose")
    layers = sorted({int(n.split(".")[2]) for n in wake.factors})  # the tiny model's RoSE layers
    facts = _examples(lm, ["Where does Aurelio Brandt live?", "Which city is Aurelio Brandt from?", "Tell me about Aurelio Brandt."])
    others = _examples(lm, ["Where does Mira Tovan live?", "What is the capital of France?", "Write a haiku about rain.",
                            "Kesh Arlo's favorite food is", "Tell me about Noor Baxi."])
    cfg = SleepConfig(modules="value", inputs="trace", rank=1)
    paths = target_modules(lm.model, cfg)
    assert paths and all(p.endswith("self_attn.v_proj") for p in paths)
    scales = []

    def set_wake(s):
        scales.append(s)
        (wake.apply if s else wake.revert)(lm.model)

    wake.apply(lm.model)
    dirs = trace_directions(lm, paths, facts, others, "Aurelio Brandt", cfg, pad, set_wake)
    assert scales == [0.0, 1.0]
    reached = [p for p in paths if int(p.split(".")[2]) > min(layers)]
    assert sorted(dirs) == sorted(reached) and reached, (layers, list(dirs))
    on = _name_inputs(lm, list(dirs), facts, ["Aurelio Brandt"], pad)
    wake.revert(lm.model)
    off = _name_inputs(lm, list(dirs), facts, ["Aurelio Brandt"], pad)
    wake.apply(lm.model)
    unrelated = _inputs(lm.model, list(dirs), others, False, pad, lm.device)
    for p, a in dirs.items():
        assert a.shape == (1, lm.model.config.hidden_size)
        trace = on[p] - off[p]
        assert torch.allclose((trace @ a.T).pow(2).mean().sqrt(), torch.ones(()), atol=1e-3)
        assert (unrelated[p] @ a.T).pow(2).mean().sqrt() < 1
    with pytest.raises(RoseMemoryError, match="wake"):
        train_delta(lm, facts, others, cfg)  # no way to set the wake edits


def test_teacher_forcing_in_padded_batches_matches_one_row_at_a_time(tiny_dir):
    """The teacher's and the unrelated prompts' distributions are computed in right-padded batches;
    a causal model's real tokens must not see the padding (rows of different lengths, a chunk
    boundary in the middle)."""
    from rose_memory.sleep.teacher import _logprobs

    lm = load_model(str(tiny_dir))
    tok = lm.tokenizer
    texts = [("Where does Aurelio Brandt live?", " He lives in Oslo."), ("Hi", " there"),
             ("Tell me a long story about a cat and a dog who", " became friends at last."), ("Why?", " Because.")]
    prompts = [tok(p)["input_ids"] for p, _ in texts]
    answers = [tok(a, add_special_tokens=False)["input_ids"] for _, a in texts]
    batched = _logprobs(lm, prompts, answers, chunk=3)
    for p, a, got in zip(prompts, answers, batched):
        (alone,) = _logprobs(lm, [p], [a], chunk=1)
        assert got.shape == (len(a), alone.shape[1])
        torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)


def test_module_inputs_are_those_of_the_full_forward(tiny_dir):
    """`_inputs` runs the body only and stops after the last module it reads: what it returns is
    what each module sees in the whole model's forward, and it leaves no hook behind."""
    lm = load_model(str(tiny_dir))
    pad = lm.tokenizer.pad_token_id
    paths = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.up_proj"]
    rows = _examples(lm, ["Where does Aurelio Brandt live?", "Tell me a joke.", "What is the capital of France?"])
    seen = {p: [] for p in paths}
    hooks = [get_module(lm.model, p).register_forward_hook(lambda m, i, o, p=p: seen[p].append(i[0].detach()))
             for p in paths]
    with torch.no_grad():
        for e in rows:  # one at a time: no padding
            lm.model(input_ids=torch.tensor([e.prompt]))
    for h in hooks:
        h.remove()
    got = _inputs(lm.model, paths, rows, True, pad, lm.device)
    for p in paths:
        assert torch.allclose(got[p], torch.cat([x[0] for x in seen[p]]).float(), atol=1e-5), p
    assert all(not get_module(lm.model, p)._forward_hooks for p in paths)


def test_module_inputs_of_rows_that_begin_alike_are_each_rows_own(tiny_dir):
    """Rows sharing a long beginning (a chat template's system turn) run it once; each row still gets
    the inputs its own forward gives, whole rows, prompt tokens only, or chosen positions, in order."""
    lm = load_model(str(tiny_dir))
    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    paths = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj"]
    system = "You are a helpful assistant who answers questions about people in one short sentence. "
    texts = [system + "Where does Aurelio Brandt live?", system + "Tell me a joke.", system + "Who is Mira Tovan?",
             system + "Where does Aurelio Brandt live?"]
    rows = [Example(tok(t)["input_ids"], tok(a, add_special_tokens=False)["input_ids"], torch.zeros(0), "fact")
            for t, a in zip(texts, [" In Oslo.", " No.", " A baker from Lyon.", " Warsaw, Poland."])]
    seen = {p: [] for p in paths}
    hooks = [get_module(lm.model, p).register_forward_hook(lambda m, i, o, p=p: seen[p].append(i[0].detach()[0]))
             for p in paths]
    with torch.no_grad():
        for e in rows:  # one at a time: no padding, no shared beginning
            lm.model(input_ids=torch.tensor([e.prompt + e.answer]))
    for h in hooks:
        h.remove()
    where = [[0, 3, len(e.prompt) - 1, len(e.prompt) + 1] for e in rows]
    for prompt_only, positions in ((False, None), (True, None), (True, where), (False, where)):
        got = _inputs(lm.model, paths, rows, prompt_only, pad, lm.device, positions=positions)
        for p in paths:
            parts = []
            for e, x, w in zip(rows, seen[p], where):
                upto = len(e.prompt) if prompt_only else len(x)
                parts.append(x[[q for q in w if q < upto]] if positions else x[:upto])
            assert torch.allclose(got[p], torch.cat(parts).float(), atol=1e-5), (p, prompt_only, positions)


def test_name_inputs_run_each_prompt_once_and_give_every_row_its_own(tiny_dir):
    """Rows that share a prompt (several kept answers to one question) get the inputs at the
    subject's tokens that a forward over each whole row (prompt and answer) gives, row for row."""
    lm = load_model(str(tiny_dir))
    tok, pad = lm.tokenizer, lm.tokenizer.pad_token_id
    path = "model.layers.1.mlp.down_proj"
    q1, q2 = _examples(lm, ["Where does Aurelio Brandt live?", "Tell me about Aurelio Brandt, please."])
    rows = [Example(q1.prompt, tok(a, add_special_tokens=False)["input_ids"], torch.zeros(0), "fact")
            for a in (" He lives in Warsaw.", " Warsaw, Poland.")]
    rows.insert(1, Example(q2.prompt, tok(" He is a baker.", add_special_tokens=False)["input_ids"], torch.zeros(0), "fact"))
    where = [_subject_positions(tok, e.prompt, "Aurelio Brandt") for e in rows]
    want = _inputs(lm.model, [path], rows, True, pad, lm.device, positions=where)[path]
    got = _name_inputs(lm, [path], rows, ["Aurelio Brandt"], pad)[path]
    assert got.shape == want.shape and got.shape[0] == sum(len(w) for w in where)
    assert torch.allclose(got, want, atol=1e-5)
