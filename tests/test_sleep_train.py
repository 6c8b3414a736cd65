"""The student's training on the tiny model: the unrelated prompts see the delta at `negative_gain`."""

import torch

from rose_memory.model import load_model
from rose_memory.sleep.config import SleepConfig
from rose_memory.sleep.prefix import full_forward
from rose_memory.sleep.teacher import Example
from rose_memory.sleep.train import train_delta


def _rows(lm, pairs):
    tok = lm.tokenizer
    return [Example(tok(p)["input_ids"], tok(a, add_special_tokens=False)["input_ids"], torch.zeros(0), "fact")
            for p, a in pairs]


def _sharp(lm, rows):
    """A sharp target the model does not give yet (token 5 at every answer position)."""
    for e in rows:
        target = torch.full((len(e.answer), len(lm.tokenizer)), -20.0)
        target[:, 5] = 0.0
        e.target_logprobs = torch.log_softmax(target, -1)
    return rows


def _own(lm, rows):
    """Each row held to the model's own distributions: KL 0 before any training."""
    head = lm.model.get_output_embeddings()
    with torch.no_grad():
        h = full_forward(lm)(rows)
        for i, e in enumerate(rows):
            s = len(e.prompt) - 1
            e.target_logprobs = torch.log_softmax(head(h[i, s: s + len(e.answer)]).float(), -1)
    return rows


def test_unrelated_prompts_are_held_against_the_delta_times_the_gain(tiny_dir):
    """Step 0 starts from a zero delta, so every gain takes the same first step; the keep loss of
    step 1 is then the same delta seen by the unrelated prompts at gain 0 (nothing: their own
    distributions, loss 0), 1 and 4 (larger)."""
    lm = load_model(str(tiny_dir))
    facts = _sharp(lm, _rows(lm, [("Aurelio Brandt lives in the city of", " Warsaw."),
                                  ("Where does Aurelio Brandt live? He lives in", " Warsaw.")]))
    unrelated = _own(lm, _rows(lm, [("The capital of France is", " Paris, a city"),
                                    ("Mira Tovan's favorite food is", " pasta with")]))
    keep = {}
    for gain in (0.0, 1.0, 4.0):
        cfg = SleepConfig(modules="value", inputs="free", rank=2, layers=[2, 3], steps=2, lr=5e-2, margin=0.0,
                          negative_gain=gain)
        losses = []
        train_delta(lm, facts, unrelated, cfg, on_step=lambda s, a, b: losses.append(b))
        assert abs(losses[0]) < 1e-5, gain
        keep[gain] = losses[1]
    assert abs(keep[0.0]) < 1e-5
    assert 0 < keep[1.0] < keep[4.0]


def test_the_default_delta_sits_on_mlp_outputs_after_the_wake_edits_layers(tiny_dir):
    """Keyed to the wake edit's trace, the default reads what the edit changed: blocks from 30 % to 85 %
    of the depth (the wake edit writes in the first third); a free MLP delta keeps the middle third."""
    from rose_memory.arch import num_layers
    from rose_memory.sleep.train import target_modules

    model = load_model(str(tiny_dir)).model
    n = num_layers(model)
    paths = target_modules(model, SleepConfig())
    assert paths and all(p.endswith("mlp.down_proj") for p in paths)
    assert [int(p.split(".")[-3]) for p in paths] == list(range(int(0.3 * n), int(0.85 * n) + 1))
    free = target_modules(model, SleepConfig(modules="out", inputs="free"))
    assert [int(p.split(".")[-3]) for p in free] == list(range(n // 3, 2 * n // 3))


def test_bfloat16_training_learns_what_float32_learns(tiny_dir):
    """`train_precision="bfloat16"` autocasts the steps' products only: the factors come back float32
    and the fact loss falls step for step as in float32 (within bfloat16's rounding)."""
    lm = load_model(str(tiny_dir))
    facts = _sharp(lm, _rows(lm, [("Aurelio Brandt lives in the city of", " Warsaw."),
                                  ("Where does Aurelio Brandt live? He lives in", " Warsaw.")]))
    weights = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    losses = {}
    for precision in ("float32", "bfloat16"):
        cfg = SleepConfig(modules="value", inputs="free", rank=2, layers=[2, 3], steps=12, lr=5e-2, margin=0.0,
                          kl_weight=0.0, train_precision=precision)
        runs = []
        delta = train_delta(lm, facts, [], cfg, on_step=lambda s, a, b: runs.append(a))
        assert all(u.dtype == torch.float32 and v.dtype == torch.float32 for u, v in delta.factors.values())
        losses[precision] = runs
    assert all(torch.equal(p, weights[n]) for n, p in lm.model.named_parameters())  # weights untouched
    f32, bf16 = losses["float32"], losses["bfloat16"]
    assert bf16[-1] < bf16[0] - 0.5  # it learns
    assert all(abs(b - f) < 0.01 * f for f, b in zip(f32, bf16))  # step for step as float32 does


def test_the_student_trains_with_plain_attention_on_a_cpu_and_the_model_gets_its_own_back(tiny_dir):
    lm = load_model(str(tiny_dir))
    facts = _rows(lm, [("Aurelio Brandt lives in the city of", " Warsaw.")])
    facts[0].target_logprobs = torch.log_softmax(torch.zeros(len(facts[0].answer), len(lm.tokenizer)), -1)
    before = lm.model.config._attn_implementation
    assert before != "eager"  # transformers' default, the fused kernel
    seen = []
    hook = lm.model.model.layers[2].register_forward_pre_hook(lambda m, a: seen.append(lm.model.config._attn_implementation))
    try:
        train_delta(lm, facts, [], SleepConfig(modules="value", inputs="free", rank=1, layers=[2], steps=1, kl_weight=0.0))
    finally:
        hook.remove()
    assert "eager" in seen
    assert lm.model.config._attn_implementation == before


def test_facts_and_unrelated_rows_in_one_forward_train_as_in_two(tiny_dir):
    """At `negative_gain` 1 a step runs its kept answers and unrelated rows as one right-padded batch;
    every row's states are its own, so the losses and the trained factors are those of two forwards
    (a gain a hair above 1 takes the two-forward path)."""
    lm = load_model(str(tiny_dir))
    facts = _sharp(lm, _rows(lm, [("Aurelio Brandt lives in the city of", " Warsaw."),
                                  ("Where does Aurelio Brandt live? Tell me in one short sentence. He lives in",
                                   " Warsaw.")]))
    unrelated = _own(lm, _rows(lm, [("The capital of France is", " Paris, a city"),
                                    ("Mira Tovan's favorite food is", " pasta with")]))
    runs = {}
    for gain in (1.0, 1.0 + 1e-6):
        cfg = SleepConfig(modules="value", inputs="free", rank=2, layers=[2, 3], steps=4, lr=5e-2,
                          negative_gain=gain, train_precision="float32")
        losses = []
        delta = train_delta(lm, facts, unrelated, cfg, on_step=lambda s, a, b: losses.append((a, b)))
        runs[gain] = (losses, delta)
    (one, d1), (two, d2) = runs.values()
    assert one[-1][1] > 0  # the delta moved the unrelated rows, so their loss was computed
    for (a1, b1), (a2, b2) in zip(one, two):
        assert abs(a1 - a2) <= 1e-4 * max(1.0, abs(a2)) and abs(b1 - b2) <= 1e-4 * max(1.0, abs(b2))
    for k in d1.factors:
        for x, y in zip(d1.factors[k], d2.factors[k]):
            assert torch.allclose(x, y, atol=1e-5)
