"""Every error path of the `hub` command ends fast, with one line on stderr and a meaningful exit code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.cli.errors import EXIT_CANNOT_RUN, EXIT_PROBLEMS, describe, one_line
from hub.errors import CommandFailed, NotFound
from hub.leakscan import Hit, LeakBlocked

HUB = [sys.executable, "-m", "hub.cli"]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HUB_MASTER_KEY", "HUB_KEY_FILE", "DAGSTER_HOME")}
    env["COLUMNS"] = "200"
    return subprocess.run([*HUB, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def broken_workspace(tmp_path_factory) -> Path:
    """A demo region whose city-first LIS database has lost its tables (a restore gone wrong)."""
    from hub.cli.demo import _ensure_key
    from hub.demo.generator import generate_region
    from hub.region import load_region

    ws = tmp_path_factory.mktemp("broken") / "ws"
    generate_region(ws, patients=8)
    region = load_region(ws)
    _ensure_key(region)
    lis = next(f for f in region.institution("city-first").feeds if f.name == "lis")
    Path(lis.url.removeprefix("sqlite:///")).write_bytes(b"")  # an empty file: no tables at all
    return ws


@pytest.mark.slow
def test_failing_publish_ends_within_seconds_with_one_line_on_stderr(broken_workspace, tmp_path):
    start = time.monotonic()
    proc = _run("publish", "city-first", "--workspace", str(broken_workspace), cwd=tmp_path)
    elapsed = time.monotonic() - start
    assert proc.returncode == EXIT_CANNOT_RUN, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert "table 'lab_order' does not exist in the source" in lines[0]  # names what is wrong, and where
    assert elapsed < 10, f"the error path took {elapsed:.1f} s"


@pytest.mark.slow
def test_an_unexpected_error_says_how_to_see_more(capsys):
    from hub.cli.errors import report

    assert report(RuntimeError("boom"), debug=False) == EXIT_CANNOT_RUN
    assert capsys.readouterr().err == "error: internal error: RuntimeError: boom (run with --debug for the traceback)\n"


def test_debug_shows_the_traceback(broken_workspace, tmp_path):
    proc = _run("--debug", "publish", "city-first", "--workspace", str(broken_workspace), cwd=tmp_path)
    assert proc.returncode == EXIT_CANNOT_RUN
    assert "Traceback" in proc.stderr and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_unknown_institution_is_one_line_exit_2(broken_workspace, tmp_path):
    proc = _run("publish", "no-such-hospital", "--workspace", str(broken_workspace), cwd=tmp_path)
    assert proc.returncode == EXIT_CANNOT_RUN
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "no institution 'no-such-hospital'" in proc.stderr and "Traceback" not in proc.stderr


def test_exit_codes_tell_problems_found_from_could_not_run():
    leak = LeakBlocked([Hit("recognition.observation.resource", "mobile", "138******78")])
    assert describe(leak)[1] == EXIT_PROBLEMS
    assert describe(CommandFailed("3 rows would be quarantined", EXIT_PROBLEMS))[1] == EXIT_PROBLEMS
    assert describe(NotFound("no tag 'x'"))[:2] == ("no tag 'x'", EXIT_CANNOT_RUN)
    message, code, expected = describe(KeyError("resourceType"))  # a bug, not a user error
    assert code == EXIT_CANNOT_RUN and not expected and message == "internal error: KeyError: 'resourceType'"


def test_error_messages_never_carry_an_identifier_and_stay_one_line():
    exc = ValueError("could not parse '110101199003074610'\nnear 13812345678 in row 7")
    message, _, _ = describe(exc)
    assert "110101199003074610" not in message and "13812345678" not in message
    assert "\n" not in message and message.startswith("internal error: ValueError: could not parse")
    assert len(one_line("x" * 10_000)) <= 400


def _main(monkeypatch, *args: str) -> int:
    """Run the `hub` entry point in-process, as the console script does; return its exit code."""
    from hub.cli import main
    from hub.cli.base import debug

    monkeypatch.setattr(sys, "argv", ["hub", *args])
    monkeypatch.setitem(debug, "on", False)
    with pytest.raises(SystemExit) as ended:
        main()
    return ended.value.code


def _view_and_patients(tmp_path: Path, view: dict) -> tuple[Path, Path]:
    import json

    (tmp_path / "view.json").write_text(json.dumps(view), encoding="utf-8")
    (tmp_path / "patients.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p1", "gender": "female", "name": [{"family": "A"}, {"family": "B"}]}) + "\n", encoding="utf-8")
    return tmp_path / "view.json", tmp_path / "patients.ndjson"


def test_a_keyerror_from_a_bug_is_an_internal_error_not_a_user_error(tmp_path, monkeypatch, capsys):
    import hub.views.runner

    def buggy_run_view(view, resources):
        return {}["gender"]  # a lookup the code got wrong: the user can do nothing about it

    monkeypatch.setattr(hub.views.runner, "run_view", buggy_run_view)
    view, patients = _view_and_patients(tmp_path, {"resource": "Patient", "select": [{"column": [{"name": "g", "path": "gender"}]}]})
    assert _main(monkeypatch, "views", "run", str(view), "--ndjson", str(patients)) == EXIT_CANNOT_RUN
    err = capsys.readouterr().err
    assert err == "error: internal error: KeyError: 'gender' (run with --debug for the traceback)\n"


def test_a_mistake_in_the_users_view_is_a_user_error_naming_the_file(tmp_path, monkeypatch, capsys):
    view, patients = _view_and_patients(tmp_path, {"resource": "Patient", "where": [{"expression": "gender = 'female'"}],
                                                   "select": [{"column": [{"name": "g", "path": "gender"}]}]})
    assert _main(monkeypatch, "views", "run", str(view), "--ndjson", str(patients)) == EXIT_CANNOT_RUN
    assert capsys.readouterr().err == f"error: {view}: a where needs a path (a FHIRPath string)\n"

    view, _ = _view_and_patients(tmp_path, {"resource": "Patient", "select": [{"column": [{"name": "n", "path": "name.family"}]}]})
    assert _main(monkeypatch, "views", "run", str(view), "--ndjson", str(patients)) == EXIT_CANNOT_RUN  # found while running
    assert capsys.readouterr().err == f"error: {view}: column 'n' returned 2 values; set collection: true\n"
