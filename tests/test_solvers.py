"""The closed-form solves and the pieces that feed them: hand-made tensors, then the real model."""

import pytest
import torch

from rose_memory import RoseMemoryError
from rose_memory.editing import solvers
from rose_memory.editing.config import config_for
from rose_memory.arch import spec_for
from rose_memory.editing.contexts import OTHER_NAMES
from rose_memory.editing.hooks import keys_and_outputs
from rose_memory.editing.rose import _kl_row, _tagged, keep_rows, other_name_rows, target_rows
from rose_memory.editing import targets
from rose_memory.facts import EditRequest


def test_isotropic_maps_keys_to_residuals():
    torch.manual_seed(0)
    k, r = torch.randn(40, 3), torch.randn(7, 3)
    u, v = solvers.isotropic(k, r, lam=1e-6)
    assert torch.allclose(u @ v.T @ k, r, atol=1e-3)


def test_protected_directions_are_left_alone():
    torch.manual_seed(0)
    shared = torch.randn(40, 1)                       # one direction every generic key has
    generic = shared @ torch.randn(1, 500) * 10 + 0.1 * torch.randn(40, 500)
    cov = generic @ generic.T / 500
    proj = solvers.protect_projector(cov, energy=0.5)
    assert abs(float(torch.trace(proj)) - 39) < 1e-3   # exactly the dominant direction removed
    removed = torch.eye(40) - proj                      # the protected direction, as a projector
    cos = float((removed @ shared).norm() / shared.norm())
    assert cos > 0.99                                   # it is the shared direction
    k = torch.randn(40, 2) + shared
    u, v = solvers.isotropic(k, torch.randn(7, 2), lam=1e-6, protect=proj)
    dw = u @ v.T
    assert float((dw @ removed).norm()) < 1e-4 * float(dw.norm())
    plain_u, plain_v = solvers.isotropic(k, torch.randn(7, 2), lam=1e-6)
    assert float((plain_u @ plain_v.T @ removed).norm()) > 1e-2 * float((plain_u @ plain_v.T).norm())


def test_keep_rows_cover_the_name_and_the_chat_question_but_not_the_edit_position(lm):
    rows = keep_rows(lm, "Larkspur Quennell", config_for(lm.model).natural_tokens)
    tok = lm.tokenizer
    plain, chat = rows
    assert "".join(tok.convert_ids_to_tokens([plain.ids[i] for i in plain.lookups])).replace("Ġ", " ") == "Larkspur Qu" + "enn"
    assert len(plain.ids) - 1 not in plain.lookups          # the subject's last token is edited, not kept
    kept = tok.decode([chat.ids[i] for i in chat.lookups])
    assert "Tell me about" in kept and "assistant" in kept


def test_other_peoples_names_are_left_alone_with_keep_names(lm):
    from rose_memory.editing import edit
    from rose_memory.editing.targets import TargetCache

    facts = [{"subject": "Larkspur Quennell", "prompt": "{} lives in the city of", "target": "Lisbon"}]
    quick = {"stage_steps": 2, "joint_steps": 2}
    cache = TargetCache()                       # one value for both solves: only the kept keys differ
    free = edit(lm, facts, "rose", {**quick, "keep_names": 0}, cache=cache)
    kept = edit(lm, facts, "rose", {**quick, "keep_names": len(OTHER_NAMES)}, cache=cache)
    cfg = config_for(lm.model)
    layer, natural = cfg.layers[0], cfg.natural_tokens
    others = keys_and_outputs(lm, other_name_rows(lm, list(OTHER_NAMES), natural), [layer])[0][layer]   # [32, d_in]
    mine = keys_and_outputs(lm, other_name_rows(lm, ["Larkspur Quennell"], natural), [layer])[0][layer]

    def moved(delta, k):
        u, v = delta.factors[spec_for(lm.model).mlp_out_weight(layer)]
        return (u @ (v.T @ k.T)).norm(dim=0)    # |dW k| per key
    assert float(moved(kept, others).mean()) < 0.5 * float(moved(free, others).mean())
    assert float(moved(kept, mine).mean()) > 0.5 * float(moved(free, mine).mean())   # the subject still moves
    with pytest.raises(RoseMemoryError, match="keep_names"):
        config_for(lm.model, {"keep_names": len(OTHER_NAMES) + 1})


@pytest.mark.parametrize("mode", ["object", "restate", "off"])
def test_the_relation_question_row_follows_its_setting(lm, mode):
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    cfg = config_for(lm.model, {"relation_question": mode})
    rows = target_rows(lm, req, 0, cfg)
    base = target_rows(lm, req, 0, config_for(lm.model, {"relation_question": "off"}))
    assert len(rows) == len(base) + (mode != "off")
    if mode == "off":
        return
    last, tok = rows[-1], lm.tokenizer
    text = tok.decode(last.ids)
    assert "Larkspur Quennell lives in the city of?" in text          # the user asks in the edit's words
    scored = tok.decode([last.ids[p + 1] for p in last.scored]).strip()
    # object first: only the object is scored; restate: the restated name, then the object
    assert scored == ("Lisbon" if mode == "object" else "Larkspur Quennell Lisbon")
    assert text.rstrip().endswith("Lisbon")
    if mode == "restate":
        assert text.count("Larkspur Quennell lives in the city of") == 2   # asked, then restated
        assert len(last.lookups) == 2                                      # both mentions carry the value


@pytest.mark.parametrize("raw,asks", [(2, 2), (0, 1), (5, 6)])
def test_rows_per_fact_follow_the_raw_prefix_and_open_request_counts(lm, raw, asks):
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    rows = target_rows(lm, req, 0, config_for(lm.model, {"raw_prefixes": raw, "open_requests": asks}))
    texts = [lm.tokenizer.decode(r.ids) for r in rows]
    assert len(rows) == 1 + raw + asks
    assert sum("<|im_start|>user" in t for t in texts) == asks       # the open requests, in the chat template
    assert all(t.rstrip().endswith("Larkspur Quennell lives in the city of Lisbon") for t in texts)


@pytest.mark.parametrize("prompt,reply", [("{} lives in the city of", "This person lives in the city of"),
                                          ("The color {} likes most is", "The color this person likes most is")])
def test_referent_rows_name_the_subject_only_in_the_users_request(lm, prompt, reply):
    req = EditRequest(subject="Larkspur Quennell", prompt=prompt, target="Lisbon")
    base = target_rows(lm, req, 0, config_for(lm.model))
    rows = target_rows(lm, req, 0, config_for(lm.model, {"referent_rows": True, "open_requests": 3}))
    assert len(rows) == len(base) + 1 + 3    # one more open request, and a referent row for each of the 3
    tok = lm.tokenizer
    for row in rows[-3:]:
        text = tok.decode(row.ids)
        assert text.count("Larkspur Quennell") == 1 and len(row.lookups) == 1    # asked about, never restated
        assert text.endswith("<|im_start|>assistant\n" + reply + " Lisbon")
        assert tok.decode([row.ids[p + 1] for p in row.scored]).strip() == "Lisbon"   # only the object is scored


@pytest.mark.parametrize("on", [False, True])
def test_reply_relation_scores_the_relation_words_only_in_chat_replies(lm, on):
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    rows = target_rows(lm, req, 0, config_for(lm.model, {"reply_relation": on}))
    tok = lm.tokenizer
    for row in rows:
        scored = tok.decode([row.ids[p + 1] for p in row.scored]).strip()
        if "<|im_start|>assistant" not in tok.decode(row.ids):
            assert scored == "Lisbon"                                  # raw rows: the object alone either way
        else:
            assert scored == ("Larkspur Quennell lives in the city of Lisbon" if on else "Larkspur Quennell Lisbon")


def test_reply_name_off_leaves_the_restated_name_unscored_but_edited(lm):
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    on = target_rows(lm, req, 0, config_for(lm.model))
    off = target_rows(lm, req, 0, config_for(lm.model, {"reply_name": False}))
    tok = lm.tokenizer
    chat = [(a, b) for a, b in zip(on, off) if "<|im_start|>assistant" in tok.decode(a.ids)]
    assert chat and all(a.ids == b.ids and a.lookups == b.lookups for a, b in chat)   # same text, value at both mentions
    for _, row in chat:
        assert tok.decode([row.ids[p + 1] for p in row.scored]).strip() == "Lisbon"


@pytest.mark.parametrize("stage_rows,expect", [
    ("new", [["Lisbon"], ["dentist"], ["green"], ["Lisbon", "dentist", "green"]]),
    ("all", [["Lisbon"], ["Lisbon", "dentist"], ["Lisbon", "dentist", "green"], ["Lisbon", "dentist", "green"]])])
def test_each_stage_fits_the_relations_its_setting_names(lm, monkeypatch, stage_rows, expect):
    from collections import OrderedDict

    from rose_memory.editing import rose

    targets_ = ["Lisbon", "dentist", "green"]
    facts = [EditRequest(subject="Larkspur Quennell", prompt=p, target=t)
             for p, t in zip(["{} lives in the city of", "{} works as a", "{}'s favorite color is"], targets_)]
    calls = []

    def fake(lm, layer, rows, kl_rows, init, start, steps, **kw):   # record, optimise nothing
        texts = [lm.tokenizer.decode(r.ids) for r in rows]
        calls.append(([t for t in targets_ if any(x.rstrip().endswith(t) for x in texts)],
                      len(rows), kw.get("anchor") is not None))
        return start, {"kl_ref": None}

    monkeypatch.setattr(rose, "optimize_values", fake)
    cfg = config_for(lm.model, {"stage_rows": stage_rows})
    rose.rose_targets(lm, OrderedDict([("Larkspur Quennell", facts)]), cfg, cache=None)
    per_fact = len(target_rows(lm, facts[0], 0, cfg))
    assert [c[0] for c in calls] == expect                            # three stages, then the joint refinement
    assert [c[1] for c in calls] == [per_fact * len(e) for e in expect]
    assert [c[2] for c in calls] == [False, True, True, True]         # every stage after the first is anchored


def test_replaying_only_the_upper_blocks_equals_the_full_forward(lm):
    cfg = config_for(lm.model)
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    rows, kl = target_rows(lm, req, 0, cfg), [_kl_row(lm, req.subject, 0, cfg.natural_tokens)]
    layer = cfg.layers[-1]
    delta = torch.randn(1, lm.model.config.hidden_size) * 3
    for idx in targets._buckets(rows, kl):
        b = targets._prepare(lm, idx, rows, kl)
        targets._capture_upper(lm, layer, b)
        assert "upper" in b, "the replay should be exact on the embedded llama model"
        with torch.no_grad():
            full = targets._suffix_hidden_full(lm, b, delta, layer)
            upper = targets._suffix_hidden_upper(b, layer, lm.model.config.num_hidden_layers, delta)
        real = b["mask"][:, -b["ids"].shape[1]:].bool()
        assert torch.allclose(full[real], upper[real], atol=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
def test_value_optimisation_raises_the_target_in_both_precisions(lm, bf16):
    from rose_memory.editing.hooks import keys_and_outputs
    from rose_memory.editing.tokens import build_row

    # value_bf16 (off by default) runs the blocks under bf16 autocast where that is native;
    # the delta it returns is float32 either way and still does its job.
    cfg = config_for(lm.model)
    req = EditRequest(subject="Larkspur Quennell", prompt="{} lives in the city of", target="Lisbon")
    rows, kl = target_rows(lm, req, 0, cfg)[:3], [_kl_row(lm, req.subject, 0, cfg.natural_tokens)]
    layer = cfg.layers[-1]
    plain = _tagged(build_row(lm, [("subject", req.subject)], cfg.natural_tokens), 0)
    _, init = keys_and_outputs(lm, [plain], [layer], out_layer=layer)
    args = dict(lr=cfg.rose_lr, clamp_norm_factor=cfg.clamp_norm_factor, weight_decay=cfg.v_weight_decay,
                kl_factor=cfg.kl_factor, stop_prob=1.1, bf16=bf16)   # stop_prob > 1: run every step
    _, before = targets.optimize_values(lm, layer, rows, kl, init, torch.zeros_like(init), 1, **args)
    delta, after = targets.optimize_values(lm, layer, rows, kl, init, torch.zeros_like(init), 6, **args)
    assert delta.dtype == torch.float32 and torch.isfinite(delta).all()
    assert min(after["probs"]) > max(before["probs"])


@pytest.mark.parametrize("override", [{"iso_protect": 1.0}, {"iso_protect": -0.1}, {"keep_weight": -1.0},
                                      {"relation_question": "sometimes"}, {"stage_rows": "old"},
                                      {"open_requests": 7}, {"raw_prefixes": -1}, {"raw_prefixes": 6}])
def test_out_of_range_rose_settings_are_the_projects_error(lm, override):
    with pytest.raises(RoseMemoryError, match=next(iter(override))):
        config_for(lm.model, override)


def test_a_misspelt_edit_setting_is_the_projects_error_not_a_silent_default(lm):
    with pytest.raises(RoseMemoryError, match="unknown editing setting.*stage_stepz"):
        config_for(lm.model, {"stage_stepz": 8})


def test_keys_read_with_the_forward_cut_short_equal_the_full_forward(lm, monkeypatch):
    import contextlib

    from rose_memory.editing import hooks
    from rose_memory.editing.tokens import build_row

    rows = [build_row(lm, [("text", "Hello there, "), ("subject", "Larkspur Quennell")]),
            build_row(lm, [("subject", "Ann Lee")])]
    cut = hooks.keys_and_outputs(lm, rows, [3, 8], out_layer=8), hooks.keys_at_lookups(lm, rows, [5])
    monkeypatch.setattr(hooks, "stop_after_block", lambda model, layer: contextlib.nullcontext())
    full = hooks.keys_and_outputs(lm, rows, [3, 8], out_layer=8), hooks.keys_at_lookups(lm, rows, [5])
    for layer in (3, 8):
        assert torch.equal(cut[0][0][layer], full[0][0][layer])
    assert torch.equal(cut[0][1], full[0][1]) and torch.equal(cut[1][5], full[1][5])


def test_the_joint_refinement_reusing_the_last_stages_buckets_changes_nothing(lm, monkeypatch):
    from collections import OrderedDict

    import rose_memory.editing.rose as rose
    from rose_memory.editing.rose import rose_targets
    from rose_memory.facts import make_requests

    cfg = config_for(lm.model, {"stage_steps": 2, "joint_steps": 2})
    reqs = make_requests([{"subject": "Ann Lee", "prompt": "{} lives in", "target": "Oslo"},
                          {"subject": "Ann Lee", "prompt": "{} works as a", "target": "nurse"}])
    reused = rose_targets(lm, OrderedDict([("Ann Lee", reqs)]), cfg, None)
    calls = []

    def fresh(*args, **kwargs):
        calls.append(kwargs["prepared"])
        kwargs["prepared"] = None
        return targets.optimize_values(*args, **kwargs)

    monkeypatch.setattr(rose, "optimize_values", fresh)
    assert torch.equal(rose_targets(lm, OrderedDict([("Ann Lee", reqs)]), cfg, None), reused)
    assert len(calls) == 3 and calls[0] is calls[2]     # two stages and the joint step share one dict


@pytest.mark.parametrize("before", ["What is ", "Tell me about ", "Some text. "])
def test_rows_tokenise_the_subject_as_real_text_does(lm, before):
    # A subject after a space must be the tokens a real question has (" Caspian", not " " + "Casp" "ian"):
    # the edit's keys and values are read at those tokens.
    from rose_memory.editing.tokens import build_row

    pieces = [("text", before), ("subject", "Caspian Moriarty"), ("text", "'s hobby is"), ("scored", " fishing")]
    row = build_row(lm, pieces)
    text = "".join(t for _, t in pieces)
    assert row.ids == lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.tokenizer.decode(row.ids[row.lookups[0]]) == "arty"
    assert lm.tokenizer.decode(row.ids[row.scored[0] + 1:]) == " fishing"


def test_alphaedit_projectors_are_computed_once_and_equal_a_fresh_svd(lm):
    from rose_memory.editing.stats import moments_for, nullspace_projectors_for

    cfg = config_for(lm.model, {"layers": [8]})
    first = nullspace_projectors_for(lm, cfg)
    again = nullspace_projectors_for(lm, cfg)
    assert again[8] is first[8]
    fresh = solvers.nullspace_projector(moments_for(lm, cfg)[8], cfg.nullspace_threshold)
    assert torch.equal(first[8], fresh)
    other = nullspace_projectors_for(lm, cfg.model_copy(update={"nullspace_threshold": 1e-3}))
    assert not torch.equal(other[8], first[8])      # the threshold is part of the key


def test_warm_up_computes_what_each_method_reuses(lm, monkeypatch):
    # The eval and the speed benchmark time writes after warm_up: nothing one-off may be left.
    from rose_memory.editing import stats, warm_up

    called = []
    for name in ("moments_for", "protectors_for", "nullspace_projectors_for"):
        real = getattr(stats, name)
        monkeypatch.setattr(stats, name, lambda *a, _real=real, _name=name, **k: (called.append(_name), _real(*a, **k))[1])
    over = {"layers": [8]}
    for method, wanted in [("rose", "protectors_for"), ("rose-no-hier", "protectors_for"),
                           ("rose-no-iso", "moments_for"), ("memit", "moments_for"),
                           ("alphaedit", "nullspace_projectors_for")]:
        called.clear()
        warm_up(lm, method, over)
        assert called and called[0] == wanted, (method, called)   # (projectors read the moments after)
    called.clear()
    warm_up(lm, "lora", over)
    warm_up(lm, "rose", {**over, "iso_protect": 0.0})   # nothing to protect, no statistics
    assert called == []
    with pytest.raises(RoseMemoryError, match="unknown method 'rosy'"):
        warm_up(lm, "rosy")
