"""Two `wardwatch deliver` processes on one database: one delivers, the other stands by
and takes over when the first stops (real processes, an SQLite database)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

WARDWATCH = Path(sys.executable).parent / "wardwatch"


class Deliver:
    """A `wardwatch deliver` process whose log lines are collected as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(WARDWATCH), "deliver"], env=env, cwd="/", text=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            if self.proc.poll() is not None:
                time.sleep(0.2)  # the last lines
                return any(text in line for line in self.lines)
            time.sleep(0.1)
        return False

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def test_a_second_deliver_stands_by_and_takes_over(tmp_path: Path) -> None:
    env = {**os.environ, "WARDWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
           "WARDWATCH_DEV_MODE": "1", "WARDWATCH_DELIVERY_POLL_S": "0.1"}  # fmt: skip
    first = Deliver(env)
    second: Deliver | None = None
    try:
        assert first.wait_for("development mode", 60), "".join(first.lines)
        time.sleep(2)  # migrated and holding the lock
        second = Deliver(env)
        assert second.wait_for("standing by", 60), "".join(second.lines)
        assert first.proc.poll() is None
        assert first.stop() == 0, "".join(first.lines)
        assert second.wait_for("taking over", 30), "".join(second.lines)
        assert second.proc.poll() is None, "".join(second.lines)
    finally:
        first.stop()
        if second is not None:
            assert second.stop() == 0, "".join(second.lines)
