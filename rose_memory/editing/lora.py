"""LoRA fine-tuning baseline (through peft), as editing papers use it: fit the edit prompts.

LoRA adapters on the same MLP output projections the other methods edit; after training,
each adapter's B A (times its scaling) is exactly a low-rank Delta, and the model is left unchanged.
"""

from __future__ import annotations

import torch

from ..arch import spec_for
from ..facts import EditRequest
from ..model import LoadedModel
from .config import EditConfig
from .delta import Delta
from .tokens import build_row, batch, split_prompt


def edit_lora(lm: LoadedModel, reqs: list[EditRequest], cfg: EditConfig, cache=None, progress: bool = False) -> Delta:
    from peft import LoraConfig, get_peft_model

    model, spec = lm.model, spec_for(lm.model)
    modules = [spec.mlp_out_module(l) for l in cfg.layers]
    torch.manual_seed(cfg.seed)
    peft_cfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, lora_dropout=0.0, target_modules=modules,
                          fan_in_fan_out=spec.conv1d, bias="none")
    rows = []
    for r in reqs:
        before, after = split_prompt(r.prompt)
        rows.append(build_row(lm, [("text", before), ("subject", r.subject), ("text", after), ("scored", " " + r.target)]))
    ids, mask = batch(rows, lm.tokenizer.pad_token_id, lm.device)
    labels = torch.full_like(ids, -100)
    for i, row in enumerate(rows):
        for p in row.scored:
            labels[i, p + 1] = ids[i, p + 1]
    pm = get_peft_model(model, peft_cfg)
    try:
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lora_lr)
        for _ in range(cfg.lora_steps):
            opt.zero_grad()
            loss = pm(input_ids=ids, attention_mask=mask, labels=labels).loss
            if float(loss) < 0.05:
                break
            loss.backward()
            opt.step()
        delta = Delta(method="lora")
        for l, mod_name in zip(cfg.layers, modules):
            layer = pm.base_model.model.get_submodule(mod_name)
            a = layer.lora_A["default"].weight.detach().float().cpu()   # [r, d_in]
            b = layer.lora_B["default"].weight.detach().float().cpu()   # [d_out, r]
            scale = layer.scaling["default"]
            delta.factors[spec.mlp_out_weight(l)] = (b * scale, a.T.clone())
    finally:
        pm.unload()  # removes the adapters, leaving the original modules in place
    model.requires_grad_(False)
    return delta
