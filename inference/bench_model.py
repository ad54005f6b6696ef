"""The served model's own speed, by device and batch size: ``python -m inference.bench_model``.

Runs the exported TorchScript file exactly as Triton's Python backend does
(``inference/triton_python_model.py``: ``torch.from_numpy(batch).to(device)``, the model,
``.float().cpu().numpy()``), so the numbers are what one Triton model instance can serve
on that device, before gRPC and queueing. For each device (the CPU with the backend's
thread count, and CUDA when torch sees a GPU) and each batch size it reports windows per
second and the median time per call, the ratio of each batch size to one window per
call on the same device, and the ratio of the GPU to the CPU at the same batch size.
On the GPU it also checks that the outputs equal the CPU's on the same windows (largest
absolute difference), since a model that is fast and wrong is no use.

The windows are seeded synthetic ones in the model's layout (values, measured masks,
staleness, stay hours): the model's work does not depend on the values, and the device
machine has no PhysioNet data. Imports only torch and numpy (the GPU machine has no
project environment). Raises ``FileNotFoundError`` when the model folder has no version.

    python -m inference.bench_model [--model-dir DIR] [--batches 1,16,64,256]
        [--seconds 2] [--threads 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

DEFAULT_DIR = Path(__file__).resolve().parent / "model_repository" / "sepsis_transformer"


def newest_version(model_dir: Path) -> Path:
    """The newest numbered version folder of a Triton model folder (as
    :func:`inference.features.newest_version_dir`, which imports the patient-state code
    and its JSON library; the GPU host has neither).

    Raises ``FileNotFoundError`` when there is none."""
    versions = sorted(
        (p for p in model_dir.iterdir() if p.name.isdigit() and (p / "model.pt").exists()),
        key=lambda p: int(p.name),
    )
    if not versions:
        raise FileNotFoundError(f"no <version>/model.pt under {model_dir}")
    return versions[-1]


def synthetic_windows(
    n: int, window: int, n_codes: int, seed: int = 0, n_context: int = 0
) -> npt.NDArray[np.float32]:
    """``n`` windows float32[n, window, 3 * n_codes + 1 + n_context] in the model's
    layout (``n_context`` patient-context columns: values in [0, 1], known flags 1)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 1.0, (n, window, n_codes))
    masks = (rng.random((n, window, n_codes)) < 0.3).astype(np.float64)
    stale = rng.uniform(0.0, 1.0, (n, window, n_codes))
    hours = np.broadcast_to(np.linspace(0.0, 1.0, window)[None, :, None], (n, window, 1))
    context = np.ones((n, window, n_context))
    context[:, :, 0::2] = rng.uniform(0.0, 1.0, (n, 1, (n_context + 1) // 2))
    x = np.concatenate([values * masks, masks, stale, hours, context], axis=2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _call(model: Any, batch: npt.NDArray[np.float32], device: torch.device) -> Any:
    # The Triton backend's execute(), minus the request plumbing.
    with torch.inference_mode():
        return model(torch.from_numpy(batch).to(device)).float().cpu().numpy()


def measure(
    model: Any, windows: npt.NDArray[np.float32], device: torch.device, batch: int, seconds: float
) -> dict[str, float]:
    """Windows/s and the median ms per call of ``batch`` windows, after a warm-up."""
    x = windows[:batch]
    for _ in range(3):
        _call(model, x, device)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        _call(model, x, device)
        times.append(time.perf_counter() - t0)
    return {
        "windows_per_s": batch * len(times) / sum(times),
        "median_ms": 1000 * statistics.median(times),
        "calls": float(len(times)),
    }


def run(model_dir: Path, batches: list[int], seconds: float, threads: int) -> dict[str, Any]:
    """Every (device, batch) measurement and the ratios; see the module docstring."""
    vdir = newest_version(model_dir)
    spec = json.loads((vdir / "feature_spec.json").read_text())
    n_codes = len(spec["codes"])
    n_context = len(spec.get("context", []))
    window = int(spec.get("window_hours", 48))
    windows = synthetic_windows(max(batches), window, n_codes, n_context=n_context)
    torch.set_num_threads(threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    out: dict[str, Any] = {
        "model": f"{model_dir.name} v{vdir.name}",
        "window": [window, 3 * n_codes + 1 + n_context],
        "torch": torch.__version__,
        "cpu_threads": threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": {},
    }
    reference = None
    for device in devices:
        model = torch.jit.load(str(vdir / "model.pt"), map_location=device)  # type: ignore[no-untyped-call]
        model.eval()
        try:
            probe = _call(model, windows, device)
        except RuntimeError as exc:  # e.g. a device baked into the file by tracing
            out.setdefault("errors", {})[device.type] = str(exc).splitlines()[-1][:300]
            continue
        if reference is None:
            reference = probe
        else:
            out["max_abs_diff_vs_cpu"] = float(np.max(np.abs(probe - reference)))
        rows = {str(b): measure(model, windows, device, b, seconds) for b in batches}
        one = rows[str(batches[0])]["windows_per_s"]
        for r in rows.values():
            r["x_one_per_call"] = r["windows_per_s"] / one
        out["results"][device.type] = rows
    if "cuda" in out["results"] and "cpu" in out["results"]:
        for b, r in out["results"]["cuda"].items():
            r["x_cpu_same_batch"] = r["windows_per_s"] / out["results"]["cpu"][b]["windows_per_s"]
    return out


def markdown(res: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    lines = [
        f"model {res['model']}, window {res['window']}, torch {res['torch']}, "
        f"CPU threads {res['cpu_threads']}, GPU {res['gpu'] or 'none'}"
        + (
            f", GPU vs CPU outputs max |diff| {res['max_abs_diff_vs_cpu']:.2e}"
            if "max_abs_diff_vs_cpu" in res
            else ""
        ),
        *(f"{dev} FAILED: {err}" for dev, err in res.get("errors", {}).items()),
        "",
        "| device | batch | windows/s | median ms/call | x one per call | x CPU, same batch |",
        "|---|---|---|---|---|---|",
    ]
    for dev, rows in res["results"].items():
        for b, r in rows.items():
            vs_cpu = f"{r['x_cpu_same_batch']:.1f}x" if "x_cpu_same_batch" in r else ""
            lines.append(
                f"| {dev} | {b} | {r['windows_per_s']:,.0f} | {r['median_ms']:.2f} | "
                f"{r['x_one_per_call']:.1f}x | {vs_cpu} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.bench_model",
        description="Windows/s of the served TorchScript model by device and batch size, "
        "run the way Triton's Python backend runs it (CPU, and CUDA when there is a GPU).",
    )
    p.add_argument("--model-dir", type=Path, default=DEFAULT_DIR, help="Triton model folder.")
    p.add_argument("--batches", default="1,16,64,256", help="Batch sizes, comma-separated.")
    p.add_argument("--seconds", type=float, default=2.0, help="Timed seconds per row.")
    p.add_argument(
        "--threads", type=int, default=1, help="CPU threads (the backend's default is 1)."
    )
    p.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    a = p.parse_args(argv)
    batches = [int(b) for b in a.batches.split(",")]
    res = run(a.model_dir, batches, a.seconds, a.threads)
    print(markdown(res))
    if a.out is not None:
        a.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
