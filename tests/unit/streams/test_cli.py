"""The `wardwatch` command as a user runs it, and the README's promises about it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
WARDWATCH = Path(sys.executable).parent / "wardwatch"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    # The installed console script, not `python -m`: there site-packages comes before
    # the project on sys.path, which is where fhir.resources could hide our `fhir`.
    return subprocess.run(
        [str(WARDWATCH), *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for cmd in ("worker", "replay", "score", "demo", "synth", "train"):
        assert f"  {cmd} " in out.stdout
    assert "decision support" in " ".join(out.stdout.split())


@pytest.mark.parametrize("cmd", ["replay", "score", "demo", "synth"])
def test_each_command_explains_itself(cmd: str) -> None:
    out = run(cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout and len(out.stdout) > 300


def test_score_refuses_a_missing_file_clearly(tmp_path: Path) -> None:
    out = run("score", str(tmp_path / "nope.psv"), "--out", str(tmp_path / "o.jsonl"), "--quiet")
    assert out.returncode != 0
    assert "nope.psv" in out.stderr


def test_synth_then_score_offline(tmp_path: Path) -> None:
    assert run("synth", "--patients", "3", "--seed", "7", "--out", str(tmp_path)).returncode == 0
    stays = sorted(tmp_path.glob("*.psv"))
    assert len(stays) == 3
    out = run("score", *map(str, stays), "--out", str(tmp_path / "s.jsonl"), "--quiet")
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    rows = sum(len(p.read_text().splitlines()) - 1 for p in stays)
    assert len(lines) == rows, "one line per input row"


def test_the_settings_page_documents_every_setting() -> None:
    page = (ROOT / "docs" / "settings.md").read_text()
    for name in Settings.model_fields:
        assert f"`WARDWATCH_{name.upper()}`" in page, name
    assert "docs/settings.md" in (ROOT / "README.md").read_text()


def test_score_alert_state_is_the_served_policys(tmp_path: Path, physionet_dir: Path) -> None:
    """What a clinician sees (``alert``) through ``wardwatch score`` on real stays is the
    served card's policy: chosen by cross-validation to be risk >= its threshold, every
    hour (the hysteresis and NEWS2 rules it replaced kept 1.7x the alert hours)."""
    import orjson

    from inference.alert_policy import AlertPolicy

    card = orjson.loads(
        (ROOT / "inference/model_repository/sepsis_transformer/model_card.json").read_bytes()
    )
    policy = AlertPolicy.from_card(card)
    assert (policy.clear_ratio, policy.hold_hours, policy.news2_enter) == (1.0, 0.0, None)
    stays = sorted(physionet_dir.glob("p1000[0-2]*.psv"))[:30]
    out = run("score", *map(str, stays), "--out", str(tmp_path / "s.jsonl"), "--quiet")
    assert out.returncode == 0, out.stderr
    lines = [orjson.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert any(x["alert"] for x in lines) and not all(x["alert"] for x in lines)
    assert all(x["alert"] == (x["risk"] >= policy.threshold) for x in lines)


def test_the_lazy_table_names_every_command_and_the_help_lists_them() -> None:
    import importlib

    from streams import cli

    for module in cli.COMMAND_MODULES:
        names = {c.name for c in importlib.import_module(module).COMMANDS}
        listed = {n for n, t in cli.LAZY_COMMANDS.items() if t.startswith(module + ":")}
        assert names == listed, module
    for name in cli.LAZY_COMMANDS:
        cmd = cli.wardwatch.get_command(None, name)  # type: ignore[arg-type]
        assert cmd is not None and cmd.name == name
        assert f"\n  {name} " in cli.HELP, f"{name} is missing from the help text"


def test_help_and_light_commands_import_neither_faust_nor_torch() -> None:
    """`wardwatch --help` and `convert` load only what they use (the first took 11 s when
    every command built the Faust app and imported torch)."""
    probe = (
        "import sys; from click.testing import CliRunner; from streams.cli import wardwatch; "
        "r = CliRunner().invoke(wardwatch, sys.argv[1:]); assert r.exit_code == 0, r.output; "
        "print(sorted(m for m in ('faust', 'torch', 'aiokafka', 'tritonclient') "
        "if m in sys.modules))"
    )
    for args in (["--help"], ["convert", "--help"], ["dlq", "--help"]):
        out = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", (args, out.stdout)
