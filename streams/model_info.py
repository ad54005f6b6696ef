"""What the stream needs to know about the served model: name, version, alert threshold."""

from __future__ import annotations

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

from .pipeline import Explainer, ModelInfo
from .settings import Settings

CARD_NAME = "model_card.json"


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


def policy_of(card: dict[str, Any], settings: Settings) -> AlertPolicy:
    """The alert policy the card states, with the settings' overrides. Raises
    ``KeyError``/``ValueError`` for a card without a usable policy (permanent)."""
    return AlertPolicy.from_card(
        card,
        threshold=settings.alert_threshold,
        clear_ratio=settings.alert_clear_ratio,
        hold_hours=settings.alert_hold_hours,
        suppress_hours=settings.alert_suppress_hours,
    )


def load_model_info(settings: Settings) -> LoadedModel:
    """Model name/version and alert policy from the model card and the settings.
    Raises ``FileNotFoundError`` without a card, ``KeyError``/``ValueError`` for a card
    without a usable policy (permanent)."""
    card = read_card(settings.model_dir)
    return LoadedModel(
        info=ModelInfo(name=settings.triton_model, version=str(card["version"])),
        policy=policy_of(card, settings),
        spec=FeatureSpec.load(newest_version_dir(settings.model_dir) / FEATURE_SPEC_FILE),
        card=card,
    )


def occlusion_explainer(model_dir: Path, model: RiskModel | None = None) -> Explainer:
    """An :data:`~streams.pipeline.Explainer` running occlusion attribution
    (:mod:`inference.attribution`) with ``model``, or with the newest exported version in
    ``model_dir`` run in-process (:class:`~inference.runtime.LocalTorchModel`, loaded on
    the first alert, so workers that never alert never load it).

    The returned function raises ``OSError``/``RuntimeError`` when the model file cannot
    be loaded (retried at the next alert) and ``ValueError`` on a window of the wrong
    shape; :func:`~streams.pipeline.finish` catches both and states it in the card.
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
