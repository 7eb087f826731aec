"""`hub listen`: the MLLP listener of an hl7v2 feed (hub.sources.mllp)."""

from __future__ import annotations

from pathlib import Path

import typer

from hub.cli.base import WorkspaceOpt, app, console


@app.command("listen")
def listen(
    feed: str = typer.Argument(..., help="INSTITUTION/FEED of an hl7v2 feed, as in `hub feeds list`."),
    workspace: Path = WorkspaceOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(2575, "--port", "-p", min=0, max=65535, help="TCP port (2575 is MLLP's registered port)."),
) -> None:
    """Receive HL7 v2 messages over MLLP for an hl7v2 feed until interrupted (Ctrl-C).

    Each message is sealed and stored durably in the feed's folder (mllp/) before its ACK
    is sent: AA when a mapping of the feed reads it, AE with a reason when it cannot be
    parsed, AR when its message type is not read. Every stored message, AE and AR ones too,
    is published (or quarantined with the reason) by the feed's next run (`hub publish`).

    \b
    Example:
      hub listen east-lab/lis --port 2575
    """
    import asyncio

    from deid.keys import Keyring
    from hub.region import load_region
    from hub.sources.mllp import serve

    region = load_region(workspace)
    inst_id, _, feed_name = feed.partition("/")
    found = next((f for f in region.institution(inst_id).feeds if f.name == feed_name), None)
    if found is None or found.kind != "hl7v2":
        raise typer.BadParameter(f"{feed!r} is not an hl7v2 feed of region.yaml (see `hub feeds list`)")
    keys = Keyring.load(region.key_file)

    async def run() -> None:
        server, listener = await serve(found, inst_id, keys, host, port)
        where = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
        console.print(f"listening for {feed} on {where}; messages are stored in {listener.folder}", highlight=False)
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        console.print("stopped")
