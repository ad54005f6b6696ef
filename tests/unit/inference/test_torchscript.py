"""Exported TorchScript files carry no hard-coded device (inference.torchscript)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.torchscript import hardcoded_devices, main, make_device_agnostic

REPO = Path(__file__).resolve().parents[3] / "inference" / "model_repository"


class _MakesATensor(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # What the BERT encoder does for its mask: a new tensor on the input's device.
        return x + torch.ones(x.shape[-1], device=x.device)


def _traced() -> torch.jit.ScriptModule:
    traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
        _MakesATensor(), torch.zeros(2, 48, 3)
    )
    return traced


def test_tracing_bakes_the_device_and_the_fix_removes_it_without_changing_outputs() -> None:
    traced = _traced()
    assert hardcoded_devices(traced) == [("<root>", "cpu")]  # the trap
    x = torch.randn(4, 48, 3)
    before = traced(x)
    assert make_device_agnostic(traced) == 1
    assert hardcoded_devices(traced) == []
    assert torch.equal(traced(x), before)


def test_fix_and_check_on_a_saved_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    torch.jit.save(_traced(), str(path))
    assert main(["check", str(path)]) == 1
    assert "hard-coded device 'cpu'" in capsys.readouterr().out
    assert main(["fix", str(path), "--n-features", "3"]) == 0
    assert main(["check", str(path)]) == 0


VERSIONS = sorted(p.name for p in (REPO / "sepsis_transformer").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("version", VERSIONS)
def test_served_models_run_wherever_their_input_is(version: str) -> None:
    # A GPU Triton failed every request of a CPU-traced file until this held (found on an
    # H200); the CPU-only suite can still check the file for the cause.
    module = torch.jit.load(  # type: ignore[no-untyped-call]
        str(REPO / "sepsis_transformer" / version / "model.pt"), map_location="cpu"
    )
    assert hardcoded_devices(module) == []
