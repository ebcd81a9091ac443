"""Run every benchmark module in bench/ (those with a `run()` function)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback
from typing import List, Optional

import bench


def modules() -> List[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def main(argv: Optional[List[str]] = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    known = modules()
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    failed = []
    for name in names or known:
        mod = importlib.import_module(f"bench.{name}")
        run = getattr(mod, "run", None)
        if not callable(run):
            continue
        print(f"== bench.{name}", flush=True)
        start = time.monotonic()
        try:
            run()
        except Exception:  # one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
        print(f"== bench.{name}: {time.monotonic() - start:.1f} s\n", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
