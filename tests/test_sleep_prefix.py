"""The sleep's cached-prefix forward (sleep/prefix.py) on tiny models: same states as the full forward, or not used."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rose_memory.model import LoadedModel, load_model
from rose_memory.sleep.config import SleepConfig
from rose_memory.sleep.prefix import block_of, cached_forward, full_forward
from rose_memory.sleep.teacher import Example
from rose_memory.sleep.train import _kl, train_delta


def _rows(lm, texts, answer=" Warsaw."):
    tok = lm.tokenizer
    return [Example(tok(t)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"],
                    torch.zeros(0), "fact") for t in texts]


TEXTS = ["Aurelio Brandt lives in the city of", "Where does Aurelio Brandt live? He lives in",
         "The capital of France is", "Mira Tovan's favorite food is a dish that everyone in her town loves, namely"]


def _same_states(lm, forwards, batch):
    """Every real position of every row (not the padding) has the same state in both forwards."""
    with torch.no_grad():
        want, got = (f(batch) for f in forwards)
    for i, e in enumerate(batch):
        n = len(e.prompt) + len(e.answer)
        assert torch.allclose(got[i, :n], want[i, :n], atol=1e-5), i


def _same_gradient(lm, forwards, rows):
    """A trained module above the cached blocks (block 3's value projection) gets the same gradient either way."""
    v = lm.model.model.layers[3].self_attn.v_proj
    grads = []
    for forward in forwards:
        extra = torch.zeros(v.out_features, requires_grad=True)
        hook = v.register_forward_hook(lambda m, i, o: o + extra)
        try:
            h = forward(rows)
            real = torch.cat([h[i, : len(e.prompt) + len(e.answer)] for i, e in enumerate(rows)])  # not the padding
            lm.model.get_output_embeddings()(real).float().logsumexp(-1).sum().backward()
        finally:
            hook.remove()
        grads.append(extra.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_cached_prefix_gives_the_full_forwards_states_and_gradients(tiny_dir):
    lm = load_model(str(tiny_dir))
    rows = _rows(lm, TEXTS)
    assert block_of(lm.model, "model.layers.2.self_attn.v_proj") == 2
    hidden, used = cached_forward(lm, 2, rows, rows[:2])
    assert used
    full = full_forward(lm)
    for batch in (rows, rows[1:3], rows[3:]):   # other batch widths than the cached ones
        _same_states(lm, (full, hidden), batch)
    assert len(lm.model.model.layers) == 4          # the block list is put back after each call
    _same_gradient(lm, (full, hidden), rows)


def test_first_block_zero_uses_the_full_forward(tiny_dir):
    lm = load_model(str(tiny_dir))
    rows = _rows(lm, TEXTS[:2])
    _, used = cached_forward(lm, 0, rows, rows)
    assert not used


def test_a_model_that_changes_its_embeddings_in_forward_falls_back(tiny_dir):
    """GPT-2 adds position embeddings to `inputs_embeds`: the cached states would get them twice."""
    tok = load_model(str(tiny_dir)).tokenizer
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("gpt2", n_layer=3, n_embd=32, n_head=4, vocab_size=len(tok), n_positions=256)
    lm = LoadedModel(model=AutoModelForCausalLM.from_config(cfg).float().eval(), tokenizer=tok, name="tiny-gpt2")
    rows = _rows(lm, TEXTS)
    hidden, used = cached_forward(lm, 1, rows, rows[:2])
    assert not used
    with torch.no_grad():
        assert torch.equal(hidden(rows), full_forward(lm)(rows))


def test_training_with_the_cached_prefix_lowers_the_loss(tiny_dir):
    """train_delta on value projections above block 0 (so the prefix is cached) still learns."""
    lm = load_model(str(tiny_dir))
    rows = _rows(lm, TEXTS[:2])
    for e in rows:  # target: a sharp distribution the model does not give yet
        target = torch.full((len(e.answer), len(lm.tokenizer)), -20.0)
        target[:, 5] = 0.0
        e.target_logprobs = torch.log_softmax(target, -1)
    cfg = SleepConfig(modules="value", inputs="free", rank=2, layers=[2, 3], steps=12, lr=5e-2, kl_weight=0.0)
    head = lm.model.get_output_embeddings()
    with torch.no_grad():
        before = _kl(full_forward(lm), head, rows, lm.device).item()
    delta = train_delta(lm, rows, [], cfg)
    handles = delta.apply(lm.model)
    try:
        with torch.no_grad():
            after = _kl(full_forward(lm), head, rows, lm.device).item()
    finally:
        handles.revert(lm.model)
    assert after < before


def test_rows_that_begin_alike_run_their_beginning_once(tiny_dir):
    """Rows opening with the same long beginning (a chat template's system turn) share it once per
    forward; rows that do not open with it ride along in the same forward. States and gradients are
    those of the full forward."""
    lm = load_model(str(tiny_dir))
    system = "You are a helpful assistant who answers questions about people in one short sentence. "
    rows = _rows(lm, [system + t for t in TEXTS]) + _rows(lm, ["The capital of France is", "Hello"], answer=" Paris.")
    hidden, used = cached_forward(lm, 2, rows, rows[:2])
    assert used and hidden.shared >= 8
    assert all(e.prompt[: hidden.shared] == rows[0].prompt[: hidden.shared] for e in rows[:4])
    full = full_forward(lm)
    for batch in (rows, rows[2:], rows[3:5], rows[4:]):  # mixed, one row alike (plain path), none alike
        _same_states(lm, (full, hidden), batch)
    alike, used = cached_forward(lm, 2, rows[:4], rows[:2])  # one chunk, all alike: the cache is built sharing it too
    assert used and alike.shared >= 8
    _same_states(lm, (full, alike), rows[:4])
    assert len(lm.model.model.layers) == 4
    assert [blk.self_attn.layer_idx for blk in lm.model.model.layers] == [0, 1, 2, 3]  # numbering put back
    _same_gradient(lm, (full, hidden), rows)
