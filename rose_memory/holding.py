"""Which live edits hold which facts of a subject: what a write carries over and what a forget takes back.

Pure functions on ledger rows (dicts with "id", "origin", "status", "facts", "metrics"), so the
rules are read and tested without a model. A write about a subject carries the facts its live
edits hold into its own edit and supersedes them (`carry`); a fact keeps a record of the write
that told it (the row's `metrics.carried` lists what a row holds only because it carried it), so
forgetting a write finds its facts wherever they are held now (`holders`) and writes the rest
again (`rewritten`).
"""

from __future__ import annotations

# a write whose facts are still held: its own edit is live, or a later edit or a sleep delta carries
# them; such a write can be forgotten, and counts toward the policy's writes since the last sleep
HELD = ("applied", "superseded", "consolidated")


def carry(rows: list[dict], prompts: set[str], joint: bool, max_facts: int) -> tuple[list[dict], list[dict]]:
    """The live rows `rows` of a subject that an edit of the relations `prompts` supersedes, and the
    facts it carries over from them ({"prompt", "object", "from": row id}), oldest row first.

    A row holding one of `prompts` is always superseded and its other facts carried. With `joint`
    every other row is too, newest first while the edit stays within `max_facts` facts: every edit
    of a subject writes to the same subject key, and an edit solved for its new fact alone moves
    the subject's value away from the facts already there; one joint edit per subject also keeps
    the live edits few, which is what locality pays for.
    """
    old = [r for r in rows if any(f["prompt"] in prompts for f in r["facts"])]
    kept = {f["prompt"] for r in old for f in r["facts"]} - prompts
    if joint:
        room = max_facts - len(prompts)
        for r in reversed([r for r in rows if r not in old]):
            more = {f["prompt"] for f in r["facts"]} - prompts - kept
            if len(kept | more) <= room:
                old.append(r)
                kept |= more
    old.sort(key=lambda r: r["id"])
    held = {f["prompt"]: {"prompt": f["prompt"], "object": f["object"], "from": r["id"]}
            for r in old for f in r["facts"] if f["prompt"] not in prompts}  # a later row wins a relation
    return old, list(held.values())


def told(row: dict) -> dict[str, str]:
    """{prompt: object} of the facts `row`'s write told (its facts less those it carried over)."""
    carried = {f["prompt"] for f in (row["metrics"] or {}).get("carried", [])}
    return {f["prompt"]: f["object"] for f in row["facts"] if f["prompt"] not in carried}


def holders(row: dict, live: list[dict]) -> list[dict]:
    """The rows among `live` (the subject's applied rows) that hold a fact `row`'s write told, `row`
    itself included when it is live. An applied sleep row is its own holder only: a sleep told
    nothing new, and forgetting it forgets its delta and what it consolidated."""
    if row["origin"] == "sleep" and row["status"] == "applied":
        return [row]
    said = told(row)
    return [r for r in live if r["id"] == row["id"] or any(said.get(f["prompt"]) == f["object"] for f in r["facts"])]


def rewritten(rows: list[dict], ids: list[int], said: dict[str, str]) -> list[dict]:
    """The facts to write again after the rows `ids` of a subject are forgotten: what they held
    ({"prompt", "object"}, a later row winning a relation), less the facts `said` being forgotten
    and those an applied row that stays holds (`rows`: the subject's rows, every status)."""
    held = {f["prompt"] for r in rows if r["status"] == "applied" and r["id"] not in ids for f in r["facts"]}
    gone = {f["prompt"]: f for r in rows if r["id"] in ids for f in r["facts"]}
    return [{"prompt": p, "object": f["object"]} for p, f in gone.items() if said.get(p) != f["object"] and p not in held]
