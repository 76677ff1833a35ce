"""Phantom workflow: datasets written, recorded with a manifest, earlier entries replaced."""

from __future__ import annotations

from attnprobe.results import Manifest, PhantomSet, kind_of
from attnprobe.workflows.phantoms import write_phantoms


def test_write_phantoms_records_and_replaces(tmp_path):
    out = tmp_path / "ph"
    paths = write_phantoms(out, n=2, seed=1, modalities=("mri",), shape=(16, 16, 8), manifest=Manifest.start("t"))
    assert set(paths) == {"mri"} and paths["mri"].is_file()
    assert kind_of(out) == "phantoms"
    first = PhantomSet.load(out).entries
    assert "datalist_mri.json" in first and (out / first[0]).exists()
    # a new dataset with another seed: the earlier entries go first, nothing else is kept
    (out / "stale.nii.gz").write_text("old case")
    write_phantoms(out, n=1, seed=2, modalities=("mri",), shape=(16, 16, 8), replace=["stale.nii.gz"])
    assert not (out / "stale.nii.gz").exists()
