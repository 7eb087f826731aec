"""The access log: every read through hub, who, when, for what purpose, and what it read.

Entries are append-only rows in the catalog database. They never hold an identifier: a
read is described by the tables, snapshots and row counts it touched. ``as_audit_events``
exports them as FHIR R4 AuditEvent resources for the region's audit repository.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os

import sqlalchemy as sa

from hub.lineage.catalog import metadata

access_log = sa.Table(
    "hub_access_log", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("who", sa.String(120), nullable=False, index=True),
    sa.Column("action", sa.String(64), nullable=False),  # research-release, quarantine-show, lineage-trace ...
    sa.Column("purpose", sa.String(200), nullable=False),
    sa.Column("what", sa.Text, nullable=False),  # JSON: tables, snapshots, rows, entry ids
    sa.Column("outcome", sa.String(16), nullable=False),  # success | refused | failure
)


def actor() -> str:
    """Who is reading: HUB_ACTOR when set (a service or a named operator), else the OS user."""
    return os.environ.get("HUB_ACTOR") or getpass.getuser()


def record(engine: sa.Engine, action: str, purpose: str, what: dict, outcome: str = "success", who: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(access_log.insert().values(
            at=dt.datetime.now(dt.UTC), who=who or actor(), action=action, purpose=purpose,
            what=json.dumps(what, ensure_ascii=False, sort_keys=True, default=str), outcome=outcome,
        ))


def entries(engine: sa.Engine, who: str | None = None, action: str | None = None, since: dt.datetime | None = None) -> list[dict]:
    q = sa.select(access_log).order_by(access_log.c.id)
    if who:
        q = q.where(access_log.c.who == who)
    if action:
        q = q.where(access_log.c.action == action)
    if since:
        q = q.where(access_log.c.at >= since)
    with engine.connect() as conn:
        return [{**dict(r._mapping), "what": json.loads(r.what)} for r in conn.execute(q)]


_OUTCOME = {"success": "0", "refused": "4", "failure": "8"}


def as_audit_events(rows: list[dict]) -> list[dict]:
    """FHIR R4 AuditEvent resources (type: rest/query or export), one per entry."""
    out = []
    for r in rows:
        at = r["at"] if r["at"].tzinfo else r["at"].replace(tzinfo=dt.UTC)
        out.append({
            "resourceType": "AuditEvent", "id": f"hub-access-{r['id']}",
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "urn:hub:access-action", "code": r["action"]}],
            "action": "R", "recorded": at.isoformat(), "outcome": _OUTCOME.get(r["outcome"], "8"),
            "purposeOfEvent": [{"text": r["purpose"]}],
            "agent": [{"who": {"display": r["who"]}, "requestor": True}],
            "source": {"observer": {"display": "hub"}},
            "entity": [{"what": {"display": json.dumps(r["what"], ensure_ascii=False, sort_keys=True)}}],
        })
    return out
