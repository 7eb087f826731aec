"""Rulesets: `hub deid import-anonymizer`, `hub deid rules` (what a ruleset does to every leaf)."""

from __future__ import annotations

from pathlib import Path

import typer

from hub.cli.base import app, console

deid_app = typer.Typer(help="De-identification rulesets.", no_args_is_help=True)
app.add_typer(deid_app, name="deid")


@deid_app.command("import-anonymizer")
def deid_import_anonymizer(
    config: Path = typer.Argument(..., exists=True, help="A Microsoft FHIR anonymizer configuration (JSON)."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the hub ruleset (YAML)."),
) -> None:
    """Translate a Microsoft FHIR anonymizer configuration into a hub ruleset.

    Common path forms and the keep, redact, cryptoHash, encrypt, dateShift and perturb
    methods translate; everything else is listed so a reviewer can write it by hand.
    The result is validated like any ruleset before it is written.
    """
    import json

    import yaml

    from deid.migrate import as_ruleset, import_anonymizer
    from deid.ruleset import load_ruleset

    report = import_anonymizer(json.loads(config.read_text(encoding="utf-8")))
    output.write_text("# Imported from " + config.name + " by `hub deid import-anonymizer`; review every rule.\n"
                      + yaml.safe_dump(as_ruleset(report), allow_unicode=True, sort_keys=False), encoding="utf-8")
    load_ruleset(output, "recognition")
    console.print(f"Wrote {len(report.rules)} rules to {output}")
    for line in report.untranslated:
        console.print(f"[yellow]not translated:[/] {line}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)


@deid_app.command("rules")
def deid_rules(
    ruleset: Path = typer.Option(None, "--ruleset", "-r", exists=True, dir_okay=False,
                                 help="The ruleset to describe (default: deid/rules/default.yaml)."),
    resource: list[str] = typer.Option(None, "--resource", help="Only these resource types (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Say, per element and zone, what a ruleset does to each leaf beneath it.

    Coded leaves (codes, numbers, dates) follow their rule; strings a rule does not name are scrubbed or redacted by the ruleset's strings policy; nested identifiers are dropped; elements no rule covers are dropped by deny-by-default. Computed from the engine's own decisions, for every resource type hub publishes.
    """
    import json

    from deid.report import render_report, ruleset_report
    from deid.ruleset import default_ruleset_path
    from hub.fhir.validate import RESOURCE_MODULES

    unknown = [r for r in resource or [] if r not in RESOURCE_MODULES]
    if unknown:
        raise typer.BadParameter(f"{unknown[0]!r} is not a type hub publishes; expected one of {', '.join(RESOURCE_MODULES)}",
                                 param_hint="--resource")
    report = ruleset_report(ruleset or default_ruleset_path(), list(resource) if resource else None)
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=1))
    else:
        print(render_report(report), end="")
