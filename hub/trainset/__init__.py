"""Training sets: cohorts, patient-level splits, datasheets and releases, built with the view engine (hub.views)."""
