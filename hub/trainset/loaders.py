"""Loading a training set: a PyTorch-style iterable over its Parquet files, in bounded batches.

``ParquetBatches`` streams record batches with ``pyarrow.parquet.ParquetFile.iter_batches``,
so a set larger than memory can feed a training loop; it needs no deep-learning framework
(wrap it in ``torch.utils.data.IterableDataset`` if you use PyTorch).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq


class ParquetBatches:
    """Iterate over one or more Parquet files as dicts of column lists, batch_size rows at a time."""

    def __init__(self, paths: Path | list[Path], batch_size: int = 1024, columns: list[str] | None = None):
        self.paths = [paths] if isinstance(paths, Path) else list(paths)
        self.batch_size, self.columns = batch_size, columns

    def __iter__(self) -> Iterator[dict[str, list]]:
        for path in self.paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=self.batch_size, columns=self.columns):
                yield batch.to_pydict()

    def __len__(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.paths)
