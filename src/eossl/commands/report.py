"""``eossl report DIR``: re-render a benchmark's report from its saved results."""

from __future__ import annotations

COMMAND = "report"


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="re-render a benchmark report from saved results "
                       "(nothing is recomputed)")
    p.add_argument("folder", help="a benchmark folder (holds plan.json)")


def run(a) -> int:
    from ..bench.plan import BenchmarkFolder
    from ..bench.report import write_benchmark_report

    folder = BenchmarkFolder(a.folder)
    folder.load_plan()  # ConfigError when this is not a benchmark folder
    path = write_benchmark_report(folder)
    print(f"report: {path} (and {path.with_suffix('.html')})")
    return 0
