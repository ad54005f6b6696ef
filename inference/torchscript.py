"""Keep exported TorchScript files free of hard-coded devices.

``torch.jit.trace`` records the device of every tensor the traced code creates. The
transformers BERT encoder builds its attention mask from a constant it moves to the
input's device; traced on the CPU, that became ``torch.to(c, device("cpu"))`` in the
served file, so on a GPU Triton every request failed with "Expected all tensors to be on
the same device" (found on an H200: ``python -m inference.bench_model``). The CPU-only
tests could not see it.

:func:`make_device_agnostic` rewrites each such constant in a module's graphs into
``prim::device(<the graph's first tensor input>)``, the device the data arrives on, which
is what the eager code meant; nothing else in the graph changes, so CPU outputs stay
bit-identical. The exports (:func:`inference.model.export_torchscript`,
:func:`inference.ensemble.export_ensemble`) apply it, and

    python -m inference.torchscript check PATH      # exit 1 if PATH has any
    python -m inference.torchscript fix PATH [--out OUT]

check or repair a saved file (``fix`` verifies CPU outputs are unchanged before it
writes). Raises ``ValueError`` when a graph with a device constant has no tensor input.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def _graphs(module: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(submodule path, graph of its forward) for the module and every submodule."""
    for name, sub in module.named_children():
        yield from _graphs(sub, f"{path}.{name}" if path else name)
    try:
        graph = module.graph
    except (AttributeError, RuntimeError):  # a container without forward (ModuleList)
        graph = None
    if graph is not None:
        yield path or "<root>", graph


def _device_constants(graph: Any) -> list[Any]:
    return [
        n
        for n in graph.nodes()
        if n.kind() == "prim::Constant" and str(n.output().type()) == "Device"
    ]


def hardcoded_devices(module: Any) -> list[tuple[str, str]]:
    """(submodule path, device) of every device constant in the module's forward graphs.
    Raises nothing."""
    return [
        (path, str(n.output().toIValue()))
        for path, graph in _graphs(module)
        for n in _device_constants(graph)
    ]


def make_device_agnostic(module: Any) -> int:
    """Replace each device constant by the device of its graph's first tensor input, in
    place; the number replaced. Raises ``ValueError`` for a graph with a device constant
    and no tensor input (nothing to take the device from)."""
    replaced = 0
    for path, graph in _graphs(module):
        constants = _device_constants(graph)
        if not constants:
            continue
        tensors = [i for i in graph.inputs() if str(i.type()).startswith("Tensor")]
        if not tensors:
            raise ValueError(f"{path}: a hard-coded device and no tensor input to replace it")
        first = next(iter(graph.nodes()))
        for const in constants:
            device = graph.create("prim::device", [tensors[0]])
            device.output().setType(const.output().type())
            device.insertBefore(first)
            const.output().replaceAllUsesWith(device.output())
            const.destroy()
            replaced += 1
    return replaced


def _load(path: Path) -> Any:
    return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.torchscript",
        description="Find (check) or remove (fix) hard-coded devices in a TorchScript file, "
        "which make a CPU-traced model fail on a GPU.",
    )
    p.add_argument("action", choices=["check", "fix"])
    p.add_argument("path", type=Path, help="A saved TorchScript file (model.pt).")
    p.add_argument("--out", type=Path, help="fix: where to write (default: in place).")
    p.add_argument("--n-features", type=int, default=103, help="fix: window width to verify.")
    a = p.parse_args(argv)
    module = _load(a.path)
    found = hardcoded_devices(module)
    for where, device in found:
        print(f"{a.path}: {where}: hard-coded device {device!r}")
    if a.action == "check":
        return 1 if found else 0
    if not found:
        print(f"{a.path}: nothing to fix")
        return 0
    x = torch.randn(64, 48, a.n_features, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = module(x)
    n = make_device_agnostic(module)
    out = a.out or a.path
    torch.jit.save(module, str(out))
    with torch.inference_mode():
        after = _load(out)(x)
    if not torch.equal(before, after):
        raise SystemExit(f"{out}: outputs changed after the fix; do not serve it")
    print(f"{out}: {n} device constant(s) replaced; CPU outputs bit-identical on 64 windows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
