"""Which of a split's questions the sleep's transfer set makes word for word, and the recall on the rest.

The transfer set never reads a benchmark file, but its grammar makes the plainest question a
relation's words allow ("{}'s favorite color is" -> "What is X's favorite color?"), and a split's
writers often ask just that. Such a question may be among the sleep's training or held-back
questions, so recall on it is not generalisation. This counts a split's questions that the
transfer set's fixed forms make (`sleep.transfer.fixed_questions` and the open requests, compared
case-insensitively; the few questions the model writes itself are sampled and not counted), and
with `--answers` files of `rose-memory eval`, each method's instruction recall on the questions
made and on the others:

    python benchmarks/transfer_overlap.py benchmarks/data/same_subject_dev.jsonl \
        --answers docs/results/dev_batch_sleep_whole_3e4ccf3_seed1/answers.jsonl.gz
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

from locality_misses import read_answers

from rose_memory.eval.data import BenchSubject, load_benchmark
from rose_memory.sleep.transfer import fixed_questions, open_requests


def _key(question: str) -> str:
    return question.strip().lower()


def made_questions(subjects: list[BenchSubject]) -> set[str]:
    """Every question the transfer set's fixed forms make for the subjects' facts (as `_key`s)."""
    out = set()
    for subject in subjects:
        out.update(_key(q) for r in subject.requests() for q in fixed_questions(r))
        out.update(_key(q) for q in open_requests(subject.name))
    return out


def summarize(data: str, answers: list[str] = ()) -> dict:
    subjects = load_benchmark(data)
    made = made_questions(subjects)
    asked = {s.name: s.questions() for s in subjects}
    overlap = [q for qs in asked.values() for q in qs if _key(q) in made]
    out = {"questions": sum(map(len, asked.values())), "made by the transfer set": len(overlap),
           "those questions": overlap, "runs": {}}
    for path in answers:
        counts: dict = collections.defaultdict(lambda: [0, 0])
        for row in read_answers(path):
            if row.get("metric") != "instruction":
                continue
            # the question as asked: the longest of the subject's questions inside the prompt (any chat template)
            found = [q for q in asked.get(row["subject"], []) if q in row["prompt"]]
            if not found:
                continue
            key = (row["method"], "made" if _key(max(found, key=len)) in made else "not made")
            counts[key][0] += bool(row["hit"])
            counts[key][1] += 1
        out["runs"][path] = {f"{m}, {k}": {"hits": h, "of": n, "recall": round(h / n, 3)}
                             for (m, k), (h, n) in sorted(counts.items())}
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", help="a benchmark file (the eval's --data)")
    p.add_argument("--answers", nargs="*", default=[], help="eval --answers files of runs on that file")
    args = p.parse_args(argv)
    json.dump(summarize(args.data, args.answers), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
