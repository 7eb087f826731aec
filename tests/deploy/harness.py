"""Scratch servers for the production profile: fresh PostgreSQL databases for Dagster and the catalog, and a
RabbitMQ vhost of their own, torn down afterwards. Used by the Celery test and by benchmarks/scaleout.py."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator

import sqlalchemy as sa

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class ServerMissing(RuntimeError):
    """A service the profile needs is not listening."""


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    """The URL of a new PostgreSQL database named prefix_<random>, dropped afterwards (ServerMissing if unreachable)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        raise ServerMissing(f"PostgreSQL not reachable at 127.0.0.1:5432: start it (.ci/run does): {exc.orig}") from exc
    try:
        yield PG.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def scratch_servers() -> Iterator[dict[str, str]]:
    """{"dagster": URL, "catalog": URL, "vhost": name}: new databases and a vhost (no other test's workers take its steps)."""
    for name, port in (("PostgreSQL", 5432), ("RabbitMQ", 5672), ("Redis", 6379)):
        if not listening(port):
            raise ServerMissing(f"{name} is not listening on 127.0.0.1:{port}: start it (.ci/run does)")
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    token = secrets.token_hex(4)
    names = {"dagster": f"hub_dagster_{token}", "catalog": f"hub_catalog_{token}"}
    vhost = f"hubtest-{token}"
    with admin.connect() as conn:
        for db in names.values():
            conn.execute(sa.text(f'CREATE DATABASE "{db}"'))
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True, capture_output=True)
    try:
        yield {key: PG.rsplit("/", 1)[0] + f"/{db}" for key, db in names.items()} | {"vhost": vhost}
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True)
        with admin.connect() as conn:
            for db in names.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        admin.dispose()


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group (a worker and its children), SIGKILL after a minute."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
