"""Outputs of an eval run: the JSON (exact contract), the answers file, report.md and a bar chart."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .runner import METRICS, EvalRun, MethodResult

LOWER_IS_BETTER = {"confusion"}
CHART_NAME = "metrics.png"


def write_json(run: EvalRun, path: str) -> None:
    """Write atomically, so a partial run (results so far) is always a valid file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(run.to_json(), fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def write_answers(results: Sequence[MethodResult], path: str) -> None:
    """Every probe as one JSON line: method, subject, metric, prompt (as sent), answer, target, hit."""
    with open(path, "w", encoding="utf-8") as fh:
        for result in results:
            for rec in result.records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def of_in_context(run: EvalRun) -> dict[str, float | None]:
    """Each method's instruction recall as a fraction of `in-context` in the same run (1.0: as good as the prompt)."""
    ref = next((r.metrics["instruction"] for r in run.results if r.method == "in-context"), None)
    return {r.method: (r.metrics["instruction"] / ref if ref and r.metrics["instruction"] is not None else None)
            for r in run.results}


def markdown_table(run: EvalRun) -> str:
    ratio = of_in_context(run)
    show = any(v is not None for v in ratio.values())
    head = ["method", *METRICS, *(["instr / in-context"] if show else []), "s/write"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in run.results:
        cells = [r.method, *(_fmt(r.metrics[m]) for m in METRICS), *([_fmt(ratio[r.method])] if show else []),
                 f"{r.seconds_per_write:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_sleeps(results: Sequence[MethodResult], path: str) -> None:
    """Per sleep: method, subject, seconds, each gate measurement, and each fact's stage and answers."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump([{"method": r.method, **x} for r in results for x in r.sleeps], fh, indent=1, ensure_ascii=False)
        fh.write("\n")


def write_report(run: EvalRun, directory: str, command: str = "") -> str:
    """report.md (tables) and metrics.png (bar chart) in `directory`; returns the report's path."""
    os.makedirs(directory, exist_ok=True)
    chart = write_chart(run, os.path.join(directory, CHART_NAME))
    out = [
        f"# Same-subject benchmark: {run.mode} mode",
        "",
        f"- model: `{run.model}`",
        f"- data: `{run.data}`",
    ]
    if command:
        out.append(f"- command: `{command}`")
    out += [
        "",
        "All answers are greedy generations (at most 24 new tokens). Confusion: lower is better; "
        "fluency: n-gram entropy after / before (1.0 = unchanged); s/write: seconds per edit call "
        "(batch mode: a sleep's seconds are in the notes, not in s/write; sequential mode: a write's seconds include "
        "the sleeps its memory's policy ran after it); instr / in-context: instruction recall as a "
        "fraction of `in-context` in this run.",
        "",
        markdown_table(run),
        "",
        "## Probes per metric",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|" + "---|" * (len(METRICS) + 1),
    ]
    for r in run.results:
        out.append("| " + " | ".join([r.method, *(str(r.n_probes[m]) for m in METRICS)]) + " |")
    out += [
        "",
        "## Perplexity of a fixed text",
        "",
        "| method | before | after | after / before |",
        "|---|---|---|---|",
    ]
    for r in run.results:
        ratio = r.perplexity_after / r.perplexity_before if r.perplexity_before else float("nan")
        out.append(f"| {r.method} | {r.perplexity_before:.2f} | {r.perplexity_after:.2f} | {ratio:.3f} |")
    notes = [(r.method, n) for r in run.results for n in r.notes]
    if notes:
        out += ["", "## Notes", ""] + [f"- {m}: {n}" for m, n in notes]
    if any(r.sleeps for r in run.results):
        write_sleeps(run.results, os.path.join(directory, "sleeps.json"))
        out += ["", "Each sleep (gate measurements, every fact's stage and held-back answers): `sleeps.json`."]
    out += ["", f"![metrics per method]({os.path.basename(chart)})", ""]
    path = os.path.join(directory, "report.md")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(out))
    return path


def write_chart(run: EvalRun, path: str) -> str:
    """Grouped bars: one group per metric, one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [r.method for r in run.results]
    n = max(len(methods), 1)
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(METRICS) + 0.3 * n * len(METRICS) / 2), 4.5))
    for i, r in enumerate(run.results):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(METRICS))]
        ys = [r.metrics[m] if r.metrics[m] is not None else 0.0 for m in METRICS]
        ax.bar(xs, ys, width=width, label=r.method)
    ax.set_xticks(range(len(METRICS)))
    ax.set_xticklabels([m + (" (lower=better)" if m in LOWER_IS_BETTER else "") for m in METRICS],
                       rotation=20, ha="right")
    ax.set_ylabel("score")
    top = max([1.0] + [r.metrics[m] or 0.0 for r in run.results for m in METRICS])
    ax.set_ylim(0, top * 1.05)
    ax.set_title(f"{run.model} · {run.mode} mode")
    ax.legend(fontsize="small", ncol=min(n, 4))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
