"""Scoring of generated answers: whole-word hits, confusion, locality, fluency, name fidelity.

All functions work on plain strings (or token id lists for locality), so any answer file can be
re-scored with them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

LOCALITY_TOKENS = 8  # locality compares the first 8 generated tokens


def _whole_word(phrase: str) -> re.Pattern:
    words = phrase.strip().split()
    body = r"\s+".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)


def hit(answer: str, target: str) -> bool:
    """The target appears in the answer as a whole word (case-insensitive; 'Paris' not in 'Parisian')."""
    if not target.strip():
        return False
    return _whole_word(target).search(answer) is not None


def confused(answer: str, target: str, others: Sequence[str]) -> bool:
    """The answer names the target of ANOTHER fact of the same subject.

    Occurrences of the own target are blanked first, so a target containing another
    ('ice cream' vs 'cream') is not counted; others equal to the own target are ignored.
    """
    rest = _whole_word(target).sub(" ", answer) if target.strip() else answer
    own = target.strip().lower()
    return any(hit(rest, o) for o in others if o.strip().lower() != own)


def same_start(before: Sequence, after: Sequence, n: int = LOCALITY_TOKENS) -> bool:
    """Locality: the first n generated tokens after editing equal those before editing."""
    return list(before[:n]) == list(after[:n])


def name_fidelity_probe(answer: str, subject: str) -> bool | None:
    """None if the answer does not mention the subject's first name; else whether it has the whole name.

    Both as whole words, case-insensitive. The metric is the mean over the non-None probes.
    """
    first = subject.split()[0]
    if not hit(answer, first):
        return None
    return hit(answer, subject)


_TOKEN = re.compile(r"\w+|[^\w\s]")


def _words(text: str) -> list[str]:
    # Stand-in for nltk.word_tokenize: words and single punctuation marks.
    return _TOKEN.findall(text)


def compute_n_gram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """n-gram entropy of one text as in MEMIT (`compute_n_gram_entropy`): weighted mean of bi/trigram entropies (bits)."""
    words = _words(text)
    values = []
    for n, w in zip(ns, weights):
        grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        entropy = -sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0
        values.append(entropy * w)
    return sum(values) / len(values)


def n_gram_entropy(texts: Sequence[str]) -> float:
    """Mean n-gram entropy over generations (MEMIT's `n_gram_entropy`, arithmetic mean)."""
    if not texts:
        return 0.0
    return sum(compute_n_gram_entropy(t) for t in texts) / len(texts)


def fluency_ratio(after: Sequence[str], before: Sequence[str]) -> float:
    """Mean n-gram entropy after editing divided by before (1.0 = unchanged)."""
    base = n_gram_entropy(before)
    if base == 0.0:
        return 1.0 if n_gram_entropy(after) == 0.0 else float("inf")
    return n_gram_entropy(after) / base
