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


def test_the_leak_scan_reads_the_files_the_run_added_and_finds_a_planted_number(tmp_path, keys):
    """A run's check scans what that run wrote, not the whole partition again: a second run
    that changes nothing reads no file; an identifier written into an added file is found."""
    import pyarrow.parquet as pq

    from hub.lakehouse.tables import open_catalog, table_name
    from hub.leakscan import run_files
    from hub.pipeline import run_institution
    from hub.runchecks import RunChecks
    from tests.conftest import publish_region

    region, _, reports = publish_region(tmp_path, keys, 12)
    inst = region.institutions[0].id
    first = reports[inst]
    checks = RunChecks(region, first).table("Observation")
    table = open_catalog(region.catalog_url, region.warehouse).load_table(table_name("recognition", "Observation"))
    added = run_files(table, first.run_id)
    assert checks.files_scanned == len(added) > 0 and checks.hits == []

    again = run_institution(region, inst, keys)
    assert RunChecks(region, again).table("Observation").files_scanned == 0

    data = pq.read_table(added[0])  # an insider edits a file the first run wrote
    resource = data.column("resource").to_pylist()
    resource[0] = resource[0].replace('"status"', '"note":[{"text":"11010519491231002X"}],"status"', 1)
    pq.write_table(data.set_column(data.schema.get_field_index("resource"), "resource", [resource]), added[0])
    assert [h.kind for h in RunChecks(region, first).table("Observation").hits] == ["resident-id"]
