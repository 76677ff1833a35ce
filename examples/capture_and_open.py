"""Capture attention and block outputs of a tiny Swin UNETR into a Zarr store, then open it.

    python examples/capture_and_open.py [OUT_DIR]

Uses a generated pelvic phantom (nothing is downloaded) and a randomly initialised model;
point ``load_checkpoint`` at your own checkpoint to do the same with real weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import attnprobe
from attnprobe.data.phantoms import make_phantom
from attnprobe.data.preprocess import PreprocessConfig, prepare_array
from attnprobe.models import build_model
from attnprobe.store import capture_to_store


def main(out_dir: Path) -> Path:
    model = build_model("swin_unetr", preset="tiny").eval()  # feature 12, ROI 64x64x32
    config = PreprocessConfig(roi=(64, 64, 32), spacing=(1.5, 1.5, 2.5), pad_mode="end")
    cases = []
    for seed in range(2):
        phantom = make_phantom(seed, modality="mri", shape=(48, 48, 20))
        cases.append(prepare_array(phantom.image, label=phantom.label, affine=phantom.affine,
                                   case_id=phantom.case_id, config=config))
    store = capture_to_store(model, cases, out_dir / "phantoms.zarr", taps=["stage0.*", "stage3.*.out"])

    tree = attnprobe.open_store(store)
    attn = tree["stage0.block1"]["attn"]          # (sample, window, head, query, key)
    kinds = tree["stage0.block1"]["attn_kind"]    # 0 real, 1 input padding, 2 window padding
    print(f"cases: {list(tree['case'].values)}; all done: {bool(tree['done'].values.all())}")
    print(f"stage0.block1 attention {dict(attn.sizes)}")
    for code, name in enumerate(("real", "input padding", "window padding")):
        print(f"  {name:>15}: {float((kinds == code).mean()):.1%} of tokens")
    return store


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
