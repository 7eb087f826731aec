"""Mutual recognition: `hub recognition build-index|token|limits|query`, `hub serve`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hub.cli.base import JsonOpt, WorkspaceOpt, app, console, print_json_lines

recognition_app = typer.Typer(help="Mutual recognition of lab results: index, tokens, queries.", no_args_is_help=True)
app.add_typer(recognition_app, name="recognition")


def _recognition(workspace: Path):
    from deid.keys import Keyring
    from hub.recognition.index import connect, index_url
    from hub.recognition.rules import load_rules
    from hub.region import load_region

    region = load_region(workspace)
    return region, Keyring.load(region.key_file), connect(index_url(region)), load_rules()


@recognition_app.command("build-index")
def recognition_build_index(workspace: Path = WorkspaceOpt) -> None:
    """Add results published since the last build to the recognition index (run after each publish)."""
    from hub.recognition.index import build

    region, _, index, _ = _recognition(workspace)
    console.print(f"Recognition index: {build(region, index)} new rows read from {region.zone}.observation and .diagnosticreport")


@recognition_app.command("token")
def recognition_token(
    institution: str = typer.Argument(..., help="Institution id."),
    revoke: bool = typer.Option(False, "--revoke", help="Revoke the institution's token instead of issuing one."),
    workspace: Path = WorkspaceOpt,
) -> None:
    """Issue a bearer token for an institution's HIS (shown once; only its hash is kept), or revoke it.

    A running `hub serve` follows the token file: a new token works, and a revoked one is
    refused, from the next request on.
    """
    from hub.recognition.api import issue_token, revoke_token
    from hub.region import load_region

    region = load_region(workspace)
    if not revoke:
        print(issue_token(region, institution))
        return
    if not revoke_token(region, institution):
        from hub.errors import NotFound

        raise NotFound(f"{institution} has no recognition API token to revoke")
    console.print(f"Revoked the recognition API token of {institution}; a running server refuses it from the next request.")


@recognition_app.command("limits")
def recognition_limits(
    workspace: Path = WorkspaceOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per institution) instead of a table."),
) -> None:
    """Each institution's lookup limits and what is left of them; suspended tokens and how to lift them.

    A token is suspended when too many of its lookups by resident ID number found no patient
    (`hub audit access --action recognition-alert` lists the alerts). Re-issuing the token
    (`hub recognition token <institution>`) lifts the suspension: the new token starts afresh.
    """
    import datetime as dt
    import json

    from hub.recognition.api import load_tokens
    from hub.recognition.index import connect, index_url
    from hub.recognition.limits import limit_states, load_limits
    from hub.region import load_region

    region = load_region(workspace)
    policy = load_limits(region)
    states = {s["institution"]: s for s in limit_states(connect(index_url(region)), policy, load_tokens(region))}
    rows = []
    for inst in region.institutions:
        lim, st = policy.of(inst.id), states.get(inst.id, {})
        until = st.get("suspended_until")
        rows.append({"institution": inst.id, "lookups_per_minute": lim.lookups_per_minute, "burst": lim.burst,
                     "lookups_left": st.get("lookups_left", int(lim.burst)), "misses_per_hour": lim.misses_per_hour,
                     "misses_left": st.get("misses_left", int(lim.misses_per_hour)), "suspend_minutes": lim.suspend_minutes,
                     "suspended_until": f"{dt.datetime.fromtimestamp(until, dt.UTC):%Y-%m-%d %H:%M:%S}" if until else None})
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    table = Table(title="Recognition API limits (each institution's current token, as the server last wrote it)")
    for col in ("institution", "lookups/min", "burst", "left", "misses/hour", "left", "suspended until (UTC)"):
        table.add_column(col, no_wrap=col == "institution")
    for r in rows:
        table.add_row(r["institution"], f"{r['lookups_per_minute']:g}", f"{r['burst']:g}", str(r["lookups_left"]),
                      f"{r['misses_per_hour']:g}", str(r["misses_left"]), f"[red]{r['suspended_until']}[/]" if r["suspended_until"] else "")
    console.print(table)
    for r in rows:
        if r["suspended_until"]:
            console.print(f"{r['institution']} is suspended; lift it with `hub recognition token {r['institution']}` (a new token).", highlight=False)


@recognition_app.command("query")
def recognition_query(
    requester: str = typer.Option(..., "--requester", "-r", help="The requesting institution's id."),
    id_number: str = typer.Option(None, "--id-number", help="The patient's resident ID number."),
    mrn: str = typer.Option(None, "--mrn", help="Or the requester's own MRN for the patient."),
    code: list[str] = typer.Option(None, "--code", help="LOINC codes to ask about (repeat); default all."),
    at: str = typer.Option(None, "--at", help="Judge as of this date (YYYY-MM-DD); default now."),
    workspace: Path = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """The recognition verdict of each of a patient's results, as the API gives it.

    With --json, JSON Lines: one verdict per line (item, issuer, time, value, unit,
    verdict, reason, mark, age and window in days, the result's resource id).
    """
    import datetime as dt

    from hub.errors import CommandFailed
    from hub.lineage import access, runrecord
    from hub.recognition.query import (
        ID_CARD_SYSTEMS,
        IdentifierRefused,
        mrn_system,
        patient_for,
        query,
    )

    region, keys, index, rules = _recognition(workspace)
    region.institution(requester)
    if bool(id_number) == bool(mrn):
        raise typer.BadParameter("give --id-number or --mrn")
    system, value = (ID_CARD_SYSTEMS[0], id_number) if id_number else (mrn_system(requester), mrn)
    try:
        patient = patient_for(index, keys, system, value, requester=requester)
    except IdentifierRefused as exc:
        access.record(runrecord.connect(region.catalog_url), "recognition-query", "recognition (command line)",
                      {"requester": requester, "refused": exc.cause}, "refused")
        raise CommandFailed(str(exc)) from None
    when = dt.datetime.fromisoformat(at).replace(tzinfo=dt.UTC) if at else None
    verdicts = query(index, rules, patient, requester, code or None, at=when) if patient else []
    access.record(runrecord.connect(region.catalog_url), "recognition-query", "recognition (command line)",
                  {"requester": requester, "codes": code or None, "results": len(verdicts)})
    if as_json:
        print_json_lines(_verdict_row(v) for v in verdicts)
        return
    table = Table(title=f"{len(verdicts)} results for the patient, as seen by {requester}")
    for col in ("item (LOINC)", "issuer", "time", "value", "verdict", "reason / mark"):
        table.add_column(col, overflow="fold")
    for v in verdicts:
        o = v.observation
        value, unit = _value(o)
        table.add_row(v.loinc, v.institution, str(o.get("effectiveDateTime", ""))[:16], f"{value} {unit}".strip(),
                      "[green]recognisable[/]" if v.recognisable else f"[red]{v.code}[/]", v.mark or v.reason)
    console.print(table)


def _value(o: dict) -> tuple:
    value = o.get("valueQuantity", {}).get("value", o.get("valueString", (o.get("valueCodeableConcept") or {}).get("text", "")))
    return value, o.get("valueQuantity", {}).get("unit", "")


def _verdict_row(v) -> dict:
    value, unit = _value(v.observation)
    return {"loinc": v.loinc, "issuer": v.institution, "time": v.observation.get("effectiveDateTime"), "value": value,
            "unit": unit or None, "verdict": v.code, "recognisable": v.recognisable, "reason": v.reason, "mark": v.mark,
            "age_days": v.age_days, "window_days": v.window_days, "resource": f"Observation/{v.observation.get('id')}"}


@app.command("serve")
def serve(
    workspace: Path = WorkspaceOpt,
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    base_url: str = typer.Option(None, "--base-url", help="Public base of the FHIR endpoint as clients see it, e.g. "
                                 "https://hub.example/fhir behind a proxy (default: the host each request names, + /fhir). "
                                 "Bundle fullUrls and links are built from it."),
) -> None:
    """Start the recognition FHIR API (FastAPI + uvicorn). OpenAPI at /docs, CapabilityStatement at /fhir/metadata.

    uvicorn's access log is off: it would print query strings, which carry patient identifiers.
    """
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise typer.BadParameter("must be an absolute http(s) URL, e.g. https://hub.example/fhir", param_hint="--base-url")
    import logging

    import uvicorn

    from hub.recognition.api import create_app

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s %(message)s")
    region, keys, index, rules = _recognition(workspace)
    uvicorn.run(create_app(region, keys, index, rules, base_url=base_url), host=host, port=port, access_log=False, log_level="info")
