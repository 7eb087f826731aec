"""The region configuration (``region.yaml`` in a workspace): institutions, feeds, storage.

A workspace is a folder holding ``region.yaml``, the catalog database, the warehouse of
Parquet files and (for the demo) the source databases and key file. Feed URLs may use
``{workspace}`` and ``${ENV_VAR}`` (for passwords), so secrets stay out of the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from hub.errors import NotFound
from hub.yamlio import ConfigError, LineDict, load_yaml

DEFAULT_WORKSPACE = Path(".hub")
REPO_ROOT = Path(__file__).resolve().parents[1]
_ENV_RE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


@dataclass(frozen=True)
class Feed:
    """One source of an institution. kind "sql": a database read through mapping; kind
    "ndjson": FHIR NDJSON files (a folder or a bulk-export manifest) at path, no mapping; kind
    "hl7v2": a folder of HL7 v2 message files at path, read through mappings (hub.sources.hl7v2)."""

    name: str
    mapping: Path | None
    url: str
    kind: str = "sql"
    path: Path | None = None  # ndjson: the folder or manifest JSON; hl7v2: the folder of message files
    timezone: str = "+08:00"  # ndjson: the offset of date-only values (effective_time)
    mappings: tuple[Path, ...] = ()  # hl7v2: every mapping file the feed's messages go through
    encoding: str | None = None  # hl7v2: the character set of messages whose MSH-18 is empty
    #: sql: at most this many runs pull from the feed's database at once (the production Dagster
    #: instance queues the others: dagster_project/instance.py); a database shared by several
    #: feeds gets the smallest of their limits
    max_connections: int = 1


@dataclass(frozen=True)
class Institution:
    id: str
    name: str
    level: str
    feeds: tuple[Feed, ...]


@dataclass
class Region:
    name: str
    workspace: Path
    institutions: list[Institution]
    catalog_url: str
    warehouse: Path
    zone: str = "recognition"
    recognition_index: str | None = None  # SQLAlchemy URL of the recognition index; default: SQLite in the workspace
    ruleset: Path = field(default_factory=lambda: Path(__file__).resolve().parents[1] / "deid" / "rules" / "default.yaml")
    signing_key_file: Path | None = None  # manifest signing key (private); keep it outside the workspace in production
    trusted_keys_file: Path | None = None  # public keys `hub audit verify` trusts (see hub.lineage.signing)
    recognition_limits: LineDict | None = None  # region.yaml's `recognition_limits` (read by hub.recognition.limits)
    #: every n-th resource is also validated by fhir.resources beside hub's fast checks (hub.fhir.check); 1 = all
    validation_oracle_every: int = 100

    @property
    def key_file(self) -> Path:
        return self.workspace / "keys" / "master.key"

    def institution(self, institution_id: str) -> Institution:
        for inst in self.institutions:
            if inst.id == institution_id:
                return inst
        raise NotFound(f"no institution {institution_id!r} in {self.workspace / 'region.yaml'}; known: {', '.join(i.id for i in self.institutions)}")


def _expand(text: str, workspace: Path, file: str, line: int, fld: str) -> str:
    text = text.replace("{workspace}", str(workspace.resolve()))

    def env(m: re.Match) -> str:
        if m.group(1) not in os.environ:
            raise ConfigError(file, line, fld, f"environment variable {m.group(1)} is not set", f"{m.group(1)} set in the environment")
        return os.environ[m.group(1)]

    return _ENV_RE.sub(env, text)


def _mapping_path(name: str, region_file: Path, mappings_dir: Path) -> Path:
    p = Path(name)
    if p.suffix not in (".yaml", ".yml"):
        p = p.with_suffix(".yaml")
    for candidate in (p, region_file.parent / p, mappings_dir / p):
        if candidate.is_absolute() and candidate.exists():
            return candidate
        if candidate.exists():
            return candidate.resolve()
    return (mappings_dir / p).resolve()


def _file_feed(fnode: LineDict, workspace: Path, region_file: Path, iid: str, what_path: str) -> tuple[str, str, Path]:
    """(file, field prefix, absolute path) of a feed read from files: its name and path are required."""
    f = str(region_file)
    if not fnode.get("name"):
        raise ConfigError(f, fnode.line, f"institutions[{iid}].feeds.name", "is missing", "the feed's name")
    where = f"institutions[{iid}].feeds[{fnode['name']}]"
    if not fnode.get("path"):
        raise ConfigError(f, fnode.line, f"{where}.path", "is missing", what_path)
    path = Path(_expand(str(fnode["path"]), workspace, f, fnode.line_of("path"), f"{where}.path"))
    return f, where, path if path.is_absolute() else (region_file.parent / path).resolve()


def _ndjson_feed(fnode: LineDict, workspace: Path, region_file: Path, iid: str) -> Feed:
    """A `kind: ndjson` feed: `path` is a folder of NDJSON files or a bulk-export manifest."""
    f, where, path = _file_feed(fnode, workspace, region_file, iid, "a folder of .ndjson/.ndjson.gz files or a bulk-export manifest JSON")
    tz = str(fnode.get("timezone", "+08:00"))
    if not re.fullmatch(r"[+-](0\d|1[0-4]):[0-5]\d", tz):
        raise ConfigError(f, fnode.line_of("timezone"), f"{where}.timezone", f"{tz!r} is not a UTC offset", "an offset like +08:00")
    return Feed(str(fnode["name"]), None, "", kind="ndjson", path=path, timezone=tz)


def _hl7v2_feed(fnode: LineDict, workspace: Path, region_file: Path, mappings_dir: Path, iid: str) -> Feed:
    """A `kind: hl7v2` feed: `path` a folder of message files, `mapping` one file or a list, `encoding` the
    character set of messages that leave MSH-18 empty."""
    from hub.sources.hl7charset import known_encoding

    f, where, path = _file_feed(fnode, workspace, region_file, iid, "a folder the sender drops HL7 v2 message files into")
    names = fnode.get("mapping")
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f, fnode.line_of("mapping") if "mapping" in fnode else fnode.line, f"{where}.mapping", "is missing",
                          "a mapping file or a list of them, e.g. [hl7v2_adt, hl7v2_oru_r01]")
    mappings = []
    for name in names:
        m = _mapping_path(name, region_file, mappings_dir)
        if not m.exists():
            raise ConfigError(f, fnode.line_of("mapping"), f"{where}.mapping", f"{name!r} not found", f"a mapping file in {mappings_dir}")
        mappings.append(m)
    encoding = fnode.get("encoding")
    if encoding is not None:
        encoding = str(encoding)
        if not known_encoding(encoding):
            raise ConfigError(f, fnode.line_of("encoding"), f"{where}.encoding", f"{encoding!r} is not a character set",
                              "an MSH-18 value (UNICODE UTF-8, GB 18030-2000, 8859/1) or a codec name (gb18030, utf-8)")
    return Feed(str(fnode["name"]), mappings[0], "", kind="hl7v2", path=path, mappings=tuple(mappings), encoding=encoding)


def load_region(workspace: Path = DEFAULT_WORKSPACE) -> Region:
    """Load ``<workspace>/region.yaml``; errors name file, line and field."""
    workspace = Path(workspace)
    path = workspace / "region.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `hub demo` to create a demo region, or write one (see README)")
    doc = load_yaml(path)
    f = str(path)
    if not isinstance(doc, LineDict) or not isinstance(doc.get("institutions"), list):
        raise ConfigError(f, 1, "institutions", "is missing", "a list of institutions")
    mappings_dir = Path(_expand(str(doc.get("mappings_dir", REPO_ROOT / "mappings")), workspace, f, doc.line_of("mappings_dir"), "mappings_dir"))
    institutions, seen = [], set()
    for node in doc["institutions"]:
        iid = node.get("id")
        if not isinstance(iid, str) or not _ID_RE.match(iid):
            raise ConfigError(f, node.line_of("id"), "institutions.id", f"{iid!r} is not an institution id", "lower-case letters, digits and -")
        if iid in seen:
            raise ConfigError(f, node.line_of("id"), "institutions.id", f"{iid!r} appears twice", "unique institution ids")
        seen.add(iid)
        feeds = []
        for fnode in node.get("feeds") or []:
            if fnode.get("kind", "sql") == "ndjson":
                feeds.append(_ndjson_feed(fnode, workspace, path, iid))
                continue
            if fnode.get("kind", "sql") == "hl7v2":
                feeds.append(_hl7v2_feed(fnode, workspace, path, mappings_dir, iid))
                continue
            if fnode.get("kind", "sql") != "sql":
                raise ConfigError(f, fnode.line_of("kind"), f"institutions[{iid}].feeds.kind", f"{fnode['kind']!r} is not a feed kind", "sql (the default), ndjson or hl7v2")
            for req in ("name", "mapping", "url"):
                if not fnode.get(req):
                    raise ConfigError(f, fnode.line, f"institutions[{iid}].feeds.{req}", "is missing", f"the feed's {req}")
            mapping = _mapping_path(fnode["mapping"], path, mappings_dir)
            if not mapping.exists():
                raise ConfigError(f, fnode.line_of("mapping"), f"institutions[{iid}].feeds[{fnode['name']}].mapping", f"{fnode['mapping']!r} not found", f"a mapping file in {mappings_dir}")
            url = _expand(fnode["url"], workspace, f, fnode.line_of("url"), f"institutions[{iid}].feeds[{fnode['name']}].url")
            limit = fnode.get("max_connections", 1)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ConfigError(f, fnode.line_of("max_connections"), f"institutions[{iid}].feeds[{fnode['name']}].max_connections",
                                  f"{limit!r} is not a connection limit", "an integer >= 1: the most runs that may pull from this database at once")
            feeds.append(Feed(fnode["name"], mapping, url, max_connections=limit))
        institutions.append(Institution(iid, str(node.get("name", iid)), str(node.get("level", "")), tuple(feeds)))
    catalog = _expand(str(doc.get("catalog", "sqlite:///{workspace}/catalog.db")), workspace, f, doc.line_of("catalog"), "catalog")
    warehouse = Path(_expand(str(doc.get("warehouse", "{workspace}/warehouse")), workspace, f, doc.line_of("warehouse"), "warehouse"))
    region = Region(name=str(doc.get("region", "region")), workspace=workspace, institutions=institutions, catalog_url=catalog, warehouse=warehouse)
    if doc.get("recognition_index"):
        region.recognition_index = _expand(str(doc["recognition_index"]), workspace, f, doc.line_of("recognition_index"), "recognition_index")
    if doc.get("ruleset"):
        region.ruleset = Path(_expand(str(doc["ruleset"]), workspace, f, doc.line_of("ruleset"), "ruleset"))
    if doc.get("recognition_limits") is not None:
        if not isinstance(doc["recognition_limits"], LineDict):
            raise ConfigError(f, doc.line_of("recognition_limits"), "recognition_limits", "is not a mapping", "e.g. {lookups_per_minute: 60, burst: 20, misses_per_hour: 20}")
        region.recognition_limits = doc["recognition_limits"]
    if doc.get("validation") is not None:
        node = doc["validation"]
        every = node.get("oracle_every") if isinstance(node, LineDict) else None
        if not isinstance(node, LineDict) or set(node) - {"oracle_every"} or isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f, doc.line_of("validation"), "validation.oracle_every", f"{every if isinstance(node, LineDict) else node!r} is not a sampling interval",
                              "validation: {oracle_every: N}, N >= 1: every N-th resource is also validated by fhir.resources (1 = all)")
        region.validation_oracle_every = every
    for key in ("signing_key_file", "trusted_keys_file"):
        if doc.get(key):
            setattr(region, key, Path(_expand(str(doc[key]), workspace, f, doc.line_of(key), key)))
    return region
