"""A site's recalibration adopted as a new model version (``wardwatch recalibrate``).

``wardwatch validate-site`` fits ``sigmoid(a * logit(p) + b)`` to the served risk ``p`` on
the site's own outcomes and writes ``recalibration.json``. The served ensemble's output is
``sigmoid(z)`` with ``z = intercept + w_t * logit(p_t) + w_g * logit(p_g)``
(:class:`inference.ensemble.EnsembleRiskModel`), so the recalibrated model is the same
model with ``z' = a * z + b``: its stacking becomes ``a * intercept + b``, ``a * w_t``,
``a * w_g`` and nothing else changes (same components, same input, same latency). The
new version is checked against ``recalibrate(old(x), a, b)`` on windows before anything
is written, and its card records where the recalibration came from and carries the
threshold that raises the alerts ``validate-site`` proposed.

Raises ``ValueError`` (permanent) for a recalibration of another model version, one that
is not adoptable (``a <= 0``), a model that is not an ensemble, a version number that is
not newer, an output folder that exists, or a rebuilt model whose output differs;
``FileNotFoundError`` for a missing model file. Nothing is retried.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from inference.calibration import recalibrate
from inference.features import newest_version_dir

# Largest |new(x) - recalibrate(old(x))| accepted: the float32 output's rounding, carried
# through one logit and sigmoid.
MAX_DIFFERENCE: Final = 1e-5
CHECK_WINDOWS: Final = 64
_STACKING = ("intercept", "w_transformer", "w_gbm")


def _check(old: Any, new: Any, a: float, b: float, shape: tuple[int, int]) -> float:
    """The largest difference between the new model and the recalibrated old one on
    seeded windows (measured values and missing ones, as real windows have)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((CHECK_WINDOWS, *shape), generator=g)
    x[torch.rand(x.shape, generator=g) < 0.3] = 0.0
    with torch.no_grad():
        want = recalibrate(old(x).double().numpy()[:, 0], a, b)
        got = new(x).double().numpy()[:, 0]
    return float(np.max(np.abs(got - want)))


def build(
    model_dir: Path, recalibration: Mapping[str, Any], version: int, out: Path
) -> dict[str, Any]:
    """Write ``out/<model folder name>/`` (``config.pbtxt``, ``model_card.json``,
    ``<version>/``): ``model_dir``'s newest version with ``recalibration`` (the contents
    of ``validate-site``'s ``recalibration.json``) folded into its stacking. Returns the
    new card. Raises as the module docstring says; ``out`` is untouched on error."""
    card = json.loads((model_dir / "model_card.json").read_text())
    fitted_on = str(recalibration.get("model", {}).get("version"))
    if fitted_on != str(card["version"]):
        raise ValueError(
            f"the recalibration was fitted on version {fitted_on}'s scores, "
            f"{model_dir} serves version {card['version']}"
        )
    if not recalibration.get("adoptable") or float(recalibration["a"]) <= 0:
        raise ValueError("the recalibration is not adoptable (a <= 0: the model ranks backwards)")
    if version <= int(card["version"]):
        raise ValueError(f"the new version must be above {card['version']}, got {version}")
    dest = out / model_dir.name
    if dest.exists():
        raise ValueError(f"{dest} exists: write the new version to another folder")
    a, b = float(recalibration["a"]), float(recalibration["b"])
    src = newest_version_dir(model_dir)
    old = torch.jit.load(str(src / "model.pt"))  # type: ignore[no-untyped-call]
    new = torch.jit.load(str(src / "model.pt"))  # type: ignore[no-untyped-call]
    if not all(hasattr(new, k) for k in _STACKING):
        raise ValueError(f"{src / 'model.pt'} is not an ensemble: only ensembles are recalibrated")
    old.eval()
    new.eval()
    before = {k: float(getattr(new, k)) for k in _STACKING}
    after = {
        "intercept": a * before["intercept"] + b,
        "w_transformer": a * before["w_transformer"],
        "w_gbm": a * before["w_gbm"],
    }
    for k, v in after.items():
        setattr(new, k, v)
    spec = card["feature_spec"]
    shape = (int(spec["window_hours"]), int(spec["n_features"]))
    diff = _check(old, new, a, b, shape)
    if diff > MAX_DIFFERENCE:
        raise ValueError(f"the rebuilt model differs from the recalibrated one by {diff:.2e}")

    threshold = recalibration["threshold"]["proposed_recalibrated_space"]
    policy = dict(card.get("alert_policy") or {})
    policy.update(recalibration["card_block"]["alert_policy"])  # its threshold is `threshold`
    policy["tuned_by"] = "wardwatch validate-site (threshold and base rate at this site)"
    for stale in ("crossval", "chosen", "rule"):
        policy.pop(stale, None)
    new_card = {k: v for k, v in card.items() if k not in ("evaluation", "metrics")}
    new_card |= {
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "alert_threshold": threshold,
        "alert_policy": policy,
        "recalibration": {
            "method": "platt",
            "a": a,
            "b": b,
            "of_version": card["version"],
            "stacking_before": before,
            "stacking_after": after,
            "max_difference_checked": diff,
            "source": "wardwatch validate-site",
            "fitted_on": recalibration.get("fitted_on"),
            "cross_validation": recalibration.get("cross_validation"),
        },
        "recalibrated_from": {
            "version": card["version"],
            "metrics": card.get("metrics"),
            "note": "discrimination is unchanged (the map is increasing); calibration, "
            "threshold and base rate are this site's",
        },
    }
    if isinstance(new_card.get("ensemble"), dict):
        new_card["ensemble"] = {
            **new_card["ensemble"],
            "stacking": {**new_card["ensemble"].get("stacking", {}), **after},
        }

    tmp = out / f".{model_dir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    vdir = tmp / str(version)
    vdir.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.pt":
            shutil.copy2(f, vdir / f.name)
    new.save(str(vdir / "model.pt"))
    shutil.copy2(model_dir / "config.pbtxt", tmp / "config.pbtxt")
    (tmp / "model_card.json").write_text(json.dumps(new_card, indent=1) + "\n")
    tmp.rename(dest)
    return new_card
