"""NEWS2, qSOFA and SIRS against the published charts, edge by edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fhir.events import Reading
from inference.early_warning import (
    News2Result,
    QsofaResult,
    SirsResult,
    news2,
    news2_band,
    qsofa,
    sirs,
)

AS_OF = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T = AS_OF - timedelta(minutes=5)


def r(value: float | None = None, code: str | None = None, at: datetime = T) -> Reading:
    return Reading(time=at, value=value, value_code=code)


def normal() -> dict[str, Reading]:
    """A patient scoring 0 on every NEWS2 parameter."""
    return {
        "respiratory_rate": r(16),
        "spo2": r(98),
        "systolic_bp": r(120),
        "heart_rate": r(70),
        "temperature": r(37.0),
        "consciousness": r(code="A"),
    }


def with_(**readings: Reading) -> dict[str, Reading]:
    d = normal()
    d.update(readings)
    return d


# ------------------------------------------------------------------ NEWS2 band edges
# (value, points) on both sides of every edge of RCP NEWS2 chart 1, plus non-integer
# values around each edge (rounded half up to the chart's resolution before banding).

RR_EDGES = [
    (0, 3), (8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2), (24, 2), (25, 3), (60, 3),
    (8.49, 3), (8.5, 1), (11.49, 1), (11.5, 0), (20.49, 0), (20.5, 2), (24.49, 2), (24.5, 3),
]  # fmt: skip
SPO2_SCALE1_EDGES = [
    (70, 3), (91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0),
    (91.49, 3), (91.5, 2), (93.49, 2), (93.5, 1), (95.49, 1), (95.5, 0),
]  # fmt: skip
SBP_EDGES = [
    (60, 3), (90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0), (219, 0), (220, 3),
    (250, 3), (90.49, 3), (90.5, 2), (100.5, 1), (110.49, 1), (110.5, 0), (219.49, 0),
    (219.5, 3),
]  # fmt: skip
HR_EDGES = [
    (30, 3), (40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1), (111, 2),
    (130, 2), (131, 3), (180, 3), (40.49, 3), (40.5, 1), (50.5, 0), (90.49, 0), (90.5, 1),
    (110.5, 2), (130.49, 2), (130.5, 3),
]  # fmt: skip
TEMP_EDGES = [
    (33.0, 3), (35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0), (38.1, 1), (39.0, 1),
    (39.1, 2), (41.0, 2), (35.04, 3), (35.05, 1), (36.04, 1), (36.05, 0), (38.04, 0),
    (38.05, 1), (39.04, 1), (39.05, 2),
]  # fmt: skip


@pytest.mark.parametrize(("value", "points"), RR_EDGES)
def test_respiration_rate_bands(value: float, points: int) -> None:
    res = news2(with_(respiratory_rate=r(value)), AS_OF)
    assert res.breakdown["respiratory_rate"] == points
    assert res.total == points


@pytest.mark.parametrize(("value", "points"), SPO2_SCALE1_EDGES)
def test_spo2_scale1_bands(value: float, points: int) -> None:
    res = news2(with_(spo2=r(value)), AS_OF)
    assert res.breakdown["spo2"] == points
    assert res.total == points
    # Oxygen does not change scale 1 SpO2 points, only adds the air/oxygen 2.
    on_o2 = news2(with_(spo2=r(value), o2_flow=r(2)), AS_OF)
    assert on_o2.breakdown["spo2"] == points
    assert on_o2.total == points + 2


@pytest.mark.parametrize(
    ("value", "on_oxygen", "points"),
    [
        (70, False, 3), (83, False, 3), (84, False, 2), (85, False, 2), (86, False, 1),
        (87, False, 1), (88, False, 0), (92, False, 0), (93, False, 0), (96, False, 0),
        (97, False, 0), (100, False, 0),
        (83, True, 3), (84, True, 2), (85, True, 2), (86, True, 1), (87, True, 1),
        (88, True, 0), (92, True, 0), (93, True, 1), (94, True, 1), (95, True, 2),
        (96, True, 2), (97, True, 3), (100, True, 3),
        (83.49, False, 3), (83.5, False, 2), (87.49, False, 1), (87.5, False, 0),
        (92.49, True, 0), (92.5, True, 1), (94.49, True, 1), (94.5, True, 2),
        (96.49, True, 2), (96.5, True, 3), (92.5, False, 0),
    ],
)  # fmt: skip
def test_spo2_scale2_bands(value: float, on_oxygen: bool, points: int) -> None:
    readings = with_(spo2=r(value))
    if on_oxygen:
        readings["o2_device"] = r(code="nasal-cannula")
    res = news2(readings, AS_OF, spo2_scale2=True)
    assert res.spo2_scale == 2
    assert res.on_oxygen is on_oxygen
    assert res.breakdown["spo2"] == points
    assert res.breakdown["air_or_oxygen"] == (2 if on_oxygen else 0)
    assert res.total == points + (2 if on_oxygen else 0)


@pytest.mark.parametrize(("value", "points"), SBP_EDGES)
def test_systolic_bp_bands(value: float, points: int) -> None:
    res = news2(with_(systolic_bp=r(value)), AS_OF)
    assert res.breakdown["systolic_bp"] == points
    assert res.total == points


@pytest.mark.parametrize(("value", "points"), HR_EDGES)
def test_pulse_bands(value: float, points: int) -> None:
    res = news2(with_(heart_rate=r(value)), AS_OF)
    assert res.breakdown["heart_rate"] == points
    assert res.total == points


@pytest.mark.parametrize(("value", "points"), TEMP_EDGES)
def test_temperature_bands(value: float, points: int) -> None:
    res = news2(with_(temperature=r(value)), AS_OF)
    assert res.breakdown["temperature"] == points
    assert res.total == points


@pytest.mark.parametrize(
    ("code", "gcs", "points"),
    [
        ("A", None, 0), ("C", None, 3), ("V", None, 3), ("P", None, 3), ("U", None, 3),
        ("a", None, 0), (" v ", None, 3), ("A", 15, 0), ("A", 14, 3), (None, 15, 0),
        (None, 14, 3), (None, 3, 3), ("A", 14.49, 3), ("A", 14.5, 0), ("C", 15, 3),
    ],
)  # fmt: skip
def test_consciousness(code: str | None, gcs: float | None, points: int) -> None:
    readings = normal()
    del readings["consciousness"]
    if code is not None:
        readings["consciousness"] = r(code=code)
    if gcs is not None:
        readings["gcs_total"] = r(gcs)
    res = news2(readings, AS_OF)
    assert res.breakdown["consciousness"] == points
    assert res.total == points
    assert res.red_flag is (points == 3)
    assert not res.partial


def test_consciousness_never_recorded_counts_alert_and_is_partial() -> None:
    readings = normal()
    del readings["consciousness"]
    res = news2(readings, AS_OF)
    assert res.breakdown["consciousness"] == 0
    assert res.total == 0
    assert res.partial
    assert res.missing == ("consciousness",)


def test_unknown_acvpu_code_is_ignored() -> None:
    res = news2(with_(consciousness=r(code="X")), AS_OF)
    assert res.partial
    assert res.breakdown["consciousness"] == 0


# ------------------------------------------------------------------ oxygen detection


@pytest.mark.parametrize(
    ("readings", "oxygen"),
    [
        ({}, False),
        ({"o2_device": r(code="air")}, False),
        ({"o2_device": r(code="room-air")}, False),
        ({"o2_device": r(code="Room-Air")}, False),
        ({"o2_device": r(code="none")}, False),
        ({"o2_device": r(code=None)}, False),
        ({"o2_device": r(code="nasal-cannula")}, True),
        ({"o2_device": r(code="non-rebreather")}, True),
        ({"o2_flow": r(0)}, False),
        ({"o2_flow": r(0.5)}, True),
        ({"o2_flow": r(2)}, True),
        ({"fio2": r(0.21)}, False),
        ({"fio2": r(0.22)}, True),
        ({"fio2": r(0.4)}, True),
        ({"o2_device": r(code="air"), "o2_flow": r(2)}, True),  # same time: oxygen wins
        ({"o2_device": r(code="air"), "fio2": r(0.3)}, True),
        ({"o2_device": r(code="mask"), "o2_flow": r(0)}, True),
    ],
)
def test_oxygen_detection(readings: dict[str, Reading], oxygen: bool) -> None:
    res = news2(with_(**readings), AS_OF)
    assert res.on_oxygen is oxygen
    assert res.breakdown["air_or_oxygen"] == (2 if oxygen else 0)
    assert res.total == (2 if oxygen else 0)


def test_newest_oxygen_record_decides() -> None:
    earlier = AS_OF - timedelta(hours=3)
    off = news2(with_(o2_flow=r(2, at=earlier), o2_device=r(code="air")), AS_OF)
    assert not off.on_oxygen
    on = news2(with_(o2_device=r(code="air", at=earlier), o2_flow=r(2)), AS_OF)
    assert on.on_oxygen


@pytest.mark.parametrize("code", ["o2_device", "o2_flow", "fio2"])
def test_stale_oxygen_record_means_air(code: str) -> None:
    reading = r(code="mask") if code == "o2_device" else r(0.5 if code == "fio2" else 4)
    stale = Reading(time=AS_OF - timedelta(hours=12, seconds=1), value=reading.value,
                    value_code=reading.value_code)  # fmt: skip
    assert news2(with_(**{code: reading}), AS_OF).on_oxygen
    assert not news2(with_(**{code: stale}), AS_OF).on_oxygen


# ------------------------------------------------------------------ staleness


@pytest.mark.parametrize("code", ["respiratory_rate", "spo2", "systolic_bp", "heart_rate",
                                  "temperature"])  # fmt: skip
def test_required_parameter_missing_gives_no_total(code: str) -> None:
    readings = with_(respiratory_rate=r(30))
    del readings[code]
    res = news2(readings, AS_OF)
    assert res.total is None
    assert res.band is None
    assert res.breakdown[code] is None
    assert code in res.missing
    # RR 30 still raises the red flag when it is present.
    assert res.red_flag is (code != "respiratory_rate")


def test_staleness_window_edge_inclusive() -> None:
    edge = AS_OF - timedelta(hours=12)
    res = news2(with_(heart_rate=r(140, at=edge)), AS_OF)
    assert res.breakdown["heart_rate"] == 3


def test_just_past_the_window_is_stale() -> None:
    past = AS_OF - timedelta(hours=12, microseconds=1)
    res = news2(with_(heart_rate=r(140, at=past)), AS_OF)
    assert res.breakdown["heart_rate"] is None
    assert res.total is None
    assert res.missing == ("heart_rate",)


def test_reading_after_as_of_is_ignored() -> None:
    res = news2(with_(heart_rate=r(140, at=AS_OF + timedelta(seconds=1))), AS_OF)
    assert res.breakdown["heart_rate"] is None
    at_as_of = news2(with_(heart_rate=r(140, at=AS_OF)), AS_OF)
    assert at_as_of.breakdown["heart_rate"] == 3


def test_custom_staleness_window() -> None:
    three_h = AS_OF - timedelta(hours=3)
    assert news2(with_(heart_rate=r(140, at=three_h)), AS_OF, 3).breakdown["heart_rate"] == 3
    assert news2(with_(heart_rate=r(140, at=three_h)), AS_OF, 2.99).total is None


def test_stale_consciousness_is_partial() -> None:
    res = news2(with_(consciousness=r(code="U", at=AS_OF - timedelta(hours=13))), AS_OF)
    assert res.partial
    assert res.breakdown["consciousness"] == 0


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -1.0])
def test_unusable_values_count_as_missing(bad: float | None) -> None:
    res = news2(with_(heart_rate=r(bad)), AS_OF)
    assert res.breakdown["heart_rate"] is None
    assert res.total is None


def test_naive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="time zone"):
        news2(normal(), AS_OF.replace(tzinfo=None))
    with pytest.raises(ValueError, match="time zone"):
        news2(with_(heart_rate=r(70, at=T.replace(tzinfo=None))), AS_OF)
    with pytest.raises(ValueError, match="staleness"):
        news2(normal(), AS_OF, -1)


def test_other_time_zones_compare_by_instant() -> None:
    from datetime import timezone

    plus2 = timezone(timedelta(hours=2))
    res = news2(with_(heart_rate=r(140, at=datetime(2026, 1, 1, 2, 0, tzinfo=plus2))), AS_OF)
    assert res.breakdown["heart_rate"] == 3  # 00:00 UTC: exactly 12 h before as_of


# ------------------------------------------------------------------ band rules


@pytest.mark.parametrize(
    ("total", "red_flag", "band"),
    [
        (0, False, "low"), (4, False, "low"), (3, True, "low-medium"), (4, True, "low-medium"),
        (5, False, "medium"), (5, True, "medium"), (6, True, "medium"), (7, False, "high"),
        (7, True, "high"), (20, True, "high"), (None, True, None),
    ],
)  # fmt: skip
def test_band_rules(total: int | None, red_flag: bool, band: str | None) -> None:
    assert news2_band(total, red_flag) == band


def test_single_parameter_three_is_low_medium() -> None:
    res = news2(with_(respiratory_rate=r(25)), AS_OF)
    assert (res.total, res.red_flag, res.band) == (3, True, "low-medium")


def test_oxygen_alone_is_low_not_red_flag() -> None:
    res = news2(with_(o2_flow=r(2)), AS_OF)
    assert (res.total, res.red_flag, res.band) == (2, False, "low")


# ------------------------------------------------------------------ worked examples
# Computed by hand from RCP NEWS2 chart 1 (2017).


def test_example_septic_patient_high() -> None:
    readings = {
        "respiratory_rate": r(24),  # 2
        "spo2": r(95),  # 1
        "o2_device": r(code="nasal-cannula"),  # 2
        "systolic_bp": r(105),  # 1
        "heart_rate": r(115),  # 2
        "consciousness": r(code="A"),  # 0
        "temperature": r(38.5),  # 1
    }
    res = news2(readings, AS_OF)
    assert res.breakdown == {
        "respiratory_rate": 2,
        "spo2": 1,
        "air_or_oxygen": 2,
        "systolic_bp": 1,
        "heart_rate": 2,
        "consciousness": 0,
        "temperature": 1,
    }
    assert (res.total, res.band, res.red_flag, res.partial) == (9, "high", False, False)


def test_example_new_confusion_medium() -> None:
    readings = with_(
        respiratory_rate=r(21),  # 2
        heart_rate=r(95),  # 1
        consciousness=r(code="C"),  # 3
    )
    res = news2(readings, AS_OF)
    assert (res.total, res.band, res.red_flag) == (6, "medium", True)


def test_example_copd_scale2_on_air() -> None:
    # Hypercapnic patient, target 88-92 %: SpO2 90 % on air scores 0 on scale 2, 3 on 1.
    readings = with_(spo2=r(90), respiratory_rate=r(22), o2_device=r(code="air"))
    assert news2(readings, AS_OF, spo2_scale2=True).total == 2
    assert news2(readings, AS_OF).total == 5


def test_example_maximum_score() -> None:
    readings = {
        "respiratory_rate": r(6),
        "spo2": r(80),
        "fio2": r(0.6),
        "systolic_bp": r(70),
        "heart_rate": r(150),
        "consciousness": r(code="U"),
        "temperature": r(34.0),
    }
    res = news2(readings, AS_OF)
    assert res.total == 3 + 3 + 2 + 3 + 3 + 3 + 3 == 20
    assert res.band == "high"


def test_news2_to_dict() -> None:
    res = news2(normal(), AS_OF)
    assert isinstance(res, News2Result)
    d = res.to_dict()
    assert d["total"] == 0
    assert d["band"] == "low"
    assert d["missing"] == []
    assert set(d["breakdown"]) == {
        "respiratory_rate", "spo2", "air_or_oxygen", "systolic_bp", "heart_rate",
        "consciousness", "temperature",
    }  # fmt: skip
    with pytest.raises(AttributeError):
        res.total = 5  # type: ignore[misc]


# ------------------------------------------------------------------ qSOFA


@pytest.mark.parametrize(
    ("rr", "sbp", "acvpu", "gcs", "total"),
    [
        (21, 101, "A", None, 0), (22, 101, "A", None, 1), (21.49, 101, "A", None, 0),
        (21.5, 101, "A", None, 1), (21, 100, "A", None, 1), (21, 100.49, "A", None, 1),
        (21, 100.5, "A", None, 0), (21, 101, "C", None, 1), (21, 101, "A", 14, 1),
        (21, 101, None, 15, 0), (22, 100, "V", 8, 3), (30, 80, "A", 15, 2),
    ],
)  # fmt: skip
def test_qsofa_edges(
    rr: float, sbp: float, acvpu: str | None, gcs: float | None, total: int
) -> None:
    readings = {"respiratory_rate": r(rr), "systolic_bp": r(sbp)}
    if acvpu is not None:
        readings["consciousness"] = r(code=acvpu)
    if gcs is not None:
        readings["gcs_total"] = r(gcs)
    res = qsofa(readings, AS_OF)
    assert res.total == total
    assert res.positive is (total >= 2)
    assert not res.partial


def test_qsofa_missing_and_partial() -> None:
    res = qsofa({"respiratory_rate": r(25), "systolic_bp": r(90)}, AS_OF)
    assert (res.total, res.positive, res.partial) == (2, True, True)
    assert res.missing == ("mentation",)
    no_sbp = qsofa({"respiratory_rate": r(25), "consciousness": r(code="P")}, AS_OF)
    assert no_sbp.total is None
    assert no_sbp.positive  # two criteria are known to be met
    assert no_sbp.missing == ("systolic_bp",)
    stale = qsofa(
        {"respiratory_rate": r(25, at=AS_OF - timedelta(hours=2)), "systolic_bp": r(90)},
        AS_OF,
        staleness_hours=1,
    )
    assert stale.total is None
    assert isinstance(stale, QsofaResult)
    assert stale.to_dict()["breakdown"] == {
        "respiratory_rate": None,
        "systolic_bp": 1,
        "mentation": 0,
    }


# ------------------------------------------------------------------ SIRS


def sirs_base() -> dict[str, Reading]:
    return {
        "temperature": r(37.0),
        "heart_rate": r(80),
        "respiratory_rate": r(16),
        "wbc": r(8.0),
    }


@pytest.mark.parametrize(
    ("code", "value", "met"),
    [
        ("temperature", 38.0, 0), ("temperature", 38.1, 1), ("temperature", 38.04, 0),
        ("temperature", 38.05, 1), ("temperature", 36.0, 0), ("temperature", 35.9, 1),
        ("temperature", 35.95, 0), ("temperature", 35.94, 1),
        ("heart_rate", 90, 0), ("heart_rate", 91, 1), ("heart_rate", 90.49, 0),
        ("heart_rate", 90.5, 1),
        ("respiratory_rate", 20, 0), ("respiratory_rate", 21, 1), ("respiratory_rate", 20.5, 1),
        ("paco2", 32, 0), ("paco2", 31, 1), ("paco2", 31.5, 0), ("paco2", 31.49, 1),
        ("wbc", 12.0, 0), ("wbc", 12.1, 1), ("wbc", 12.04, 0), ("wbc", 4.0, 0), ("wbc", 3.9, 1),
        ("wbc", 3.95, 0), ("wbc", 3.94, 1),
    ],
)  # fmt: skip
def test_sirs_edges(code: str, value: float, met: int) -> None:
    readings = sirs_base()
    readings[code] = r(value)
    res = sirs(readings, AS_OF)
    assert res.total == met
    assert not res.met
    assert not res.partial


def test_sirs_met_and_partial() -> None:
    readings = sirs_base()
    readings.update(temperature=r(38.6), heart_rate=r(112))
    del readings["wbc"]
    res = sirs(readings, AS_OF)
    assert isinstance(res, SirsResult)
    assert (res.total, res.met, res.partial, res.missing) == (2, True, True, ("wbc",))
    everything = sirs_base()
    everything.update(temperature=r(35.0), heart_rate=r(130), respiratory_rate=r(28), wbc=r(18.2))
    assert sirs(everything, AS_OF).total == 4


def test_sirs_missing_vitals() -> None:
    readings = sirs_base()
    del readings["heart_rate"]
    assert sirs(readings, AS_OF).total is None
    no_rr = sirs_base()
    del no_rr["respiratory_rate"]
    assert sirs(no_rr, AS_OF).total is None
    no_rr["paco2"] = r(28)  # PaCO2 < 32 meets the respiratory criterion on its own
    res = sirs(no_rr, AS_OF)
    assert res.total == 1
    assert res.to_dict()["breakdown"]["respiratory"] == 1
