"""WardWatch's canonical FHIR mapping: a portion of the ``fhir`` namespace shared with fhir.resources."""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
