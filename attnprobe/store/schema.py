"""The capture store layout (Zarr v3), version-stamped.

::

    store.zarr/
      case      (sample,)  str      case ids
      done      (sample,)  bool     set only after every array of the sample is written
      stage{s}.block{b}/
        attn      (sample, window, head, query, key)  float16 | float32
        attn_kind (sample, window, token)             uint8: 0 real, 1 input pad, 2 window pad
        out       (sample, x, y, z, channel)          float16 | float32

One group per block because window counts differ between blocks (xarray rejects one dim
name with two sizes in one group). Dims are zarr v3 ``dimension_names``.
"""

from __future__ import annotations

from typing import Literal

SCHEMA_VERSION = 1
SCHEMA_ATTR = "attnprobe_schema"

StoreDType = Literal["float16", "float32"]

ATTN = "attn"
ATTN_KIND = "attn_kind"
OUT = "out"
CASE = "case"
DONE = "done"

#: root attributes that must agree for a capture to resume into an existing store
RESUME_KEYS = ("arch", "compat", "model_config", "checkpoint_sha256", "roi", "taps", "dtype", "cases", "padding")
