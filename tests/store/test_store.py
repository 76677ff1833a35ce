"""Capture stores: round trip, crash + resume, schema checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import zarr

from attnprobe import open_store
from attnprobe.capture import Probe
from attnprobe.errors import StoreError
from attnprobe.models import build_model
from attnprobe.store import block_names, capture_to_store


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    mask: torch.Tensor


def make_cases(n=3, shape=(64, 64, 32)):
    g = torch.Generator().manual_seed(1)
    cases = []
    for i in range(n):
        mask = torch.zeros(1, *shape, dtype=torch.bool)
        mask[..., : 12 + 6 * i] = True
        cases.append(Case(f"case{i}", torch.randn(1, *shape, generator=g) * mask, mask))
    return cases


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("swin_unetr", preset="tiny").eval()


def test_round_trip_matches_the_probe(model, tmp_path):
    cases = make_cases()
    path = capture_to_store(model, cases, tmp_path / "s.zarr", taps=["stage0.*", "stage3.block1.out"],
                            dtype="float32")
    tree = open_store(path)
    assert block_names(tree) == ["stage0.block0", "stage0.block1", "stage3.block1"]
    assert tree["done"].values.all() and list(tree["case"].values) == ["case0", "case1", "case2"]
    assert tree.attrs["monai_version"] and tree.attrs["arch"] == "swin_unetr"
    node = tree["stage0.block1"].dataset
    assert node["attn"].dims == ("sample", "window", "head", "query", "key")
    assert node["out"].dims == ("sample", "x", "y", "z", "channel")
    assert "attn" not in tree["stage3.block1"].dataset
    with torch.no_grad(), Probe(model, ["stage0.block1.*"]) as probe:
        probe.run(cases[2].image[None], mask=cases[2].mask[None])
    np.testing.assert_array_equal(node["attn"][2].values, probe.cache["stage0.block1.attn"][0].numpy())
    np.testing.assert_array_equal(node["out"][2].values, probe.cache["stage0.block1.out"][0].numpy())
    np.testing.assert_array_equal(node["attn_kind"][2].values, probe.context.kinds["stage0.block1"][0].numpy())


def test_float16_is_the_default_and_chunks_split_windows(model, tmp_path):
    cases = make_cases(2)
    path = capture_to_store(model, cases, tmp_path / "s.zarr", taps=["stage0.block0.*"])
    arr = zarr.open_group(str(path))["stage0.block0/attn"]
    assert arr.dtype == np.float16
    assert arr.chunks[0] == 1 and arr.chunks[1] < arr.shape[1]  # windows split into chunks
    # CPU captures hand the writer thread the tensors to cast: the stored values are still the
    # probe's, for every sample (nothing overwrote a tensor before the writer cast it)
    node = open_store(path)["stage0.block0"].dataset
    for i, case in enumerate(cases):
        with torch.no_grad(), Probe(model, ["stage0.block0.*"]) as probe:
            probe.run(case.image[None], mask=case.mask[None])
        for var in ("attn", "out"):
            expected = probe.cache[f"stage0.block0.{var}"][0].to(torch.float16).numpy()
            np.testing.assert_array_equal(node[var][i].values, expected)


def test_crash_halfway_leaves_complete_samples_and_resumes(model, tmp_path):
    cases = make_cases()
    path = tmp_path / "s.zarr"

    def crash_after_first(case_id, skipped):
        if case_id == "case0":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture_to_store(model, cases, path, taps=["stage1.*"], on_sample=crash_after_first)
    tree = open_store(path)
    assert tree["done"].values.tolist() == [True, False, False]
    first = tree["stage1.block0"]["attn"][0].values.copy()
    calls = []
    capture_to_store(model, cases, path, taps=["stage1.*"], on_sample=lambda c, s: calls.append((c, s)))
    assert calls == [("case0", True), ("case1", False), ("case2", False)]
    tree = open_store(path)
    assert tree["done"].values.all()
    np.testing.assert_array_equal(tree["stage1.block0"]["attn"][0].values, first)


def test_another_capture_cannot_resume_into_a_store(model, tmp_path):
    path = capture_to_store(model, make_cases(2), tmp_path / "s.zarr", taps=["stage1.*"])
    with pytest.raises(StoreError, match=r"taps: only stored \(stage1"):
        capture_to_store(model, make_cases(2), path, taps=["stage2.*"])
    capture_to_store(model, make_cases(2), path, taps=["stage2.*"], overwrite=True)
    assert block_names(open_store(path)) == ["stage2.block0", "stage2.block1"]


def test_overwrite_never_removes_a_folder_that_is_not_a_store(model, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    with pytest.raises(StoreError, match="overwrite refused"):
        capture_to_store(model, make_cases(1), folder, taps=["stage3.*"], overwrite=True)
    assert (folder / "chapter1.tex").read_text() == "years of work"


def test_a_store_records_its_compat_and_refuses_the_other_mode(tmp_path):
    torch.manual_seed(0)
    current = build_model("swin_unetr", preset="tiny").eval()
    original = build_model("swin_unetr", preset="tiny", compat="original").eval()
    original.load_state_dict(current.state_dict())
    path = capture_to_store(original, make_cases(2), tmp_path / "s.zarr", taps=["stage1.block0.out"])
    tree = open_store(path)
    assert tree.attrs["compat"] == "original" and tree.attrs["model_config"]["compat"] == "original"
    with pytest.raises(StoreError, match="compat: stored original vs now current"):
        capture_to_store(current, make_cases(2), path, taps=["stage1.block0.out"])
    # the same weights give other stage-1 outputs in the other mode (MONAI < 1.5's merge order)
    other = capture_to_store(current, make_cases(2), tmp_path / "c.zarr", taps=["stage1.block0.out"])
    a = open_store(path)["stage1.block0"]["out"].values
    b = open_store(other)["stage1.block0"]["out"].values
    assert not np.allclose(a, b)


def test_other_schema_versions_and_non_stores_are_refused(model, tmp_path):
    path = capture_to_store(model, make_cases(1), tmp_path / "s.zarr", taps=["stage3.*"])
    zarr.open_group(str(path), mode="r+").attrs["attnprobe_schema"] = 99
    with pytest.raises(StoreError, match="schema 99"):
        open_store(path)
    with pytest.raises(StoreError, match="schema"):
        capture_to_store(model, make_cases(1), path, taps=["stage3.*"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError):
        open_store(tmp_path / "empty")
    with pytest.raises(StoreError, match="no store"):
        open_store(tmp_path / "missing.zarr")


def test_dask_backed_open(model, tmp_path):
    path = capture_to_store(model, make_cases(2), tmp_path / "s.zarr", taps=["stage1.block0.attn"])
    tree = open_store(path, chunks={})
    attn = tree["stage1.block0"]["attn"]
    assert attn.chunks is not None
    assert float(attn.astype("float64").sum().compute()) == pytest.approx(2 * 18 * 6 * 343, rel=1e-3)


def test_a_resume_diff_names_the_taps_that_differ_past_the_first_few():
    from attnprobe.store.fingerprint import fingerprint_diff

    stored = {"taps": [f"stage{s}.block{b}.attn" for s in range(4) for b in range(2)]}
    now = {"taps": stored["taps"][:-1] + ["stage3.block1.out"]}
    (line,) = fingerprint_diff(stored, now)
    assert line == "taps: only stored (stage3.block1.attn), only now (stage3.block1.out)"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_writers_finite_check_finds_every_non_finite_value(dtype, bad):
    from attnprobe.store.writer import all_finite

    rng = np.random.default_rng(0)
    clean = (rng.random((5, 7, 33)) * 60000).astype(dtype)  # large finite values do not overflow it
    assert all_finite(clean) and all_finite(clean[:, ::2])
    for where in [(0, 0, 0), (4, 6, 32), (2, 3, 17)]:
        dirty = clean.copy()
        dirty[where] = bad
        assert not all_finite(dirty), where
        dirty.flags.writeable = False  # read-only arrays take numpy's path
        assert not all_finite(dirty)
    assert all_finite(np.zeros(0, dtype)) and all_finite(np.arange(5))
