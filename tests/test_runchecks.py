"""The rates behind the recognition tables' asset checks (hub.runchecks), on hand-made counts."""

from __future__ import annotations

from hub.runchecks import NO_ROWS, TableChecks, quarantine_rate, validation_rate


def test_validation_rate_counts_only_rows_that_were_mapped():
    # 100 read, 10 quarantined of which 4 for failing validation: 94 were mapped, 4 of them failed
    counts = {**NO_ROWS, "read": 100, "quarantined": 10, "failed_validation": 4, "published": 90}
    assert validation_rate(counts) == 1 - 4 / 94
    assert quarantine_rate(counts) == 0.1


def test_rates_of_a_table_with_no_rows_pass():
    assert validation_rate(NO_ROWS) == 1.0 and quarantine_rate(NO_ROWS) == 0.0
    table = TableChecks("Specimen", dict(NO_ROWS), {}, validation_rate(NO_ROWS), quarantine_rate(NO_ROWS), files_scanned=0)
    assert table.validation_ok and table.quarantine_ok and table.hits == []


def test_thresholds_decide_pass_or_warn():
    counts = {**NO_ROWS, "read": 100, "quarantined": 6, "failed_validation": 2}
    table = TableChecks("Observation", counts, {}, validation_rate(counts), quarantine_rate(counts), files_scanned=0)
    assert not table.validation_ok  # 2 of 96 mapped failed: below 99%
    assert not table.quarantine_ok  # 6% quarantined: above 5%
