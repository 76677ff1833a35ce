"""Ablation workflow: the plan of interventions, one run and its record."""

from __future__ import annotations

import pytest

from attnprobe.data.io import list_cases
from attnprobe.data.preprocess import PreprocessConfig, prepare_case
from attnprobe.errors import ConfigError
from attnprobe.metrics.sweep import SweepSpec
from attnprobe.results import AblationRun
from attnprobe.workflows.ablation import (
    ablation_run,
    describe,
    intervention_plan,
    n_stages,
    run_interventions,
)


def test_the_default_plan_and_what_it_edits(tiny_swin):
    assert n_stages(tiny_swin) == 4
    plan = intervention_plan(tiny_swin)
    names = [iv.name for iv in plan]
    assert names[0] == "none" and "mask-all" in names and "mean-ablate" in names
    assert [n for n in names if n.startswith("mask-stage")] == [f"mask-stage{s}" for s in range(4)]
    edits = {iv.name: describe(iv) for iv in intervention_plan(tiny_swin, ["none", "mask-all", "zero-ablate"],
                                                                     key_kind="input")}
    assert edits["none"] == []
    assert all(e["site"] == "attn" and e["kind"] == "input" and "value" not in e for e in edits["mask-all"])
    assert all(e["site"] == "out" and "value" in e for e in edits["zero-ablate"])
    with pytest.raises(ConfigError):
        intervention_plan(tiny_swin, ["mask-stage9"])


def test_run_interventions_and_its_record(tiny_swin, datalist, tmp_path):
    case = prepare_case(list_cases(datalist, split="test")[0], PreprocessConfig(roi=(64, 64, 32), spacing=3.0))
    plan = intervention_plan(tiny_swin, ["none", "mask-all"])
    steps = []
    outcome = run_interventions(tiny_swin, [case], plan, SweepSpec(paddings=(0,)), metric_options={"scope": "volume"},
                                n_resamples=20, on_step=lambda *a: steps.append(a))
    assert steps == [(case.case_id, 0, "none"), (case.case_id, 0, "mask-all")]
    assert set(outcome.summary["intervention"]) == {"none", "mask-all"}
    assert set(outcome.result.table["metric"]) >= {"dice", "detected", "adi"}
    ablation_run(outcome, info={"model": "tiny"}, label="tiny run").save(tmp_path / "run")
    back = AblationRun.load(tmp_path / "run")
    assert back.label == "tiny run" and back.info == {"model": "tiny"}
    assert len(back.table) == len(outcome.result.table)
