"""Where long work reports progress: a no-op by default, a Rich display when the CLI sets one.

The pipeline can run inside Dagster (``hub demo`` materializes assets in-process), where a
progress object cannot be passed through run config; the CLI registers it here instead.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """start() opens a block with the size of its source (an upper bound: an incremental run
    reads only changed rows; 0 when unknown); advance() counts rows actually read. A display
    closes a block at the rows read, not at its announced total (hub.cli.demo._RichProgress)."""

    def start(self, label: str, total: int) -> None: ...
    def advance(self, n: int) -> None: ...


class NoProgress:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, n: int) -> None:
        pass


_current: Progress = NoProgress()


def set_reporter(progress: Progress | None) -> None:
    global _current
    _current = progress or NoProgress()


def reporter() -> Progress:
    return _current
