"""What validating once saves: the Great Expectations suite against the sha256-checked load every later step
does instead, on the default data.

Before the redesign every step that read the data ran the full suite again: 20 times in a 5-fold run with
release (validate, folds, 3 steps x 5 folds, aggregate, final fit, release). Now the run validates once and
the 19 other reads are `care.run.data.load_data` (read, sha256, parse with the schema only). And the run's
own `validate_data` reuses the pass the `validate` stage of `dvc repro` recorded (`care.data.validated`):
the suite runs once per `dvc repro`, not twice.

    python benchmarks/validate_once.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

READS_PER_RUN = 20  # 5 folds with release; see the module docstring


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    import tempfile

    from care.params import DataParams
    from care.run.data import load_data, validate_data

    data = DataParams()
    os.environ["CARE_CACHE_DIR"] = tempfile.mkdtemp(prefix="validate-once-")
    ref = validate_data(data)  # warm: Great Expectations imported, instrument cached; records the pass
    reuse_s = _best(lambda: validate_data(data), args.repeat)

    def suite() -> None:
        os.environ["CARE_CACHE_DIR"] = tempfile.mkdtemp(prefix="validate-once-")  # no recorded pass
        validate_data(data)

    validate_s = _best(suite, args.repeat)
    load_s = _best(lambda: load_data(ref), args.repeat)
    saved = (READS_PER_RUN - 1) * (validate_s - load_s)
    print(f"sessions: {ref.n_sessions}")
    print(f"validate (Great Expectations suite): {validate_s:.3f} s")
    print(f"load_data (sha256 check + schema parse): {load_s:.3f} s")
    print(f"validate_data reusing the validate stage's pass (streamed sha256 + schema parse): {reuse_s:.3f} s")
    print(f"saved per default run ({READS_PER_RUN - 1} reads no longer revalidated): {saved:.1f} s")


if __name__ == "__main__":
    main()
