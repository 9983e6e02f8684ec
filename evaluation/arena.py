"""`plaudit eval arena`: a leaderboard against a baseline, Arena-Hard's way, from judgments
(evaluation/judgments.py): Bradley-Terry scores and win rates with bootstrap intervals, with
and without style control, beside each model's position consistency and unscored readings;
written as CSV, JSON and a PNG, and printed as a table."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from plaudit.files import write_atomically

from .judgments import Judgment, counts
from .leaderboard import leaderboard

COLUMNS = ("model", "win_rate", "lower", "upper", "score", "score_lower", "score_upper",
           "style_controlled_win_rate", "style_controlled_lower", "style_controlled_upper", "battles", "questions",
           "unscored", "position_consistency", "first_position_wins", "interval")


def arena(judgments: Sequence[Judgment], baseline: str, *, rounds: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    """One row a model (the baseline's too, at 50%), best first. Style control needs every
    judgment's answers' style; where some lack it (judgments read without the answers) its
    columns are null."""
    if not judgments:
        raise ValueError("no judgments to rank")
    battles = [b for j in judgments for b in j.battles()]
    if not battles:
        raise ValueError("no judgment was read: every reading is unscored")
    rows = leaderboard(battles, baseline, rounds=rounds, seed=seed)
    styled = ({r["model"]: r for r in leaderboard(battles, baseline, rounds=rounds, seed=seed, style_control=True)}
              if all(b.style for b in battles) else {})
    per_model = counts(judgments)
    for row in rows:
        controlled = styled.get(row["model"], {})
        for key in ("win_rate", "lower", "upper"):
            row[f"style_controlled_{key}"] = controlled.get(key)
        row.update(per_model[row["model"]].row() if row["model"] in per_model else
                   {"questions": None, "unscored": None, "position_consistency": None, "first_position_wins": None})
    return [{column: row.get(column) for column in COLUMNS} for row in rows]


def write(rows: list[dict[str, Any]], out: Path, *, png: bool = True) -> list[Path]:
    """leaderboard.csv, leaderboard.json and (with matplotlib) leaderboard.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "leaderboard.json", out / "leaderboard.csv"]
    write_atomically(written[0], json.dumps(rows, indent=2) + "\n")
    with open(written[1], "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if png:
        written.append(plot(rows, out / "leaderboard.png"))
    return written


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Win rate against the baseline with its interval, raw and style-controlled, a model a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [r["model"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.4))
    series = [("win_rate", "lower", "upper", "raw", 0.12, "tab:blue")]
    if all(r["style_controlled_win_rate"] is not None for r in rows):
        series.append(("style_controlled_win_rate", "style_controlled_lower", "style_controlled_upper",
                       "style controlled", -0.12, "tab:orange"))
    for value, low, high, label, offset, colour in series:
        y = [i + offset for i in range(len(models))]
        x = [r[value] for r in rows][::-1]
        err = [[max(0.0, r[value] - r[low]) for r in rows][::-1], [max(0.0, r[high] - r[value]) for r in rows][::-1]]
        ax.errorbar(x, y, xerr=err, fmt="o", capsize=3, label=label, color=colour)
    ax.axvline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(models)), models)
    ax.set_xlabel(f"win rate against the baseline, % ({rows[0]['interval']})")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(rows: list[dict[str, Any]]) -> str:
    """The leaderboard as a fixed-width text table."""
    def number(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    head = f"{'model':<24} {'win rate':>8} {'90% interval':>15} {'style ctl':>9} {'score':>7} {'consist':>7} " \
           f"{'unscored':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        interval = f"{number(r['lower'])}-{number(r['upper'])}"
        lines.append(f"{r['model'][:24]:<24} {number(r['win_rate']):>8} {interval:>15} "
                     f"{number(r['style_controlled_win_rate']):>9} {number(r['score'], 0):>7} "
                     f"{number(r['position_consistency']):>7} {r['unscored'] if r['unscored'] is not None else '-':>8}")
    lines.append(f"({rows[0]['interval']}; consistency: % of questions whose two orders agree)")
    return "\n".join(lines)
