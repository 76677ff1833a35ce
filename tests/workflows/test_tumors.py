"""Tumor workflow: features of the labelled cases, their clusters, the phantoms' own clusters."""

from __future__ import annotations

import json

import pandas as pd

from attnprobe.data.io import CaseRef, list_cases
from attnprobe.workflows.tumors import tumor_analysis, with_phantom_clusters


def test_tumor_analysis_reads_labelled_cases_only(datalist):
    refs = list_cases(datalist, split="all")
    unlabelled = CaseRef(case_id="nolabel", image=refs[0].image, label=None)
    analysis = tumor_analysis([*refs, unlabelled], k_range=(2, 2))
    assert list(analysis.wide["case"]) == ["case0", "case1", "case2"]
    assert analysis.clustering.k == 2 and "cluster" in analysis.wide.columns


def test_with_phantom_clusters(tmp_path):
    path = tmp_path / "phantoms.json"
    path.write_text(json.dumps({"cases": [{"case": "a", "cluster": 1}, {"case": "b", "cluster": 0}]}))
    wide = with_phantom_clusters(pd.DataFrame({"case": ["b", "x", "a"]}), path)
    assert list(wide["phantom_cluster"]) == [0, -1, 1]
