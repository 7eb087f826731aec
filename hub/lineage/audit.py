"""Verifying a region's publication history: the chain, the live tables, and the stores beside them.

``hub.lineage.manifests.verify`` checks a chain against a catalog; this module puts a
region's pieces together (its catalogs, warehouse, trusted keys and the recognition index,
whose whole content each build records) so that the lineage layer below never imports the
features above it.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from hub.lineage.manifests import VerifyReport, sql_state, verify
from hub.lineage.signing import TrustedKeys


def _index_state(region) -> dict | None:
    """The recognition index's live content (``sql_state``), or None if its database or tables are gone."""
    from hub.recognition import index

    url = sa.engine.make_url(index.index_url(region))
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return None
    engine = sa.create_engine(url)
    try:
        names = set(sa.inspect(engine).get_table_names())
        if not {t.name for t in index.DIGESTED} <= names:
            return None
        with engine.connect() as conn:
            return sql_state(conn, index.DIGESTED)
    finally:
        engine.dispose()


def verify_region(region, trusted: TrustedKeys | None = None, *, last: int | None = None,
                  expect_head: tuple[int, str] | None = None, in_flight_ok: bool = False) -> VerifyReport:
    """verify for a region: its catalogs and warehouse; trusted keys from its configuration unless given."""
    import os

    from hub.lakehouse.tables import open_catalog
    from hub.lineage.runrecord import connect
    from hub.lineage.signing import ENV_SIGNING_KEY, ENV_SIGNING_KEY_FILE, trusted_for

    trusted = trusted if trusted is not None else trusted_for(region)
    report = verify(connect(region.catalog_url), trusted, open_catalog(region.catalog_url, region.warehouse),
                    warehouse=region.warehouse, last=last, expect_head=expect_head, in_flight_ok=in_flight_ok,
                    stores={"recognition-index": lambda: _index_state(region)})
    key_file = region.signing_key_file
    if (key_file is not None and not os.environ.get(ENV_SIGNING_KEY) and not os.environ.get(ENV_SIGNING_KEY_FILE)
            and key_file.resolve().is_relative_to(region.workspace.resolve())):
        report.notes.append(f"the private signing key {key_file} is inside the workspace (demo set-up): whoever can write "
                            "the workspace can sign a rewritten history; keep it elsewhere (docs/lakehouse.md)")
    return report
