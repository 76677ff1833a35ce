"""The capture store layout (Zarr v3), version-stamped; the full description is docs/store.md.

::

    store.zarr/
      case      (sample,)  str      case ids
      done      (sample,)  bool     set only after every array of the sample is written
      stage{s}.block{b}/
        attn      (sample, window, head, query, key)  float16 | float32
        attn_kind (sample, window, token)             uint8: 0 real, 1 input pad, 2 window pad
        out       (sample, x, y, z, channel)          float16 | float32

One group per block because window counts differ between blocks (xarray rejects one dim
name with two sizes in one group). Dims are zarr v3 ``dimension_names``. Every chunk ends
with a CRC32C checksum (schema 2); the root attrs hold the capture's ``fingerprint``, the
settings a resumed capture must repeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from attnprobe.errors import StoreError

#: 1: zstd chunks without checksums (still readable); 2: Blosc LZ4 + CRC32C per chunk and a
#: capture fingerprint in the root attrs (docs/store.md)
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCHEMA_ATTR = "attnprobe_schema"
FINGERPRINT_ATTR = "fingerprint"

StoreDType = Literal["float16", "float32"]

ATTN = "attn"
ATTN_KIND = "attn_kind"
OUT = "out"
CASE = "case"
DONE = "done"
BLOCK_ARRAYS = (ATTN, ATTN_KIND, OUT)

#: Every chunk: LZ4 inside Blosc with bit shuffle, then a CRC32C of the compressed bytes.
#: On captured float16 maps of the tiny Swin UNETR (158 MiB a case, one core) it encodes in
#: 168 ms against 346 ms for zstd level 1 and 750 ms for zstd's default level 3 (ratios 1.62,
#: 1.94, 1.95), so the writer keeps up with the forward; docs/store.md has the numbers.
BLOSC: dict[str, Any] = {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"}


def check_schema(attrs: Mapping[str, Any], path: Path, *, versions: Sequence[int] = READABLE_VERSIONS) -> int:
    """The store's schema version, or a one-line error for a store this attnprobe cannot use.

    A zarr group without the stamp was never completely laid out (the stamp is written last),
    or was not written by ``attnprobe capture``.
    """
    version = attrs.get(SCHEMA_ATTR)
    if version is None:
        raise StoreError(
            f"the layout of {path} is incomplete: it has no {SCHEMA_ATTR!r} stamp, which attnprobe writes last",
            expected="a store laid out to the end by attnprobe capture",
            got="a zarr group without the stamp (a capture stopped while laying it out, e.g. disk full, "
                "or a folder not written by attnprobe)",
            fix=f"delete {path} (no sample was captured into it) and rerun the capture",
        )
    if version not in versions:
        readable = ", ".join(str(v) for v in versions)
        raise StoreError(
            f"{path} was written with store schema {version!r}",
            expected=f"schema {readable} (this attnprobe)",
            got=f"schema {version!r}",
            fix="re-capture into a new store, or open it with the attnprobe version that wrote it",
        )
    return int(version)
