"""Server kills at random points, and a full disk: nothing lost (issue 28).

    python benchmarks/bench_faults.py                 # 10 kills of each command, at points drawn with seed 0
    python benchmarks/bench_faults.py --kills 3 --seed 7

Runs the fault tests of tests/test_faults.py (the same code the suite runs with one seeded kill of each) with
``--kills`` seeds drawn from ``--seed``: for each seed, the embedded server's postmaster is SIGKILLed at a point
of import-runs, embed-runs and evaluate --save-calibration drawn from it (after a random number of batches, then
a random pause). After every kill the command must fail with one clear line and no traceback, the next command
must start the server again and say so, a rerun must finish, and ``metaspace db check`` must find exact counts
and no duplicate, orphaned or partial vector. The full-disk case (a tmpfs holding the data directory) runs once.
Prints a table of kills and outcomes per command, with the machine.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {"a full disk (import-runs)": "full_disk", "import-runs": "killed_during_an_import",
         "embed-runs": "killed_during_embed_runs", "evaluate --save-calibration": "killed_during_evaluate"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="kills of each command (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="draws the kills' seeds (default 0)")
    args = parser.parse_args()
    seeds = random.Random(args.seed).sample(range(10_000), args.kills)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.xml"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "tests" / "test_faults.py"), "-q",
                        "-p", "no:cacheprovider", "-k", "killed_during or full_disk", f"--junitxml={report}",
                        f"--basetemp={Path(scratch) / 'bt'}"],
                       env={**os.environ, "METASPACE_FAULT_TESTS": "1",
                            "METASPACE_FAULT_SEEDS": ",".join(map(str, seeds))}, cwd=ROOT)
        seconds = time.perf_counter() - started
        cases = ET.parse(report).getroot().iter("testcase")
        outcome: Counter = Counter()
        for case in cases:
            command = next(name for name, marker in CASES.items() if marker in case.get("name", ""))
            state = ("failed" if case.find("failure") is not None or case.find("error") is not None
                     else "skipped" if case.find("skipped") is not None else "passed")
            outcome[command, state] += 1
            for prop in case.iter("property"):  # how the killed command ended: an error, or finished anyway
                outcome[command, "ended: " + prop.get("value")] += 1
    print(f"\nseeds {seeds}; {seconds:.0f} s; machine: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python {sys.version.split()[0]}")
    print("\n| fault | runs | the command failed with one clear line / finished anyway | nothing lost (rerun "
          "exact, db check clean) | test failed | skipped |\n| --- | --- | --- | --- | --- | --- |")
    for command in CASES:
        passed, failed, skipped = (outcome[command, s] for s in ("passed", "failed", "skipped"))
        ended = (f"{outcome[command, 'ended: error']} / {outcome[command, 'ended: finished']}"
                 if command != next(iter(CASES)) else "-")
        print(f"| {command} | {passed + failed + skipped} | {ended} | {passed} | {failed} | {skipped} |")
    return 1 if any(state == "failed" for _, state in outcome) else 0


if __name__ == "__main__":
    raise SystemExit(main())
