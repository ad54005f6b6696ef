"""``wardwatch validate-site`` end to end: on the database that a replay of PhysioNet stays
fills, with their labels.

The stays are scored by the project's offline scorer (``streams.offline.score_files``, the
stream's own code), each line becomes the score record the stream publishes and is written
through the persist path (``streams.persist.score_row`` -> ``storage.db.write_scores``)
under the stay's replay pseudonym at stay start + hour. The labels CSV gives each stay's
onset as the first ``SepsisLabel`` hour + 6 h; two stays get no label.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

import streams.cli as cli
import streams.cli_context as cli_context
from fhir.pseudonym import pseudonymise
from inference.alert_metrics import alert_metrics
from storage import access
from storage.db import make_engine, migrate, write_scores
from streams.cli_site import COMMANDS, validate_site_cmd
from streams.model_settings import load_model_info
from streams.settings import Settings

SEPTIC = 6
OTHERS = 34
UNLABELLED = 2  # non-septic stays left out of the labels file


def _pick(manifest: Path) -> list[str]:
    """The first SEPTIC septic stays of 20-60 h (some hours before the labels start) and
    the first OTHERS other stays of at most 60 h, from the data's manifest."""
    with manifest.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    septic = [
        r["file"] for r in rows if r["sepsis_patient"] == "1" and 20 <= int(r["n_hours"]) <= 60
    ]
    others = [r["file"] for r in rows if r["sepsis_patient"] == "0" and int(r["n_hours"]) <= 60]
    return septic[:SEPTIC] + others[:OTHERS]


def _sepsis_labels(path: Path) -> np.ndarray:
    lines = path.read_text().splitlines()
    col = lines[0].split("|").index("SepsisLabel")
    return np.array([int(float(x.split("|")[col])) for x in lines[1:]], dtype=np.int8)


@pytest.fixture(scope="module")
def site(physionet_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from inference.runtime import LocalTorchModel
    from streams.offline import score_files
    from streams.persist import score_row

    tmp = tmp_path_factory.mktemp("site")
    s = Settings()
    key = s.pseudonym_key.get_secret_value().encode()
    start = datetime.fromisoformat(s.physionet_stay_start)
    files = [physionet_dir / f for f in _pick(physionet_dir.parent / "MANIFEST.tsv")]
    loaded = load_model_info(s)
    out = io.StringIO()
    score_files(
        files,
        out,
        model=LocalTorchModel.from_dir(s.model_dir),
        loaded=loaded,
        key=key,
        stay_start=start,
        staleness_hours=s.staleness_hours,
        progress=False,
    )
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    pseudonym = {f.stem: pseudonymise(f.stem, key, system="physionet2019") for f in files}
    records = [
        {
            "patient": pseudonym[x["patient"]],
            "time": (start + timedelta(hours=x["hour"])).isoformat(),
            "model": loaded.info.name,
            "model_version": loaded.info.version,
            "risk": x["risk"],
            "degraded": x["risk"] is None,
            "news2": x["news2"],
            "qsofa": x["qsofa"],
            "sirs": None,
            "alert": x["alert"],
        }
        for x in lines
    ]
    url = f"sqlite:///{tmp / 'wardwatch.db'}"
    migrate(url)
    engine = make_engine(url)
    assert write_scores(engine, [score_row(r) for r in records]) == len(records)
    engine.dispose()

    sepsis = {f.stem: _sepsis_labels(f) for f in files}
    unlabelled = [f.stem for f in files if not sepsis[f.stem].any()][-UNLABELLED:]
    labels = tmp / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "onset"])
        for stem, y in sepsis.items():
            if stem in unlabelled:
                continue
            onset = start + timedelta(hours=int(np.argmax(y)) + 6) if y.any() else None
            w.writerow([pseudonym[stem], "" if onset is None else onset.isoformat()])
    return {
        "url": url,
        "labels": labels,
        "lines": lines,
        "sepsis": sepsis,
        "unlabelled": set(unlabelled),
        "version": loaded.info.version,
        "tmp": tmp,
        "files": files,
    }


@pytest.fixture
def use_db(site: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> str:
    url: str = site["url"]
    monkeypatch.setattr(cli_context, "_SETTINGS", Settings(database_url=url))
    return url


def test_the_command_is_registered() -> None:
    assert cli.LAZY_COMMANDS["validate-site"] == "streams.cli_site:validate_site_cmd"
    assert [c.name for c in COMMANDS] == ["validate-site"]


def test_validate_site_on_replayed_physionet_stays(
    site: dict[str, Any], use_db: str, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = ["--labels", str(site["labels"]), "--out", str(out), "--bootstrap", "50"]
    r = CliRunner().invoke(validate_site_cmd, args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    c = metrics["counts"]
    n = SEPTIC + OTHERS
    assert (c["patients_with_scores"], c["patients_no_outcome_given"]) == (n, UNLABELLED)
    assert (c["patients"], c["septic_patients"]) == (n - UNLABELLED, SEPTIC)
    assert c["carried_forward_hours"] == 0 and c["scores_dropped_same_hour"] == 0

    # the hourly rows and labels rebuilt from the database are the stays' own rows and
    # SepsisLabels: the report's numbers match those computed from the scorer's lines
    kept = [x for x in site["lines"] if x["patient"] not in site["unlabelled"]]
    y = np.array([site["sepsis"][x["patient"]][x["hour"]] for x in kept])
    risk = np.array([np.nan if x["risk"] is None else x["risk"] for x in kept])
    ok = ~np.isnan(risk)
    d = metrics["discrimination"]["model risk"]
    assert 0.5 < d["auroc"] < 1
    assert d["auroc"] == pytest.approx(roc_auc_score(y[ok], risk[ok]), abs=1e-4)
    assert c["rows"] == len(kept) and c["positive_rows"] == int(y.sum())
    stems = sorted({x["patient"] for x in kept})
    states = [np.array([x["alert"] for x in kept if x["patient"] == s]) for s in stems]
    expected = alert_metrics([site["sepsis"][s] for s in stems], states).to_dict()
    assert metrics["alert_state"]["methods"]["alert state (stored)"] == expected

    report = (out / "report.md").read_text()
    assert "## The alert state (what a clinician saw)" in report
    assert "| alert state (stored) |" in report and "| NEWS2 >= 5 |" in report
    assert f"**{UNLABELLED} with no outcome given**" in report
    recal = json.loads((out / "recalibration.json").read_text())
    assert math.isfinite(recal["a"]) and math.isfinite(recal["b"])
    t = recal["threshold"]
    assert 0 < t["proposed_served_space"] < 1
    assert recal["card_block"]["alert_policy"]["threshold"] == t["proposed_recalibrated_space"]
    for png in ("roc.png", "calibration.png", "utility_vs_threshold.png"):
        assert (out / png).stat().st_size > 1000

    engine = make_engine(use_db)
    entry = access.fetch_audit(engine, limit=1)[0]
    engine.dispose()
    assert entry["action"] == "read" and entry["who"].startswith("cli:")
    assert f"{n} patients" in entry["resource"]


def test_unlabelled_negative_keeps_every_patient(
    site: dict[str, Any], use_db: str, tmp_path: Path
) -> None:
    args = ["--labels", str(site["labels"]), "--out", str(tmp_path), "--bootstrap", "0"]
    r = CliRunner().invoke(validate_site_cmd, [*args, "--unlabelled-negative"])
    assert r.exit_code == 0, r.output
    c = json.loads((tmp_path / "metrics.json").read_text())["counts"]
    assert c["patients"] == SEPTIC + OTHERS and c["patients_no_outcome_given"] == UNLABELLED
    assert "counted as negative" in r.output


def test_clear_errors(site: dict[str, Any], use_db: str, tmp_path: Path) -> None:
    def run(labels: Path, *more: str) -> str:
        r = CliRunner().invoke(
            validate_site_cmd, ["--labels", str(labels), "--out", str(tmp_path / "o"), *more]
        )
        assert r.exit_code == 1, r.output
        return r.output

    assert "nope.csv: no such labels file" in run(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,onset\npt-x,\npt-y,not a time\n")
    assert "bad.csv:3: onset 'not a time'" in run(bad)
    negative = tmp_path / "negative.csv"
    rows = site["labels"].read_text().splitlines()
    negative.write_text("\n".join([rows[0], *(r.split(",")[0] + "," for r in rows[1:])]) + "\n")
    assert f"no septic patient among the {SEPTIC + OTHERS - UNLABELLED} labelled" in run(negative)
    assert "no scores in the database of model version nope" in run(
        site["labels"], "--model-version", "nope"
    )
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert "no scores in the database" in run(site["labels"], "--database-url", empty)
    assert not (tmp_path / "o").exists()


def test_the_recalibration_adopted_as_a_new_version(
    site: dict[str, Any], use_db: str, tmp_path: Path
) -> None:
    from inference.calibration import recalibrate
    from inference.runtime import LocalTorchModel
    from streams.cli_model import recalibrate_cmd
    from streams.offline import score_files

    report = tmp_path / "report"
    args = ["--labels", str(site["labels"]), "--out", str(report), "--bootstrap", "0"]
    assert CliRunner().invoke(validate_site_cmd, args).exit_code == 0
    recal = json.loads((report / "recalibration.json").read_text())
    s = Settings()
    served = int(json.loads((s.model_dir / "model_card.json").read_text())["version"])
    version = str(served + 1)
    out = tmp_path / "build"
    r = CliRunner().invoke(
        recalibrate_cmd,
        ["--from", str(report / "recalibration.json"), "--version", version, "--out", str(out)],
    )
    assert r.exit_code == 0, r.output
    new_dir = out / s.model_dir.name
    card = json.loads((new_dir / "model_card.json").read_text())
    assert card["version"] == served + 1 and (new_dir / version / "model.pt").exists()
    assert card["recalibration"]["a"] == recal["a"]
    assert card["recalibration"]["of_version"] == served
    threshold = recal["threshold"]["proposed_recalibrated_space"]
    assert card["alert_threshold"] == card["alert_policy"]["threshold"] == threshold

    # Real stays through the offline scorer: the new version's risk is the recalibrated
    # risk of the served one, and its alerts at the new threshold are the old risk's at
    # the proposed served-space threshold.
    files = sorted(site["files"])[:4]

    def score(model_dir: Path) -> list[dict[str, Any]]:
        buf = io.StringIO()
        loaded = load_model_info(s.model_copy(update={"model_dir": model_dir}))
        score_files(
            files,
            buf,
            model=LocalTorchModel.from_dir(model_dir),
            loaded=loaded,
            key=s.pseudonym_key.get_secret_value().encode(),
            stay_start=datetime.fromisoformat(s.physionet_stay_start),
            staleness_hours=s.staleness_hours,
            progress=False,
        )
        return [orjson.loads(x) for x in buf.getvalue().splitlines()]

    old, new = score(s.model_dir), score(new_dir)
    assert len(old) == len(new) > 50
    p_old = np.array([x["risk"] for x in old], dtype=float)
    p_new = np.array([x["risk"] for x in new], dtype=float)
    assert np.abs(p_new - recalibrate(p_old, recal["a"], recal["b"])).max() < 1e-5
    assert not np.allclose(p_new, p_old)
    margin = np.abs(p_old - recal["threshold"]["proposed_served_space"]) > 1e-5
    assert ((p_new >= threshold) == (p_old >= recal["threshold"]["proposed_served_space"]))[
        margin
    ].all()

    again = CliRunner().invoke(
        recalibrate_cmd,
        ["--from", str(report / "recalibration.json"), "--version", version, "--out", str(out)],
    )
    assert again.exit_code == 1 and "exists" in again.output
    low = CliRunner().invoke(
        recalibrate_cmd,
        ["--from", str(report / "recalibration.json"), "--version", str(served),
         "--out", str(tmp_path)],
    )  # fmt: skip
    assert low.exit_code == 1 and f"must be above {served}" in low.output


def test_labels_by_the_sites_own_identifiers(
    site: dict[str, Any], use_db: str, tmp_path: Path
) -> None:
    # The same labels, naming each stay by its PhysioNet record id (the identifier the
    # replay pseudonymised in system "physionet2019"): the same patients are matched.
    stems = {pseudonymise(f.stem, Settings().pseudonym_key.get_secret_value().encode(),
                          system="physionet2019"): f.stem for f in site["files"]}  # fmt: skip
    rows = site["labels"].read_text().splitlines()
    raw = tmp_path / "raw.csv"
    raw.write_text(
        "\n".join([rows[0], *(stems[r.split(",")[0]] + "," + r.split(",")[1] for r in rows[1:])])
        + "\n"
    )
    out = tmp_path / "o"
    args = ["--labels", str(raw), "--out", str(out), "--bootstrap", "0"]
    r = CliRunner().invoke(validate_site_cmd, [*args, "--id-system", "physionet2019"])
    assert r.exit_code == 0, r.output
    c = json.loads((out / "metrics.json").read_text())["counts"]
    assert (c["patients"], c["septic_patients"]) == (SEPTIC + OTHERS - UNLABELLED, SEPTIC)
    assert not any(stem in r.output for stem in stems.values())
    # without --id-system the raw ids match no stored pseudonym
    r = CliRunner().invoke(validate_site_cmd, args)
    assert r.exit_code == 1 and "no septic patient among the 0 labelled" in r.output
