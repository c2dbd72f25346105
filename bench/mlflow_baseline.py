"""The experiment-tracker baseline: the same tasks logged to MLflow and read back through its public API.

Used the way MLflow's documentation shows: a SQLite tracking store, one run per task with the task's attributes as
params, each curve logged with ``MlflowClient.log_batch`` (steps included), final BLEU/ROUGE and best values as
summary metrics, the run ended with the status matching the task's; reads go through ``mlflow.search_runs`` and
``MlflowClient.get_metric_history``. Imported only outside smoke runs, so MLflow stays an optional dependency.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from .workload import Plan

BATCH = 1000  # MLflow's documented limit of metrics per log_batch call
STATUS = {"Done": "FINISHED", "Failed": "FAILED", "Stopped": "KILLED"}
EXPERIMENT = "ftlog-bench"
GROUPS = ["params.model", "params.train_mode", "params.parameter_scale"]
SUMMARY = {
    "bleu_4": "metrics.bleu_4",
    "rouge_1": "metrics.rouge_1",
    "rouge_2": "metrics.rouge_2",
    "rouge_l": "metrics.rouge_l",
    "final_loss": "metrics.training_loss",  # search_runs shows each metric's value at its last step
    "best_loss": "metrics.best_training_loss",
    "final_perplexity": "metrics.perplexity",
    "best_perplexity": "metrics.best_perplexity",
}


def open_store(folder: Path) -> str:
    """Point MLflow at a fresh SQLite store in ``folder``; return the experiment id."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    return mlflow.set_experiment(EXPERIMENT).experiment_id


def log_plans(experiment_id: str, plans: list[Plan]) -> float:
    """Log every task as a run; return the seconds it took (reported, not a figure)."""
    client = MlflowClient()
    started = time.perf_counter()
    base_ms = int(time.time() * 1000)
    for plan in plans:
        run = client.create_run(experiment_id, run_name=plan.task_id)
        run_id = run.info.run_id
        steps, loss, ppl = plan.curve(plan.checkpoints)
        metrics = [
            Metric("training_loss", v, base_ms + s, s) for s, v in zip(steps.tolist(), loss.tolist(), strict=True)
        ]
        metrics += [Metric("perplexity", v, base_ms + s, s) for s, v in zip(steps.tolist(), ppl.tolist(), strict=True)]
        last = int(steps[-1])
        summary = {"best_training_loss": float(loss.min()), "best_perplexity": float(ppl.min())}
        if plan.outcome == "Done":
            summary |= {key.lower().replace("-", "_"): value for key, value in plan.metrics().items()}
        metrics += [Metric(key, value, base_ms + last, last) for key, value in summary.items()]
        params = [
            Param("task_id", plan.task_id),
            Param("job_id", plan.job_id),
            Param("job_name", plan.job_name),
            Param("model", plan.model),
            Param("train_mode", plan.train_mode),
            Param("parameter_scale", plan.parameter_scale),
        ]
        for start in range(0, len(metrics), BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + BATCH], params=params if start == 0 else [])
        client.set_terminated(run_id, status=STATUS[plan.outcome])
    return time.perf_counter() - started


def curves(experiment_id: str) -> pd.DataFrame:
    """Every loss and perplexity curve with model, train mode and parameter scale: one row per (task, step)."""
    client = MlflowClient()
    runs = mlflow.search_runs(experiment_ids=[experiment_id])
    keys = ["run_id", "params.task_id", "params.job_id", "params.job_name", *GROUPS]
    parts = []
    for run in runs[keys].itertuples(index=False):
        history: dict[str, Any] = {}
        for key in ("training_loss", "perplexity"):
            points = client.get_metric_history(run.run_id, key)
            history[key] = pd.Series({m.step: m.value for m in points}, dtype="float64")
        part = pd.DataFrame(history).rename_axis("step").reset_index()
        part.insert(0, "task_id", run[1])
        part.insert(1, "job_id", run[2])
        part.insert(2, "job_name", run[3])
        part.insert(3, "model", run[4])
        part.insert(4, "train_mode", run[5])
        part.insert(5, "parameter_scale", run[6])
        parts.append(part)
    return pd.concat(parts, ignore_index=True).sort_values(["task_id", "step"], ignore_index=True)


def compare(experiment_id: str) -> pd.DataFrame:
    """compare() by model x train mode x parameter scale: ``search_runs`` and a pandas groupby."""
    runs = mlflow.search_runs(experiment_ids=[experiment_id])
    runs = runs.rename(columns={column: name for name, column in SUMMARY.items()})
    runs["is_done"] = runs["status"] == "FINISHED"
    grouped = runs.groupby(GROUPS)
    frame = grouped[list(SUMMARY)].agg(["mean", "std", "min", "max"])
    frame.columns = [f"{value}_{stat}" for value, stat in frame.columns]
    frame.insert(0, "tasks", grouped.size())
    frame.insert(1, "done", grouped["is_done"].sum())
    return frame.reset_index().rename(columns={column: column.removeprefix("params.") for column in GROUPS})
