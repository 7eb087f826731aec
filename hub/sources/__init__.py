"""Sources: yield bounded batches of source records."""
