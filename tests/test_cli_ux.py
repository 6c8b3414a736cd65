"""What a user of the `rose-memory` command sees: progress on stderr (silenced by --quiet), --json
results on stdout that parse, and a help text for every argument.

On the tiny random model (rose_memory.tiny) or with no model at all; the real model is never loaded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rose_memory.cli import build_parser, main as cli
from rose_memory.tiny import tiny_home

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
FACT = ["--subject", "Aurelio", "--fact", "lives in the city of=Warsaw"]


def progress_lines(err: str) -> list[str]:
    """Stage lines and tqdm bars in a command's stderr (a bar redraws with carriage returns)."""
    lines = err.replace("\r", "\n").splitlines()
    return [line for line in lines if line.startswith("rose-memory:") and " error:" not in line or "it/s]" in line
            or "%|" in line]


# -- the parser --------------------------------------------------------------------------------


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of the parser and every subparser under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))


def leaves(parser: argparse.ArgumentParser):
    """The runnable commands: parsers without subcommands of their own."""
    for path, p in commands(parser):
        if path and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            yield path, p


def test_every_argument_and_command_has_a_help_text():
    parser = build_parser()
    missing = []
    for path, p in commands(parser):
        for action in p._actions:
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append((" ".join(path) or "rose-memory", action.dest))
            if isinstance(action, argparse._SubParsersAction):
                helped = {c.dest for c in action._choices_actions if (c.help or "").strip()}
                missing += [(" ".join(path + (name,)), "(command help)") for name in action.choices if name not in helped]
    assert missing == []
    assert len(list(leaves(parser))) >= 11  # remember ask forget ledger×4 consolidate export eval chat


def test_the_description_speaks_to_users():
    text = build_parser().format_help()
    assert "registers its own subparsers" not in text
    for word in ("remember", "ask", "chat", "ledger", "forget", "--quiet", "--json"):
        assert word in text


def test_every_command_takes_quiet_and_every_result_takes_json():
    for path, p in leaves(build_parser()):
        flags = {s for a in p._actions for s in a.option_strings}
        assert "--quiet" in flags, path
        if path != ("ledger", "serve"):  # serve runs a server until Ctrl-C; it prints no result
            assert "--json" in flags, path


@pytest.mark.parametrize("argv,quiet", [
    (["ledger", "list"], False),
    (["--quiet", "ledger", "list"], True),
    (["ledger", "list", "--quiet"], True),
    (["-q", "--home", "/tmp/h", "ask", "Who?"], True),
    (["ask", "Who?", "-q"], True),
    (["eval", "--data", "d", "--methods", "none", "--mode", "batch", "--json", "-", "--quiet"], True),
    (["chat", "--quiet"], True),
    (["chat"], False),
])
def test_quiet_before_or_after_the_command(argv, quiet):
    assert build_parser().parse_args(argv).quiet is quiet


# -- progress and --json on the tiny model -------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory, tiny_dir):
    """A tiny-model home with the write guard on (more stages), no write rate limit."""
    return tiny_home(tmp_path_factory.mktemp("cli-ux") / "home", tiny_dir, guard={"enabled": True},
                     limits={"max_writes_per_minute": None})


def test_quiet_leaves_stderr_empty(tmp_path, tiny_dir):
    """In a fresh process (so the model really loads, with transformers' own bars) and an empty cache
    folder (so the key statistics are computed, with their bars): nothing on stderr."""
    home = tiny_home(tmp_path / "home", tiny_dir, guard={"enabled": True})
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "ROSE_MEMORY_CACHE": str(tmp_path / "cache")}
    env.pop("TQDM_DISABLE", None)
    proc = subprocess.run([sys.executable, "-m", "rose_memory.cli", "--quiet", "remember", "--home", str(home), *FACT],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith("edit 1 applied")


def test_json_results_parse_and_progress_goes_to_stderr(home, tmp_path, monkeypatch, capsys):
    from rose_memory.editing import stats

    monkeypatch.setenv("ROSE_MEMORY_CACHE", str(tmp_path / "cache"))  # the key statistics computed afresh
    monkeypatch.setattr(stats, "_memory", {})
    assert cli(["remember", "--home", str(home), *FACT, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["status"] == "applied"
    stages = [line for line in err.splitlines() if line.startswith("rose-memory:")]
    for expected in ("key statistics of layer(s)", "edit 1: write guard: 8 canary prompts before the write", "edit 1: computing the rose edit",
                     "edit 1: verifying: 3 questions", "edit 1: write guard: the canary prompts after"):
        assert any(expected in line for line in stages), (expected, err)

    for argv in (["ask", "Where does Aurelio live?", "--max-new-tokens", "2"], ["ledger", "list"], ["ledger", "show", "1"],
                 ["ledger", "verify"], ["export", "--lora", str(tmp_path / "lora")], ["consolidate"]):
        assert cli([*argv, "--home", str(home), "--json"]) == 0, argv
        out, err = capsys.readouterr()
        json.loads(out)
        assert "rose-memory:" not in out and "%|" not in out, argv
        if argv[0] == "export":
            assert "as a LoRA adapter to" in err
    # the same commands with --quiet print the same JSON and nothing on stderr
    assert cli(["--quiet", "export", "--lora", str(tmp_path / "lora2"), "--home", str(home), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["rank"] >= 1 and progress_lines(err) == []
    assert cli(["remember", "--home", str(home), "--subject", "Bruno", "--fact", "works as a=baker", "-q"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("edit ") and " applied: Bruno" in out and progress_lines(err) == []


def test_chat_json_prints_one_json_line_per_turn(home, monkeypatch, capsys):
    script = "/remember Carla Diaz | works as a = pilot\n\n/memories\nHello there.\n/forget 999\n/quit\nnever read\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(script))
    assert cli(["chat", "--home", str(home), "--json", "--no-extractor", "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    turns = [json.loads(line) for line in out.splitlines()]
    assert [t["question"] for t in turns] == ["/remember Carla Diaz | works as a = pilot", "/memories",
                                              "Hello there.", "/forget 999"]
    assert all(set(t) == {"question", "answer", "written", "source", "errors"} for t in turns)
    written = turns[0]["written"]
    assert turns[0]["source"] == "command" and written[0]["status"] == "applied" and written[0]["subject"] == "Carla Diaz"
    assert f"memory {written[0]['edit_id']}" in turns[1]["answer"]
    assert isinstance(turns[2]["answer"], str) and turns[2]["written"] == []
    assert turns[3]["errors"]                                      # an unknown edit: an error in the line, no crash
    assert "you>" not in out and "rose-memory chat (" not in out   # no banner, no prompt, no echo on stdout
    assert any(line.startswith(f"rose-memory: edit {written[0]['edit_id']}: computing") for line in err.splitlines())


def test_eval_json_dash_prints_the_results_on_stdout(tmp_path, monkeypatch, capsys):
    """`eval --json -`: the results JSON on stdout instead of the table, progress on stderr (no model: stubbed)."""
    import rose_memory.eval.runner as runner
    import rose_memory.model

    monkeypatch.setattr(rose_memory.model, "load_cached", lambda *a, **k: type("LM", (), {"name": "stub"})())

    class StubRunner:
        def __init__(self, lm, subjects, locality, progress, **kw):
            self.progress = progress

        def run(self, methods, on_result):
            for m in methods:
                on_result(runner.MethodResult(method=m, metrics={k: None for k in runner.METRICS},
                                              n_probes={k: 0 for k in runner.METRICS}, seconds_per_write=0.0,
                                              perplexity_before=0.0, perplexity_after=0.0))

    monkeypatch.setattr(runner, "Runner", StubRunner)
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"subject": "Aurelio", "facts": [
        {"relation": "city", "prompt": "{} lives in the city of", "target": "Warsaw",
         "paraphrases": ["The city where {} lives is"], "questions": ["Where does {} live?"]}]}) + "\n")
    argv = ["eval", "--data", str(data), "--methods", "none", "--mode", "batch", "--json", "-"]
    try:
        code = cli(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "stub" and [r["method"] for r in doc["results"]] == ["none"]
    assert "rose-memory: loading the model" in err
    assert not (tmp_path / "-").exists()
    assert cli([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["results"] and progress_lines(err) == []
