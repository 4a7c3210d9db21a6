"""``python -m lightning_modules.a2e.table5 --experiment NAME``: the paper's Table 5 from MLflow runs.

Groups an experiment's finished A2E runs by their ablation switches (``use_shape`` × ``use_history``)
and prints, per group, mean ± standard deviation over its runs (seeds) of the last validation
values (or, with ``--at best``, the values at each run's validation point of lowest ``val/loss/total``:
early stopping on the split's validation speakers): expression MSE (and its part in the lips' subspace of β, ``FaceModel.mouth_subspace``),
mouth-vertex error (mm), lip-opening correlation and its within-window part (the opening's motion, level
aside; runs from before that metric show —); beside them the two
predictors that need no training, on the same windows: the history mean (available at inference)
and the clip mean (an oracle: it knows the clip's average expression).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from lightning_modules.tracking.compare import _client

METRICS = {
    "expression MSE": "val/exp_mse",
    "of which lips' subspace": "val/exp_mse_mouth",
    "mouth vertex mm": "val/mouth_vertex_mm",
    "lip-opening r": "val/lip_open_corr",
    "lip-motion r (within window)": "val/lip_motion_corr",
}
BASELINES = {
    "history mean": {
        "expression MSE": "val/exp_mse_history_mean",
        "of which lips' subspace": "val/exp_mse_mouth_history_mean",
        "mouth vertex mm": "val/mouth_vertex_mm_history_mean",
        "lip-opening r": "val/lip_open_corr_history_mean",
    },
    "clip mean (oracle)": {
        "expression MSE": "val/exp_mse_clip_mean",
        "of which lips' subspace": "val/exp_mse_mouth_clip_mean",
        "mouth vertex mm": "val/mouth_vertex_mm_clip_mean",
    },
}
SWITCHES = ("model/net/use_shape", "model/net/use_history")
VARIANT = {("False", "False"): "none", ("True", "False"): "shape", ("False", "True"): "history", ("True", "True"): "both"}


def cell(values: list[float]) -> str:
    v = [x for x in values if x is not None and not np.isnan(x)]
    if not v:
        return "—"
    return f"{np.mean(v):.3f}" + (f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else "")


def at_best_validation(client, run, keys: list[str], objective: str = "val/loss/total") -> dict[str, float]:
    """The run's values of ``keys`` at its validation step where ``objective`` was lowest."""
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, objective)}
    if not history:
        return dict(run.data.metrics)
    step = min(history, key=history.get)
    out = {}
    for k in keys:
        at = [m.value for m in client.get_metric_history(run.info.run_id, k) if m.step == step]
        if at:
            out[k] = at[-1]
    return out


def table(experiment: str, tracking_uri: str | None = None, last: int | None = None, match: str | None = None, at: str = "last") -> str:
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no MLflow experiment named {experiment!r}")
    runs = [r for r in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"]) if r.info.status == "FINISHED"]
    if match:  # e.g. leave tuning runs, which share a variant's switches, out of its seeds
        runs = [r for r in runs if re.fullmatch(match, r.info.run_name or "")]
    runs = runs[:last] if last else runs
    if not runs:
        raise SystemExit(f"error: no finished run in {experiment!r}")
    wanted = [*METRICS.values(), *(k for b in BASELINES.values() for k in b.values())]
    values = {r.info.run_id: at_best_validation(client, r, wanted) if at == "best" else r.data.metrics for r in runs}
    groups: dict[str, list] = defaultdict(list)
    for r in runs:
        groups[VARIANT.get(tuple(r.data.params.get(k, "True") for k in SWITCHES), "?")].append(r)
    header = ["predictor", "runs", *METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in ("none", "shape", "history", "both", "?"):
        if name in groups:
            rs = groups[name]
            lines.append(f"| A2E, priors: {name} | {len(rs)} | " + " | ".join(cell([values[r.info.run_id].get(k) for r in rs]) for k in METRICS.values()) + " |")
    for name, keys in BASELINES.items():
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cell([values[r.info.run_id].get(keys[c]) for r in runs]) if c in keys else "—" for c in METRICS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m lightning_modules.a2e.table5", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment of the A2E runs (e.g. a2e-corpus)")
    p.add_argument("--last", type=int, help="only the newest N finished runs")
    p.add_argument("--match", help="only runs whose whole name matches this regular expression (e.g. '(none|shape|history|both)-s[0-9]+')")
    p.add_argument("--at", choices=("last", "best"), default="last",
                   help="last: each run's last validation point; best: its point of lowest val/loss/total (early stopping)")
    p.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI or the local sqlite database")
    args = p.parse_args(argv)
    print(table(args.experiment, args.tracking_uri, args.last, args.match, args.at))


if __name__ == "__main__":
    main()
