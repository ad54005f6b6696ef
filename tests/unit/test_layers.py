"""The architecture as a test: layers import downwards only, and no module cycle.

fhir (pure mapping) < inference (the scoring core) < storage < streams (edge, worker,
API, CLI). The layer contract lives in pyproject.toml ([tool.importlinter]) and
`make lint` runs it too; the cycle check covers imports inside functions as well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "storage", "inference", "fhir")


def test_layers_import_downwards_only() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    out = subprocess.run([str(lint)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_the_contract_sees_every_package() -> None:
    graph = grimp.build_graph(*PACKAGES)
    for pkg in PACKAGES:
        # Every module file of the package is in the graph (our fhir portion, not only
        # fhir.resources' package of the same import name).
        files = {
            ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in (ROOT / pkg).rglob("*.py")
            # subpackages too (inference.scoring, streams.worker); not folders that are no
            # package (migrations, the model repository)
            if all((d / "__init__.py").exists() for d in p.parents if ROOT / pkg in d.parents)
        }
        assert files <= graph.modules, sorted(files - graph.modules)


def test_no_import_cycle() -> None:
    graph = grimp.build_graph(*PACKAGES)
    cycles = sorted(
        {
            tuple(sorted((a, b)))
            for a in graph.modules
            for b in graph.find_modules_directly_imported_by(a)
            if graph.find_shortest_chain(importer=b, imported=a)
        }
    )
    assert not cycles, cycles
