"""Run scenario modules inside MicroPython (or CPython).

    micropython -X heapsize=192K tests/mpy/run_scenarios.py REPO TMPDIR MODULE [MODULE...]

Prints "PASS name" / "FAIL name: error" per scenario and "RESULT passed/total";
exits 1 when any failed.
"""

import os
import sys

repo = sys.argv[1]
tmp = sys.argv[2]
sys.path.insert(0, repo + "/firmware")
sys.path.insert(0, repo + "/tests/mpy")

import gc  # noqa: E402

failed = 0
total = 0
for modname in sys.argv[3:]:
    mod = __import__(modname)
    for i, sc in enumerate(mod.SCENARIOS):
        total += 1
        root = "%s/%s-%d" % (tmp, modname, i)
        os.mkdir(root)
        name = sc.__name__
        try:
            sc(root)
            print("PASS", name)
        except Exception as e:  # report every failure, keep going
            failed += 1
            print("FAIL %s: %s %s" % (name, type(e).__name__, e))
            if hasattr(sys, "print_exception"):
                sys.print_exception(e)
            else:
                import traceback

                traceback.print_exc()
        gc.collect()
print("RESULT %d/%d" % (total - failed, total))
sys.exit(1 if failed else 0)
