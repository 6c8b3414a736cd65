"""Token rows for the editing passes: where the subject's last token is and which tokens are scored."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..model import LoadedModel


@dataclass
class Row:
    ids: list[int]
    lookups: list[int]                  # positions of the subject's last token (edit positions)
    scored: list[int] = field(default_factory=list)   # positions whose NEXT token is scored
    weight: float = 1.0
    group: int = 0                      # which fact (or fact index) this row trains


def _enc(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _spaces_forward(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Move a piece's trailing space onto the next piece ("about " + "Ann" -> "about" + " Ann").

    BPE tokenizers attach the space to the word after it; encoded apart, "about " ends in a
    lone space token and "Ann" gets word-start tokens no real text has (MEMIT moves the space
    the same way). The concatenated text is unchanged.
    """
    out = [list(p) for p in pieces if p[1]]
    for a, b in zip(out, out[1:]):
        if a[1].endswith(" ") and not a[1].isspace() and not b[1][:1].isspace():
            a[1], b[1] = a[1][:-1], " " + b[1]
    return [(k, t) for k, t in out if t]


def build_row(lm: LoadedModel, pieces: list[tuple[str, str]], natural: bool = True) -> Row:
    """Concatenate text pieces tagged 'text' | 'subject' | 'scored' | 'subject_scored'.

    Tokenised piece by piece so positions are exact; a 'subject' piece marks its last token as
    an edit position, a 'scored' piece has each of its tokens scored (teacher forcing).
    natural: spaces moved forward so the row has the tokens the joined text has (MEMIT's way);
    False encodes each piece as written ("about " + "Ann": a lone space token, then "Ann").
    """
    tok = lm.tokenizer
    ids: list[int] = []
    bos = tok.bos_token_id if getattr(tok, "add_bos_token", False) else None
    if bos is not None:
        ids.append(bos)
    row = Row(ids=ids, lookups=[])
    for kind, text in (_spaces_forward(pieces) if natural else pieces):
        if not text:
            continue
        part = _enc(tok, text)
        if kind in ("scored", "subject_scored"):
            row.scored.extend(range(len(ids) - 1, len(ids) - 1 + len(part)))
        ids.extend(part)
        if kind in ("subject", "subject_scored"):
            row.lookups.append(len(ids) - 1)
    return row


def batch(rows: list[Row], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask: [n, T]. Right padding keeps positions as built."""
    n, t = len(rows), max(len(r.ids) for r in rows)
    ids = torch.full((n, t), pad_id, dtype=torch.long)
    mask = torch.zeros((n, t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        mask[i, : len(r.ids)] = 1
    return ids.to(device), mask.to(device)


def split_prompt(prompt: str) -> tuple[str, str]:
    """'{} lives in' -> ('', ' lives in')."""
    before, after = prompt.split("{}")
    return before, after
