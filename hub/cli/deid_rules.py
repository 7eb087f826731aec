"""Rulesets: `hub deid import-anonymizer`."""

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
