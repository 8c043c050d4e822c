"""Long fuzz run: 10 000 mutated TIFF, .npy, HDF5 and config.json files through every loader and
through ``emseg info`` / ``emseg predict`` (issue 14).

The same harness as ``tests/test_fuzz.py`` (``tests/fuzz_harness.py``), driven by a seeded RNG
instead of hypothesis: cases go round-robin over the eight seed kinds, and every fourth round
also runs ``emseg predict`` on the mutated file (or with the mutated config.json). Each case runs
in a worker process with a time limit, so a hang is counted as a hang. Prints one row of counts
per kind and the total: clean error / correct / other exception / hang / wrong shape. The last
three columns must be zero; failing cases are saved under ``--keep`` for inspection.

    OMP_NUM_THREADS=1 python benchmarks/fuzz_long.py            # 10 000 cases
    OMP_NUM_THREADS=1 python benchmarks/fuzz_long.py --quick    # 800 cases
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import fuzz_harness as fh  # noqa: E402
from _common import add_quick_flag  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10 000)")
    ap.add_argument("--seed", type=int, default=20261202, help="RNG seed (default 20261202)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang (default 60)")
    ap.add_argument("--keep", type=Path, help="folder to save failing cases in (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the counts as JSON here")
    add_quick_flag(ap)
    args = ap.parse_args()
    n = 800 if args.quick else args.cases
    with tempfile.TemporaryDirectory(prefix="emseg-fuzz-") as tmp:
        folder = Path(tmp)
        keep = args.keep or folder / "failures"
        keep.mkdir(parents=True, exist_ok=True)
        seeds = fh.make_seeds(folder / "seeds")
        runner = fh.Runner(folder / "seeds", timeout=args.timeout)
        failures: list[str] = []
        t0 = time.monotonic()

        def on_case(i: int, kind: str, outcome: str, detail: str, data: bytes) -> None:
            if outcome not in ("clean", "correct"):
                path = keep / f"case{i:05d}_{kind}_{outcome}{fh.SUFFIX[kind]}"
                path.write_bytes(data)
                failures.append(f"{path}: {detail.strip().splitlines()[-1] if detail.strip() else ''}")
            if (i + 1) % 500 == 0:
                print(f"  {i + 1} cases, {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)

        try:
            fh.warm_up(runner, seeds)
            counts = fh.run_many(runner, seeds, n, args.seed, on_case=on_case)
        finally:
            runner.close()
        seconds = time.monotonic() - t0
    total = dict.fromkeys(fh.OUTCOMES, 0)
    print(f"{'kind':<12}" + "".join(f"{o:>13}" for o in fh.OUTCOMES))
    for kind, c in counts.items():
        print(f"{kind:<12}" + "".join(f"{c[o]:>13}" for o in fh.OUTCOMES))
        for o in fh.OUTCOMES:
            total[o] += c[o]
    print(f"{'total':<12}" + "".join(f"{total[o]:>13}" for o in fh.OUTCOMES))
    print(f"{n} cases in {seconds:.0f} s (seed {args.seed}, hang limit {args.timeout:g} s)")
    for f in failures[:20]:
        print("failure:", f)
    if args.json:
        args.json.write_text(json.dumps({"cases": n, "seed": args.seed, "seconds": round(seconds, 1),
                                         "counts": counts, "total": total}, indent=2))
    return 0 if total["other"] == total["hang"] == total["wrong_shape"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
