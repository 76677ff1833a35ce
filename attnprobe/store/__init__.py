"""Zarr capture stores: schema, writer, reader, integrity checks (docs/store.md)."""

from attnprobe.store.reader import as_tree, block_names, is_store, open_store
from attnprobe.store.record import capture_to_store
from attnprobe.store.schema import SCHEMA_VERSION
from attnprobe.store.verify import repair_store, verify_store
from attnprobe.store.writer import StoreWriter

__all__ = ["SCHEMA_VERSION", "StoreWriter", "capture_to_store", "block_names", "open_store", "as_tree", "is_store",
           "verify_store", "repair_store"]
