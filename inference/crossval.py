"""Cross-validate two ensemble configurations on the train split, to choose between them
without reading the validation split.

    python -m inference.crossval --folds 5 --out inference/reports/crossval

Why: the test split (~890 patients, ~50 septic) decides the ensemble's stacking weights
and alert threshold, and its utility is too noisy to rank two configurations (version 2's
gradient boosting, feature set 1, against version 3's candidate, feature set 2 with labels
moved 6 h earlier: inference/reports/candidate-3). Here every train-split patient is
scored once by models that never saw them, ~4,200 patients and ~300 septic ones.

Per fold (patients of the train split, split into ``folds`` parts by a seeded
permutation): the transformer is trained again with version 1's recipe on the other
folds (early stopping and Platt calibration on the test split, as ``inference.train``),
the gradient boosting of each feature set is fitted on the other folds
(:func:`inference.evaluate.fit_gbm`), and each ensemble's stacking and threshold are
fitted on the test split (:func:`inference.evaluate.fit_stacking`), exactly as
``inference.ensemble build`` does. The held-out fold is then scored with those
thresholds. The validation split is not read.

Decision rule (fixed before the first run): the configuration whose stacked ensemble has
the higher normalised utility over all held-out patients pooled is the one to serve. The
paired patient bootstrap of the difference and the per-fold utilities are reported so the
size of the difference can be judged; they do not change the rule. With ``--baseline``
(an earlier run's folder, same data, folds and seed, so the same patients in the same
folds) the two compared are this run's ensemble and the baseline's, e.g. a transformer
trained for more epochs against version 1's recipe.

Writes ``<out>/folds/fold-<k>.npz`` (each fold's held-out predictions; an existing fold
file of the same configuration is reused, so an interrupted run resumes),
``<out>/metrics.json``, ``<out>/report.md`` and ``<out>/crossval.png``.

Raises ``FileNotFoundError`` for a missing data folder and ``ValueError`` when a fold or
the test split has no septic patient; nothing is retried.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import roc_auc_score
from tqdm import tqdm

from inference import physionet_data as pdata
from inference.alert_metrics import table_cells
from inference.calibration import platt_fit, sigmoid
from inference.evaluate import (
    _split_by_stay,
    early_labels,
    fit_gbm,
    fit_stacking,
    gbm_bank_features,
)
from inference.utility import (
    StayUtilities,
    best_threshold,
    paired_bootstrap,
)

if TYPE_CHECKING:
    from inference.train import Bank, Stay

F64 = npt.NDArray[np.float64]
# Version 1's training recipe (its model card's training command).
TRANSFORMER_RECIPE: dict[str, int | float] = {
    "epochs": 2,
    "neg_ratio": 6,
    "batch_size": 128,
    "lr": 1e-3,
    "patience": 4,
}
# The target for the normalised utility (drawn on the plot).
UTILITY_TARGET = 0.40
CONFIG_NAMES: dict[int, str] = {
    1: "v2 config (feature set 1)",
    2: "v3 candidate config (feature set 2, labels 6 h earlier)",
}


def assign_folds(stems: Sequence[str], folds: int, seed: int) -> npt.NDArray[np.int64]:
    """Fold index (0..folds-1) of each stem: a seeded permutation of the sorted stems dealt
    round-robin, so fold sizes differ by at most one and do not depend on input order.
    Raises ``ValueError`` for fewer than 2 folds or more folds than stems."""
    if folds < 2 or folds > len(stems):
        raise ValueError(f"need 2 <= folds <= {len(stems)} stems, got {folds}")
    order = sorted(range(len(stems)), key=lambda i: stems[i])
    perm = np.random.default_rng(seed).permutation(len(stems))
    out = np.empty(len(stems), dtype=np.int64)
    for rank, j in enumerate(perm):
        out[order[j]] = rank % folds
    return out


def _gbm_probability(gbm: Any, bank: Bank, codes: Sequence[str], feature_set: int) -> F64:
    features = gbm_bank_features(bank.rows, bank.starts, codes, feature_set)
    out: F64 = gbm.predict_proba(features)[:, 1]
    return out


def run_fold(
    fit_stays: list[Stay],
    held_stays: list[Stay],
    tune_stays: list[Stay],
    feature_sets: Sequence[int],
    seed: int,
    recipe: dict[str, int | float],
    gbm_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train on ``fit_stays``, tune on ``tune_stays`` (the test split), score
    ``held_stays``; returns the held-out rows' labels and stay index, the probabilities of
    the transformer and of each feature set's gradient boosting and ensemble, and the
    thresholds chosen on the test split. ``gbm_overrides`` replace gradient-boosting
    parameters (:func:`inference.evaluate.fit_gbm`). Raises ``ValueError`` when a part
    lacks septic rows."""
    from inference import train as tr
    from inference.model import ModelConfig

    # the normalisation, from the fold's training patients
    spec = tr.fit_spec(fit_stays, context=bool(recipe.get("context", False)))
    codes = spec.codes
    fit_bank = tr.make_bank(fit_stays, spec)
    tune_bank = tr.make_bank(tune_stays, spec)
    held_bank = tr.make_bank(held_stays, spec)
    torch.manual_seed(seed)
    # The transformer may be trained on labels moved earlier, as the gradient boosting of
    # feature set 2 is; early stopping, calibration and thresholds keep the true labels.
    early_h = int(recipe.get("early_label_hours", 0))
    train_bank = (
        dataclasses.replace(
            fit_bank, labels=early_labels(fit_bank.labels, fit_bank.stay_of, early_h)
        )
        if early_h
        else fit_bank
    )
    net, history, best_epoch = tr.fit_transformer(
        train_bank,
        tune_bank,
        ModelConfig(n_features=spec.n_features),
        np.random.default_rng(seed),
        epochs=int(recipe["epochs"]),
        neg_ratio=int(recipe["neg_ratio"]),
        batch_size=int(recipe["batch_size"]),
        lr=float(recipe["lr"]),
        patience=int(recipe["patience"]),
        desc="  transformer epoch",
        pretrain_epochs=int(recipe.get("pretrain_epochs", 0)),
        n_codes=len(codes),
    )
    tune_logit = tr.predict_logits(net, tune_bank)
    a, b = platt_fit(tune_logit, tune_bank.labels)
    tune_pt = sigmoid(a * tune_logit + b)
    held_pt = sigmoid(a * tr.predict_logits(net, held_bank) + b)
    tune_labels = _split_by_stay(tune_bank.labels, tune_bank.stay_of)
    th_t, _ = best_threshold(tune_labels, _split_by_stay(tune_pt, tune_bank.stay_of))
    out: dict[str, Any] = {
        "labels": held_bank.labels,
        "stay_of": held_bank.stay_of,
        "p_transformer": held_pt,
        "th_transformer": th_t,
        "transformer_best_epoch": best_epoch,
        "transformer_test_auroc": history[best_epoch - 1]["test_auroc"],
    }
    for fs in feature_sets:
        gbm = fit_gbm(
            fit_bank.rows,
            fit_bank.starts,
            fit_bank.labels,
            codes,
            seed,
            fs,
            fit_bank.stay_of,
            gbm_overrides,
        )
        tune_pg = _gbm_probability(gbm, tune_bank, codes, fs)
        held_pg = _gbm_probability(gbm, held_bank, codes, fs)
        th_g, _ = best_threshold(tune_labels, _split_by_stay(tune_pg, tune_bank.stay_of))
        stacking = fit_stacking(tune_bank.labels, tune_bank.stay_of, tune_pt, tune_pg)
        out |= {
            f"p_gbm_{fs}": held_pg,
            f"th_gbm_{fs}": th_g,
            f"p_ensemble_{fs}": stacking.predict(held_pt, held_pg),
            f"th_ensemble_{fs}": stacking.threshold,
            f"w_{fs}": np.array([stacking.intercept, stacking.w_transformer, stacking.w_gbm]),
            f"gbm_iterations_{fs}": int(gbm.n_iter_),
        }
    return out


def _alert_state(
    run: list[dict[str, Any]], labels: list[list[Any]], p_key: str, th_key: str
) -> dict[str, Any]:
    """What a clinician would see from one method's held-out risks: the served alert
    policy's shape (:class:`~inference.alert_policy.AlertPolicy` at each fold's threshold:
    state = risk >= threshold, a repeat alert at most every 6 h) through the worker's own
    policy code, measured by :func:`inference.alert_metrics.alert_metrics`."""
    from inference.alert_metrics import alert_metrics, policy_states
    from inference.alert_policy import AlertPolicy

    all_labels, states, raised = [], [], []
    for f, lab in zip(run, labels, strict=True):
        risks = _split_by_stay(np.asarray(f[p_key], dtype=np.float64), f["stay_of"])
        st, rs = policy_states(AlertPolicy(threshold=float(f[th_key])), risks)
        all_labels += lab
        states += st
        raised += rs
    return alert_metrics(all_labels, states, raised).to_dict()


def _same_patients(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    """Raises ``ValueError`` unless two runs' folds hold the same held-out rows."""
    same = len(a) == len(b) and all(
        np.array_equal(x["labels"], y["labels"]) and np.array_equal(x["stay_of"], y["stay_of"])
        for x, y in zip(a, b, strict=False)
    )
    if not same:
        raise ValueError(
            "the baseline run's folds hold other patients: run both with the same data, "
            "--folds and --seed"
        )


def summarise(
    folds: list[dict[str, Any]],
    feature_sets: Sequence[int],
    n_boot: int,
    seed: int,
    baseline: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Pooled and per-fold held-out metrics of every method, and the paired bootstrap of
    the ensembles' utility difference: without ``baseline``, the last feature set's
    ensemble minus the first's; with ``baseline`` (another run's folds), this run's
    ensemble of the first feature set minus the baseline's. The rule picks the one with
    the higher pooled utility. Raises ``ValueError`` when no held-out stay is septic or
    the baseline's folds hold other patients."""
    sources: dict[str, tuple[list[dict[str, Any]], str, str]] = {
        "transformer": (folds, "p_transformer", "th_transformer")
    }
    for fs in feature_sets:
        sources[f"gbm_{fs}"] = (folds, f"p_gbm_{fs}", f"th_gbm_{fs}")
        sources[f"ensemble_{fs}"] = (folds, f"p_ensemble_{fs}", f"th_ensemble_{fs}")
    first = feature_sets[0]
    if baseline is None:
        compared = (f"ensemble_{first}", f"ensemble_{feature_sets[-1]}")
    else:
        _same_patients(folds, baseline)
        sources["baseline_transformer"] = (baseline, "p_transformer", "th_transformer")
        sources[f"baseline_ensemble_{first}"] = (
            baseline,
            f"p_ensemble_{first}",
            f"th_ensemble_{first}",
        )
        compared = (f"baseline_ensemble_{first}", f"ensemble_{first}")
    labels = [_split_by_stay(f["labels"], f["stay_of"]) for f in folds]
    y = np.concatenate([f["labels"] for f in folds])
    per_method: dict[str, Any] = {}
    utils: dict[str, StayUtilities] = {}
    for name, (run, p_key, th_key) in sources.items():
        alarms = [np.asarray(f[p_key]) >= float(f[th_key]) for f in run]
        per_fold_alarms = [
            _split_by_stay(al, f["stay_of"]) for al, f in zip(alarms, run, strict=True)
        ]
        fold_u = [
            StayUtilities.of(lab, al).normalised()
            for lab, al in zip(labels, per_fold_alarms, strict=True)
        ]
        utils[name] = StayUtilities.of(
            [x for lab in labels for x in lab], [x for al in per_fold_alarms for x in al]
        )
        per_method[name] = {
            "utility": round(utils[name].normalised(), 4),
            "utility_per_fold": [round(u, 4) for u in fold_u],
            # AUROC of pooled probabilities mixes folds' calibrations; per fold is the
            # clean ranking measure, the pooled one is shown beside it
            "auroc_pooled": round(
                float(roc_auc_score(y, np.concatenate([f[p_key] for f in run]))), 4
            ),
            "auroc_per_fold": [round(float(roc_auc_score(f["labels"], f[p_key])), 4) for f in run],
            "alarm_hours_fraction": round(float(np.concatenate(alarms).mean()), 4),
            "alert_state": _alert_state(run, labels, p_key, th_key),
        }
    a, b = compared
    diff, lo, hi, ahead = paired_bootstrap(utils[a], utils[b], n_boot, np.random.default_rng(seed))
    return {
        "n_folds": len(folds),
        "n_patients": sum(len(lab) for lab in labels),
        "n_septic_patients": sum(int(s.any()) for lab in labels for s in lab),
        "n_rows": int(y.size),
        "methods": per_method,
        "paired_bootstrap": {
            "difference": f"{b} - {a}",
            "utility_difference": round(diff, 4),
            "ci95": [round(lo, 4), round(hi, 4)],
            "fraction_of_resamples_ahead": round(ahead, 3),
            "resamples": n_boot,
            "unit": "patient",
        },
        "compared": [a, b],
        "chosen_method": b if diff > 0 else a,
        "rule": "higher pooled held-out utility of the stacked ensemble",
    }


def _fold_key(
    feature_sets: Sequence[int],
    seed: int,
    folds: int,
    recipe: dict[str, Any],
    gbm_overrides: dict[str, Any],
) -> str:
    key: dict[str, Any] = {
        "feature_sets": list(feature_sets),
        "seed": seed,
        "folds": folds,
        "recipe": recipe,
    }
    if gbm_overrides:  # absent otherwise, so earlier runs' fold files stay valid
        key["gbm_overrides"] = gbm_overrides
    return json.dumps(key, sort_keys=True)


def _load_folds(path: Path, key: str | None = None) -> dict[str, Any] | None:
    """A fold file's arrays, or None when it is absent or (with ``key``) of another
    configuration."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if key is not None and str(z["key"]) != key:
            return None
        return {n: z[n] for n in z.files}


def crossvalidate(
    data_dir: Path,
    out: Path,
    *,
    folds: int = 5,
    seed: int = 0,
    split_seed: int = 2019,
    feature_sets: Sequence[int] = (1, 2),
    max_patients: int | None = None,
    threads: int = 2,
    n_boot: int = 1000,
    recipe: dict[str, int | float] | None = None,
    baseline: Path | None = None,
    gbm_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the cross-validation and write its report; returns the metrics.
    With ``baseline`` (the folder of an earlier run with the same data, folds and seed),
    this run's ensemble of the first feature set is compared with the baseline's.
    Raises ``FileNotFoundError`` for a missing data folder or baseline fold file,
    ``ValueError`` when a part has no septic patient or the baseline's folds hold other
    patients; nothing is retried."""
    from inference.ensemble import _load_stays

    recipe = dict(TRANSFORMER_RECIPE if recipe is None else recipe)
    if not data_dir.exists():
        raise FileNotFoundError(f"no PhysioNet data at {data_dir}")
    base_folds: list[dict[str, Any]] | None = None
    if baseline is not None:
        loaded = [_load_folds(baseline / "folds" / f"fold-{k}.npz") for k in range(folds)]
        base_folds = [f for f in loaded if f is not None]
        if len(base_folds) != folds:
            raise FileNotFoundError(f"{baseline}/folds lacks some of its {folds} fold files")
    t0 = time.monotonic()
    torch.set_num_threads(threads)
    stays = _load_stays(data_dir, split_seed, max_patients, ("train", "test"))
    train = [s for s in stays if s.split == "train"]
    tune = [s for s in stays if s.split == "test"]
    fold_of = assign_folds([s.stem for s in train], folds, seed)
    overrides = dict(gbm_overrides or {})
    key = _fold_key(feature_sets, seed, folds, recipe, overrides)
    (out / "folds").mkdir(parents=True, exist_ok=True)
    results = []
    for k in tqdm(range(folds), desc="folds", unit="fold"):
        path = out / "folds" / f"fold-{k}.npz"
        r = _load_folds(path, key)
        if r is not None:
            tqdm.write(f"fold {k}: reused {path}")
        else:
            t_fold = time.monotonic()
            fit = [s for s, f in zip(train, fold_of, strict=True) if f != k]
            held = [s for s, f in zip(train, fold_of, strict=True) if f == k]
            r = run_fold(fit, held, tune, feature_sets, seed + k, recipe, overrides)
            r["seconds"] = time.monotonic() - t_fold
            r["key"] = np.array(key)
            np.savez(path, **r)
            tqdm.write(f"fold {k}: {r['seconds']:.0f} s")
        results.append(r)
    metrics = summarise(results, feature_sets, n_boot, seed, base_folds)
    command = f"python -m inference.crossval --folds {folds} --seed {seed}"
    command += f" --feature-sets {' '.join(map(str, feature_sets))}"
    command += f" --epochs {recipe['epochs']} --patience {recipe['patience']}"
    if recipe["neg_ratio"] != TRANSFORMER_RECIPE["neg_ratio"]:
        command += f" --neg-ratio {recipe['neg_ratio']}"
    if "max_iter" in overrides:
        command += f" --gbm-max-iter {overrides['max_iter']}"
    command += " --context" if recipe.get("context") else ""
    command += (
        f" --pretrain-epochs {recipe['pretrain_epochs']}" if recipe.get("pretrain_epochs") else ""
    )
    if recipe.get("early_label_hours"):
        command += f" --early-label-hours {recipe['early_label_hours']}"
    command += f" --max-patients {max_patients}" if max_patients else ""
    command += f" --baseline {baseline}" if baseline else ""
    metrics |= {
        "command": command,
        "split_seed": split_seed,
        "fold_seed": seed,
        "feature_sets": list(feature_sets),
        "transformer_recipe": recipe,
        "transformer_best_epochs": [int(r["transformer_best_epoch"]) for r in results],
        "gbm_overrides": overrides,
        "gbm_iterations": {
            # fold files of runs before this was recorded lack it
            str(fs): [int(r[n]) for r in results if (n := f"gbm_iterations_{fs}") in r]
            for fs in feature_sets
        },
        "fold_seconds": [round(float(r["seconds"]), 1) for r in results],
        "wall_seconds": round(time.monotonic() - t0, 1),
        "validation_read": False,
        "n_test_patients_for_tuning": len(tune),
    }
    if baseline is not None:
        base_metrics = json.loads((baseline / "metrics.json").read_text())
        metrics["baseline"] = {
            "folder": str(baseline),
            "command": base_metrics.get("command"),
            "transformer_recipe": base_metrics.get("transformer_recipe", TRANSFORMER_RECIPE),
            "gbm_overrides": base_metrics.get("gbm_overrides", {}),
        }
    metrics["chosen"] = method_label(metrics["chosen_method"], metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    (out / "report.md").write_text(render_markdown(metrics))
    plot(metrics, out / "crossval.png")
    return metrics


def _recipe_text(recipe: dict[str, Any]) -> str:
    text = f"up to {recipe['epochs']} epochs, patience {recipe['patience']}"
    if recipe.get("pretrain_epochs"):
        text += f", after {recipe['pretrain_epochs']} pre-training epoch(s)"
    if recipe.get("early_label_hours"):
        text += f", labels {recipe['early_label_hours']} h earlier"
    if recipe.get("neg_ratio", TRANSFORMER_RECIPE["neg_ratio"]) != TRANSFORMER_RECIPE["neg_ratio"]:
        text += f", {recipe['neg_ratio']} negatives per positive"
    return text + (", with patient context" if recipe.get("context") else "")


def method_label(name: str, m: dict[str, Any]) -> str:
    """A report's name for a method key of :func:`summarise` (``ensemble_1``,
    ``baseline_transformer``, ...). Raises ``KeyError`` for a baseline method without the
    baseline's recipe in ``m``."""
    prefix, run = "", m
    if name.startswith("baseline_"):
        prefix, run, name = "baseline: ", m["baseline"], name.removeprefix("baseline_")
    recipe = _recipe_text(run["transformer_recipe"])
    if name == "transformer":
        return f"{prefix}transformer ({recipe})"
    kind, fs = name.rsplit("_", 1)
    config = CONFIG_NAMES.get(int(fs), f"feature set {fs}")
    if run.get("gbm_overrides"):
        config += ", " + ", ".join(f"{k} {v}" for k, v in sorted(run["gbm_overrides"].items()))
    if kind == "gbm":
        return f"{prefix}gradient boosting, {config}"
    return f"{prefix}ensemble, {config}, transformer {recipe}"


def render_markdown(m: dict[str, Any]) -> str:
    """The report as Markdown. Raises ``KeyError`` for an incomplete metrics dict."""
    a, b = m["compared"]
    lines = [
        f"# Cross-validation on the train split: {method_label(b, m)} against {method_label(a, m)}",
        "",
        f"{m['n_folds']} folds over {m['n_patients']} train-split patients "
        f"({m['n_septic_patients']} septic, {m['n_rows']} hourly rows); each patient is "
        "scored once by models that never saw it. The transformer is trained again per "
        "fold; stacking weights and thresholds are fitted "
        f"on the test split ({m['n_test_patients_for_tuning']} patients) per fold, as the "
        "build does. The validation split was not read.",
        "",
        f"Command: `{m['command']}`; {sum(m['fold_seconds']) / 60:.0f} min of fitting; the "
        f"transformer's best epoch per fold: {m['transformer_best_epochs']}.",
        "",
        "| method | pooled utility | utility per fold | AUROC per fold | alarm hours |",
        "|---|---|---|---|---|",
    ]
    for key, r in m["methods"].items():
        label = method_label(key, m)
        if key in m["compared"]:
            label = f"**{label}**"
        lines.append(
            f"| {label} | {r['utility']:.3f} | "
            + ", ".join(f"{u:.3f}" for u in r["utility_per_fold"])
            + " | "
            + ", ".join(f"{u:.3f}" for u in r["auroc_per_fold"])
            + f" | {100 * r['alarm_hours_fraction']:.1f} % |"
        )
    lines += [
        "",
        "The alert state a clinician would see from each (risk >= the fold's threshold, a "
        "repeat alert at most every 6 h, run through the worker's policy code). NEWS2 is not "
        "in the fold files, so escalations to critical (risk high and NEWS2 >= 7) are not "
        "counted here; `inference/reports/policy/` counts them and compares NEWS2 and the "
        "tuned policies:",
        "",
        "| method | utility | alerts / 100 patient-days | septic alerted in the 24 h before "
        "onset | median lead (h) | PPV per alert |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in m["methods"].items():
        a = r.get("alert_state")
        if a is None:  # metrics written before the alert state was reported
            continue
        cells = " | ".join(table_cells(a, alert_hours=False))
        lines.append(f"| {method_label(key, m)} | {cells} |")
    pb = m["paired_bootstrap"]
    lines += [
        "",
        f"Paired patient bootstrap ({pb['resamples']} resamples), {pb['difference']}: "
        f"**{pb['utility_difference']:+.3f}** (95 % {pb['ci95'][0]:+.3f}..{pb['ci95'][1]:+.3f}); "
        f"ahead in {100 * pb['fraction_of_resamples_ahead']:.0f} % of resamples.",
        "",
        f"Rule (fixed before the run): {m['rule']}. Chosen: **{m['chosen']}**.",
        "",
        "![per-fold utility](crossval.png)",
        "",
    ]
    return "\n".join(lines)


def plot(m: dict[str, Any], path: Path) -> None:
    """Per-fold held-out utility of each method (points) and the pooled value (bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(m["methods"])
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(keys)), 4))
    for i, key in enumerate(keys):
        r = m["methods"][key]
        colour = "#3182bd" if key in m["compared"] else "#9ecae1"
        ax.bar(i, r["utility"], color=colour)
        ax.scatter([i] * len(r["utility_per_fold"]), r["utility_per_fold"], color="k", s=12)
    ax.axhline(UTILITY_TARGET, ls="--", color="grey", label=f"target {UTILITY_TARGET:.2f}")
    ax.legend(loc="lower right")
    ax.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys])
    ax.set_ylabel("normalised utility (held-out)")
    ax.set_title("Cross-validation on the train split: pooled (bar), per fold (dots)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m inference.crossval",
        description="\n\n".join(
            part for part in __doc__.split("\n\n") if part.startswith(("Cross", "Decision"))
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Runs for about 3-10 minutes per fold on 2 CPU cores (transformer training and "
        "the gradient-boosting fits); an interrupted run resumes from its fold files.",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=pdata.PHYSIONET_DIR,
        help="PhysioNet 2019 .psv folder (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("var/crossval"), help="report folder (%(default)s)"
    )
    p.add_argument("--folds", type=int, default=5, help="folds of the train split (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment and fit seeds")
    p.add_argument(
        "--feature-sets",
        type=int,
        nargs="+",
        default=[1, 2],
        help="gradient-boosting feature sets to fit (%(default)s); without --baseline the "
        "first and last are compared",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=int(TRANSFORMER_RECIPE["epochs"]),
        help="transformer epochs at most (%(default)s, version 1's recipe)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=int(TRANSFORMER_RECIPE["patience"]),
        help="epochs without a better test AUROC before stopping (%(default)s)",
    )
    p.add_argument(
        "--neg-ratio",
        type=int,
        default=int(TRANSFORMER_RECIPE["neg_ratio"]),
        help="negative windows drawn per positive one in each transformer epoch "
        "(%(default)s, version 1's recipe)",
    )
    p.add_argument(
        "--early-label-hours",
        type=int,
        default=0,
        help="train the transformer on SepsisLabel moved this many hours earlier in septic "
        "stays (0: as it is); early stopping and thresholds keep the true labels",
    )
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an earlier run's folder (same data, --folds, --seed): compare this run's "
        "ensemble of the first feature set with the baseline's",
    )
    p.add_argument(
        "--gbm-max-iter",
        type=int,
        default=None,
        help="gradient-boosting iterations at most (default: the feature set's, 300); early "
        "stopping still applies",
    )
    p.add_argument(
        "--context",
        action="store_true",
        help="the models read the patient-context features too (age, sex, hours since "
        "hospital and ICU admission; feature spec version 2)",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="epochs of self-supervised masked-value pre-training of the transformer's "
        "encoder on every hour of the fold's training patients, before fine-tuning (0)",
    )
    p.add_argument("--max-patients", type=int, default=None, help="for a quick trial run")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
    a = p.parse_args(argv)
    recipe: dict[str, int | float] = TRANSFORMER_RECIPE | {
        "epochs": a.epochs,
        "patience": a.patience,
        "neg_ratio": a.neg_ratio,
    }
    if a.context:  # absent otherwise, so earlier runs' fold files stay valid
        recipe["context"] = 1
    if a.pretrain_epochs:
        recipe["pretrain_epochs"] = a.pretrain_epochs
    if a.early_label_hours:  # absent otherwise, so earlier runs' fold files stay valid
        recipe["early_label_hours"] = a.early_label_hours
    m = crossvalidate(
        a.data_dir,
        a.out,
        folds=a.folds,
        seed=a.seed,
        feature_sets=a.feature_sets,
        max_patients=a.max_patients,
        threads=a.threads,
        n_boot=a.resamples,
        recipe=recipe,
        baseline=a.baseline,
        gbm_overrides=None if a.gbm_max_iter is None else {"max_iter": a.gbm_max_iter},
    )
    print(json.dumps({k: m[k] for k in ("methods", "paired_bootstrap", "chosen")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
