"""WardWatch's scoring: patient state, features, early-warning scores, the risk model."""

# fhir.resources ships a plain (non-namespace) ``fhir/__init__.py``. When site-packages
# comes before the project on sys.path (an installed console script), that package wins
# and hides our ``fhir`` portion; extending its path makes both importable either way.
import pkgutil as _pkgutil

import fhir as _fhir

_fhir.__path__ = _pkgutil.extend_path(_fhir.__path__, "fhir")
