"""Zarr capture stores: schema, writer, reader."""

from attnprobe.store.reader import as_tree, block_names, is_store, open_store
from attnprobe.store.record import capture_to_store
from attnprobe.store.schema import SCHEMA_VERSION
from attnprobe.store.writer import StoreWriter

__all__ = ["SCHEMA_VERSION", "StoreWriter", "capture_to_store", "block_names", "open_store", "as_tree", "is_store"]
