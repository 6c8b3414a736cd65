"""A ceiling diagnostic, never a method: RoSE fitted on the eval file's own questions.

Each fact's rows get, beside RoSE's own, one row per question of the file: the question
asked through the chat template, and a reply that restates the fact in the edit's words
("Aurelio Sarkisian's favorite color is brown"), built as RoSE's open-request rows are
(`rose.reply_row`, so `--set reply_name/reply_relation` apply to both). The eval
then asks exactly those questions. What it answers bounds what any choice of rows can give
with this value (one vector at the subject's last token, its norm clamp, its steps): if the
questions a value was fitted on are not answered, other wordings will not be either.
Everything else is `rose-memory eval` (same arguments after DATA, `--set` included):

    python benchmarks/question_ceiling.py DATA --locality FILE --methods rose --mode batch \
        --seed 0 --limit 10 --json out.json [--answers answers.jsonl] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import sys

from rose_memory import cli
from rose_memory.editing import rose
from rose_memory.errors import RoseMemoryError
from rose_memory.eval.data import fill, load_benchmark


def questions_of(path: str) -> dict[tuple[str, str], list[str]]:
    """(subject, edit prompt) -> the fact's questions, the subject filled in (the eval's own reader)."""
    return {(b.name, f.prompt): [fill(q, b.name) for q in f.questions]
            for b in load_benchmark(path) for f in b.facts}


def with_question_rows(questions: dict[tuple[str, str], list[str]]):
    own = rose.target_rows

    def target_rows(lm, req, group, cfg):
        extra = [rose._tagged(rose.reply_row(lm, q, req, cfg), group)   # replied to as RoSE's chat rows are
                 for q in questions.get((req.subject, req.prompt), [])]
        return own(lm, req, group, cfg) + extra

    return target_rows


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        questions = questions_of(argv[0])
    except RoseMemoryError as err:   # names the file and line, as the eval would
        print(f"question_ceiling: cannot read questions from {argv[0]}: {err}", file=sys.stderr)
        return 2
    rose.target_rows = with_question_rows(questions)
    return cli.main(["eval", "--data", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
