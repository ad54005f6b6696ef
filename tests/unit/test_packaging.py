"""The wheel ships the system, not its development tooling.

The benchmarks and the profiler live beside the code they measure but are excluded from
the wheel (``[tool.hatch.build.targets.wheel] exclude`` in pyproject.toml). These tests
check that the exclusion covers them and that nothing shipped imports them, even inside a
function: an installed ``wardwatch`` would fail on such an import.
"""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streams", "storage", "inference", "fhir")
DEV_TOOLING = ("streams/bench.py", "streams/bench_flood.py", "streams/bench_gateway.py",
               "streams/bench_hotpath.py", "streams/bench_fhir.py", "streams/bench_rebuild.py",
               "streams/profiling.py", "inference/bench_model.py")  # fmt: skip


def _excluded() -> list[str]:
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    return list(wheel["targets"]["wheel"]["exclude"])


def _module_path(module: str) -> str | None:
    parts = module.split(".")
    for candidate in (Path(*parts).with_suffix(".py"), Path(*parts, "__init__.py")):
        if (ROOT / candidate).exists():
            return candidate.as_posix()
    return None  # fhir.resources' modules of the same top-level name


def _shipped(path: str) -> bool:
    return not any(fnmatch.fnmatch(path, pattern) for pattern in _excluded())


def test_development_tooling_is_excluded_from_the_wheel() -> None:
    for path in DEV_TOOLING:
        assert (ROOT / path).exists(), path
        assert not _shipped(path), f"{path} would ship in the wheel"
    # every benchmark module, including ones added later
    for path in (ROOT / "streams").glob("bench*.py"):
        assert not _shipped(path.relative_to(ROOT).as_posix()), path


def test_nothing_shipped_imports_development_tooling() -> None:
    graph = grimp.build_graph(*PACKAGES)
    wrong = []
    for module in sorted(graph.modules):
        path = _module_path(module)
        if path is None or not _shipped(path):
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = _module_path(imported)
            if target is not None and not _shipped(target):
                wrong.append(f"{module} imports {imported}")
    assert not wrong, wrong


def test_the_commands_ship_and_none_is_development_tooling() -> None:
    from streams.cli import LAZY_COMMANDS

    for name, target in LAZY_COMMANDS.items():
        path = _module_path(target.split(":")[0])
        assert path is not None and _shipped(path), f"wardwatch {name} -> {target}"
