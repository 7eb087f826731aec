"""MLLP listener for an hl7v2 feed: store each message durably, sealed, then acknowledge it.

``hub listen INSTITUTION/FEED`` runs an asyncio server (python-hl7's ``hl7.mllp``: MLLP
framing, 0x0b ... 0x1c 0x0d). For every frame it receives, in this order:

1. the raw bytes are sealed (AES-GCM under the master key's ``quarantine`` purpose key, as
   the quarantine seals rows; the feed, institution and file name are the associated data)
   and written to ``<feed path>/mllp/<arrival time>-<n>.hl7.sealed``: written under a
   temporary name, fsynced, renamed, and the folder fsynced;
2. only then is the ACK sent: ``AA`` when the message parses and a block of the feed's
   mappings reads it; ``AE`` with a reason (MSA-3) when it cannot be decoded or parsed;
   ``AR`` with a reason when no block reads its message type. AE and AR messages are
   stored as well, so the next run quarantines them with the same reason: nothing a
   sender sent is lost. When storing fails the answer is ``AE`` "not stored; send it again".

A sender that disconnects mid-message has sent no complete frame: nothing is stored and no
ACK is owed; the sender resends it. The sealed files are read by the feed's next run
(hub.sources.hl7v2.publish_feed) like dropped files, positions and all; a listener killed
after an ACK therefore loses nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import hl7
from hl7.mllp import start_hl7_server
from hl7.mllp.exceptions import InvalidBlockError

from hub.sources.hl7v2 import MessageProblem, Rows, feed_blocks, parse_message
from hub.sources.sealed import FOLDER, store

if TYPE_CHECKING:
    from deid.keys import Keyring
    from hub.region import Feed

log = logging.getLogger(__name__)


def _ack(data: bytes, code: str, reason: str | None, parsed: hl7.Message | None) -> bytes:
    """The ACK for a message: built from it by python-hl7 when it parsed, else a minimal one."""
    if parsed is not None:
        ack = parsed.create_ack(code, application="HUB", facility="HUB")
        if reason:
            ack.segment("MSA").assign_field(parsed.escape(reason), 3)
        return str(ack).encode("utf-8")
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%d%H%M%S")
    text = f"MSH|^~\\&|HUB|HUB|||{now}||ACK|{hl7.util.generate_message_control_id()}|P|2.5\rMSA|{code}|"
    ack = hl7.parse(text)
    if reason:
        ack.segment("MSA").assign_field(ack.escape(reason), 3)
    return str(ack).encode("utf-8")


def _text(data: bytes, codec: str) -> str:
    return data.decode(codec, "replace").replace("\r\n", "\r").replace("\n", "\r").strip("\r\ufeff")


def _header_only(data: bytes) -> hl7.Message | None:
    """The MSH of a message that does not parse whole, to answer it by its control id (None when it has none)."""
    first = _text(data, "latin-1").split("\r", 1)[0]
    try:
        return hl7.parse(first) if first.startswith("MSH") and len(first) > 8 else None
    except (hl7.ParseException, IndexError, ValueError):
        return None


class Listener:
    """The per-feed state of a running listener: where to store, what the feed's mappings read."""

    def __init__(self, feed: Feed, institution: str, keys: Keyring):
        self.feed, self.institution, self.keys = feed, institution, keys
        self.folder = Path(feed.path) / FOLDER
        self.readers = [Rows([], m.blocks[i].table, m.blocks[i].where, m.path.name, m.blocks[i].line) for m, i in feed_blocks(feed)]
        self.stored = 0
        self.incomplete = 0
        #: test hook: called after a message is stored, before its ACK is sent
        self.after_store: Callable[[Path], None] | None = None

    def answer(self, data: bytes) -> tuple[str, str | None, hl7.Message | None]:
        """(ACK code, reason, python-hl7 message or None) for one received message."""
        try:
            msg = parse_message(data, self.feed.encoding)
        except MessageProblem as p:
            return "AE", f"message {p.problem}; expected {p.expected}", _header_only(data)
        parsed = hl7.parse(_text(data, msg.codec).split("\r", 1)[0])  # the ACK needs only the MSH
        if not any(r.rows(msg) for r in self.readers):
            return "AR", f"{msg.message_type} is not a message type this feed reads", parsed
        return "AA", None, parsed

    async def handle(self, reader, writer) -> None:
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    data = await reader.readblock()
                except asyncio.IncompleteReadError as exc:
                    if exc.partial.strip():
                        self.incomplete += 1
                        log.warning("sender %s disconnected mid-message (%d bytes, not stored, not acknowledged)", peer, len(exc.partial))
                    return
                except (InvalidBlockError, ValueError) as exc:
                    log.warning("sender %s sent a frame that is not MLLP (%s): connection closed", peer, type(exc).__name__)
                    return
                code, reason, parsed = self.answer(data)
                try:
                    path = await asyncio.to_thread(store, self.folder, self.keys, self.institution, self.feed.name, data)
                except OSError as exc:
                    code, reason = "AE", f"message not stored ({type(exc).__name__}); send it again"
                else:
                    self.stored += 1
                    if self.after_store is not None:
                        self.after_store(path)
                writer.writeblock(_ack(data, code, reason, parsed))
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()


async def serve(feed: Feed, institution: str, keys: Keyring, host: str = "127.0.0.1", port: int = 2575) -> tuple[asyncio.AbstractServer, Listener]:
    """Start listening (port 0: an ephemeral port, see server.sockets); returns the server and its state."""
    listener = Listener(feed, institution, keys)
    server = await start_hl7_server(listener.handle, host, port)
    return server, listener
