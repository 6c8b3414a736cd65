"""Load and validate the same-subject benchmark and the locality prompts (format: shared/benchmark/README.md).

Every fault is a RoseMemoryError that names the file and the line, raised before anything runs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from pydantic import ValidationError

from ..errors import RoseMemoryError
from ..facts import EditRequest


@dataclass(frozen=True)
class BenchFact:
    """One fact of a subject: the edit form, its target, and the wordings used to measure it."""

    relation: str
    prompt: str  # the edit form, '{}' where the subject goes
    target: str
    paraphrases: tuple[str, ...]  # raw completions, '{}' for the subject
    questions: tuple[str, ...]  # user questions, '{}' for the subject


@dataclass(frozen=True)
class BenchSubject:
    name: str
    facts: tuple[BenchFact, ...]
    line: int  # 1-based line in the data file

    def requests(self) -> list[EditRequest]:
        return [fact_request(self.name, f) for f in self.facts]

    def questions(self) -> list[str]:
        """Every question of every fact, the subject filled in."""
        return [fill(q, self.name) for f in self.facts for q in f.questions]


@dataclass(frozen=True)
class LocalityItem:
    prompt: str
    answer: str
    line: int

    @property
    def chat(self) -> bool:
        return is_question(self.prompt)


def fill(template: str, subject: str) -> str:
    return template.replace("{}", subject)


def is_question(text: str) -> bool:
    """Locality prompts that are questions go through the chat template; the others are raw text."""
    return text.rstrip().endswith("?")


def fact_request(subject: str, fact: BenchFact) -> EditRequest:
    return EditRequest(subject=subject, prompt=fact.prompt, target=fact.target)


def fact_sentence(subject: str, fact: BenchFact) -> str:
    """The fact as a plain sentence, e.g. 'Aurelio Sarkisian lives in the city of Warsaw.'"""
    return f"{fill(fact.prompt, subject)} {fact.target}."


def _read_lines(path: str, what: str) -> list[tuple[int, dict]]:
    if not isinstance(path, (str, os.PathLike)):
        raise RoseMemoryError(f"{what} file must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RoseMemoryError(f"{what} file {path} does not exist")
    if os.path.isdir(path):
        raise RoseMemoryError(f"{what} file {path} is a directory; give a .jsonl file")
    rows: list[tuple[int, dict]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise RoseMemoryError(f"{path}: not UTF-8 text ({err}); give a .jsonl file") from None
    except OSError as err:
        raise RoseMemoryError(f"{what} file {path} cannot be read: {err}") from None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise RoseMemoryError(f"{path}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise RoseMemoryError(f"{path}, line {number}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise RoseMemoryError(f"{what} file {path} has no entries; put one JSON object on each line")
    return rows


def _text(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise RoseMemoryError(f"{where}: missing key {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise RoseMemoryError(f"{where}: {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _templates(obj: dict, key: str, where: str) -> tuple[str, ...]:
    if key not in obj:
        raise RoseMemoryError(f"{where}: missing key {key!r} (a list of strings, may be empty)")
    value = obj[key]
    if not isinstance(value, list):
        raise RoseMemoryError(f"{where}: {key!r} must be a list of strings, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise RoseMemoryError(f"{where}: {key}[{i}] must be a non-empty string, got {item!r}")
        if "{}" not in item:
            raise RoseMemoryError(f"{where}: {key}[{i}] {item!r} has no '{{}}' where the subject goes")
        out.append(item.strip())
    return tuple(out)


def _fact(obj: object, subject: str, where: str) -> BenchFact:
    if not isinstance(obj, dict):
        raise RoseMemoryError(f"{where}: a fact must be a JSON object, got {type(obj).__name__}")
    prompt = _text(obj, "prompt", where)
    target = _text(obj, "target", where)
    relation = obj.get("relation", "")
    if not isinstance(relation, str):
        raise RoseMemoryError(f"{where}: 'relation' must be a string, got {relation!r}")
    try:
        EditRequest(subject=subject, prompt=prompt, target=target)
    except ValidationError as err:
        msgs = "; ".join(e["msg"].removeprefix("Value error, ") for e in err.errors())
        raise RoseMemoryError(f"{where}: {msgs}") from None
    return BenchFact(
        relation=relation.strip(),
        prompt=prompt,
        target=target,
        paraphrases=_templates(obj, "paraphrases", where),
        questions=_templates(obj, "questions", where),
    )


def load_benchmark(path: str) -> list[BenchSubject]:
    """Read a same-subject benchmark file: one subject with its facts per line."""
    subjects: list[BenchSubject] = []
    seen: dict[str, int] = {}
    for number, obj in _read_lines(path, "benchmark"):
        where = f"{os.fspath(path)}, line {number}"
        name = _text(obj, "subject", where)
        if name in seen:
            raise RoseMemoryError(f"{where}: subject {name!r} already appears on line {seen[name]}; one line per subject")
        seen[name] = number
        facts = obj.get("facts")
        if not isinstance(facts, list) or not facts:
            raise RoseMemoryError(f"{where}: 'facts' must be a non-empty list of facts")
        parsed = tuple(_fact(f, name, f"{where}, fact {i}") for i, f in enumerate(facts))
        prompts: dict[str, str] = {}
        for i, f in enumerate(parsed):
            if f.prompt in prompts and prompts[f.prompt] != f.target:
                raise RoseMemoryError(
                    f"{where}, fact {i}: prompt {f.prompt!r} already has target {prompts[f.prompt]!r}; keep one"
                )
            prompts[f.prompt] = f.target
        subjects.append(BenchSubject(name=name, facts=parsed, line=number))
    return subjects


def load_locality(path: str) -> list[LocalityItem]:
    """Read locality prompts: {"prompt": ..., "answer": ...} per line."""
    items = []
    for number, obj in _read_lines(path, "locality"):
        where = f"{os.fspath(path)}, line {number}"
        items.append(LocalityItem(prompt=_text(obj, "prompt", where), answer=_text(obj, "answer", where), line=number))
    return items
