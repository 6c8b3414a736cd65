"""A ceiling diagnostic, never a method: RoSE fitted on the eval file's own questions.

Each fact's rows get, beside RoSE's own, one row per question of the file: the question
asked through the chat template, and a reply that restates the fact in the edit's words
("Aurelio Sarkisian's favorite color is brown"), as RoSE's open-request rows do. The eval
then asks exactly those questions. What it answers bounds what any choice of rows can give
with this value (one vector at the subject's last token, its norm clamp, its steps): if the
questions a value was fitted on are not answered, other wordings will not be either.
Everything else is `rose-memory eval` (same arguments after DATA, `--set` included):

    python benchmarks/question_ceiling.py DATA --locality FILE --methods rose --mode batch \
        --seed 0 --limit 10 --json out.json [--answers answers.jsonl] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import json
import sys

from rose_memory import cli
from rose_memory.editing import rose
from rose_memory.editing.tokens import build_row, split_prompt


def questions_of(path: str) -> dict[tuple[str, str], list[str]]:
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                for fact in d["facts"]:
                    out[(d["subject"], fact["prompt"])] = fact["questions"]
    return out


def with_question_rows(questions: dict[tuple[str, str], list[str]]):
    own = rose.target_rows

    def target_rows(lm, req, group, cfg):
        rows = own(lm, req, group, cfg)
        before, after = split_prompt(req.prompt)
        s, t = req.subject, req.target
        rel = "scored" if cfg.reply_relation else "text"   # as RoSE's own chat rows score the reply
        for q in questions.get((s, req.prompt), []):
            pieces = rose._in_chat(lm, q.format(s), s, before) + [("subject_scored", s), (rel, after),
                                                                  ("scored", " " + t)]
            rows.append(rose._tagged(build_row(lm, pieces, cfg.natural_tokens), group))
        return rows

    return target_rows


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        questions = questions_of(argv[0])
    except (OSError, ValueError, KeyError) as err:   # the eval names file and line; this only needs the questions
        print(f"question_ceiling: cannot read questions from {argv[0]}: {err}", file=sys.stderr)
        return 2
    rose.target_rows = with_question_rows(questions)
    return cli.main(["eval", "--data", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
