"""HL7 v2 throughput: hub's file-drop feed and MLLP listener vs plain reads and a plain loopback echo.

Writes N synthetic ORU^R01 results (GB 18030 and UTF-8 mixed, per MSH-18; invented MRNs and
names, no real identifiers) into files of several messages each, half of them MLLP-framed,
then in the same run measures:

  baseline   every file opened, read and split on its framing (MLLP frames, \\r segments); no parsing;
  file drop  the feed published by run_institution, as `hub publish` runs it (decode, parse, map,
             validate, de-identify, leak-scan, write Iceberg, record positions and lineage), with
             CPU seconds from resource.getrusage (self + children) for the per-core rate;
  echo       a trivial asyncio MLLP server in a subprocess that ACKs each frame without storing it;
  MLLP       `hub listen` in a subprocess on 127.0.0.1 (ephemeral port): one sender sends the same
             messages over loopback and waits for each ACK, which hub sends only after the message
             is sealed, written and fsynced (file and folder). Every ACK must be AA, and afterwards
             every message must be on disk, sealed, and open to exactly the bytes sent.

Echo and MLLP send the first --mllp-messages of the messages (default 2,000; 0: all): at about
20 ms of parsing and two fsyncs per message, sending all 5,000 would take the default run past
three minutes on a loaded 2-core machine, and one sender's rate is steady long before that.

Prints one table; the machines are noisy, so compare the ratios.
Usage: python benchmarks/hl7v2.py [--messages 5000] [--per-file 50] [--mllp-messages 2000] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

INST = "bench-lab"
MAPPINGS = ["hl7v2_adt", "hl7v2_oru_r01", "hl7v2_orders"]  # what a LIS feed reads; only the ORU one matches
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗欧阳"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂"
#: LOINC code, name, Chinese name, unit, reference range, low, high
TESTS = [
    ("2345-7", "Glucose", "葡萄糖", "mmol/L", "3.9-6.1", 3.0, 12.0),
    ("2823-3", "Potassium", "钾", "mmol/L", "3.5-5.3", 2.8, 6.5),
    ("718-7", "Hemoglobin", "血红蛋白", "g/L", "115-150", 80, 180),
    ("6690-2", "Leukocytes", "白细胞计数", "10^9/L", "3.5-9.5", 1.5, 20.0),
    ("1742-6", "ALT", "丙氨酸氨基转移酶", "U/L", "7-40", 5, 200),
]
COMMENTS = ["标本已复核", "结果已电话通知临床", "溶血，建议复查", "请结合临床", "无特殊"]
START, END = b"\x0b", b"\x1c\r"
CHARSETS = (("UNICODE UTF-8", "utf-8"), ("GB 18030-2000", "gb18030"))


# ---- synthetic messages ------------------------------------------------------------------

def _when(rng: random.Random) -> str:
    return f"2026{rng.randint(1, 9):02d}{rng.randint(1, 28):02d}{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}00+0800"


def oru(rng: random.Random, i: int, patients: int) -> tuple[bytes, int]:
    """One ORU^R01 message as bytes in the character set its MSH-18 declares, and its resource count."""
    charset, codec = CHARSETS[rng.random() < 0.5]
    p = rng.randrange(patients)
    prng = random.Random(p)  # a patient's name, birth date and sex stay the same across messages
    name = f"{prng.choice(SURNAMES)}^{''.join(prng.choices(GIVEN, k=prng.randint(1, 2)))}"
    birth = f"{prng.randint(1940, 2015)}{prng.randint(1, 12):02d}{prng.randint(1, 28):02d}"
    collected, reported = _when(rng), _when(rng)
    segs = [
        f"MSH|^~\\&|LIS|BENCH-LAB|HUB|REGION|{reported}||ORU^R01^ORU_R01|BENCH-{i:07d}|P|2.5.1|||AL|NE|CHN|{charset}",
        f"PID|1||BENCH-MRN-{p:06d}^^^BENCH^MR||{name}^^^^^L||{birth}|{prng.choice('MF')}",
        f"PV1|1|O|||||||||||||||||BENCH-V-{i:07d}",
        f"OBR|1|PL-{i:07d}|FL-{i:07d}|24323-8^Metabolic panel^LN^^^^^^生化全项|||{collected}||||||||||||||||{reported}||F",
    ]
    for n, (code, label, cn, unit, rng_text, low, high) in enumerate(TESTS, 1):
        value = round(rng.uniform(low, high), 1)
        lo, hi = (float(x) for x in rng_text.split("-"))
        flag = "L" if value < lo else "H" if value > hi else "N"
        segs.append(f"OBX|{n}|NM|{code}^{label}^LN^^^^^^{cn}||{value}|{unit}|{rng_text}|{flag}|||F|||{collected}")
    segs.append(f"OBX|{len(TESTS) + 1}|TX|8251-1^Service comment^LN||{rng.choice(COMMENTS)}||||||F|||{collected}")
    segs.append(f"NTE|1||{rng.choice(COMMENTS)}")
    segs.append(f"SPM|1|SP-{i:07d}||BLD^Whole blood^HL70487|||||||||||||{collected}|{reported}")
    # Patient, DiagnosticReport, one Observation per OBX, Specimen
    return ("\r".join(segs) + "\r").encode(codec), 1 + 1 + len(TESTS) + 1 + 1


def write_messages(folder: Path, count: int, per_file: int, seed: int = 12) -> tuple[list[bytes], int]:
    """count messages in files of per_file each (every other file MLLP-framed); the raw messages and their resources."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    messages, resources = [], 0
    patients = max(1, count // 4)  # about four results per person
    for i in range(count):
        raw, n = oru(rng, i, patients)
        messages.append(raw)
        resources += n
    for f, start in enumerate(range(0, count, per_file)):
        chunk = messages[start:start + per_file]
        framed = f % 2 == 1
        data = b"".join(START + m + END for m in chunk) if framed else b"".join(chunk)
        (folder / f"results-{f:05d}.hl7").write_bytes(data)
    return messages, resources


# ---- baseline ----------------------------------------------------------------------------

def plain_read(folder: Path) -> int:
    """Messages in the folder's files: open, read, split on MLLP frames or MSH lines, then on segment ends."""
    n = 0
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        with path.open("rb") as fh:
            data = fh.read()
        if data[:1] == START:
            for frame in data.split(END):
                if frame:
                    frame[1:].split(b"\r")
                    n += 1
        else:
            n += sum(1 for seg in data.split(b"\r") if seg.startswith(b"MSH|"))
    return n


# ---- workspace ---------------------------------------------------------------------------

def make_workspace(ws: Path) -> None:
    """region.yaml with one institution and two hl7v2 feeds (drop: files, listen: MLLP), a master key and signing keys."""
    import yaml

    from deid.keys import create_key_file
    from hub.demo.generator import DEMO_KEY_NAME, DEMO_TRUSTED_NAME, ensure_demo_keys

    ws.mkdir(parents=True)
    ensure_demo_keys(ws)
    create_key_file(ws / "keys" / "master.key")
    feeds = [{"name": name, "kind": "hl7v2", "path": "{workspace}/" + name, "mapping": MAPPINGS} for name in ("drop", "listen")]
    doc = {"region": "hl7v2-bench", "signing_key_file": "{workspace}/keys/" + DEMO_KEY_NAME,
           "trusted_keys_file": "{workspace}/keys/" + DEMO_TRUSTED_NAME,
           "institutions": [{"id": INST, "name": "HL7 v2 benchmark lab", "level": "secondary", "feeds": feeds}]}
    (ws / "region.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (ws / "listen").mkdir()


def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux /proc), None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- MLLP --------------------------------------------------------------------------------

def start_server(cmd: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start a server subprocess and read its port from the first output line naming 127.0.0.1:PORT."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    deadline = time.monotonic() + 120
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd[:4])} did not start listening:\n{''.join(seen)[-2000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def send_all(port: int, messages: list[bytes]) -> tuple[float, dict[str, int]]:
    """Send every message over one connection, waiting for each ACK; (seconds, count per MSA-1 code)."""
    codes: dict[str, int] = {}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        t = time.perf_counter()
        for raw in messages:
            sock.sendall(START + raw + END)
            while END not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("the server closed the connection before acknowledging")
                buf += chunk
            ack, buf = buf.split(END, 1)
            msa = next((s for s in ack.split(b"\r") if s.startswith(b"MSA|")), b"MSA|?")
            code = msa.split(b"|")[1].decode("ascii", "replace")
            codes[code] = codes.get(code, 0) + 1
        return time.perf_counter() - t, codes


def echo_server() -> None:
    """A trivial MLLP server: answers each frame with an AA naming its MSH-10, stores nothing."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await reader.readuntil(END)
                msh = frame.lstrip(START).split(b"\r", 1)[0].split(b"|")
                control = msh[9] if len(msh) > 9 else b""
                writer.write(START + b"MSH|^~\\&|ECHO|ECHO|||20260101000000||ACK|" + control + b"|P|2.5.1\rMSA|AA|" + control + b"\r" + END)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def run() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(f"echo listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


def measure_server(cmd: list[str], env: dict[str, str], messages: list[bytes]) -> tuple[float, dict[str, int], float | None]:
    """(seconds, ACK codes, CPU seconds of sender + server while sending) for one server subprocess."""
    proc, port = start_server(cmd, env)
    try:
        before_me, before_srv = cpu_seconds(), proc_cpu(proc.pid)
        secs, codes = send_all(port, messages)
        after_me, after_srv = cpu_seconds(), proc_cpu(proc.pid)
    finally:
        stop_server(proc)
    cpu = None if before_srv is None or after_srv is None else (after_me - before_me) + (after_srv - before_srv)
    return secs, codes, cpu


# ---- main --------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="ORU^R01 messages to generate (default 5000)")
    parser.add_argument("--per-file", type=int, default=50, help="messages per dropped file (default 50)")
    parser.add_argument("--mllp-messages", type=int, default=2000,
                        help="how many of the messages echo and MLLP send (default 2000; 0: all)")
    parser.add_argument("--workspace", type=Path, default=None, help="workspace to create (removed first if it exists)")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        echo_server()
        return

    from deid.keys import ENV_KEY, ENV_KEY_FILE, Keyring
    from hub.pipeline import run_institution
    from hub.region import load_region
    from hub.sources.sealed import FOLDER, SUFFIX, unseal

    for var in (ENV_KEY, ENV_KEY_FILE):  # the benchmark's own workspace key, here and in the listener
        os.environ.pop(var, None)
    ws = args.workspace or Path(tempfile.mkdtemp(prefix="hub-hl7v2-bench-")) / "ws"
    if ws.exists():
        shutil.rmtree(ws)
    make_workspace(ws)
    messages, expected = write_messages(ws / "drop", args.messages, args.per_file)
    files = list((ws / "drop").iterdir())
    size = sum(p.stat().st_size for p in files)
    gb = sum(1 for m in messages if b"|GB 18030-2000" in m.split(b"\r", 1)[0])
    print(f"{len(messages):,} ORU^R01 messages ({gb:,} GB 18030, {len(messages) - gb:,} UTF-8) in {len(files)} files, "
          f"{size / 1e6:.1f} MB; {expected:,} resources expected")
    n = len(messages)
    rows = []

    passes, t = 0, time.perf_counter()
    while passes < 3 or time.perf_counter() - t < 0.5:
        assert plain_read(ws / "drop") == n
        passes += 1
    base = (time.perf_counter() - t) / passes
    rows.append(("baseline: open+read+split", base, n / base, None, 1.0, None))

    region = load_region(ws)
    keys = Keyring.load(region.key_file)
    cpu0, t = cpu_seconds(), time.perf_counter()
    report = run_institution(region, INST, keys)
    drop_s, drop_cpu = time.perf_counter() - t, cpu_seconds() - cpu0
    published = sum(c.published for c in report.counts)
    quarantined = sum(c.quarantined for c in report.counts)
    info = report.sources["drop"]["files"]
    mapped = sum(f.get("mapped", 0) for f in info.values())
    if published != expected or quarantined or mapped != n:
        raise SystemExit(f"file drop: {mapped}/{n} messages mapped, {published}/{expected} resources published, "
                         f"{quarantined} quarantined: {dict(report.causes)}")
    rows.append(("file drop: hub run_institution", drop_s, n / drop_s, published / drop_s, drop_s / base, n / drop_cpu))

    sent = messages[:args.mllp_messages] if args.mllp_messages > 0 else messages
    m = len(sent)
    env = {**os.environ, "COLUMNS": "1000", "PYTHONUNBUFFERED": "1"}
    echo_s, echo_codes, echo_cpu = measure_server([sys.executable, str(Path(__file__).resolve()), "--echo-server"], env, sent)
    if echo_codes != {"AA": m}:
        raise SystemExit(f"echo: ACK codes {echo_codes}, expected {m} AA")
    listen_cmd = [sys.executable, "-m", "hub.cli", "listen", f"{INST}/listen", "--workspace", str(ws), "--host", "127.0.0.1", "--port", "0"]
    mllp_s, mllp_codes, mllp_cpu = measure_server(listen_cmd, env, sent)
    folder = ws / "listen" / FOLDER
    stored = sorted(folder.glob(f"*{SUFFIX}"))
    opened = sorted(unseal(keys, INST, "listen", p) for p in stored)
    if mllp_codes != {"AA": m} or opened != sorted(sent):
        raise SystemExit(f"MLLP: ACK codes {mllp_codes}, {len(stored)} messages stored; expected {m} AA and the {m} messages sent")
    label = "" if m == n else f" ({m:,})"
    rows.append((f"loopback echo, no storing{label}", echo_s, m / echo_s, None, 1.0, m / echo_cpu if echo_cpu else None))
    rows.append((f"MLLP: hub listen, stored+AA{label}", mllp_s, m / mllp_s, None, mllp_s / echo_s, m / mllp_cpu if mllp_cpu else None))

    print(f"\n{'path':<38}{'seconds':>9}{'messages/s':>12}{'resources/s':>13}{'x slower':>10}{'msgs/CPU-s':>12}")
    for label, secs, mps, rps, slower, per_cpu in rows:
        print(f"{label:<38}{secs:>9.2f}{mps:>12,.0f}{(f'{rps:,.0f}' if rps else '-'):>13}{slower:>10.1f}"
              f"{(f'{per_cpu:,.0f}' if per_cpu else '-'):>12}")
    per_type = {r: sum(c.published for c in report.counts if c.resource_type == r) for r in sorted({c.resource_type for c in report.counts})}
    print(f"\nx slower: file drop vs baseline, MLLP vs echo. File drop published {published:,} resources "
          f"({', '.join(f'{r} {k:,}' for r, k in per_type.items())}), 0 quarantined; "
          f"{drop_cpu:.1f} CPU-s (self + children) = {drop_cpu / drop_s:.2f} cores busy.")
    print(f"MLLP: {m:,} of the {n:,} messages sent, {m:,} AA, {len(stored):,} sealed files in {folder} holding exactly "
          f"the bytes sent; msgs/CPU-s counts sender + server while sending. Workspace: {ws}")


if __name__ == "__main__":
    main()
