"""What scoring needs to know about the served model: its name and version (the model
card), the alert policy the card states and the feature spec it was trained on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from inference.alert_policy import AlertPolicy
from inference.attribution import Attribution, occlusion
from inference.features import FEATURE_SPEC_FILE, FeatureSpec, newest_version_dir
from inference.runtime import LocalTorchModel, RiskModel

CARD_NAME = "model_card.json"

# Explains one window (float32[WINDOW, F]) for an alert's card: see inference.attribution.
Explainer = Callable[[npt.NDArray[np.float32]], Attribution]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Which model scored: its name and version (from the model card)."""

    name: str
    version: str


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """The model card's facts the stream uses, with the alert policy they imply."""

    info: ModelInfo
    policy: AlertPolicy
    spec: FeatureSpec
    card: dict[str, Any]


def read_card(model_dir: Path) -> dict[str, Any]:
    """The model card of ``model_dir``.

    Raises ``FileNotFoundError`` with what to do when it is missing (permanent: the
    worker cannot start without knowing which model it serves).
    """
    path = model_dir / CARD_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"no model card at {path}: train and export a model first "
            "(`wardwatch train`), or set WARDWATCH_MODEL_DIR"
        )
    card: dict[str, Any] = orjson.loads(path.read_bytes())
    return card


def load_model(model_dir: Path, name: str, policy: AlertPolicy) -> LoadedModel:
    """The model of ``model_dir`` as served under ``name``, alerting by ``policy`` (the
    card's, with the deployment's overrides: ``streams.model_settings.policy_of``).
    Raises ``FileNotFoundError`` without a card or feature spec, ``KeyError`` for a card
    without a version (permanent)."""
    card = read_card(model_dir)
    return LoadedModel(
        info=ModelInfo(name=name, version=str(card["version"])),
        policy=policy,
        spec=FeatureSpec.load(newest_version_dir(model_dir) / FEATURE_SPEC_FILE),
        card=card,
    )


def occlusion_explainer(model_dir: Path, model: RiskModel | None = None) -> Explainer:
    """An :data:`Explainer` running occlusion attribution
    (:mod:`inference.attribution`) with ``model``, or with the newest exported version in
    ``model_dir`` run in-process (:class:`~inference.runtime.LocalTorchModel`, loaded on
    the first alert, so workers that never alert never load it).

    The returned function raises ``OSError``/``RuntimeError`` when the model file cannot
    be loaded (retried at the next alert) and ``ValueError`` on a window of the wrong
    shape; :func:`inference.scoring.alerts.finish` catches both and states it in the card.
    """
    loaded: list[tuple[RiskModel, FeatureSpec]] = []
    if model is not None:
        spec = model.spec if isinstance(model, LocalTorchModel) else None
        if spec is None:
            spec = FeatureSpec.load(newest_version_dir(model_dir) / FEATURE_SPEC_FILE)
        loaded.append((model, spec))

    def explain(window: npt.NDArray[np.float32]) -> Attribution:
        if not loaded:
            local = LocalTorchModel.from_dir(model_dir)
            loaded.append((local, local.spec))
        m, spec = loaded[0]
        return occlusion(m, window, spec)

    return explain
