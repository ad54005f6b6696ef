"""The sepsis-risk model: a small transformer encoder over the 48 hourly feature vectors.

``SepsisTransformer`` maps ``float32[B, WINDOW, F]`` to the logit of the last hour (the
hour ending at the scoring time). ``ExportedRiskModel`` wraps it with the calibration
(Platt: ``sigmoid(a * logit + b)``) and is what is traced to TorchScript and served:
``float32[B, WINDOW, F]`` -> probabilities ``float32[B, 1]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertModel

from inference.features import WINDOW
from inference.torchscript import make_device_agnostic


@dataclass(frozen=True)
class ModelConfig:
    n_features: int
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    intermediate: int = 128
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SepsisTransformer(nn.Module):
    """Linear projection of each hour's features -> BERT encoder (learned positions) ->
    linear head on the last position."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        bert_cfg = BertConfig(
            vocab_size=1,
            hidden_size=cfg.hidden,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            intermediate_size=cfg.intermediate,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            max_position_embeddings=WINDOW,
            type_vocab_size=1,
        )
        bert_cfg._attn_implementation = "eager"  # plain ops: traceable, same on CPU and GPU
        self.project = nn.Linear(cfg.n_features, cfg.hidden)
        self.encoder = BertModel(bert_cfg, add_pooling_layer=False)  # type: ignore[no-untyped-call]
        self.head = nn.Sequential(nn.LayerNorm(cfg.hidden), nn.Linear(cfg.hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float32[B, WINDOW, F] -> logits float32[B]."""
        emb = self.project(x)
        hidden = self.encoder(inputs_embeds=emb, return_dict=False)[0]
        logit: torch.Tensor = self.head(hidden[:, -1, :]).squeeze(-1)
        return logit


class ExportedRiskModel(nn.Module):
    """Served form: calibrated probabilities ``float32[B, 1]``."""

    def __init__(self, net: SepsisTransformer, platt_a: float, platt_b: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("platt", torch.tensor([platt_a, platt_b], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.net(x)
        platt: torch.Tensor = self.platt  # type: ignore[assignment]
        return torch.sigmoid(platt[0] * logit + platt[1]).unsqueeze(-1)


def export_torchscript(model: ExportedRiskModel, n_features: int) -> torch.jit.ScriptModule:
    """Trace the eval-mode model; checks it against eager at batch sizes 1, 7 and 64."""
    model = model.eval()
    example = torch.randn(4, WINDOW, n_features)
    with torch.no_grad():
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            model, example, check_trace=False
        )
        gen = torch.Generator().manual_seed(0)
        for b in (1, 7, 64):
            x = torch.randn(b, WINDOW, n_features, generator=gen)
            want = model(x)
            got = traced(x)
            if got.shape != (b, 1) or not torch.allclose(got, want, atol=1e-5, rtol=0):
                raise RuntimeError(f"traced model differs from eager at batch {b}")
    # Tracing on the CPU bakes "cpu" into the encoder's attention mask; on a GPU Triton
    # that fails every request (see inference.torchscript).
    make_device_agnostic(traced)
    return traced
