"""deid: de-identification of FHIR resources under per-data-element rulesets."""

import hub  # noqa: F401  - installs the guard that keeps a stale compiled module from shadowing its source
