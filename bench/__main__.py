"""``python -m bench``: run every figure, print the table and write ``bench/RESULTS.md``.

``--smoke`` runs the same code at tiny sizes without MLflow (what ``make test`` runs) and writes its table to a
temporary folder unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from .figures import FULL, SMOKE, Suite
from .results import document, plain

RESULTS = Path(__file__).parent / "RESULTS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no MLflow: checks that the code runs")
    parser.add_argument("--out", type=Path, help="where to write the results (default: bench/RESULTS.md)")
    parser.add_argument("--only", help="comma-separated figure numbers, e.g. 1,7 (for working on one figure)")
    parser.add_argument("--keep", type=Path, help="build datasets in this folder and keep them")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the MLflow baseline (for working on ftlog)")
    args = parser.parse_args(argv)

    sizes = SMOKE if args.smoke else FULL
    if args.no_mlflow:
        sizes = dataclasses.replace(sizes, mlflow=False)
    only = set(args.only.split(",")) if args.only else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftlog-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        suite = Suite(sizes, work, log=lambda line: print(line, file=sys.stderr, flush=True))
        suite.run(only)
        elapsed = time.perf_counter() - started
        text = document(suite.rows, suite.notes, mode=sizes.name, elapsed=elapsed)
        partial = args.smoke or only or args.no_mlflow
        out = args.out or RESULTS
        if args.out or not partial:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            where = f"written to {out}"
        else:
            where = "not written (a smoke or partial run; --out writes it)"
    print(plain(suite.rows))
    print("\n".join(["", "Notes:", *(f"- {note}" for note in suite.notes)]), file=sys.stderr)
    print(
        f"\n{sum(1 for r in suite.rows if r.met)} of {sum(1 for r in suite.rows if r.met is not None)} targets met; "
        f"results {where}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
