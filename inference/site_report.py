"""The site validation report: ``report.md``, ``metrics.json``, ``recalibration.json``
and the plots, from the dict :func:`inference.site_validation.validate` returns.

Raises ``OSError`` when the report folder cannot be written; nothing is retried.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from inference.alert_metrics import table_cells
from inference.calibration import calibration_bins
from inference.evaluate import CalibrationCurve, VLine, save_burden_plot, save_calibration_plot
from inference.site_validation import (
    LABEL_LEAD_HOURS,
    MAX_GAP_HOURS,
    MODEL_NAME,
    STORED_STATE,
    RiskRows,
    SiteData,
)


def _f(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _ci_text(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def render_markdown(r: Mapping[str, Any]) -> str:
    """The report's ``report.md``. Raises ``KeyError`` for a dict not made by
    :func:`validate`."""
    c = r["counts"]
    m = r["model"]
    left_out = (
        "counted as never septic (--unlabelled-negative)"
        if r.get("unlabelled_negative")
        else "left out"
    )
    lines = [
        f"# Site validation: {m.get('name')} version {m.get('version')}",
        "",
        *(f"**Warning:** {w}" for w in r["warnings"]),
        *([""] if r["warnings"] else []),
        f"{c['patients_with_scores']} patients with {c['scores_read']} stored scores; "
        f"**{c['patients_no_outcome_given']} with no outcome given** ({left_out}); "
        f"{c['labels_without_scores']} labelled patients have no scores. Validated: "
        f"{c['patients']} patients ({c['septic_patients']} septic, "
        f"{c['septic_patients_with_positive_hours']} of them with scored hours from "
        f"{LABEL_LEAD_HOURS} h before onset), {c['stays']} stays, {c['rows']} hourly rows "
        f"({c['positive_rows']} positive), {r['patient_days']:.1f} patient-days.",
        "",
        "How scores become hourly rows: scores are bucketed by UTC clock hour and the last "
        "score in each hour is the hour's row (at most one row per patient-hour; "
        f"{c['scores_dropped_same_hour']} earlier scores in the same hour were not used). "
        f"Hours without a score between scored hours repeat the previous row "
        f"({c['carried_forward_hours']} hours: what the ward saw until the next score); a gap "
        f"of more than {MAX_GAP_HOURS} h starts a new stay. {c['degraded_hours']} hours had "
        "no model risk (degraded): they are left out of discrimination and calibration and "
        "never reach the threshold.",
        "",
        f"Labels: an hour is positive when its time is at or after onset - {LABEL_LEAD_HOURS} "
        "h, as PhysioNet 2019 defines SepsisLabel; the utility then places onset at the first "
        f"positive hour + {LABEL_LEAD_HOURS} h. "
        f"{c['septic_patients_without_positive_hours']} septic patients have no positive hour "
        "(their scores end earlier) and count as negative stays; "
        f"{c['septic_stays_positive_from_first_hour']} septic stays are positive from their "
        "first hour.",
        "",
        "## Discrimination (hourly rows)",
        "",
        "| method | rows | AUROC (95% CI) | AUPRC (95% CI) |",
        "|---|---|---|---|",
    ]
    for name, d in r["discrimination"].items():
        lines.append(
            f"| {name} | {d['rows']} | {_f(d['auroc'])}{_ci_text(d.get('auroc_ci95'))} | "
            f"{_f(d['auprc'])}{_ci_text(d.get('auprc_ci95'))} |"
        )
    b = r["bootstrap"]
    lines += [
        "",
        f"Intervals: percentile, {b['resamples']} bootstrap resamples of patients.",
        "",
        "## Calibration",
        "",
        "| decile bin | mean predicted risk | observed rate |",
        "|---|---|---|",
        *(
            f"| {i + 1} | {100 * x['predicted']:.2f} % | {100 * x['observed']:.2f} % |"
            for i, x in enumerate(r["calibration"]["bins"])
        ),
        "",
    ]
    s = r["calibration"]["served"]
    rc = r["recalibration"]
    lines += [
        f"Served risk on all rows: mean {100 * s['mean_risk']:.2f} % against an observed "
        f"rate of {100 * s['observed_rate']:.2f} %; Brier {s['brier']:.5f}, calibration "
        f"error {s['calibration_error']:.5f} (mean |predicted - observed| over the bins).",
        "",
        f"Logistic (Platt) recalibration fitted on all rows: `sigmoid({rc['a']:.4f} * "
        f"logit(risk) + {rc['b']:.4f})` (a < 1: the served risk is too spread out here; "
        "b shifts it).",
        "",
    ]
    cv = rc["cross_validation"]
    if cv is None or cv["served"] is None:
        lines += ["Its effect was not cross-validated (fewer than 2 septic patients).", ""]
    else:
        lines += [
            f"Its effect on held-out patients ({cv['folds']} folds of patients: fitted on "
            f"{cv['folds'] - 1}, measured on the one left out, pooled; "
            f"{cv['held_out_rows']} rows):",
            "",
            "| held out | Brier | log loss | calibration error | mean risk | observed rate |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("served", "recalibrated"):
            x = cv[name]
            lines.append(
                f"| {name} | {x['brier']:.5f} | {x['log_loss']:.4f} | "
                f"{x['calibration_error']:.5f} | {100 * x['mean_risk']:.2f} % | "
                f"{100 * x['observed_rate']:.2f} % |"
            )
        lines.append("")
    th = r["threshold"]
    tcv = th["cross_validation"]
    lines += ["## The alert threshold", ""]
    if tcv is not None:
        lines += [
            f"Chosen by cross-validation ({tcv['folds']} folds of patients): the utility-best "
            f"threshold on the other folds earns {tcv['utility_tuned_per_fold']:.3f} on "
            f"held-out patients, the served {th['served']:.4g} earns "
            f"{tcv['utility_served_threshold']:.3f} (difference {tcv['difference']:+.3f}"
            + (
                f", 95% interval {tcv['difference_ci95'][0]:+.3f} to "
                f"{tcv['difference_ci95'][1]:+.3f}"
                if tcv["difference_ci95"]
                else ""
            )
            + f"). Rule: {tcv['rule']}.",
            "",
        ]
    lines += [
        f"Decision: {th['decision']}. Proposed threshold: {_f(th['proposed_served_space'], '.4g')}"
        f" on the served risk = {_f(th['proposed_recalibrated_space'], '.4g')} on the "
        "recalibrated risk.",
        "",
        "## The alert state (what a clinician saw)",
        "",
        "| hourly state | utility | alerts / 100 patient-days | septic alerted in the "
        f"{r['alert_state']['horizon_hours']} h before onset | median lead (h) | "
        "PPV per alert | alert hours |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {' | '.join(table_cells(a))} |"
        for name, a in r["alert_state"]["methods"].items()
    ]
    lines += [
        "",
        f"`{STORED_STATE}` is the `alert` column the worker stored (the state a clinician "
        "saw); the rules are measured on the same hourly rows. Alerts are counted as rising "
        "edges of each hourly state (the worker's 6 h suppression of repeat messages is not "
        "re-applied, so the stored state's count is an upper bound of messages raised). An "
        "alert is true when it falls on a septic patient between "
        f"{r['alert_state']['horizon_hours']} h before and 3 h after onset.",
        "",
        "## Adopting the recalibration",
        "",
        "`recalibration.json` holds `a`, `b`, the threshold in both risk spaces and a "
        "`card_block`. Serving is not changed by this command. To adopt it, a site builds a "
        "**new model version** whose output is `sigmoid(a * logit(p) + b)` of the served "
        "model's output `p` (exported like any version into "
        "`inference/model_repository/sepsis_transformer/<new version>/`), and writes the "
        "card block into that version's `model_card.json`: `recalibration` records `a` and "
        "`b`, and `alert_policy.threshold` is `proposed_recalibrated_space`, so the new "
        "version raises the same alerts as thresholding the old risk at "
        "`proposed_served_space` while showing risks that match this site's rates "
        "(`alert_policy.base_rate` is the site's positive-hour rate). The hysteresis "
        "(`clear_ratio`) applies to the new risk; keep it at 1 or re-tune it. Validate the "
        "new version silently again before it alerts.",
        "",
        *(
            []
            if rc["adoptable"]
            else ["**Do not adopt:** a <= 0, the model ranks backwards at this site.", ""]
        ),
        "Plots: `roc.png`, `calibration.png`, `utility_vs_threshold.png`.",
        "",
    ]
    return "\n".join(lines)


def _plots(out: Path, r: Mapping[str, Any], data: SiteData) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    rows: RiskRows = r["_plot"]["rows"]
    fig, ax = plt.subplots(figsize=(6, 6))
    fpr, tpr, _ = roc_curve(rows.y, rows.p)
    auc = r["discrimination"][MODEL_NAME]["auroc"]
    ax.plot(fpr, tpr, color="tab:blue", label=f"{MODEL_NAME} (AUROC {auc:.3f})")
    ys = np.concatenate(data.labels)
    ns = np.concatenate([st.news2 for st in data.stays])
    if ys.min() != ys.max():
        fpr, tpr, _ = roc_curve(ys, ns)
        ax.plot(fpr, tpr, color="tab:orange", label=f"NEWS2 (AUROC {roc_auc_score(ys, ns):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC, hourly rows")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)

    curves: list[CalibrationCurve] = [
        (*calibration_bins(rows.y, rows.p), "o-", "tab:blue", "served risk (all rows)")
    ]
    pooled = r["_plot"]["pooled"]
    if pooled is not None and pooled[0].size:
        y, _, q = pooled
        curves.append((*calibration_bins(y, q), "s-", "tab:green", "recalibrated (held-out folds)"))
    save_calibration_plot(
        out / "calibration.png",
        curves,
        xlabel="mean predicted risk (decile bins)",
        title="Calibration at this site",
    )

    th = r["threshold"]
    lines: list[VLine] = [(th["served"], "grey", ":", "served threshold")]
    if th["changed"]:
        lines.append((th["proposed_served_space"], "tab:green", "--", "proposed threshold"))
    save_burden_plot(
        out / "utility_vs_threshold.png",
        r["threshold_curve"],
        lines,
        xlabel="alert threshold (% served risk)",
        ylabel="normalised utility of risk >= t",
        title="Utility and alert burden against the threshold, this site",
    )


def write_report(report: dict[str, Any], data: SiteData, out: Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, ``recalibration.json`` and the plots into
    ``out`` (created). Returns the written files by name. Raises ``OSError`` when ``out``
    cannot be written."""
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    files = {
        "metrics.json": out / "metrics.json",
        "report.md": out / "report.md",
        "recalibration.json": out / "recalibration.json",
    }
    files["metrics.json"].write_text(json.dumps(public, indent=1, default=str) + "\n")
    files["recalibration.json"].write_text(
        json.dumps(report["recalibration"], indent=1, default=str) + "\n"
    )
    files["report.md"].write_text(render_markdown(public))
    _plots(out, report, data)
    for name in ("roc.png", "calibration.png", "utility_vs_threshold.png"):
        files[name] = out / name
    return files
