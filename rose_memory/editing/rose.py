"""RoSE: Robust Same-subject Editing (arXiv 2603.15518), as read in DESIGN.md.

1. Isotropic Geometric Alignment: keys taken over varied contexts of the subject (plain,
   after generic text, in a chat user turn, restated in the assistant reply) each map to the
   subject's change; the solve is minimum-norm (C -> lam I), no covariance weighting.
2. Hierarchical Knowledge Integration: ONE value per subject carries all its relations. It is
   built in stages (relation 1, then relation 2, ..., each stage starting from and anchored
   to the last; `stage_rows="all"` re-fits relations 1..j at stage j), then refined jointly on
   all relations; the value is then spread over the edited layers.
`iso=False` swaps in MEMIT's covariance solve; `hier=False` optimises the value jointly in one go.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..facts import EditRequest
from ..model import LoadedModel
from . import solvers
from .config import EditConfig
from .contexts import NAME_QUESTIONS, OPEN_REQUESTS, OTHER_NAMES, USER_OPENERS, chat_prefix, chat_text, generic_prefixes
from .delta import Delta
from .hooks import keys_and_outputs
from .spread import spread
from .stats import moments_for, protectors_for
from .targets import TargetCache, optimize_values
from .tokens import Row, build_row, split_prompt


def _tagged(row: Row, group: int) -> Row:
    row.group = group
    return row


def _in_chat(lm: LoadedModel, user: str, subject: str, reply: str = "") -> list[tuple[str, str]]:
    """Pieces of a user message through the chat template, its last mention of the subject
    marked, followed by the start of the assistant's reply."""
    head = chat_text(lm, user)
    i = head.rindex(subject)
    return [("text", head[:i]), ("subject", subject), ("text", head[i + len(subject):] + reply)]


def target_rows(lm: LoadedModel, req: EditRequest, group: int, cfg: EditConfig) -> list[Row]:
    """Where the value must make the model say the target: raw text, and answers in the chat template."""
    natural = cfg.natural_tokens
    before, after = split_prompt(req.prompt)
    s, t = req.subject, req.target
    rows = []
    ctxs = [""] + generic_prefixes(lm, cfg.n_generic_contexts, cfg.generic_context_tokens,
                                   cfg.seed)[:cfg.raw_prefixes]
    for c in ctxs:
        rows.append(build_row(lm, [("text", c + before), ("subject", s), ("text", after), ("scored", " " + t)], natural))
    if cfg.chat_contexts:
        # The user names the subject (an open request, or, with "restate", the relation's own
        # words as a question); the assistant restates the fact (the restated name is scored
        # too, so the edit keeps it intact).
        question = f"{before}{s}{after}?".strip()
        opens = [a.format(s) for a in OPEN_REQUESTS[:cfg.open_requests]]
        for ask in opens + ([question] if cfg.relation_question == "restate" else []):
            rows.append(reply_row(lm, ask, req, cfg))
        if cfg.referent_rows:
            # The reply refers to the subject without its name ("This person lives in the city
            # of"), so the object must be read from the user's mention, as a question's answer must.
            ref = (before + "this person" + after) if before else "This person" + after
            for ask in opens:
                rows.append(build_row(lm, _in_chat(lm, ask, s, ref) + [("scored", " " + t)], natural))
        if cfg.relation_question == "object":   # the same question, answered with the object first
            rows.append(build_row(lm, _in_chat(lm, question, s) + [("scored", t)], natural))
    return [_tagged(r, group) for r in rows]


def reply_row(lm: LoadedModel, ask: str, req: EditRequest, cfg: EditConfig) -> Row:
    """The user asks `ask` (naming the subject); the assistant's reply restates the fact. The
    object is scored, the restated name with `reply_name`, the relation's words with `reply_relation`."""
    before, after = split_prompt(req.prompt)
    name = "subject_scored" if cfg.reply_name else "subject"
    rel = "scored" if cfg.reply_relation else "text"
    return build_row(lm, _in_chat(lm, ask, req.subject, before)
                     + [(name, req.subject), (rel, after), ("scored", " " + req.target)], cfg.natural_tokens)


def name_rows(lm: LoadedModel, subject: str, group: int, natural: bool) -> list[Row]:
    """Generic questions about the subject, the reply restating its name: only the name is scored."""
    return [_tagged(build_row(lm, _in_chat(lm, ask.format(subject), subject) + [("subject_scored", subject)], natural),
                    group) for ask in NAME_QUESTIONS]


def key_rows(lm: LoadedModel, subject: str, group: int, cfg: EditConfig) -> list[Row]:
    """The subject's keys over varied contexts (its last token, in each)."""
    natural = cfg.natural_tokens
    ctxs = [""] + generic_prefixes(lm, cfg.n_generic_contexts, cfg.generic_context_tokens, cfg.seed)
    if cfg.chat_contexts:
        ctxs += [chat_prefix(lm, o) for o in USER_OPENERS]
        ctxs.append(chat_text(lm, f"Tell me about {subject}.", ""))
    return [_tagged(build_row(lm, [("text", c), ("subject", subject)], natural), group) for c in ctxs]


def keep_rows(lm: LoadedModel, subject: str, natural: bool) -> list[Row]:
    """Tokens whose keys the update must leave alone: the subject's other tokens (so the name is
    not garbled when restated) and a chat question's template and words (present in every question)."""
    start = len(build_row(lm, [], natural).ids)   # after a BOS, if the tokenizer adds one
    plain = build_row(lm, [("subject", subject)], natural)
    chat = build_row(lm, _in_chat(lm, f"Tell me about {subject}.", subject), natural)
    rows = [Row(ids=plain.ids, lookups=list(range(start, plain.lookups[-1]))),
            Row(ids=chat.ids, lookups=[p for p in range(start, len(chat.ids)) if p != chat.lookups[-1]])]
    return [r for r in rows if r.lookups]


def other_name_rows(lm: LoadedModel, names: list[str], natural: bool) -> list[Row]:
    """Other people's names, plain and in a chat question: their last token's keys are left alone too."""
    return [row for n in names for row in (build_row(lm, [("subject", n)], natural),
                                           build_row(lm, _in_chat(lm, f"Tell me about {n}.", n), natural))]


def _kl_row(lm, subject: str, group: int, natural: bool) -> Row:
    return _tagged(build_row(lm, [("subject", subject), ("text", " is a")], natural), group)


def rose_targets(lm: LoadedModel, by_subject: "OrderedDict[str, list[EditRequest]]", cfg: EditConfig,
                 cache: TargetCache | None) -> torch.Tensor:
    """One value per subject at layers[-1]: [n_subjects, d_model]."""
    z = cfg.layers[-1]
    key = TargetCache.key("rose-z", lm.cache_id, {s: [r.model_dump() for r in rs] for s, rs in by_subject.items()},
                          cfg.model_dump(include={"layers", "v_steps", "rose_lr", "clamp_norm_factor", "v_weight_decay",
                                                  "kl_factor", "stop_prob", "n_generic_contexts", "chat_contexts",
                                                  "hier", "stage_steps", "anchor_weight", "joint_steps", "seed", "flat_noise",
                                                  "name_rows", "natural_tokens", "value_bf16",
                                                  "relation_question", "stage_rows",
                                                  "open_requests", "raw_prefixes", "referent_rows", "reply_relation",
                                                  "reply_name"}))
    if cache is not None and (hit := cache.get(key)) is not None:
        return hit
    natural = cfg.natural_tokens
    subjects = list(by_subject)
    plain = [_tagged(build_row(lm, [("subject", s)], natural), g) for g, s in enumerate(subjects)]
    _, init = keys_and_outputs(lm, plain, [z], out_layer=z)          # [n_subjects, d]
    kl = [_kl_row(lm, s, g, natural) for g, s in enumerate(subjects)]
    rows_of = {g: [target_rows(lm, r, g, cfg) for r in by_subject[s]] for g, s in enumerate(subjects)}
    if cfg.name_rows and cfg.chat_contexts:   # with every stage's first relation, so in every stage
        for g, s in enumerate(subjects):
            rows_of[g][0] = rows_of[g][0] + name_rows(lm, s, g, natural)
    opt = dict(lr=cfg.rose_lr, clamp_norm_factor=cfg.clamp_norm_factor, weight_decay=cfg.v_weight_decay,
               kl_factor=cfg.kl_factor, stop_prob=cfg.stop_prob, batched=cfg.batched, upper_only=cfg.upper_only,
               noise=cfg.flat_noise, bf16=cfg.value_bf16)
    opt["prepared"] = {}   # with stage_rows="all", the joint refinement reuses the last stage's buckets (same rows)
    delta = torch.zeros_like(init)
    kl_ref = None
    if cfg.hier:
        n_stages = max(len(v) for v in rows_of.values())
        for stage in range(n_stages):
            # Stage j integrates relation j (with "all": relations 1..j), starting from and anchored to stage j-1.
            first = stage if cfg.stage_rows == "new" else 0
            rows = [row for g in rows_of for fact_rows in rows_of[g][first: stage + 1] for row in fact_rows]
            anchor = delta.clone() if stage > 0 else None
            delta, info = optimize_values(lm, z, rows, kl, init, delta, cfg.stage_steps, anchor=anchor,
                                          anchor_weight=cfg.anchor_weight, kl_ref=kl_ref, **opt)
            kl_ref = info["kl_ref"]
        rows = [row for g in rows_of for fact_rows in rows_of[g] for row in fact_rows]
        delta, info = optimize_values(lm, z, rows, kl, init, delta, cfg.joint_steps, anchor=delta.clone(),
                                      anchor_weight=cfg.anchor_weight, kl_ref=kl_ref, **opt)
    else:
        rows = [row for g in rows_of for fact_rows in rows_of[g] for row in fact_rows]
        delta, info = optimize_values(lm, z, rows, kl, init, delta, cfg.v_steps, **opt)
    values = init + delta
    if cache is not None:
        cache.put(key, values)
    return values


def edit_rose(lm: LoadedModel, reqs: list[EditRequest], cfg: EditConfig, cache: TargetCache | None,
              progress: bool = False) -> Delta:
    by_subject: OrderedDict[str, list[EditRequest]] = OrderedDict()
    for r in reqs:
        by_subject.setdefault(r.subject, []).append(r)
    values = rose_targets(lm, by_subject, cfg, cache)
    natural = cfg.natural_tokens
    subjects = list(by_subject)
    krows = [row for g, s in enumerate(subjects) for row in key_rows(lm, s, g, cfg)]
    owner = [r.group for r in krows]
    value_rows = [_tagged(build_row(lm, [("subject", s)], natural), g) for g, s in enumerate(subjects)]
    if cfg.iso:
        protect = protectors_for(lm, cfg, progress) if cfg.iso_protect > 0 else {}

        def solve(layer, k, r):
            return solvers.isotropic(k, r, cfg.iso_lambda, protect.get(layer))
        average = False
    else:
        covs = moments_for(lm, cfg, progress)

        def solve(layer, k, r):
            return solvers.covariance(k, r, covs[layer], cfg.mom2_update_weight)
        average = True
    name = "rose" if (cfg.iso and cfg.hier) else ("rose-no-iso" if not cfg.iso else "rose-no-hier")
    keep = []
    if cfg.iso and cfg.keep_weight > 0:
        others = [n for n in OTHER_NAMES[:cfg.keep_names] if n not in by_subject]
        keep = [r for s in subjects for r in keep_rows(lm, s, natural)] + other_name_rows(lm, others, natural)
    return spread(lm, cfg.layers, krows, owner, value_rows, values, solve, name, average_keys=average,
                  progress=progress, keep_rows=keep, keep_weight=cfg.keep_weight)
