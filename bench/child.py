"""Steps whose peak memory is measured, each run in a fresh interpreter: ``python -m bench.child STEP ARGS``.

Prints one JSON line: ``peak_mb`` (VmHWM, the process's peak resident set), ``start_mb`` (resident set once
everything is imported, before the step) and ``seconds``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta
from pathlib import Path

from .measure import vm_hwm_mb, vm_rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.child")
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("idle", help="import what the report and the collector import, then stop")
    report = steps.add_parser("report", help="ftlog.report.write_report over a dataset")
    report.add_argument("data")
    report.add_argument("out")
    collect = steps.add_parser("collect", help="one collector round over synthetic tasks")
    collect.add_argument("tasks", type=int)
    collect.add_argument("checkpoints", type=int)
    collect.add_argument("data")
    collect.add_argument("round", type=int, help="0: every task is new; 1: every task has one new checkpoint")
    args = parser.parse_args()

    from ftlog.report import write_report
    from ftlog.store import Dataset

    from .workload import EPOCH, LocalApi, make_plans, run_round

    start = vm_rss_mb()
    began = time.perf_counter()
    extra = {}
    if args.step == "report":
        write_report(args.data, args.out)
    elif args.step == "collect":
        plans = make_plans(args.tasks, args.checkpoints, seed=9)
        api = LocalApi(plans)
        for plan in plans:
            api.shown[plan.task_id] = plan.checkpoints - 1 + args.round
        start = vm_rss_mb()  # the generator's plans are not the collector's memory
        began = time.perf_counter()
        result = run_round(api, Dataset(Path(args.data)), EPOCH + timedelta(minutes=5 * args.round))
        extra = {"changed": result.changed, "new_checkpoints": result.new_checkpoints}
    print(json.dumps({"peak_mb": vm_hwm_mb(), "start_mb": start, "seconds": time.perf_counter() - began, **extra}))


if __name__ == "__main__":
    main()
