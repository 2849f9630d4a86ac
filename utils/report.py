"""The common ``report.json`` every learner writes, and its printed table.

Keys are fixed (see DESIGN.md); a value that was not measured is ``None`` (null), never invented.
"""
from __future__ import annotations

import json
from typing import Any

from utils.checkpoint import atomic_write_text


def empty_report(learner: str, model: str, dataset: str) -> dict:
    pair = lambda: {"full": None, "compressed": None}  # noqa: E731
    return {
        "learner": learner,
        "model": model,
        "dataset": dataset,
        "accuracy": {"full": None, "compressed_before_finetune": None, "compressed": None},
        "flops": pair(),
        "params": pair(),
        "bytes_on_disk": pair(),
        "latency_ms": pair(),
        "wall_s": {},
    }


def write_report(path: str, report: dict) -> None:
    """Atomic JSON write."""
    atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False) + "\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def format_report(report: dict) -> str:
    """A fixed-width table: one row per metric, columns full / compressed (and ratio)."""
    lines = [f"== {report['learner']} | {report['model']} @ {report['dataset']} =="]
    acc = report["accuracy"]
    lines.append(f"{'metric':<28}{'full':>16}{'compressed':>16}{'ratio':>10}")
    rows = [("accuracy", acc.get("full"), acc.get("compressed")),
            ("accuracy before fine-tune", None, acc.get("compressed_before_finetune"))]
    for key in ("flops", "params", "bytes_on_disk"):
        rows.append((key, report[key].get("full"), report[key].get("compressed")))
    latency = report["latency_ms"]
    for batch in sorted({k for side in latency.values() if side for k in side}):
        rows.append((f"latency_ms {batch}", (latency.get("full") or {}).get(batch),
                     (latency.get("compressed") or {}).get(batch)))
    for name, full, comp in rows:
        ratio = comp / full if isinstance(full, (int, float)) and isinstance(comp, (int, float)) \
            and full else None
        lines.append(f"{name:<28}{_fmt(full):>16}{_fmt(comp):>16}{_fmt(ratio):>10}")
    for record in report.get("passes") or []:
        lines.extend(format_pass(record))
    if len(report.get("chain") or []) > 1:
        lines.extend(format_chain(report["chain"]))
    for phase, seconds in report["wall_s"].items():
        lines.append(f"{'wall_s ' + phase:<28}{_fmt(seconds):>16}")
    return "\n".join(lines)


def format_pass(record: dict) -> list[str]:
    """Printed rows of a structural pass's timing (``compression.surgery.passes``)."""
    ms = record["latency_ms"]
    verdict = "kept" if record["kept"] else "undone (slower)"
    rows = [f"{'pass ' + record['pass'] + ' ' + batch:<28}{_fmt(ms['before'][batch]):>16}"
            f"{_fmt(ms['after'][batch]):>16}{_fmt(ms['after'][batch] / ms['before'][batch]):>10}"
            f"  {verdict}" for batch in ms["before"]]
    if "flops" in record:       # a pass that trades FLOPs for time (fold_gathers)
        flops = record["flops"]
        rows.append(f"{'pass ' + record['pass'] + ' flops':<28}{flops['before']:>16,}"
                    f"{flops['after']:>16,}{_fmt(flops['after'] / flops['before']):>10}")
    return rows


def format_chain(chain: list[dict]) -> list[str]:
    """Printed rows of a chain (for the report table)."""
    lines = [f"{'chain stage':<28}{'accuracy':>10}{'flops':>14}{'params':>12}{'bytes':>12}"]
    for i, entry in enumerate(chain):
        acc = entry.get("accuracy")
        cells = [f"{acc:.4f}" if isinstance(acc, float) else "-"]
        cells += [f"{entry[k]:,}" if isinstance(entry.get(k), int) else "-"
                  for k in ("flops", "params", "bytes")]
        lines.append(f"{f'{i}. ' + entry['learner']:<28}{cells[0]:>10}{cells[1]:>14}"
                     f"{cells[2]:>12}{cells[3]:>12}")
    return lines
