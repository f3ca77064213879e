"""The README's benchmark tables, read from a benchmark folder's results.json (or .gz).

    python benchmarks/readme_table.py docs/benchmark            # the default headline cells
    python benchmarks/readme_table.py DIR --cell "probe|Linear probe (last stage)|100% labels|accuracy"

Two Markdown tables: every row's mean and 95% confidence interval (Student t over seed x fold
units) in each headline cell, then each method against its own random twin: the mean
difference, on how many units it was ahead and on how many seeds (mean over folds). Cells
come from the same records the report renders (eossl.evaluate.summary), so the README says
what the report says; a cell whose evaluation did not run is "-". The full report keeps
every table.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from eossl.bench.report import read_saved_results, saved_results
from eossl.errors import ConfigError
from eossl.evaluate import results as R
from eossl.evaluate.summary import label, row_infos, row_order

# evaluation | table (prefix) | column | metric | header
CELLS = (
    "probe|Linear probe (last stage)|1% labels|balanced_accuracy|linear 1% (last stage)",
    "probe|Linear probe (last stage)|100% labels|balanced_accuracy|linear 100% (last stage)",
    "probe|Linear probe (multi-scale)|100% labels|balanced_accuracy|linear 100% (multi-scale)",
    "probe|kNN probe|100% labels|balanced_accuracy|kNN 100% (last stage)",
    "finetune|*|100% labels|balanced_accuracy|fine-tuned 100%",
    "pixel-probe|Pixel probe|labelled pixels|balanced_accuracy|pixel probe",
    "segment|Segmentation: fine-tuned U-Net|1% labels|miou|seg. mIoU 1%",
    "segment|Segmentation: fine-tuned U-Net|100% labels|miou|seg. mIoU 100%",
    "regress|*|ridge, last stage|mean_r2|class-share R² (ridge, last stage)",
    "regress|*|fine-tuned|mean_r2|class-share R² (fine-tuned)",
    "multilabel|*|*|micro_map|multi-label micro mAP",
)


def parse_cell(text: str) -> tuple[str, str, str, str, str]:
    parts = text.split("|")
    if len(parts) == 4:
        parts.append(f"{parts[0]} {parts[3]}")
    if len(parts) != 5:
        raise SystemExit(f"--cell {text!r}: expected EVALUATION|TABLE|COLUMN|METRIC[|HEADER] "
                         "(TABLE a prefix, TABLE and COLUMN may be *)")
    return tuple(parts)  # type: ignore[return-value]


def unit_values(records: list[dict], cell) -> dict[str, dict[tuple, float]]:
    """{model: {(seed, fold): value}} of one cell; the first matching table and column."""
    ev, table, column, metric, _ = cell
    recs = [r for r in records if r["evaluation"] == ev and r["metric"] == metric
            and not R.hidden(r) and r.get("value") is not None
            and (table == "*" or r["table"].startswith(table))
            and (column == "*" or r["column"] == column)]
    if not recs:
        return {}
    first_table, first_column = recs[0]["table"], recs[0]["column"]
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for r in recs:
        if r["table"] == first_table and r["column"] == first_column:
            out[r["model"]][(r["seed"], r["fold"])] = float(r["value"])
    return out


def mean_ci_text(values) -> str:
    mean, half = R.mean_ci(list(values))
    return f"{mean:.3f}" + (f" ± {half:.3f}" if half is not None else "")


def tables(records: list[dict], cells) -> str:
    infos = row_infos(records)
    rows = row_order(records, infos)
    by_cell = [unit_values(records, c) for c in cells]
    head = "| model | " + " | ".join(c[4] for c in cells) + " |"
    rule = "|---|" + "---|" * len(cells)
    lines = ["Mean ± 95% CI over seed x fold units.", "", head, rule]
    for m in rows:  # label() flags a collapsed encoder
        lines.append(f"| {label(m, infos)} | " + " | ".join(
            mean_ci_text(v[m].values()) if m in v else "-" for v in by_cell) + " |")
    lines += ["", "Against its random twin: mean difference (seed x fold units ahead / units; "
              "seeds whose mean over folds is ahead / seeds).", "",
              head, rule]
    for m in rows:
        twin = infos.get(m, {}).get("twin")
        if not twin:
            continue
        cells_text = []
        for v in by_cell:
            if m not in v or twin not in v:
                cells_text.append("-")
                continue
            paired = R.paired_diffs(v[m], v[twin])
            units, diffs = list(paired), list(paired.values())
            if not diffs:
                cells_text.append("-")
                continue
            ahead = sum(d > 0 for d in diffs)
            by_seed = defaultdict(list)  # a seed is ahead when its mean over folds is
            for (seed, _), d in zip(units, diffs):
                by_seed[seed].append(d)
            seeds = sum(sum(ds) > 0 for ds in by_seed.values())
            cells_text.append(f"{sum(diffs) / len(diffs):+.3f} ({ahead}/{len(diffs)}; "
                              f"{seeds}/{len(by_seed)})")
        lines.append(f"| {label(m, infos)} | " + " | ".join(cells_text) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a benchmark folder (with results.json or "
                    "results.json.gz)")
    ap.add_argument("--cell", action="append", help="EVALUATION|TABLE|COLUMN|METRIC[|HEADER] "
                    "(repeatable; default: the README's headline cells)")
    a = ap.parse_args(argv)
    path = saved_results(a.folder)
    if path is None:
        raise SystemExit(f"{a.folder / 'results.json'}: no such file (nor results.json.gz; "
                         "run eossl benchmark or eossl report first)")
    try:
        records = read_saved_results(path)["records"]
    except ConfigError as e:  # a script's error: the message, not a traceback
        raise SystemExit(str(e)) from e
    print(tables(records, [parse_cell(c) for c in (a.cell or CELLS)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
