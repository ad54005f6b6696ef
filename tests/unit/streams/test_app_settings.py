"""What create_app takes from the settings for a production deployment."""

from __future__ import annotations

from pathlib import Path

from mode import CrashingSupervisor

from streams.settings import Settings
from streams.worker.app import create_app


def test_the_data_directory_comes_from_the_settings_and_is_created(tmp_path: Path) -> None:
    # In the image the code is installed read-only in site-packages: Faust's state must
    # go where the settings say, created with its parents (a fresh volume has none).
    data = tmp_path / "fresh" / "volume"
    app = create_app(Settings(data_dir=data))
    assert Path(app.conf.datadir).resolve() == (data / "faust").resolve()
    assert (data / "faust").is_dir()


def test_every_agent_takes_the_worker_down_when_it_fails(tmp_path: Path) -> None:
    # Faust's default supervisor would restart a failed agent in the same process, its
    # batch unacknowledged and the partition's commits frozen behind it.
    app = create_app(Settings(data_dir=tmp_path))
    names = {a.name.rsplit(".", 1)[-1]: a for a in app.agents.values()}
    assert set(names) == {"score", "persist_scores", "persist_alerts", "persist_dead_letters"}
    for agent in names.values():
        assert agent.supervisor_strategy is CrashingSupervisor
