"""Compare MLflow runs: ``python -m lightning_modules runs compare [--experiment NAME] [--metrics ...] [--plot out.png]``.

Prints one row per run (name, id, status, steps, the chosen params, and the last and best value
of each chosen metric) and optionally draws the metric curves of those runs on one figure.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_modules.tracking.run_logger import default_tracking_uri, sqlite_file
from preprocess.bench import format_table
from preprocess.figures import pyplot, save_figure

LOWER_IS_BETTER_HINTS = ("l1", "loss", "mse", "error", "mm", "lmd", "fid", "lpips")


def lower_is_better(metric: str) -> bool:
    """Best = minimum unless the name says otherwise (correlations, SSIM, CSIM: maximum)."""
    return any(h in metric.lower() for h in LOWER_IS_BETTER_HINTS)


def _client(tracking_uri: str | None) -> Any:
    from mlflow.tracking import MlflowClient

    uri = tracking_uri or default_tracking_uri()
    if (db := sqlite_file(uri)) is not None and not db.is_file():
        raise SystemExit(f"error: no MLflow database at {db}: run this where training ran, or pass --tracking-uri")
    return MlflowClient(uri)


def collect_runs(client: Any, experiment: str | None, metrics: Sequence[str] | None, params: Sequence[str] | None, max_runs: int = 50) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Rows for the table, and the metric and param names they hold.

    metrics None = every metric the runs logged; params None = the params whose values differ between the runs.
    """
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = ", ".join(e.name for e in client.search_experiments()) or "none"
            raise SystemExit(f"error: no MLflow experiment named {experiment!r} (experiments: {names})")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exp_ids, max_results=max_runs, order_by=["attributes.start_time DESC"])[::-1]
    if not runs:
        raise SystemExit("error: no runs found" + (f" in experiment {experiment!r}" if experiment else ""))
    metric_names = list(metrics) if metrics else sorted({k for r in runs for k in r.data.metrics if k != "epoch"})
    if params is None:  # the params that differ, less bookkeeping (callbacks, logger, run name)
        keys = sorted({k for r in runs for k in r.data.params if not k.startswith(("trainer/callbacks", "trainer/logger"))})
        params = [k for k in keys if len({r.data.params.get(k) for r in runs}) > 1]
    rows = []
    for r in runs:
        row: dict[str, Any] = {"run": r.info.run_name, "id": r.info.run_id[:8], "status": r.info.status, "_run_id": r.info.run_id}
        steps = 0
        for m in metric_names:
            history = client.get_metric_history(r.info.run_id, m)
            if not history:
                row[f"{m} last"], row[f"{m} best"] = None, None
                continue
            history.sort(key=lambda x: (x.step, x.timestamp))
            values = [h.value for h in history]
            row[f"{m} last"] = values[-1]
            row[f"{m} best"] = min(values) if lower_is_better(m) else max(values)
            steps = max(steps, history[-1].step)
        row["steps"] = steps
        for p in params:
            row[p] = r.data.params.get(p)
        rows.append(row)
    return rows, metric_names, list(params)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def plot_runs(client: Any, runs: list[dict[str, Any]], metrics: Sequence[str], out: Path) -> Path:
    """One panel per metric, one line per run, on the step axis."""
    fig, axes = pyplot().subplots(len(metrics), 1, figsize=(8, 2.8 * len(metrics)), squeeze=False)
    for ax, m in zip(axes[:, 0], metrics):
        for row in runs:
            history = sorted(client.get_metric_history(row["_run_id"], m), key=lambda x: (x.step, x.timestamp))
            if history:
                ax.plot([h.step for h in history], [h.value for h in history], marker="." if len(history) < 30 else None, label=row["run"])
        ax.set_title(m)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def compare(args: argparse.Namespace) -> None:
    client = _client(args.tracking_uri)
    rows, metrics, params = collect_runs(client, args.experiment, args.metrics, args.params, args.max_runs)
    columns = ["run", "id", "status", "steps", *params, *(f"{m} {k}" for m in metrics for k in ("last", "best"))]
    print(format_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows]))
    if args.plot:
        path = plot_runs(client, rows, metrics, Path(args.plot))
        print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightning_modules runs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="table (and plot) of runs' params and metrics")
    c.add_argument("--experiment", help="MLflow experiment name (default: every experiment)")
    c.add_argument("--metrics", nargs="+", help="metric keys, e.g. val/exp_mse train/loss/total (default: every metric)")
    c.add_argument("--params", nargs="+", help="param keys, e.g. model/net/d_model (default: the params that differ between the runs)")
    c.add_argument("--plot", metavar="PNG", help="also draw the chosen metrics' curves of these runs into this file")
    c.add_argument("--tracking-uri", "--tracking_uri", dest="tracking_uri", help="default: $MLFLOW_TRACKING_URI or sqlite:///./mlruns/mlflow.db")
    c.add_argument("--max-runs", "--max_runs", dest="max_runs", type=int, default=50, help="newest runs to show at most (default 50)")
    c.set_defaults(func=compare)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
