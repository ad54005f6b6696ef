"""Per-message CPU cost of the stream's pure path, without Kafka or Triton.

``python -m streams.bench_hotpath [--stays N] [--repeat R] [--batch B] [--profile]``

Replays PhysioNet 2019 stays (``../shared``; a seeded synthetic feed when absent) as the
edge publishes them (one FHIR Bundle per patient-hour, :func:`streams.sources.psv_messages`)
through the functions the Faust agents call, stage by stage, and prints a table of
microseconds per message:

* ``normalise``: FHIR bytes to envelope bytes (the ``normalise`` agent: R4B validation,
  mapping, ``Envelope.to_bytes``);
* ``envelope from_bytes``: the ``score`` agent decoding ``clinical.events``;
* ``record from_json`` / ``record to_json``: the per-patient table value, read and written
  once per batch per patient, as the ``score`` agent does;
* ``score_envelopes``: apply events, prune, NEWS2/qSOFA/SIRS, the model's feature window;
* ``finish``: the alert policy and the score record (with a fixed risk: no Triton), plus
  ``orjson.dumps`` of the score.

``--batch 1`` (the default) round-trips the record for every message, the worst case of
the worker (a burst of one patient per batch); the worker's own batches (up to
``WARDWATCH_BATCH_SIZE`` events) amortise that round trip over a patient's messages in
the batch. Times are CPU time of this process (``time.process_time``: on a shared machine
other processes' turns do not count; its reads add about 1 us per stage and message), and
each stage is the best of ``--repeat`` passes (fresh state each pass). ``--profile`` adds
a pyinstrument profile of one scoring pass (the stages after ``normalise``): the functions
with the most self and inclusive time (pyinstrument samples wall time, so on a busy machine
read it for proportions only).

Not a test: it asserts nothing about speed. :func:`run` returns the numbers as a dict for
``streams/bench.py`` to put in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from inference.alert_policy import AlertPolicy
from inference.features import FeatureSpec, default_spec
from inference.scoring.alerts import finish
from inference.scoring.envelope import Envelope, normalise
from inference.scoring.model_info import ModelInfo
from inference.scoring.prepare import score_envelopes
from inference.scoring.record import PatientRecord
from streams.sources import Message, psv_messages

if TYPE_CHECKING:
    from pyinstrument.frame import Frame

SHARED_PHYSIONET = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "physionet2019" / "training_setB"
)
STAY_START = datetime(2026, 1, 1, tzinfo=UTC)
KEY = b"bench-hotpath"
STAGES = (
    "envelope from_bytes",
    "record from_json",
    "score_envelopes",
    "finish",
    "record to_json",
)
_MODEL = ModelInfo("sepsis_transformer", "bench")
_POLICY = AlertPolicy(threshold=0.5)
_RISK = 0.1  # a fixed risk in place of Triton's: finish() then takes its usual path


def load_messages(n_stays: int, data_dir: Path | None = None) -> tuple[list[Message], str]:
    """The messages of the first ``n_stays`` stays, in stay order, and the data's name.

    Uses ``data_dir`` (default: the shared PhysioNet 2019 set B) when it exists, else
    writes a seeded synthetic feed to a temporary folder. Raises ``OSError`` when a file
    cannot be read (not retried).
    """
    root = SHARED_PHYSIONET if data_dir is None else data_dir
    if root.is_dir():
        stays = sorted(root.glob("*.psv"))[:n_stays]
        return [m for p in stays for m in psv_messages(p, KEY, STAY_START)], "PhysioNet 2019"
    from fhir.synthetic import generate_stays

    with tempfile.TemporaryDirectory() as tmp:
        for pid, text in generate_stays(n_stays, seed=7):
            (Path(tmp) / f"{pid}.psv").write_text(text)
        msgs = [
            m for p in sorted(Path(tmp).glob("*.psv")) for m in psv_messages(p, KEY, STAY_START)
        ]
    return msgs, "synthetic (seed 7)"


def _normalise_all(msgs: Sequence[Message]) -> tuple[list[bytes], float]:
    """Envelope bytes of every message (as the normalise agent sends them), and seconds."""
    out: list[bytes] = []
    t0 = time.process_time()
    for m in msgs:
        out.extend(
            e.to_bytes() for e in normalise(m.value, source=m.origin, inbound_ts_ms=0).envelopes
        )
    return out, time.process_time() - t0


def _score_pass(
    envelopes: Sequence[bytes], spec: FeatureSpec, staleness_hours: float, batch: int
) -> dict[str, float]:
    """One pass of the score agent's per-batch work over ``envelopes``; seconds per stage.

    The table is a dict of JSON strings, like the Faust table's values.
    """
    table: dict[str, str] = {}
    spent: dict[str, float] = defaultdict(float)
    clock = time.process_time  # CPU time: other processes on a shared machine do not count
    for lo in range(0, len(envelopes), batch):
        t0 = clock()
        envs = [Envelope.from_bytes(raw) for raw in envelopes[lo : lo + batch]]
        t1 = clock()
        records = {e.patient: PatientRecord.from_json(table.get(e.patient)) for e in envs}
        t2 = clock()
        prepared = score_envelopes(records, envs, spec=spec, staleness_hours=staleness_hours)
        t3 = clock()
        for rec, pending in prepared:
            score, _ = finish(rec, pending, _RISK, model=_MODEL, policy=_POLICY)
            orjson.dumps(score)
        t4 = clock()
        for patient, rec in records.items():
            table[patient] = rec.to_json()
        t5 = clock()
        spent["envelope from_bytes"] += t1 - t0
        spent["record from_json"] += t2 - t1
        spent["score_envelopes"] += t3 - t2
        spent["finish"] += t4 - t3
        spent["record to_json"] += t5 - t4
    return dict(spent)


def profile_pass(
    envelopes: Sequence[bytes],
    spec: FeatureSpec,
    staleness_hours: float,
    batch: int,
    top: int = 12,
) -> dict[str, list[tuple[str, float]]]:
    """pyinstrument's view of one scoring pass: the ``top`` functions by self time and by
    inclusive time, as ``(function  file:line, fraction of the pass)``. Raises nothing of
    its own."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0002)
    profiler.start()
    _score_pass(envelopes, spec, staleness_hours, batch)
    session = profiler.stop()
    root = session.root_frame()
    if root is None:
        return {"self": [], "inclusive": []}
    selfs: dict[str, float] = defaultdict(float)
    incl: dict[str, float] = defaultdict(float)
    # (frame, names on the path above it): inclusive time counts a function once per
    # path, so recursion does not count it twice.
    stack: list[tuple[Frame, frozenset[str]]] = [(root, frozenset())]
    while stack:
        f, above = stack.pop()
        if f.is_synthetic:  # pyinstrument's "[self]"/"[await]" leaves: in total_self_time
            continue
        name = f"{f.function}  {Path(f.file_path or '?').name}:{f.line_no}"
        selfs[name] += f.total_self_time
        if name not in above:
            incl[name] += f.time
        stack.extend((c, above | {name}) for c in f.children)
    total = root.time or 1.0

    def ranked(d: dict[str, float]) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"self": ranked(selfs), "inclusive": ranked(incl)}


def run(
    n_stays: int = 40,
    repeat: int = 3,
    batch: int = 1,
    profile: bool = False,
    spec: FeatureSpec | None = None,
    staleness_hours: float = 12.0,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure; returns ``{"data", "stays", "messages", "events", "batch", "us_per_message":
    {stage: us}, "score_path_us_per_message", "normalise_us_per_message",
    "score_path_events_per_s_per_core", "events_per_s_per_core", "profile"}``.

    ``score_path_*`` cover the score agent's pure work (every stage but ``normalise``);
    ``events_per_s_per_core`` adds ``normalise``. Raises ``OSError`` if the data cannot be
    read (not retried).
    """
    spec = spec or default_spec()
    msgs, data = load_messages(n_stays, data_dir)
    events = sum(len(orjson.loads(m.value)["entry"]) for m in msgs)
    best_norm = float("inf")
    envelopes: list[bytes] = []
    for _ in range(repeat):
        envelopes, s = _normalise_all(msgs)
        best_norm = min(best_norm, s)
    best: dict[str, float] = {k: float("inf") for k in STAGES}
    for _ in range(repeat):
        for k, s in _score_pass(envelopes, spec, staleness_hours, batch).items():
            best[k] = min(best[k], s)
    n = len(msgs)
    per_msg = {k: 1e6 * best[k] / n for k in STAGES}
    score_path_s = sum(best.values())
    return {
        "data": data,
        "stays": n_stays,
        "messages": n,
        "events": events,
        "batch": batch,
        "us_per_message": {"normalise": 1e6 * best_norm / n, **per_msg},
        "normalise_us_per_message": 1e6 * best_norm / n,
        "score_path_us_per_message": 1e6 * score_path_s / n,
        "score_path_events_per_s_per_core": events / score_path_s,
        "events_per_s_per_core": events / (score_path_s + best_norm),
        "profile": profile_pass(envelopes, spec, staleness_hours, batch) if profile else {},
    }


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`run` as a plain-text table."""
    lines = [
        f"{result['messages']} messages ({result['events']} events) from {result['stays']} "
        f"stays, {result['data']}; record round trip per {result['batch']} message(s)",
        f"{'stage':<28}{'us/message':>12}",
    ]
    lines += [f"{k:<28}{v:>12.1f}" for k, v in result["us_per_message"].items()]
    lines += [
        f"{'score path (all but normalise)':<28}{result['score_path_us_per_message']:>12.1f}",
        f"score path: {result['score_path_events_per_s_per_core']:,.0f} events/s per core; "
        f"with normalise: {result['events_per_s_per_core']:,.0f} events/s per core",
    ]
    for kind, rows in result["profile"].items():
        lines.append(f"pyinstrument, one scoring pass, {kind} time:")
        lines += [f"  {100 * frac:5.1f}%  {name}" for name, frac in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> dict[str, Any]:
    """Command line entry point; prints the table and returns :func:`run`'s dict."""
    ap = argparse.ArgumentParser(prog="python -m streams.bench_hotpath", description=__doc__)
    ap.add_argument("--stays", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--data", type=Path, default=None, help="a folder of .psv files")
    a = ap.parse_args(argv)
    result = run(a.stays, a.repeat, a.batch, a.profile, data_dir=a.data)
    out(format_table(result))
    return result


if __name__ == "__main__":
    main()
