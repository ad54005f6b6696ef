"""The ``fhir`` import name is shared by WardWatch's package and fhir.resources."""

from __future__ import annotations


def test_both_portions_of_the_fhir_namespace_import() -> None:
    import fhir.resources.R4B.observation

    import fhir.events

    assert fhir.events.ClinicalEvent.__name__ == "ClinicalEvent"
    obs = fhir.resources.R4B.observation.Observation.model_validate(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    )
    assert obs.status == "final"
    assert len(fhir.__path__) >= 2
