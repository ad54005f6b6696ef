"""WardWatch's canonical FHIR mapping.

A portion of the ``fhir`` namespace shared with fhir.resources (``fhir.resources.R4B``): keep
the ``extend_path`` below, or ``import fhir.resources`` stops working next to ``fhir.events``.
"""

from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
