"""Build the ensemble risk model: the transformer stacked with gradient boosting.

    python -m inference.ensemble build --base-dir <transformer folder> \\
        --out var/model-build --version 4 --seed 0 --feature-set 2
    wardwatch evaluate --model-dir var/model-build/sepsis_transformer \\
        --out var/model-build/reports/4
    python -m inference.ensemble card --model-dir var/model-build/sepsis_transformer \\
        --report var/model-build/reports/4/metrics.json
    python -m inference.ensemble reserialise \\
        inference/model_repository/sepsis_transformer/2/model.pt

``build`` takes the newest version of the transformer model folder (its TorchScript file
and Platt calibration untouched), fits the gradient-boosting model of
:func:`inference.evaluate.fit_gbm` on the train split (seeded), fits the logistic stacking
of the two (:func:`inference.evaluate.fit_stacking`) and its alert threshold on the test
split, and writes a Triton model folder ``<out>/sepsis_transformer`` whose new version is
ONE TorchScript file holding all of it (:class:`EnsembleRiskModel`: the window's
gradient-boosting features, the trees, the transformer and the stacking). The features are
computed inside that file from the served window (feature set 1, versions 2 and 3:
:class:`WindowSummariesV1`; feature set 2, version 4:
:class:`inference.window_features.WindowFeatures`), and the build checks them against
their numpy twins on real test-split windows (:func:`check_export`). The served
backend (``inference/triton_python_model.py``), the Triton config and
:class:`~inference.runtime.LocalTorchModel` therefore need no change and no new library
(no scikit-learn in the Triton image). The validation split is not read by ``build``;
``wardwatch evaluate`` reports it once, and ``card`` copies that report into the card.
``reserialise`` scripts a saved version again with this file's code (a faster tree walk,
say) and writes it only if its outputs are bit-identical (:func:`reserialise`).

Raises ``FileNotFoundError`` for a missing model or data folder, ``RuntimeError`` when the
exported file does not reproduce scikit-learn's and the stacking's numbers; nothing is
retried.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from inference.calibration import LOGIT_EPS
from inference.evaluate import (
    GBM_EARLY_LABEL_HOURS,
    GBM_FEATURE_SET,
    GBM_PARAMS_BY_SET,
    Stacking,
    _in_chunks,
    _split_by_stay,
    fit_gbm,
    fit_stacking,
    gbm_bank_features,
    window_gbm_features,
)
from inference.features import FEATURE_SPEC_FILE, WINDOW, newest_version_dir
from inference.runtime import LocalTorchModel
from inference.torchscript import make_device_agnostic
from inference.utility import best_threshold, normalized_utility
from inference.window_features import WindowFeatures, lab_mask, window_features

if TYPE_CHECKING:
    from inference.train import Bank, Stay

MODEL_NAME = "sepsis_transformer"
F32 = npt.NDArray[np.float32]
FEATURE_SET_TEXT: dict[int, str] = {
    1: "last hour of the window (all F), 48 h and 6 h means of values and measured-masks, "
    "6 h change of each value (inference.evaluate.window_gbm_features)",
    2: "last hour of the window (all F: values, measured-masks, time since each code was "
    "measured, stay hours); 48, 24 and 6 h means of values and measured-masks (measurement "
    "frequencies), 12 h measured-mask means; 6, 12 and 24 h changes; 24 and 48 h min and "
    "max, 24 h standard deviation of each value; vital-sign and lab measurement counts in "
    "the last 6, 24 and 48 h, newest lab's staleness, codes measured "
    "(inference.window_features.window_features, computed inside the served model)",
}
# The exported file must agree with numpy/scikit-learn to this absolute tolerance.
ATOL = 1e-5
# Rows of the transformer per forward pass on a CPU (see transformer_probability).
TRANSFORMER_CPU_CHUNK = 32


class WindowSummariesV1(nn.Module):
    """Feature set 1 (version 2's): :func:`inference.evaluate.window_gbm_features` in
    torch, as float64."""

    def __init__(self, n_codes: int) -> None:
        super().__init__()
        self.n_codes = int(n_codes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.n_codes
        w = x.shape[1]
        last = x[:, -1, :]
        mean48 = (x[:, :, : 2 * c].double().sum(1) / float(w)).float()
        mean6 = (x[:, -6:, : 2 * c].double().sum(1) / 6.0).float()
        delta6 = x[:, -1, :c] - x[:, -7, :c]
        return torch.cat([last, mean48, mean6, delta6], 1).double()


def feature_module(feature_set: int, codes: Sequence[str]) -> nn.Module:
    """The torch twin of :func:`numpy_features` for ``feature_set`` over ``codes``.
    Raises ``ValueError`` for an unknown feature set."""
    if feature_set == 1:
        return WindowSummariesV1(len(codes))
    if feature_set == 2:
        return WindowFeatures(len(codes), lab_mask(codes))
    raise ValueError(f"unknown feature set {feature_set}")


def numpy_features(feature_set: int, windows: npt.NDArray[np.float32], codes: Sequence[str]) -> F32:
    """The gradient boosting's features of windows ``float32[B, WINDOW, F]`` (feature set
    1: :func:`inference.evaluate.window_gbm_features`; 2:
    :func:`inference.window_features.window_features`). Raises ``ValueError`` for an
    unknown feature set or windows of the wrong shape."""
    if feature_set == 1:
        return window_gbm_features(windows, len(codes))
    if feature_set == 2:
        return window_features(windows, len(codes), lab_mask(codes))
    raise ValueError(f"unknown feature set {feature_set}")


class EnsembleRiskModel(nn.Module):
    """``float32[B, WINDOW, F]`` windows -> ``float32[B, 1]`` ensemble probability.

    ``forward`` = ``sigmoid(intercept + w_t * logit(p_t) + w_g * logit(p_g))`` in float64,
    with ``p_t`` the transformer's calibrated probability (its TorchScript module, as
    exported) and ``p_g`` the gradient boosting's, from the trees of a fitted
    ``HistGradientBoostingClassifier`` walked with tensor ops (``x <= threshold`` goes
    left, NaN follows the tree's missing-value side, as scikit-learn does) over the
    window's features (``features``: :func:`feature_module`, computed here from the
    window, so the served input stays the window).
    """

    def __init__(
        self,
        transformer: torch.jit.ScriptModule,
        trees: dict[str, torch.Tensor],
        baseline: float,
        depth: int,
        features: nn.Module,
        stacking: Stacking,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.features = features
        for name in ("feature", "threshold", "value", "root"):
            self.register_buffer(name, trees[name])
        # One lookup per level instead of two and a where: node i's left child at 2i, its
        # right at 2i + 1 (a leaf's are itself), so the next node is next_node[2 * node +
        # goes_right]; and the missing-value side stored as "goes right".
        self.register_buffer(
            "next_node", torch.stack([trees["left"], trees["right"]], 1).reshape(-1)
        )
        self.register_buffer("missing_right", ~trees["missing_left"])
        self.baseline = float(baseline)
        self.depth = int(depth)
        self.intercept = float(stacking.intercept)
        self.w_transformer = float(stacking.w_transformer)
        self.w_gbm = float(stacking.w_gbm)
        self.eps = float(LOGIT_EPS)
        self.cpu_chunk = int(TRANSFORMER_CPU_CHUNK)

    def gbm_features(self, x: torch.Tensor) -> torch.Tensor:
        """The gradient boosting's features of the windows, float64[B, K]."""
        f: torch.Tensor = self.features(x)
        return f

    @torch.jit.export
    def gbm_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The gradient boosting's probability, float64[B]."""
        f = self.gbm_features(x)
        b = f.shape[0]
        feature: torch.Tensor = self.feature  # type: ignore[assignment]
        threshold: torch.Tensor = self.threshold  # type: ignore[assignment]
        missing_right: torch.Tensor = self.missing_right  # type: ignore[assignment]
        next_node: torch.Tensor = self.next_node  # type: ignore[assignment]
        root: torch.Tensor = self.root  # type: ignore[assignment]
        value: torch.Tensor = self.value  # type: ignore[assignment]
        node = root.unsqueeze(0).expand(b, root.shape[0])
        # ``take`` (flat gather) rather than ``tensor[node]``: advanced indexing cost 26 %
        # of a 64-window forward pass here; the walk is now ~2x faster, same numbers.
        for _ in range(self.depth):
            xv = torch.gather(f, 1, feature.take(node))
            # x > threshold goes right, NaN goes to the tree's missing-value side (as in
            # scikit-learn: x <= threshold goes left); a leaf's children are itself, so
            # finished trees stay put
            go_right = (xv > threshold.take(node)) | (torch.isnan(xv) & missing_right.take(node))
            node = next_node.take(node * 2 + go_right.long())
        return torch.sigmoid(value.take(node).sum(1) + self.baseline)

    @torch.jit.export
    def transformer_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's calibrated probability, float64[B] (from its float32)."""
        if x.device.type == "cpu" and x.shape[0] > self.cpu_chunk:
            # On a CPU the attention of 64 windows (64 x 4 heads x 48 x 48 floats, 2.4
            # MB) falls out of the core's cache; in chunks of 32 the same rows take ~25 %
            # less time, with the same numbers (checked by `reserialise`). A GPU takes
            # the batch whole.
            p = torch.cat([self.transformer(c) for c in torch.split(x, self.cpu_chunk)])
        else:
            p = self.transformer(x)
        return p[:, 0].double()

    def _logit(self, p: torch.Tensor) -> torch.Tensor:
        q = torch.clamp(p, self.eps, 1.0 - self.eps)
        return torch.log(q) - torch.log1p(-q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (
            self.intercept
            + self.w_transformer * self._logit(self.transformer_probability(x))
            + self.w_gbm * self._logit(self.gbm_probability(x))
        )
        return torch.sigmoid(z).float().unsqueeze(1)


def tree_tensors(gbm: Any) -> tuple[dict[str, torch.Tensor], float, int]:
    """The trees of a fitted binary ``HistGradientBoostingClassifier`` as flat tensors
    (``[T * N]`` per node field, children as flat indices, leaves pointing at themselves),
    its baseline raw score and the deepest leaf's depth. Raises ``ValueError`` for a
    multi-class or categorical model (not supported)."""
    if gbm.n_trees_per_iteration_ != 1:
        raise ValueError("only binary gradient boosting is supported")
    trees = [p[0].nodes for p in gbm._predictors]
    if any(t["is_categorical"].any() for t in trees):
        raise ValueError("categorical splits are not supported")
    n = max(t.size for t in trees)
    size = len(trees) * n
    out = {
        "feature": np.zeros(size, np.int64),
        "threshold": np.zeros(size, np.float64),
        "left": np.arange(size, dtype=np.int64),  # padding nodes: self loops, never reached
        "right": np.arange(size, dtype=np.int64),
        "missing_left": np.zeros(size, bool),
        "value": np.zeros(size, np.float64),
    }
    depth = 0
    for i, t in enumerate(trees):
        base = i * n
        k = np.arange(t.size)
        leaf = t["is_leaf"].astype(bool)
        out["feature"][base + k] = np.where(leaf, 0, t["feature_idx"])
        out["threshold"][base + k] = np.where(leaf, 0.0, t["num_threshold"])
        out["left"][base + k] = np.where(leaf, base + k, base + t["left"].astype(np.int64))
        out["right"][base + k] = np.where(leaf, base + k, base + t["right"].astype(np.int64))
        out["missing_left"][base + k] = t["missing_go_to_left"].astype(bool) & ~leaf
        out["value"][base + k] = np.where(leaf, t["value"], 0.0)
        depth = max(depth, int(t["depth"][leaf].max()))
    tensors = {k: torch.from_numpy(v) for k, v in out.items()}
    tensors["root"] = torch.arange(len(trees), dtype=torch.int64) * n
    return tensors, float(np.asarray(gbm._baseline_prediction).ravel()[0]), depth


def export_ensemble(
    transformer: torch.jit.ScriptModule,
    gbm: Any,
    stacking: Stacking,
    codes: Sequence[str],
    feature_set: int = GBM_FEATURE_SET,
) -> torch.jit.ScriptModule:
    """The ensemble as one TorchScript module (scripted; the transformer stays traced),
    its trees reading ``feature_set``'s features of the window over ``codes``. Raises
    ``ValueError`` for an unknown feature set or a model :func:`tree_tensors` rejects."""
    trees, baseline, depth = tree_tensors(gbm)
    features = feature_module(feature_set, codes)
    module = EnsembleRiskModel(transformer, trees, baseline, depth, features, stacking).eval()
    scripted: torch.jit.ScriptModule = torch.jit.script(module)
    # The transformer's trace may carry a hard-coded "cpu" (older exports did): serve on
    # whatever device the windows arrive on (see inference.torchscript).
    make_device_agnostic(scripted)
    return scripted


def saved_trees(module: Any) -> dict[str, torch.Tensor]:
    """The :func:`tree_tensors` dict of a saved ensemble, from either buffer layout
    (``left``/``right``/``missing_left`` before 2026-12-02, ``next_node``/``missing_right``
    since). Raises ``ValueError`` when ``module`` is not an ensemble."""
    buffers = dict(module.named_buffers(recurse=False))
    if "next_node" in buffers:
        pairs = buffers["next_node"].reshape(-1, 2)
        left, right = pairs[:, 0].clone(), pairs[:, 1].clone()
        missing_left = ~buffers["missing_right"]
    elif "left" in buffers:
        left, right, missing_left = buffers["left"], buffers["right"], buffers["missing_left"]
    else:
        raise ValueError("not an ensemble: the module holds no trees")
    trees = {k: buffers[k] for k in ("feature", "threshold", "value", "root")}
    return trees | {"left": left, "right": right, "missing_left": missing_left}


def rebuild(module: Any) -> torch.jit.ScriptModule:
    """A saved ensemble scripted again with this file's :class:`EnsembleRiskModel`: the
    same transformer, features, trees and stacking (nothing refitted). Raises
    ``ValueError`` when ``module`` is not an ensemble."""
    stacking = Stacking(
        float(module.intercept), float(module.w_transformer), float(module.w_gbm), 0.0
    )
    if float(module.eps) != float(LOGIT_EPS):
        raise ValueError(f"logit clip {module.eps} differs from this code's {LOGIT_EPS}")
    # files from before the feature modules (version 2's) computed feature set 1 inline
    # from ``n_codes``, with the same operations as WindowSummariesV1
    names = {n for n, _ in module.named_children()}
    features = module.features if "features" in names else WindowSummariesV1(module.n_codes)
    rebuilt = EnsembleRiskModel(
        module.transformer,
        saved_trees(module),
        float(module.baseline),
        int(module.depth),
        features,
        stacking,
    ).eval()
    scripted: torch.jit.ScriptModule = torch.jit.script(rebuilt)
    make_device_agnostic(scripted)
    return scripted


def _differences(a: Any, b: Any, windows: Sequence[torch.Tensor]) -> list[str]:
    """Where ``a`` and ``b`` differ (forward and each component, bit for bit)."""
    out = []
    with torch.inference_mode():
        for x in windows:
            for name in ("forward", "transformer_probability", "gbm_probability"):
                u, v = getattr(a, name)(x), getattr(b, name)(x)
                # NaN in, NaN out (the transformer's): equal here
                if u.shape != v.shape or not ((u == v) | (u.isnan() & v.isnan())).all():
                    out.append(f"{name} at batch {x.shape[0]}")
    return out


def reserialise(
    path: Path,
    out: Path,
    n_features: int,
    real_windows: npt.NDArray[np.float32] | None = None,
) -> dict[str, Any]:
    """Script the ensemble at ``path`` again with this code (:func:`rebuild`) and write it
    to ``out`` (may be ``path``) only if every output is bit-identical to the old file's:
    forward and both components, at batch sizes 1, 7, 32, 33, 64 and 100 (across the
    transformer's CPU chunks), on seeded random windows ``[WINDOW, n_features]``, windows
    with NaN values, and ``real_windows`` when given. Returns what was checked. Raises
    ``RuntimeError`` when an output differs (nothing is written), ``ValueError`` for a
    non-ensemble file; nothing is retried."""
    old = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    old.eval()
    new = rebuild(old)
    gen = torch.Generator().manual_seed(0)
    rand = torch.randn(100, WINDOW, n_features, generator=gen)
    holes = rand.clone()
    holes[::3, :, 0] = float("nan")  # NaN summaries: the trees' missing-value side
    sets = [rand, holes]
    real = None
    if real_windows is not None and len(real_windows):
        real = torch.from_numpy(np.ascontiguousarray(real_windows, dtype=np.float32))
        sets.append(real)
    batches = [x[:n] for x in sets for n in (1, 7, 32, 33, 64, 100) if n <= x.shape[0]]
    if real is not None:  # and every real window
        batches += list(torch.split(real, 64))
    differ = _differences(old, new, batches)
    if differ:
        raise RuntimeError(f"{path}: rebuilt model differs ({', '.join(differ)}); not written")
    new.save(str(out))
    reloaded = torch.jit.load(str(out), map_location="cpu")  # type: ignore[no-untyped-call]
    differ = _differences(old, reloaded.eval(), batches)
    if differ:
        raise RuntimeError(
            f"{out}: the written file differs ({', '.join(differ)}); do not serve it"
        )
    return {
        "windows_checked": int(sum(x.shape[0] for x in batches)),
        "real_windows": 0 if real_windows is None else len(real_windows),
        "batch_sizes": sorted({int(x.shape[0]) for x in batches}),
    }


def check_export(
    module: torch.jit.ScriptModule,
    transformer: torch.jit.ScriptModule,
    gbm: Any,
    stacking: Stacking,
    windows: npt.NDArray[np.float32],
    codes: Sequence[str],
    feature_set: int = GBM_FEATURE_SET,
) -> dict[str, float]:
    """Largest absolute differences between the exported module and the reference
    (the numpy features of :func:`numpy_features`, scikit-learn's ``predict_proba`` on
    them, the transformer alone, :meth:`Stacking.predict`) on real windows;
    ``RuntimeError`` past :data:`ATOL`."""
    x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    with torch.inference_mode():
        got = module(x)[:, 0].numpy().astype(np.float64)
        got_g = module.gbm_probability(x).numpy()
        got_f = module.gbm_features(x).numpy()
        p_t = transformer(x)[:, 0].numpy().astype(np.float64)
    want_f = numpy_features(feature_set, windows, codes)
    p_g = gbm.predict_proba(want_f)[:, 1]
    diffs = {
        "features": float(np.abs(got_f - want_f.astype(np.float64)).max()),
        "gbm": float(np.abs(got_g - p_g).max()),
        "ensemble": float(np.abs(got - stacking.predict(p_t, p_g)).max()),
    }
    if max(diffs.values()) > ATOL:
        raise RuntimeError(f"exported ensemble differs from the reference: {diffs}")
    return diffs


def build(
    base_dir: Path,
    data_dir: Path,
    out: Path,
    *,
    version: int = 2,
    seed: int = 0,
    threads: int = 2,
    max_patients: int | None = None,
    feature_set: int = GBM_FEATURE_SET,
    check_rows: int = 2048,
) -> dict[str, Any]:
    """Write ``<out>/sepsis_transformer`` (``<version>/``, ``config.pbtxt``,
    ``model_card.json``) and ``<out>/artifacts/gbm.joblib``; returns the card.

    Raises ``FileNotFoundError`` for a missing model or data folder, ``ValueError`` when
    the base model is already an ensemble or a split lacks positives, ``RuntimeError``
    when the export check fails."""
    import joblib  # type: ignore[import-untyped]

    from inference import train as tr

    t0 = time.monotonic()
    torch.set_num_threads(threads)
    if not data_dir.exists():
        raise FileNotFoundError(f"no PhysioNet data at {data_dir}")
    base = LocalTorchModel.from_dir(base_dir)
    if "ensemble" in base.card:
        raise ValueError(f"{base_dir} is already an ensemble; give the transformer's folder")
    spec, codes = base.spec, base.spec.codes
    split_seed = int(base.card.get("split", {}).get("seed", 2019))

    # train and test only: the validation split is not even read (`wardwatch evaluate`
    # reports it, once)
    stays = _load_stays(data_dir, split_seed, max_patients, ("train", "test"))
    fit_bank = tr.make_bank([s for s in stays if s.split == "train"], spec)
    tune_bank = tr.make_bank([s for s in stays if s.split == "test"], spec)
    t_fit = time.monotonic()
    gbm = fit_gbm(
        fit_bank.rows, fit_bank.starts, fit_bank.labels, codes, seed, feature_set, fit_bank.stay_of
    )
    fit_seconds = time.monotonic() - t_fit
    tune_pg = gbm.predict_proba(
        gbm_bank_features(tune_bank.rows, tune_bank.starts, codes, feature_set)
    )[:, 1]
    tune_labels = _split_by_stay(tune_bank.labels, tune_bank.stay_of)
    gbm_th, _ = best_threshold(tune_labels, _split_by_stay(tune_pg, tune_bank.stay_of))
    tune_pt = _in_chunks(base.predict, tune_bank)
    stacking = fit_stacking(tune_bank.labels, tune_bank.stay_of, tune_pt, tune_pg)
    tune_pe = stacking.predict(tune_pt, tune_pg)

    module = export_ensemble(base.module, gbm, stacking, codes, feature_set)
    # real windows, spread over the whole test split (a stay's first hours are mostly
    # padding, its later hours are not)
    check_windows = _spread_windows(tune_bank, check_rows)
    diffs = check_export(module, base.module, gbm, stacking, check_windows, codes, feature_set)

    model_dir = out / MODEL_NAME
    vdir = model_dir / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    base_vdir = newest_version_dir(base_dir)
    module.save(str(vdir / "model.pt"))
    shutil.copyfile(base_vdir / FEATURE_SPEC_FILE, vdir / FEATURE_SPEC_FILE)
    # the served backend is the transformer's own (it loads model.pt, whatever is inside)
    shutil.copyfile(base_vdir / "model.py", vdir / "model.py")
    shutil.copyfile(base_dir / "config.pbtxt", model_dir / "config.pbtxt")
    (out / "artifacts").mkdir(parents=True, exist_ok=True)
    joblib.dump(gbm, out / "artifacts" / "gbm.joblib")

    def test_metrics(p: npt.NDArray[np.float64], th: float) -> dict[str, float]:
        from sklearn.metrics import average_precision_score, roc_auc_score

        split = _split_by_stay(p, tune_bank.stay_of)
        return {
            "auroc": round(float(roc_auc_score(tune_bank.labels, p)), 4),
            "auprc": round(float(average_precision_score(tune_bank.labels, p)), 4),
            "utility": round(normalized_utility(tune_labels, [q >= th for q in split]), 4),
            "alert_rate": round(float((p >= th).mean()), 4),
        }

    card = _card(
        base.card, version, stacking, gbm, gbm_th, split_seed, seed, max_patients, feature_set
    )
    card["metrics"] = {
        "test": test_metrics(tune_pe, stacking.threshold),
        "test_components": {
            "transformer": test_metrics(tune_pt, base.alert_threshold),
            "gbm": test_metrics(tune_pg, gbm_th),
        },
    }
    card["ensemble"]["export_check_max_abs_diff"] = diffs
    card["ensemble"]["gbm"]["fit_seconds"] = round(fit_seconds, 1)
    card["build_seconds"] = round(time.monotonic() - t0, 1)
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _card(
    base: dict[str, Any],
    version: int,
    stacking: Stacking,
    gbm: Any,
    gbm_th: float,
    split_seed: int,
    seed: int,
    max_patients: int | None,
    feature_set: int,
) -> dict[str, Any]:
    """Version ``version``'s model card: the transformer's, with the ensemble's parts."""
    keep = ("name", "intended_use", "data", "split", "feature_spec")
    card: dict[str, Any] = {k: base[k] for k in keep if k in base}
    card["version"] = version
    card["created"] = datetime.now(UTC).isoformat(timespec="seconds")
    card["split"] = {
        **base.get("split", {}),
        "early_stopping_and_calibration_and_threshold": "test",
        "ensemble_weights_and_threshold": "test",
        "gbm_fit": "train",
    }
    card["model"] = {
        "architecture": "ensemble: logistic stacking of the transformer (version "
        f"{base['version']}, unchanged) and gradient boosting on summaries of the same window",
        "output": "calibrated probability sigmoid(intercept + w_t*logit(p_t) + w_g*logit(p_g))",
        "transformer": base.get("model", {}),
    }
    card["ensemble"] = {
        "method": "logistic stacking (LogisticRegression, C=1e4) of logit(p_transformer) "
        "and logit(p_gbm), fitted on the test split; alert threshold = best utility on the "
        "test split",
        "stacking": stacking.to_dict(),
        "logit_clip": LOGIT_EPS,
        "transformer": {
            "name": f"{base['name']} v{base['version']}",
            "platt": base.get("model", {}).get("platt"),
            "training_command": base.get("training", {}).get("command"),
        },
        "transformer_threshold": float(base["alert_threshold"]),
        "gbm": {
            "library": "scikit-learn HistGradientBoostingClassifier (trees exported to "
            "TorchScript; scikit-learn is not needed to serve)",
            "params": {**GBM_PARAMS_BY_SET[feature_set], "random_state": seed},
            "n_iter": int(gbm.n_iter_),
            "seed": seed,
            "fitted_on": "train",
            "feature_set": feature_set,
            "training_labels": (
                f"SepsisLabel moved {GBM_EARLY_LABEL_HOURS[feature_set]} h earlier in septic "
                "stays (inference.evaluate.early_labels)"
                if GBM_EARLY_LABEL_HOURS[feature_set]
                else "SepsisLabel"
            ),
            "features": FEATURE_SET_TEXT[feature_set],
            "n_features": int(gbm.n_features_in_),
        },
        "gbm_threshold": gbm_th,
        "window_hours": WINDOW,
    }
    card["alert_threshold"] = stacking.threshold
    card["alert_threshold_rule"] = "maximises PhysioNet 2019 normalised utility on the test split"
    card["alert_threshold_note"] = base.get("alert_threshold_note", "")
    card["build_command"] = (
        f"python -m inference.ensemble build --version {version} --seed {seed}"
        f" --feature-set {feature_set}"
        + (f" --max-patients {max_patients}" if max_patients else "")
    )
    card["limits"] = [x for x in base.get("limits", []) if not x.startswith("Validation AUROC")] + [
        "The ensemble's weights and threshold were fitted on the test split (~890 patients, "
        "~50 septic); the utility is noisy at that size.",
        "The gradient-boosting part uses the same inputs as the transformer; it shares its "
        "blind spots (no demographics, notes, drugs or GCS).",
    ]
    return card


def _load_stays(
    data_dir: Path, seed: int, max_patients: int | None, splits: Sequence[str]
) -> list[Stay]:
    """The stays of ``splits`` only (as ``train.load_stays`` loads them; the others'
    files are not read). Raises ``FileNotFoundError`` for a missing file."""
    from inference import physionet_data as pdata
    from inference import train as tr

    codes = tuple(pdata.PSV_CODES.values())
    stays = []
    for path in pdata.stay_files(data_dir, max_patients):
        split = pdata.split_of(path.stem, seed)
        if split in splits:
            matrix, labels, context = pdata.stay_data(path, codes)
            stays.append(tr.Stay(path.stem, split, matrix, labels, context))
    return stays


def add_evaluation(model_dir: Path, report_path: Path) -> dict[str, Any]:
    """Copy a ``wardwatch evaluate`` report (metrics.json) of this model into its card
    (``metrics.validation`` and ``evaluation``). Raises ``FileNotFoundError`` for a
    missing file, ``ValueError`` when the report is of another model version."""
    card: dict[str, Any] = json.loads((model_dir / "model_card.json").read_text())
    report: dict[str, Any] = json.loads(report_path.read_text())
    if report["model"]["version"] != card["version"]:
        raise ValueError(
            f"report is of version {report['model']['version']}, card of {card['version']}"
        )
    name = f"{card['name']} v{card['version']}"
    mine = report["methods"][name]
    card["metrics"]["validation"] = {
        "auroc": round(mine["auroc"], 4),
        "auprc": round(mine["auprc"], 4),
        "utility": round(mine["utility"], 4),
        "alert_rate": round(mine["alarm_hours_fraction"], 4),
        "positive_rate": round(report["positive_rows"] / report["n_rows"], 4),
    }
    rounded = {
        k: {
            kk: (
                [round(x, 4) for x in vv]
                if isinstance(vv, list)
                else round(vv, 4)
                if isinstance(vv, float)
                else vv
            )
            for kk, vv in m.items()
        }
        for k, m in report["methods"].items()
    }
    t = report["targets"]
    card["evaluation"] = {
        "command": f"wardwatch evaluate --model-dir {model_dir} --out {report_path.parent}",
        "split": report["split"],
        "n_patients": report["n_patients"],
        "n_rows": report["n_rows"],
        "bootstrap": report["bootstrap"],
        "methods": rounded,
        "targets": t,
        "targets_met": {
            "auroc": mine["auroc"] >= t["auroc"],
            "utility": mine["utility"] >= t["utility"],
        },
    }
    (model_dir / "model_card.json").write_text(json.dumps(card, indent=1) + "\n")
    return card


def _real_windows(version_dir: Path, data_dir: Path, rows: int) -> npt.NDArray[np.float32] | None:
    """``rows`` real windows spread over the test split's stays (the split seed from the
    model card), or None without the data. Raises ``FileNotFoundError`` for a missing
    feature spec."""
    from inference import train as tr
    from inference.features import FeatureSpec

    if not data_dir.exists():
        return None
    card = json.loads((version_dir.parent / "model_card.json").read_text())
    spec = FeatureSpec.load(version_dir / FEATURE_SPEC_FILE)
    stays = _load_stays(data_dir, int(card.get("split", {}).get("seed", 2019)), None, ("test",))
    return _spread_windows(tr.make_bank(stays, spec), rows)


def _spread_windows(bank: Bank, rows: int) -> npt.NDArray[np.float32]:
    """Up to ``rows`` windows spread evenly over the bank (a stay's first hours are
    mostly padding, its later hours are not)."""
    pick = np.linspace(0, bank.labels.size - 1, min(rows, bank.labels.size)).astype(np.int64)
    windows: npt.NDArray[np.float32] = bank.windows(pick).numpy()
    return windows


def main(argv: list[str] | None = None) -> int:
    """``python -m inference.ensemble``: ``build``, ``reserialise`` or ``card``; 0 on
    success."""
    from inference import physionet_data as pdata

    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(
        prog="python -m inference.ensemble",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[1:3]),
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="fit and export the ensemble (train/test splits only)")
    b.add_argument(
        "--base-dir",
        type=Path,
        default=here / "model_repository" / MODEL_NAME,
        help="the transformer's Triton model folder (its newest version is used)",
    )
    b.add_argument("--data-dir", type=Path, default=pdata.PHYSIONET_DIR)
    b.add_argument("--out", type=Path, default=Path("var") / "model-v2")
    b.add_argument("--version", type=int, default=2)
    b.add_argument("--seed", type=int, default=0, help="gradient boosting's random_state")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--max-patients", type=int, default=None)
    b.add_argument(
        "--feature-set",
        type=int,
        default=GBM_FEATURE_SET,
        choices=sorted(GBM_PARAMS_BY_SET),
        help="the gradient boosting's window features: 1 (default; versions 2 and 3), "
        "or 2 (adds counts and recency of measurements)",
    )
    r = sub.add_parser(
        "reserialise",
        help="script a saved ensemble again with this code; written only if bit-identical",
        description=(
            "Rebuild a saved ensemble (same transformer, trees, features and stacking; "
            "nothing refitted) with this version of EnsembleRiskModel, e.g. to give an "
            "existing model version a faster tree walk. The new file is written only when "
            "forward and both components give bit-identical outputs on random windows, "
            "windows with NaN values and, where the PhysioNet data is (--data-dir), real "
            "test-split windows."
        ),
    )
    r.add_argument("path", type=Path, help="the version's model.pt")
    r.add_argument("--out", type=Path, help="where to write (default: in place)")
    r.add_argument(
        "--data-dir",
        type=Path,
        default=pdata.PHYSIONET_DIR,
        help="PhysioNet stays for real test-split windows (skipped when absent)",
    )
    r.add_argument("--check-rows", type=int, default=2048)
    c = sub.add_parser("card", help="copy a wardwatch evaluate report into the model card")
    c.add_argument("--model-dir", type=Path, required=True)
    c.add_argument("--report", type=Path, required=True, help="the report's metrics.json")
    a = p.parse_args(argv)
    if a.cmd == "build":
        card = build(
            a.base_dir,
            a.data_dir,
            a.out,
            version=a.version,
            seed=a.seed,
            threads=a.threads,
            max_patients=a.max_patients,
            feature_set=a.feature_set,
        )
        print(json.dumps({k: card[k] for k in ("alert_threshold", "metrics")}, indent=1))
        print(json.dumps(card["ensemble"]["stacking"], indent=1))
    elif a.cmd == "reserialise":
        real = _real_windows(a.path.parent, a.data_dir, a.check_rows)
        if real is None:
            print(f"no PhysioNet data at {a.data_dir}: checking random windows only")
        from inference.features import FeatureSpec

        n_features = FeatureSpec.load(a.path.parent / FEATURE_SPEC_FILE).n_features
        done = reserialise(a.path, a.out or a.path, n_features, real)
        print(f"{a.out or a.path}: written; outputs bit-identical: {json.dumps(done)}")
    else:
        card = add_evaluation(a.model_dir, a.report)
        print(json.dumps(card["metrics"]["validation"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
