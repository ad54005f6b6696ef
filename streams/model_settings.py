"""The served model as the deployment's settings configure it: the model card's alert
policy with the settings' overrides (the core, :mod:`inference.scoring.model_info`,
knows no settings)."""

from __future__ import annotations

from typing import Any

from inference.alert_policy import AlertPolicy
from inference.scoring.model_info import LoadedModel, load_model, read_card

from .settings import Settings


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
    policy = policy_of(read_card(settings.model_dir), settings)
    return load_model(settings.model_dir, settings.triton_model, policy)
