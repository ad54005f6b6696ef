"""Timing, not a test: FHIR Observations/s through ``parse_resource``, full vs lean validation.

    .venv/bin/python -m streams.bench_fhir [--stays 20] [--repeat 5] [--profile lean]

Input: the transaction Bundles :func:`fhir.physionet.row_bundle` makes of the first ``--stays``
PhysioNet 2019 stays in ``../shared/data/physionet2019/training_setB`` (what ``wardwatch
replay`` sends for ``.psv`` input), serialised once. Each mode parses every Bundle
``--repeat`` times in this one process; the best pass is reported (the machine is shared, the
best pass is the least disturbed one). ``--profile MODE`` prints the top of a cProfile of one
pass instead. It first checks that both modes give the same events and rejections.

Exits 2 (not retryable) when the shared data is absent.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

from fhir.parse import Validation, parse_resource
from fhir.physionet import read_psv, row_bundle

PHYSIONET = Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2019"


def physionet_bodies(n_stays: int) -> list[bytes]:
    """The serialised row Bundles of the first ``n_stays`` stays (raises OSError if absent)."""
    stays = sorted((PHYSIONET / "training_setB").glob("*.psv"))[:n_stays]
    if not stays:
        raise OSError(f"no .psv files under {PHYSIONET / 'training_setB'}")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    out: list[bytes] = []
    for path in stays:
        for hour, row in enumerate(read_psv(path.read_text())):
            bundle = row_bundle(f"pt-{path.stem}", start, hour, row)
            if bundle is not None:
                out.append(orjson.dumps(bundle))
    return out


def rate(bodies: list[bytes], mode: Validation, repeat: int) -> tuple[float, float]:
    """Best Observations per CPU second of this process, and per wall second, over
    ``repeat`` passes. CPU time is the "per core" rate on a shared machine, where wall time
    also counts the time other processes held the core. Never raises for these inputs."""
    best_cpu = best_wall = 0.0
    for _ in range(repeat):
        n, c0, t0 = 0, time.process_time(), time.perf_counter()
        for body in bodies:
            n += parse_resource(body, validation=mode).observations
        best_cpu = max(best_cpu, n / (time.process_time() - c0))
        best_wall = max(best_wall, n / (time.perf_counter() - t0))
    return best_cpu, best_wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stays", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", choices=("lean", "full"))
    args = ap.parse_args(argv)
    try:
        bodies = physionet_bodies(args.stays)
    except OSError as exc:
        print(f"shared data absent: {exc}", file=sys.stderr)
        return 2
    for body in bodies:  # same decisions, or the numbers mean nothing
        by_lean, by_full = (parse_resource(body, validation=m) for m in ("lean", "full"))
        assert by_lean.events == by_full.events and by_lean.rejected == by_full.rejected == []
    n_obs = sum(parse_resource(b).observations for b in bodies)
    print(f"{len(bodies)} Bundles, {n_obs} Observations, {args.stays} stays")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        rate(bodies, args.profile, 1)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    full = rate(bodies, "full", max(1, args.repeat // 2))
    lean = rate(bodies, "lean", args.repeat)
    for what, (cpu, wall) in (("full R4B validation", full), ("lean decoder", lean)):
        print(
            f"{what:20} {cpu:>9,.0f} Observations per CPU second ({1e6 / cpu:6.1f} us each);"
            f" {wall:>9,.0f} per wall second"
        )
    print(f"lean / full:         {lean[0] / full[0]:9.1f}x (CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
