"""Checks on a write: the write guard (canary answers before and after it), protected subjects,
the tokenizer's control tokens, and the per-namespace write rate."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .errors import RoseMemoryError
from .facts import EditRequest
from .memory_config import GuardConfig
from .model import LoadedModel
from .recall import decode, greedy
from .stores.ledger import Ledger


def canary_answers(lm: LoadedModel, g: GuardConfig, cache: dict[tuple, list[list[int]]], key: tuple) -> list[list[int]]:
    """Greedy answers to the canary prompts on the weights as they are now (`key`: which deltas those are)."""
    if key not in cache:
        if len(cache) > 32:
            cache.clear()
        cache[key] = greedy(lm, [(p, False) for p in g.canaries], g.tokens)
    return cache[key]


def check_canaries(lm: LoadedModel, g: GuardConfig, before: list[list[int]],
                   after: list[list[int]]) -> tuple[str | None, dict]:
    """(reason to refuse or None, the measurement) for the canary answers `after` a write against `before`."""
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    share = len(changed) / max(1, len(before))
    report = {"canaries": len(before), "changed": len(changed), "share": round(share, 4),
              "examples": [{"prompt": g.canaries[i], "before": decode(lm, before[i]), "after": decode(lm, after[i])}
                           for i in changed[:3]]}
    if share > g.max_changed:
        return (f"write guard: the edit changed {len(changed)} of {len(before)} answers to unrelated prompts "
                f"(more than guard.max_changed = {g.max_changed:.0%}), e.g. {g.canaries[changed[0]]!r}: "
                f"{report['examples'][0]['before']!r} -> {report['examples'][0]['after']!r}"), report
    return None, report


def is_protected(subject: str, protected_subjects: list[str]) -> bool:
    norm = lambda s: " ".join(s.casefold().split())  # noqa: E731
    return norm(subject) in {norm(p) for p in protected_subjects}


def check_special_tokens(tokenizer, reqs: list[EditRequest]) -> None:
    """Refuse text holding the tokenizer's control tokens ("<|im_start|>", "</s>"): the tokenizer would
    read them as the chat template's structure, not as words."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if isinstance(t, str) and len(t) > 1]
    for r in reqs:
        for what, text in (("subject", r.subject), ("relation", r.prompt), ("object", r.target)):
            found = next((t for t in specials if t in text), None)
            if found is not None:
                raise RoseMemoryError(f"{what} {text[:80]!r} holds the model's control token {found!r}; remove it")


def check_rate(ledger: Ledger, namespace: str, limit: int | None) -> None:
    """Refuse a write when `namespace` wrote `limit` times in the last minute (None: no limit)."""
    if limit is None:
        return
    since = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat(timespec="microseconds")
    n = ledger.count(namespace=namespace, origin="write", since=since)
    if n >= limit:
        raise RoseMemoryError(f"namespace {namespace!r} wrote {n} times in the last minute; at most {limit} "
                              "are accepted (limits.max_writes_per_minute); wait and try again")
