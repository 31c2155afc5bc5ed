"""``python -m benchmarks [--quick] [--only NAME ...]``: run the benchmarks, print one table."""

from __future__ import annotations

import argparse
import importlib
import time
import traceback

from benchmarks import ALL
from benchmarks.common import Row, print_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny mode: checks, not figures")
    parser.add_argument("--only", nargs="+", choices=ALL, default=list(ALL), metavar="NAME")
    args = parser.parse_args()
    rows: list[Row] = []
    failed = []
    for name in args.only:
        t0 = time.monotonic()
        print(f"running {name}…", flush=True)
        try:
            rows += importlib.import_module(f"benchmarks.{name}").run(args.quick)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        print(f"  {name} took {time.monotonic() - t0:.0f} s", flush=True)
    print_report(rows)
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
