"""Architecture coverage on tiny randomly initialised models of every family in arch.SPECS.

No download: each model is built from `AutoConfig.for_model(kind)` shrunk to 2 layers and
hidden size 32. What is checked is what editing relies on: the block list, the MLP output
projection (its input is the edit key, its output joins the residual stream), the final norm
(the last module before the LM head), and that a Delta on layer 0's MLP output weight applies
and reverts exactly, Conv1D (gpt2) included.
"""

from __future__ import annotations

import types

import pytest
import torch

from rose_memory.arch import SPECS, get_module, mlp_out_dims, num_layers, spec_for
from rose_memory.editing.delta import Delta
from rose_memory.errors import RoseMemoryError

HIDDEN = 32
TINY = dict(
    num_hidden_layers=2, hidden_size=HIDDEN, intermediate_size=64, n_inner=64, ffn_hidden_size=64, ffn_dim=64,
    num_attention_heads=4, num_key_value_heads=2, num_kv_heads=2, head_dim=8, vocab_size=128,
    rotary_dim=8, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, word_embed_proj_dim=HIDDEN,
)


def tiny_model(kind: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(kind)
    known = set(cfg.to_dict()) | set(getattr(cfg, "attribute_map", {}))
    for key, value in TINY.items():
        if key in known:  # each family names its sizes differently (n_embd, ffn_dim, ...)
            setattr(cfg, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    model.requires_grad_(False)
    return model


IDS = torch.tensor([[5, 17, 42, 9, 77, 3]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module", params=sorted(SPECS))
def family(request):
    return request.param, tiny_model(request.param)


def test_blocks_and_layer_count(family):
    kind, model = family
    spec = spec_for(model)
    assert num_layers(model) == 2
    assert isinstance(get_module(model, spec.layers), torch.nn.ModuleList)
    assert get_module(model, spec.block(1)) is get_module(model, spec.layers)[1]


def test_mlp_out_dims_match_what_flows_through_it(family):
    kind, model = family
    spec = spec_for(model)
    module = get_module(model, spec.mlp_out_module(0))
    d_out, d_in = mlp_out_dims(model, 0)
    assert d_out == HIDDEN
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(key=args[0], out=out))
    try:
        logits(model)
    finally:
        handle.remove()
    assert seen["key"].shape[-1] == d_in, "the MLP out projection's input is the edit key [.., d_in]"
    assert seen["out"].shape[-1] == d_out


def test_mlp_out_feeds_the_output(family):
    kind, model = family
    module = get_module(model, spec_for(model).mlp_out_module(0))
    before = logits(model)
    handle = module.register_forward_hook(lambda m, args, out: torch.zeros_like(out))
    try:
        after = logits(model)
    finally:
        handle.remove()
    assert not torch.allclose(before, after), "silencing layer 0's MLP out should change the logits"


def test_final_norm_is_the_last_module_before_the_head(family):
    kind, model = family
    spec = spec_for(model)
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda m, a, o, name=name: order.append(name))
        for name, m in model.named_modules()
        if name and not list(m.children())  # leaves only
    ]
    head = model.get_output_embeddings()
    handles.append(head.register_forward_pre_hook(lambda m, a: order.append("<head>")))
    try:
        logits(model)
    finally:
        for h in handles:
            h.remove()
    before_head = order[: order.index("<head>")]
    assert before_head[-1] == spec.final_norm
    norm = get_module(model, spec.final_norm)
    assert "norm" in type(norm).__name__.lower()


def test_delta_on_layer0_mlp_out_applies_and_reverts(family):
    kind, model = family
    spec = spec_for(model)
    name = spec.mlp_out_weight(0)
    weight = dict(model.named_parameters())[name]
    original = weight.detach().clone()
    d_out, d_in = mlp_out_dims(model, 0)
    gen = torch.Generator().manual_seed(1)
    u, v = torch.randn(d_out, 2, generator=gen) * 0.3, torch.randn(d_in, 2, generator=gen) * 0.3
    delta = Delta(factors={name: (u, v)}, method="test")
    before = logits(model)

    delta.apply(model)
    added = weight.detach() - original
    expected = u @ v.T  # [d_out, d_in], nn.Linear orientation
    assert torch.allclose(added, expected.T if spec.conv1d else expected, atol=1e-6)
    assert not torch.allclose(logits(model), before)

    delta.revert(model)
    assert (weight.detach() - original).abs().max() <= 1e-6
    assert torch.allclose(logits(model), before, atol=1e-5)


def test_delta_reverts_exactly_in_bfloat16():
    model = tiny_model("llama").to(torch.bfloat16)
    spec = spec_for(model)
    name = spec.mlp_out_weight(0)
    weight = dict(model.named_parameters())[name]
    original = weight.detach().clone()
    d_out, d_in = mlp_out_dims(model, 0)
    delta = Delta(factors={name: (torch.randn(d_out, 1) * 0.1, torch.randn(d_in, 1) * 0.1)})
    delta.apply(model)
    assert not torch.equal(weight, original)
    delta.revert(model)
    assert (weight.detach().float() - original.float()).abs().max() <= 1e-6


def _fake(model_type: str) -> torch.nn.Module:
    module = torch.nn.Module()
    module.config = types.SimpleNamespace(model_type=model_type)
    return module


def test_unknown_architecture_names_what_to_add():
    with pytest.raises(RoseMemoryError) as err:
        spec_for(_fake("made_up_lm"))
    msg = str(err.value)
    assert "made_up_lm" in msg and "rose_memory/arch.py" in msg and "ArchSpec" in msg
    assert "MLP output projection" in msg and "final norm" in msg


def test_known_architecture_with_wrong_paths_says_which_module():
    with pytest.raises(RoseMemoryError, match=r"model\.layers.*not found"):
        spec_for(_fake("llama"))


def test_cache_id_keeps_low_precision_weights_apart():
    # Statistics, targets and sampled prefixes cached for float32 weights must not serve bf16 ones.
    import torch

    from rose_memory.model import LoadedModel

    lm = LoadedModel(model=torch.nn.Linear(4, 4), tokenizer=None, name="some/model")
    assert lm.cache_id == "some/model"
    lm.model.to(torch.bfloat16)
    assert lm.cache_id == "some/model|bfloat16"
