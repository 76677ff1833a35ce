"""One environment-version helper for stores, run manifests and training checkpoints."""

from __future__ import annotations

import monai
import torch

import attnprobe
from attnprobe.environment import versions


def test_versions_feed_store_attrs_and_manifests():
    from attnprobe.results import Manifest
    from attnprobe.store.record import environment_attrs

    v = versions()
    assert v["attnprobe"] == attnprobe.__version__ and v["torch"] == str(torch.__version__)
    assert v["monai"] == str(monai.__version__) and v["python"].count(".") == 2
    assert environment_attrs() == {f"{k}_version": value for k, value in v.items()}
    assert Manifest.start("adi").versions == v
