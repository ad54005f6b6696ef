"""Sampling profiles of a running worker with py-spy, summarised as "where the time goes".

``make bench`` (``python -m streams.bench --profile``) attaches py-spy to the worker
process while it drains the throughput burst, writes py-spy's raw collapsed stacks next to
the run, and summarises them two ways:

* by *component* (the library or WardWatch package a sample's innermost frame is in:
  FHIR validation, Faust, aiokafka, gRPC/Triton client, JSON, our own packages, ...), which
  is what the README's sizing guidance and the optimisation work start from;
* by *function*, self time (innermost frame) and inclusive time (anywhere on the stack).

py-spy samples from outside the process (``--nonblocking``: it does not pause the worker),
so the profile costs the worker nothing but the CPU py-spy itself uses.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Innermost-frame file path fragments -> component, first match wins. Order matters:
# fhir.resources lives under site-packages/fhir/resources, our fhir/ is at the project root.
_COMPONENTS: tuple[tuple[str, str], ...] = (
    ("/fhir/resources/", "fhir.resources (R4B validation)"),
    ("/fhir_core/", "fhir.resources (R4B validation)"),
    ("/pydantic", "pydantic (R4B validation)"),
    ("/aiokafka/", "aiokafka (Kafka client)"),
    ("/kafka/", "aiokafka (Kafka client)"),
    ("/faust/", "Faust (streams, tables, commits)"),
    ("/mode/", "Faust (streams, tables, commits)"),
    ("/grpc/", "gRPC / Triton client"),
    ("/tritonclient/", "gRPC / Triton client"),
    ("/google/protobuf/", "gRPC / Triton client"),
    ("/torch/", "torch (alert explanations)"),
    ("/numpy/", "numpy"),
    ("/sqlalchemy/", "SQLAlchemy / database driver"),
    ("/psycopg", "SQLAlchemy / database driver"),
    ("/sqlite3/", "SQLAlchemy / database driver"),
    ("/json/", "json (stdlib)"),
    ("/asyncio/", "asyncio event loop"),
    ("/selectors.py", "asyncio event loop"),
    ("/logging/", "logging"),
    ("/fhir/", "wardwatch fhir/ (parse, map)"),
    ("/inference/", "wardwatch inference/ (state, features, scores)"),
    ("/streams/", "wardwatch streams/ (pipeline, agents)"),
    ("/storage/", "wardwatch storage/"),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True, slots=True)
class Profile:
    """A summarised profile: sample counts by component and by function."""

    samples: int
    by_component: list[tuple[str, int]]
    self_time: list[tuple[str, int]]
    inclusive: list[tuple[str, int]]

    def markdown(self, top: int = 15) -> str:
        """The profile as Markdown tables (percent of all samples)."""

        def pct(n: int) -> str:
            return f"{100 * n / max(self.samples, 1):.1f}%"

        lines = [f"{self.samples:,} samples of the worker's busy threads (py-spy, 100 Hz).", ""]
        lines += ["| component (innermost frame) | share |", "|---|---|"]
        lines += [f"| {c} | {pct(n)} |" for c, n in self.by_component]
        lines += ["", "| function, self time | share |", "|---|---|"]
        lines += [f"| `{f}` | {pct(n)} |" for f, n in self.self_time[:top]]
        lines += ["", "| function, inclusive time | share |", "|---|---|"]
        lines += [f"| `{f}` | {pct(n)} |" for f, n in self.inclusive[:top]]
        return "\n".join(lines) + "\n"


def component_of(frame: str) -> str:
    """The component a py-spy frame (``func (file:line)``) belongs to."""
    m = _FRAME.match(frame)
    path = m.group("file") if m else frame
    path = "/" + path.lstrip("/")
    for fragment, component in _COMPONENTS:
        if fragment in path:
            return component
    if m and not m.group("file").endswith(".py"):
        return "native / C extension"
    return "other Python"


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    parts = Path(m.group("file")).parts
    return f"{m.group('func')} ({'/'.join(parts[-2:])})"


def summarise(lines: Iterable[str]) -> Profile:
    """Summarise py-spy ``--format raw`` output (``frame;frame;... count`` per line)."""
    total = 0
    comp: Counter[str] = Counter()
    selft: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        # py-spy prefixes a thread frame ("thread (0x...)") with --threads; skip it.
        frames = [f for f in frames if not f.startswith("thread (")]
        if not frames:
            continue
        total += n
        comp[component_of(frames[-1])] += n
        selft[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            incl[f] += n
    return Profile(total, comp.most_common(), selft.most_common(), incl.most_common())


class Sampler:
    """py-spy attached to ``pid`` until :meth:`stop`; raw stacks written to ``out``."""

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        self._proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--nonblocking",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self) -> Profile | None:
        """Stop sampling (py-spy writes its file on SIGINT); the summary, or None if it
        failed (py-spy missing, or not allowed to read the process: ptrace restrictions)."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return None
        if not self.out.exists():
            print(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
            return None
        return summarise(self.out.read_text().splitlines())
