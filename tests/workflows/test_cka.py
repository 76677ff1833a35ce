"""The CKA workflows give the matrix ``attnprobe cka`` writes, and check their inputs first."""

from __future__ import annotations

import numpy as np
import pytest

from attnprobe.cli import cka as cka_cli
from attnprobe.data.preprocess import PreprocessConfig
from attnprobe.metrics.reuse import CKAConfig
from attnprobe.models import load_checkpoint
from attnprobe.results import CkaRun
from attnprobe.workflows.cka import ModelComparison, save_cka, share_baseline
from tests.helpers import cli_runner, command_app

pytestmark = pytest.mark.usefixtures("one_thread")
run = cli_runner(command_app(cka_cli.register))
CONFIG = PreprocessConfig(roi=(64, 64, 32), spacing=1.0, intensity="percentile", pad_mode="end")
OPTIONS = ("--estimator", "biased", "--bootstrap", 0, "--permutations", 0)


@pytest.mark.filterwarnings("ignore:only 2 examples:UserWarning")
def test_model_comparison_equals_what_the_cli_writes(smit_ckpt, swin_ckpt, datalist, tmp_path):
    out = tmp_path / "cli"
    result = run("cka", "--ref", smit_ckpt, "--tgt", swin_ckpt, "--data", datalist, "--baseline", "none",
                 "--limit", 2, *OPTIONS, "--out", out)
    assert result.exit_code == 0, result.output
    written = CkaRun.load(out).matrix
    ref = load_checkpoint(smit_ckpt)[0].eval()
    tgt = load_checkpoint(swin_ckpt)[0].eval()
    comparison = ModelComparison.prepare(ref, tgt, data=str(datalist), tgt_data=None,
                                         preprocessing=CONFIG, limit=2,
                                         config=CKAConfig(estimator="biased", bootstrap=0, permutations=0),
                                         names=(str(smit_ckpt), str(swin_ckpt)))
    ticks = []
    da = comparison.run(on_example=lambda case, crop: ticks.append(case))
    assert comparison.total == 2 and ticks == ["case0", "case1"]
    np.testing.assert_allclose(da.values, written.values, rtol=0, atol=1e-12)
    assert list(da["ref"].values) == list(written["ref"].values)
    paths = save_cka(da, tmp_path / "wf")
    assert [p.name for p in paths] == ["cka.nc", "cka.csv", "summary.json"]
    np.testing.assert_allclose(CkaRun.load(tmp_path / "wf").matrix.values, da.values, rtol=0, atol=0)


def test_the_baseline_is_shared_with_a_later_comparison():
    import xarray as xr

    first = xr.DataArray(np.eye(2), dims=("ref", "tgt"), attrs={"baseline": "random-init", "baseline_seeds": 2})
    first.coords["baseline_mean"] = (("ref", "tgt"), np.full((2, 2), 0.25))
    first.coords["baseline_sd"] = (("ref", "tgt"), np.zeros((2, 2)))
    shared = share_baseline(first, None)
    later = xr.DataArray(np.full((2, 2), 0.5), dims=("ref", "tgt"))
    assert share_baseline(later, shared) is shared
    np.testing.assert_array_equal(later.coords["above_baseline"].values, np.full((2, 2), 0.25))
    assert later.attrs == {"baseline": "random-init", "baseline_seeds": 2}
    assert share_baseline(xr.DataArray(np.eye(2), dims=("ref", "tgt")), None) is None
