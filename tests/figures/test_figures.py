"""Figures: each function drawn from a small hand-made dataset; plotted values, labels and
artist counts checked against values computed here, plus PNG output and a text-overlap check."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")  # headless; the library itself never selects a backend

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from attnprobe.errors import ConfigError, DataError, ShapeError  # noqa: E402
from attnprobe.figures import (  # noqa: E402
    METRIC_LABELS,
    adi_vs_padding,
    attention_on_volume,
    cka_heatmap,
    detection_bars,
    dice_hd95_boxes,
    feature_reuse_lines,
    flow_matrices,
    paper_style,
    token_efficiency,
    training_curves,
    tumor_clusters,
)
from attnprobe.train.stats import bootstrap_ci  # noqa: E402

METRICS = ("adi", "sfr", "a_rr", "a_rp", "a_pr", "a_pp", "h", "h_rp")
PADDINGS = (0, 16, 32)
STAGES = (0, 1, 2, 3)
CASES = ("c0", "c1", "c2")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------- hand-made data


def make_stage_frame(*, models=(None,), cases=CASES, seed=0) -> pd.DataFrame:
    """Stage-level tidy frame: every (model, case, padding, stage, kind, metric) once."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, case, p, s, kind, metric in itertools.product(models, cases, PADDINGS, STAGES,
                                                             ("input", "window", "all"), METRICS):
        row = {"case": case, "padding": p, "pad_fraction": p / 96, "stage": s, "kind": kind, "metric": metric,
               "value": float(np.clip(0.1 * s + p / 100 + 0.05 * rng.standard_normal(), 0, 1))}
        if model is not None:
            row = {"model": model, **row}
        rows.append(row)
    return pd.DataFrame(rows)


def make_cka() -> xr.DataArray:
    names = [f"stage{s}.block{b}.out" for s in range(2) for b in range(2)]
    m = np.array([[0.95, 0.70, 0.40, 0.20],
                  [0.65, 0.90, 0.55, 0.30],
                  [0.35, 0.50, 0.80, 0.60],
                  [0.10, 0.25, 0.55, 0.75]])
    return xr.DataArray(m, dims=("ref", "tgt"), coords={"ref": names, "tgt": names})


def make_diagonals() -> dict[str, pd.Series]:
    names = [f"stage{s}.block{b}.out" for s in range(4) for b in range(2)]
    ft = pd.Series(np.linspace(0.95, 0.40, 8), index=names)
    scratch = xr.DataArray(np.linspace(0.60, 0.15, 7), dims=("block",), coords={"block": names[:7]})
    return {"fine-tuned (MRI)": ft, "scratch": scratch}


def make_detection() -> pd.DataFrame:
    return pd.DataFrame({
        "preset": ["base", "base", "act", "act"],
        "backbone": ["SMIT", "Swin UNETR", "SMIT", "Swin UNETR"],
        "n_detected": [210, 205, 224, 219],
        "n_cases": [247, 247, 247, 247],
    })


def make_cases() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for preset, backbone in itertools.product(("base", "ta", "act"), ("SMIT", "Swin UNETR")):
        for c in range(6):
            rows.append({"preset": preset, "backbone": backbone, "case": f"c{c}",
                         "dice": float(np.clip(rng.normal(0.7, 0.1), 0, 1)),
                         "hd95": float(abs(rng.normal(8, 3))) if c else np.nan})
    return pd.DataFrame(rows)


def make_efficiency(*, arch=True) -> pd.DataFrame:
    rows = []
    for a, crops in (("SwinUNETR", ("96x96x96", "96x96x64")), ("SMIT", ("128x128x128", "128x128x64"))):
        for crop in crops:
            for s in STAGES:
                eff = (0.55 if crop.endswith("x96") or crop.endswith("x128") else 0.85) - 0.05 * s
                rows.append({"arch": a, "crop": crop, "stage": s, "efficiency": eff})
    frame = pd.DataFrame(rows)
    return frame if arch else frame[frame["arch"] == "SMIT"].drop(columns="arch")


def make_clusters() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    centres = {0: (0.3, 0.15), 1: (0.6, 0.30), 2: (0.45, 0.50)}
    rows = [{"case": f"c{c}{i}", "mean": centres[c][0] + 0.03 * rng.standard_normal(),
             "cv": centres[c][1] + 0.03 * rng.standard_normal(), "cluster": c}
            for c in centres for i in range(5)]
    rows.append({"case": "nan-case", "mean": 0.5, "cv": 0.4, "cluster": -1})
    return pd.DataFrame(rows)


def make_volume():
    x, y, z = np.meshgrid(np.arange(40), np.arange(36), np.arange(32), indexing="ij")
    body = ((x - 20) / 16) ** 2 + ((y - 18) / 13) ** 2 < 1
    image = np.where(body, 0.4 + 0.3 * np.sin(z / 5.0) ** 2, 0.0)
    image[(x - 20) ** 2 + (y - 22) ** 2 < 9] = 0.9  # a bright tube
    pad = z >= 22  # axial padding at the end of z
    image[pad] = 0.0
    attention = np.exp(-(((x - 22) ** 2 + (y - 20) ** 2 + (z - 12) ** 2) / 40.0))
    attention[pad] = 0.15  # some mass spent on padding
    return image, attention, pad


# --------------------------------------------------------------------------- ADI / flow


def line_means(frame, *, kind="all", metric="adi", model=None):
    sel = frame[(frame["kind"] == kind) & (frame["metric"] == metric)]
    if model is not None:
        sel = sel[sel["model"] == model]
    return sel.groupby(["stage", "padding"])["value"].agg(["mean", "std"])


def test_adi_vs_padding_lines_are_stage_means_over_cases():
    frame = make_stage_frame()
    fig = adi_vs_padding(frame, kind="all", metric="adi")
    ax = fig.axes[0]
    assert len(ax.lines) == len(STAGES)
    expected = line_means(frame)
    for line, stage in zip(ax.lines, STAGES):
        assert line.get_label() == f"stage {stage}"
        np.testing.assert_allclose(line.get_xdata(), PADDINGS)
        np.testing.assert_allclose(line.get_ydata(), expected.loc[stage, "mean"].to_numpy())
    # One band per stage: the 95% case-bootstrap interval of the mean at each padding, which
    # holds the mean and stays within the cases' range (a ±sd band would not).
    bands = [c for c in ax.collections]
    assert len(bands) == len(STAGES)
    for band, stage in zip(bands, STAGES):
        ys = band.get_paths()[0].vertices[:, 1]
        cells = frame[(frame["kind"] == "all") & (frame["metric"] == "adi") & (frame["stage"] == stage)]
        per_padding = cells.groupby("padding")["value"]
        lows, highs = zip(*(bootstrap_ci(v.to_numpy(float)) for _, v in per_padding))
        np.testing.assert_allclose([ys.min(), ys.max()], [min(lows), max(highs)])
        assert min(lows) >= per_padding.min().min() - 1e-12 and max(highs) <= per_padding.max().max() + 1e-12
    assert ax.get_xlabel() == "input padding (voxels)"
    assert ax.get_ylabel() == METRIC_LABELS["adi"]
    assert ax.get_title() == "n = 3 cases, 95% CI"
    assert fig.get_suptitle() == "ADI vs input padding (all padding tokens)"
    assert ax.get_ylim()[0] == 0.0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"stage {s}" for s in STAGES]
    # Secondary axis: pad fraction in percent at each padding amount.
    (top,) = ax.child_axes
    assert top.get_xlabel() == "padding fraction of input (%)"
    assert [t.get_text() for t in top.get_xticklabels()] == ["0", "17", "33"]


def test_adi_vs_padding_one_panel_per_model_and_other_metric():
    frame = make_stage_frame(models=("CT-pretrained", "MRI fine-tuned"))
    fig = adi_vs_padding(frame, kind="input", metric="h")
    panels = [a for a in fig.axes if a.get_xlabel() == "input padding (voxels)"]
    assert len(panels) == 2
    assert panels[0].get_ylabel() == "entropy H of real queries (nats)"
    for ax, model in zip(panels, ("CT-pretrained", "MRI fine-tuned")):
        assert ax.get_title() == f"{model}: n = 3 cases, 95% CI"
        assert len(ax.lines) == len(STAGES)
        expected = line_means(frame, kind="input", metric="h", model=model)
        for line, stage in zip(ax.lines, STAGES):
            np.testing.assert_allclose(line.get_ydata(), expected.loc[stage, "mean"].to_numpy())


def test_adi_vs_padding_into_given_axes_and_single_case_has_no_band():
    frame = make_stage_frame(cases=("only",))
    fig0, ax = plt.subplots()
    fig = adi_vs_padding(frame, ax=ax, pad_fraction_axis=False)
    assert fig is fig0
    assert len(ax.lines) == len(STAGES) and len(ax.collections) == 0
    assert ax.child_axes == []
    assert fig.get_suptitle() == ""


def test_adi_vs_padding_errors():
    frame = make_stage_frame()
    with pytest.raises(DataError, match="lacks"):
        adi_vs_padding(frame.drop(columns="stage"))
    with pytest.raises(DataError, match="not blocks"):
        adi_vs_padding(frame.assign(block=0))
    with pytest.raises(DataError, match="head"):
        adi_vs_padding(frame.assign(head=0))
    with pytest.raises(DataError, match="one row per"):
        adi_vs_padding(pd.concat([frame, frame]))
    with pytest.raises(ConfigError, match="unknown metric"):
        adi_vs_padding(frame, metric="adl")
    with pytest.raises(ConfigError, match="unknown kind"):
        adi_vs_padding(frame, kind="both")
    with pytest.raises(DataError, match="no rows"):
        adi_vs_padding(frame[frame["kind"] != "window"], kind="window")
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ConfigError, match="one Axes per panel"):
        adi_vs_padding(frame, ax=axes)
    with pytest.raises(DataError, match="DataFrame"):
        adi_vs_padding(frame.to_dict())


def test_metric_labels_cover_the_metrics_module():
    from attnprobe.metrics.flow import METRICS as FLOW_METRICS

    assert tuple(METRIC_LABELS) == FLOW_METRICS


def test_flow_matrices_cells_are_case_means():
    frame = make_stage_frame()
    fig = flow_matrices(frame, padding=16, kind="window")
    panels = [a for a in fig.axes if a.get_images()]
    assert [a.get_title() for a in panels] == [f"stage {s}" for s in STAGES]
    sel = frame[(frame["padding"] == 16) & (frame["kind"] == "window")]
    means = sel.groupby(["stage", "metric"])["value"].mean()
    for ax, stage in zip(panels, STAGES):
        expected = np.array([[means[stage, "a_rr"], means[stage, "a_rp"]],
                             [means[stage, "a_pr"], means[stage, "a_pp"]]])
        (image,) = ax.get_images()
        np.testing.assert_allclose(image.get_array(), expected)
        assert image.get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for v in expected.ravel()]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["key:\nreal", "key:\npad"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["query:\nreal", "query:\npad"]
    cbar = [a for a in fig.axes if a not in panels]
    assert len(cbar) == 1 and cbar[0].get_ylabel() == "attention fraction (0–1)"
    assert "padding = 16 voxels" in fig.get_suptitle() and "mean of 3 cases" in fig.get_suptitle()
    one = flow_matrices(frame[frame["case"] == frame["case"].iloc[0]], padding=16)
    assert one.get_suptitle().endswith("mean of 1 case)")
    assert flow_matrices(frame, padding=16, title="mine").get_suptitle() == "mine"


def test_flow_matrices_model_choice_and_errors():
    frame = make_stage_frame(models=("ct", "mri"))
    fig = flow_matrices(frame, padding=0, model="mri")
    assert fig.get_suptitle().startswith("mri: ")
    with pytest.raises(DataError, match="one model"):
        flow_matrices(frame, padding=0)
    with pytest.raises(DataError, match="no rows with model"):
        flow_matrices(frame, padding=0, model="xx")
    with pytest.raises(DataError, match="padding amount"):
        flow_matrices(frame, padding=8, model="ct")
    with pytest.raises(DataError, match="four flow metrics"):
        flow_matrices(frame[frame["metric"] != "a_pp"], padding=0, model="ct")
    with pytest.raises(DataError, match="no 'model' column"):
        flow_matrices(make_stage_frame(), padding=0, model="ct")


# --------------------------------------------------------------------------- volume


def test_attention_on_volume_slices_and_overlay():
    image, attention, pad = make_volume()
    fig = attention_on_volume(image, attention, padding_mask=pad, slices=(20, 18, 12), spacing=(1, 1, 2),
                              title="Attention, stage 3")
    panels = [a for a in fig.axes if len(a.get_images()) == 2]
    assert [a.get_title() for a in panels] == ["axial (z = 12)", "coronal (y = 18)", "sagittal (x = 20)"]
    assert [(a.get_xlabel(), a.get_ylabel()) for a in panels] == [
        ("x (voxels)", "y (voxels)"), ("x (voxels)", "z (voxels)"), ("y (voxels)", "z (voxels)")]
    axial, coronal, sagittal = panels
    np.testing.assert_allclose(axial.get_images()[0].get_array(), image[:, :, 12].T)
    np.testing.assert_allclose(coronal.get_images()[1].get_array(), attention[:, 18, :].T)
    np.testing.assert_allclose(sagittal.get_images()[1].get_array(), attention[20, :, :].T)
    # Robust scale by default: 0 to the 98th percentile of the non-zero attention.
    hi = np.percentile(attention[attention > 0], 98)
    for ax in panels:
        grey, over = ax.get_images()
        assert grey.get_clim() == (image.min(), image.max())
        np.testing.assert_allclose(over.get_clim(), (0.0, hi))
    # Axial slice z=12 is all real: no padding drawn; the two others cross the padding boundary.
    assert not [c for c in axial.get_children() if isinstance(c, ContourSet)]
    assert len([c for c in coronal.get_children() if isinstance(c, ContourSet)]) == 2  # hatch + outline
    assert coronal.get_aspect() == 2.0 and axial.get_aspect() == 1.0
    (cbar,) = [a for a in fig.axes if a not in panels]
    assert cbar.get_ylabel() == "attention mass per voxel (a.u.)"
    assert fig.get_suptitle() == "Attention, stage 3"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["padding"]


def test_attention_on_volume_robust_scale_ignores_a_single_peak():
    image, attention, _ = make_volume()
    spiked = attention.copy()
    spiked[0, 0, 0] = 1000.0 * attention.max()  # one hot voxel (e.g. a query on itself)
    spiked[:, :, -4:] = 0.0  # windows no real query looks into
    fig = attention_on_volume(image, spiked)
    clim = fig.axes[0].get_images()[1].get_clim()
    inner = spiked[spiked > 0]
    assert clim[0] == 0.0 and clim[1] < spiked.max() / 100
    # The zeros (a quarter-ish of the volume here) do not pull the top down: 2% of the paid attention saturates.
    assert (inner > clim[1]).mean() == pytest.approx(0.02, abs=0.005)
    plain = attention_on_volume(image, spiked, robust=False)
    assert plain.axes[0].get_images()[1].get_clim() == (0.0, spiked.max())
    # Constant attention has no spread to stretch: 0 to its value.
    flat = attention_on_volume(image, np.full_like(attention, 0.25))
    assert flat.axes[0].get_images()[1].get_clim() == (0.0, 0.25)


def test_attention_on_volume_defaults_and_errors():
    image, attention, _ = make_volume()
    fig = attention_on_volume(image, attention)
    assert [a.get_title() for a in fig.axes[:3]] == ["axial (z = 16)", "coronal (y = 18)", "sagittal (x = 20)"]
    assert fig.legends == []
    with pytest.raises(ShapeError, match="image's shape"):
        attention_on_volume(image, attention[:-1])
    with pytest.raises(ShapeError, match="3-D"):
        attention_on_volume(image[None], attention[None])
    with pytest.raises(DataError, match="non-negative"):
        attention_on_volume(image, -attention)
    with pytest.raises(ConfigError, match="out of range"):
        attention_on_volume(image, attention, slices=(0, 0, 32))
    with pytest.raises(ConfigError, match="spacing"):
        attention_on_volume(image, attention, spacing=(1, 0, 1))
    with pytest.raises(ShapeError, match="padding_mask"):
        attention_on_volume(image, attention, padding_mask=np.zeros((2, 2, 2), bool))


# --------------------------------------------------------------------------- CKA


def test_cka_heatmap_matrix_scale_and_labels():
    m = make_cka()
    fig = cka_heatmap(m, ref_label="CT-pretrained", tgt_label="MRI fine-tuned")
    ax, cbar = fig.axes
    (image,) = ax.get_images()
    np.testing.assert_allclose(image.get_array(), m.values)
    assert image.get_clim() == (0.0, 1.0)
    assert cbar.get_ylabel() == "CKA"
    assert cbar.get_ylim() == (0.0, 1.0)
    assert len(ax.texts) == m.size
    assert [t.get_text() for t in ax.texts][:2] == ["0.95", "0.70"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(m["tgt"].values)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(m["ref"].values)
    assert ax.get_xlabel() == "MRI fine-tuned block" and ax.get_ylabel() == "CT-pretrained block"
    assert fig.get_suptitle() == "CKA: CT-pretrained vs MRI fine-tuned"
    # Dims in the other order draw the same picture.
    _, ax2 = plt.subplots()
    fig2 = cka_heatmap(m.transpose("tgt", "ref"), ax=ax2, annotate=False, title="T")
    np.testing.assert_allclose(ax2.get_images()[0].get_array(), m.values)
    assert len(ax2.texts) == 0 and ax2.get_title() == "T" and fig2.get_suptitle() == ""


def test_cka_heatmap_errors():
    with pytest.raises(DataError, match="dims"):
        cka_heatmap(xr.DataArray(np.eye(3), dims=("a", "b")))
    with pytest.raises(DataError, match="DataArray"):
        cka_heatmap(np.eye(3))
    bad = make_cka().copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="non-finite"):
        cka_heatmap(bad)
    with pytest.raises(ConfigError, match="annotate"):
        cka_heatmap(make_cka(), annotate="yes")


def test_feature_reuse_lines():
    diags = make_diagonals()
    fig = feature_reuse_lines(diags, reference="CT-pretrained")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == list(diags)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), diags["fine-tuned (MRI)"].to_numpy())
    y = ax.lines[1].get_ydata()
    np.testing.assert_allclose(y[:7], diags["scratch"].values)
    assert np.isnan(y[7])  # the block scratch lacks is a gap
    assert [t.get_text() for t in ax.get_xticklabels()] == list(diags["fine-tuned (MRI)"].index)
    assert ax.get_ylim() == (0.0, 1.05)
    assert ax.get_ylabel() == "CKA with CT-pretrained\n(same block)" and ax.get_xlabel() == "block"
    with pytest.raises(DataError, match="at least one"):
        feature_reuse_lines({})
    with pytest.raises(DataError, match="Series"):
        feature_reuse_lines({"a": [0.1, 0.2]})
    with pytest.raises(DataError, match="twice"):
        feature_reuse_lines({"a": pd.Series([0.1, 0.2], index=["b0", "b0"])})


# --------------------------------------------------------------------------- interventions


def test_detection_bars_heights_and_labels():
    summary = make_detection()
    fig = detection_bars(summary, preset_order=["base", "act"])
    (ax,) = fig.axes
    assert len(ax.patches) == 4
    smit, swin = ax.containers
    np.testing.assert_allclose([b.get_height() for b in smit], [210 / 247, 224 / 247])
    np.testing.assert_allclose([b.get_height() for b in swin], [205 / 247, 219 / 247])
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["210/247", "224/247", "205/247", "219/247"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "act"]
    assert ax.get_ylabel() == "detection rate (% of cases)" and ax.get_xlabel() == "training preset"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SMIT", "Swin UNETR"]
    # Bars of one preset sit left/right of its tick.
    assert smit.patches[0].get_x() + smit.patches[0].get_width() <= 0 <= swin.patches[0].get_x()


def test_detection_bars_draw_bootstrap_intervals():
    summary = make_detection().assign(detection_rate_ci_low=[0.80, 0.78, 0.87, np.nan],
                                      detection_rate_ci_high=[0.89, 0.87, 0.94, np.nan])
    fig = detection_bars(summary, preset_order=["base", "act"])
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and len(errs) == 2  # one per backbone; Swin UNETR's act row has no interval
    smit, swin = errs
    # each error bar is a vertical segment from ci_low to ci_high at its bar's centre
    (smit_segments,) = smit.lines[2]
    np.testing.assert_allclose([seg[:, 1] for seg in smit_segments.get_segments()], [[0.80, 0.89], [0.87, 0.94]])
    np.testing.assert_allclose([seg[0, 0] for seg in smit_segments.get_segments()],
                               [b.get_x() + b.get_width() / 2 for b in bars[0].patches])
    (swin_segments,) = swin.lines[2]
    np.testing.assert_allclose([seg[:, 1] for seg in swin_segments.get_segments()], [[0.78, 0.87]])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SMIT", "Swin UNETR"]
    # without interval columns: bars only, as before
    (plain,) = detection_bars(make_detection()).axes
    assert not [c for c in plain.containers if isinstance(c, ErrorbarContainer)]


def test_detection_bars_errors():
    summary = make_detection()
    with pytest.raises(DataError, match="lacks"):
        detection_bars(summary.drop(columns="n_cases"))
    with pytest.raises(DataError, match="0 <= n_detected"):
        detection_bars(summary.assign(n_detected=300))
    with pytest.raises(DataError, match="0 <= n_detected"):
        detection_bars(summary.assign(n_cases=0, n_detected=0))
    with pytest.raises(DataError, match="one row per"):
        detection_bars(pd.concat([summary, summary]))
    with pytest.raises(ConfigError, match="preset_order"):
        detection_bars(summary, preset_order=["base"])


def test_dice_hd95_boxes_medians_and_nan_cases():
    cases = make_cases()
    fig = dice_hd95_boxes(cases)
    dice_ax, hd_ax = fig.axes
    assert dice_ax.get_ylabel() == "Dice (0–1)" and hd_ax.get_ylabel() == "HD95 (mm)"
    assert dice_ax.get_xlabel() == hd_ax.get_xlabel() == "training preset"
    assert [t.get_text() for t in dice_ax.get_xticklabels()] == ["base", "ta", "act"]
    # One box (PathPatch) and one point cloud per (preset, backbone) and panel.
    for ax, column in ((dice_ax, "dice"), (hd_ax, "hd95")):
        assert len(ax.patches) == 6
        clouds = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert len(clouds) == 6
        # Draw order: backbone-major, preset-minor; boxplot medians are lines of 2 points.
        medians = [line for line in ax.lines if len(line.get_ydata()) == 2 and line.get_linewidth() == 2.0]
        expected = [cases[(cases.preset == p) & (cases.backbone == b)][column].median()
                    for b in ("SMIT", "Swin UNETR") for p in ("base", "ta", "act")]
        np.testing.assert_allclose([m.get_ydata()[0] for m in medians], expected)
        sizes = [len(c.get_offsets()) for c in clouds]
        assert sizes == ([6] * 6 if column == "dice" else [5] * 6)  # NaN HD95 left out
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["SMIT", "Swin UNETR"]
    with pytest.raises(DataError, match="one row per"):
        dice_hd95_boxes(pd.concat([cases, cases]))


def test_dice_hd95_boxes_draw_summary_means_with_intervals():
    cases = make_cases()
    summary = pd.DataFrame({"preset": ["base", "act"], "backbone": ["SMIT", "SMIT"],
                            "dice_mean": [0.70, 0.75], "dice_ci_low": [0.62, 0.70], "dice_ci_high": [0.77, 0.80],
                            "hd95_mean": [8.0, np.nan], "hd95_ci_low": [6.5, np.nan], "hd95_ci_high": [9.9, np.nan]})
    fig = dice_hd95_boxes(cases, summary=summary)
    dice_ax, hd_ax = fig.axes
    dice_errs = [c for c in dice_ax.containers if isinstance(c, ErrorbarContainer)]
    hd_errs = [c for c in hd_ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(dice_errs) == 2 and len(hd_errs) == 1  # a NaN interval draws nothing
    lows_highs = [c.lines[2][0].get_segments()[0][:, 1] for c in dice_errs]
    np.testing.assert_allclose(lows_highs, [[0.62, 0.77], [0.70, 0.80]])
    np.testing.assert_allclose([c.lines[0].get_ydata()[0] for c in dice_errs], [0.70, 0.75])
    np.testing.assert_allclose(hd_errs[0].lines[2][0].get_segments()[0][:, 1], [6.5, 9.9])
    assert not [c for c in dice_hd95_boxes(cases).axes[0].containers if isinstance(c, ErrorbarContainer)]


def test_token_efficiency_lines_per_crop_and_arch_panels():
    frame = make_efficiency()
    fig = token_efficiency(frame)
    panels = [a for a in fig.axes if a.lines]
    assert [a.get_title() for a in panels] == ["SwinUNETR", "SMIT"]
    assert fig.get_suptitle() == "Token efficiency per stage"
    swin, smit = panels
    assert [line.get_label() for line in swin.lines] == ["96×96×96", "96×96×64"]
    assert [line.get_label() for line in smit.lines] == ["128×128×128", "128×128×64"]
    for ax, arch in ((swin, "SwinUNETR"), (smit, "SMIT")):
        for line in ax.lines:
            crop = line.get_label().replace("×", "x")
            sel = frame[(frame.arch == arch) & (frame.crop == crop)].sort_values("stage")
            np.testing.assert_allclose(line.get_xdata(), sel["stage"])
            np.testing.assert_allclose(line.get_ydata(), sel["efficiency"])
        assert ax.get_ylim() == (0.0, 1.05) and ax.get_xlabel() == "stage"
    assert swin.get_ylabel() == "token efficiency (real / all tokens)"
    single = token_efficiency(make_efficiency(arch=False), title="SMIT crops")
    assert len(single.axes[0].lines) == 2 and single.axes[0].get_title() == "SMIT crops"
    with pytest.raises(DataError, match="one row per"):
        token_efficiency(pd.concat([frame, frame]))


def test_tumor_clusters_scatter():
    frame = make_clusters()
    fig = tumor_clusters(frame)
    (ax,) = fig.axes
    clouds = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(clouds) == 4  # three clusters + unclustered
    for cloud, lab in zip(clouds[:3], (0, 1, 2)):
        sel = frame[frame.cluster == lab]
        np.testing.assert_allclose(cloud.get_offsets(), sel[["mean", "cv"]].to_numpy())
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "0 (n = 5)", "1 (n = 5)", "2 (n = 5)", "unclustered (n = 1)"]
    assert ax.get_xlabel() == "tumor mean intensity (a.u.)"
    assert ax.get_ylabel() == "tumor CV (std / mean, unitless)"
    fig2 = tumor_clusters(frame.rename(columns={"cv": "contrast"}), y="contrast", y_label="Weber contrast")
    assert fig2.axes[0].get_ylabel() == "Weber contrast"
    with pytest.raises(DataError, match="lacks"):
        tumor_clusters(frame, x="volume_mm3")


# --------------------------------------------------------------------------- training


def make_training(*, validate: bool = True) -> pd.DataFrame:
    """Two backbones x two presets, 30 steps each, validation rows at steps 10/20/30 (as the trainer writes)."""
    rng = np.random.default_rng(5)
    rows = []
    for backbone in ("SMIT", "Swin UNETR"):
        for preset in ("base", "act"):
            for step in range(1, 31):
                rows.append({"epoch": (step - 1) // 10 + 1, "step": step, "loss": 1.0 / (1 + step / 10)
                             + rng.normal(0, 0.02), "val_dice": np.nan, "preset": preset, "backbone": backbone})
                if validate and step % 10 == 0:
                    rows.append({"epoch": step // 10, "step": step, "loss": 0.5, "val_dice": step / 40,
                                 "preset": preset, "backbone": backbone})
    return pd.DataFrame(rows)


def trailing_mean(values: np.ndarray, n: int) -> np.ndarray:
    # Independent of pandas' rolling: cumulative sums over a window that grows to n.
    c = np.concatenate([[0.0], np.cumsum(values)])
    i = np.arange(1, len(values) + 1)
    lo = np.maximum(0, i - n)
    return (c[i] - c[lo]) / (i - lo)


def test_training_curves_loss_lines_and_validation_markers():
    frame = make_training()
    fig = training_curves(frame, smooth=4)
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["SMIT", "Swin UNETR"]
    steps_rows = frame[frame["val_dice"].isna()]
    for ax, backbone in zip(panels, ("SMIT", "Swin UNETR")):
        lines = ax.get_lines()
        assert len(lines) == 4  # per preset: faint raw + bold trailing mean
        for (raw, trend), preset in zip(zip(lines[::2], lines[1::2]), ("base", "act")):
            run = steps_rows[(steps_rows.backbone == backbone) & (steps_rows.preset == preset)]
            np.testing.assert_allclose(raw.get_ydata(), run["loss"])
            np.testing.assert_allclose(trend.get_ydata(), trailing_mean(run["loss"].to_numpy(), 4))
            np.testing.assert_allclose(trend.get_xdata(), np.arange(1, 31))
            assert trend.get_label() == preset and raw.get_alpha() == 0.3 and trend.get_alpha() is None
        assert ax.get_xlabel() == "optimiser step"
    twins = [a for a in fig.axes if not a.get_title()]
    assert len(twins) == 2 and all(t.get_ylim() == (0.0, 1.0) for t in twins)
    assert twins[-1].get_ylabel() == "validation Dice (markers, 0–1)"
    assert [len(t.get_lines()) for t in twins] == [2, 2]  # one marker series per preset
    for twin in twins:
        for markers in twin.get_lines():
            assert markers.get_marker() not in (None, "None", "", " ")
            np.testing.assert_allclose(markers.get_xdata(), [10, 20, 30])
            np.testing.assert_allclose(markers.get_ydata(), [0.25, 0.5, 0.75])
    assert panels[0].get_ylabel() == "Dice-CE loss (4-step mean)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["base", "act"]


def test_training_curves_single_run_raw_and_errors():
    run = make_training(validate=False)
    one = run[(run.backbone == "SMIT") & (run.preset == "base")].drop(columns=["preset", "backbone"])
    fig = training_curves(one, smooth=1, title=None)
    (ax,) = fig.axes
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), one["loss"])
    assert ax.get_ylabel() == "Dice-CE loss" and fig.get_suptitle() == ""
    with pytest.raises(DataError, match="lacks"):
        training_curves(one.drop(columns="loss"))
    with pytest.raises(ConfigError, match="smooth"):
        training_curves(one, smooth=0)
    with pytest.raises(DataError, match="no step rows"):
        training_curves(one.assign(val_dice=0.5))
    with pytest.raises(DataError, match="numeric"):
        training_curves(one.assign(loss="x"))
    with pytest.raises(DataError):
        training_curves(pd.concat([one, one]))  # one step twice in one run


# --------------------------------------------------------------------------- all figures


FIGURES = {
    "adi_vs_padding": lambda: adi_vs_padding(make_stage_frame(models=("CT-pretrained", "MRI fine-tuned"))),
    "adi_single": lambda: adi_vs_padding(make_stage_frame()),
    "flow_matrices": lambda: flow_matrices(make_stage_frame(), padding=32),
    "attention_on_volume": lambda: attention_on_volume(*make_volume()[:2], padding_mask=make_volume()[2],
                                                       slices=(20, 18, 12)),
    "cka_heatmap": lambda: cka_heatmap(make_cka(), ref_label="CT-pretrained", tgt_label="MRI fine-tuned"),
    "feature_reuse_lines": lambda: feature_reuse_lines(make_diagonals(), reference="CT-pretrained"),
    "detection_bars": lambda: detection_bars(make_detection()),
    "dice_hd95_boxes": lambda: dice_hd95_boxes(make_cases()),
    "token_efficiency": lambda: token_efficiency(make_efficiency()),
    "tumor_clusters": lambda: tumor_clusters(make_clusters()),
    "training_curves": lambda: training_curves(make_training()),
}


def _drawn_texts(fig) -> list[Text]:
    """Texts that are drawn: tick labels of ticks in view only, other visible non-empty texts."""
    texts = []
    for ax in fig.findobj(lambda a: hasattr(a, "xaxis") and hasattr(a, "get_xticklabels")):
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            eps = 1e-9 * max(1.0, hi - lo)
            for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks),
                                (axis.get_minorticklocs(), axis.get_minor_ticks)):
                for loc, tick in zip(locs, ticks(len(locs))):
                    if lo - eps <= loc <= hi + eps:
                        texts += [tick.label1, tick.label2]
    tick_owned = {id(t) for tick in fig.findobj(lambda a: hasattr(a, "label1") and hasattr(a, "label2"))
                  for t in (tick.label1, tick.label2)}
    texts += [t for t in fig.findobj(Text) if id(t) not in tick_owned]
    seen, out = set(), []
    for t in texts:
        if id(t) not in seen and t.get_visible() and t.get_text().strip() and t.get_alpha() != 0:
            seen.add(id(t))
            out.append(t)
    return out


def _overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose boxes intersect.

    Boxes are axis-aligned, so two labels rotated by the same angle (e.g. 45 degree tick
    labels) have overlapping boxes without touching; such a pair is checked on the distance
    perpendicular to the text direction instead, against the text height.
    """
    renderer = fig.canvas.get_renderer()
    items = []
    for t in _drawn_texts(fig):
        box = t.get_window_extent(renderer)
        if box.width > 0 and box.height > 0:
            items.append((t, box, t.get_rotation() % 180))
    bad = []
    for (a, ba, ra), (b, bb, rb) in itertools.combinations(items, 2):
        if ra == rb and ra not in (0, 90):
            theta = np.deg2rad(ra)
            normal = np.array([-np.sin(theta), np.cos(theta)])
            ca = np.array([ba.x1, ba.y1]) if ra < 90 else np.array([ba.x0, ba.y1])
            cb = np.array([bb.x1, bb.y1]) if rb < 90 else np.array([bb.x0, bb.y1])
            height = a.get_fontsize() * fig.dpi / 72
            if abs(normal @ (ca - cb)) < 0.9 * height:
                bad.append((a.get_text(), b.get_text()))
            continue
        # Slightly shrunk boxes: touching ascenders/descenders of neighbouring lines are fine.
        if ba.shrunk(0.96, 0.9).overlaps(bb.shrunk(0.96, 0.9)):
            bad.append((a.get_text(), b.get_text()))
    return bad


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_saves_png_without_overlapping_text(name, tmp_path):
    fig = FIGURES[name]()
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert _overlaps(fig) == []


def test_figures_leave_global_style_alone():
    before = dict(matplotlib.rcParams)
    detection_bars(make_detection())
    with paper_style(context="talk"):
        assert matplotlib.rcParams["savefig.dpi"] == 200
    after = dict(matplotlib.rcParams)
    assert {k: v for k, v in after.items() if before.get(k) != v} == {}
    with pytest.raises(ConfigError, match="context"):
        with paper_style(context="poster"):
            pass


def test_overlap_check_catches_colliding_text():
    # Keeps the legibility test honest: colliding texts and crowded rotated labels are caught.
    fig, ax = plt.subplots(figsize=(2, 2), layout="constrained")
    ax.text(0.5, 0.5, "first label")
    ax.text(0.52, 0.5, "second label")
    fig.canvas.draw()
    assert ("first label", "second label") in _overlaps(fig)
    fig, ax = plt.subplots(figsize=(1.5, 2), layout="constrained")
    ax.set_xticks(range(12), labels=[f"stage{i}.block0.out" for i in range(12)], rotation=45, ha="right",
                  rotation_mode="anchor")
    fig.canvas.draw()
    assert len(_overlaps(fig)) >= 11
    fig, ax = plt.subplots(figsize=(8, 3), layout="constrained")
    ax.set_xticks(range(4), labels=[f"stage{i}.block0.out" for i in range(4)], rotation=45, ha="right",
                  rotation_mode="anchor")
    fig.canvas.draw()
    assert _overlaps(fig) == []


def test_adi_vs_padding_takes_stage_means_output():
    # The documented input: block-level tidy rows reduced by metrics.aggregate.stage_means.
    from attnprobe.metrics.aggregate import stage_means

    rng = np.random.default_rng(3)
    rows = [{"case": c, "padding": p, "pad_fraction": p / 64, "stage": s, "block": b, "kind": "all",
             "metric": m, "value": float(rng.uniform()), "n_real_queries": 10, "n_pad_queries": 2}
            for c in CASES for p in (0, 32) for s in (0, 1) for b in (0, 1) for m in METRICS]
    tidy = pd.DataFrame(rows)
    stages = stage_means(tidy)
    fig = adi_vs_padding(stages)
    ax = fig.axes[0]
    assert len(ax.lines) == 2
    block_mean = tidy[tidy.metric == "adi"].groupby(["stage", "padding", "case"])["value"].mean()
    expected = block_mean.groupby(["stage", "padding"]).mean()
    for line, s in zip(ax.lines, (0, 1)):
        np.testing.assert_allclose(line.get_ydata(), expected.loc[s].to_numpy())
    with pytest.raises(DataError, match="not blocks"):
        adi_vs_padding(tidy)
