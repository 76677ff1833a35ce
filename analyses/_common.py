"""Plumbing shared by the analysis scripts: workspace, models, preprocessing, saving figures.

Every script in ``analyses/`` takes a workspace file (``attnprobe.toml``) and names from it, so
the same command runs on the demo's run folder and on a real study. Only attnprobe's public
API is used.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnprobe.data.preprocess import PreprocessConfig
from attnprobe.errors import ConfigError
from attnprobe.models import ARCH_LABELS, load_checkpoint
from attnprobe.workspace import DatasetRef, Workspace, load_workspace, resolve_data, resolve_model


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every analysis takes (``--workspace``, ``--out``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workspace", type=Path, default=Path("attnprobe.toml"),
                   help="attnprobe.toml naming the models and data sets (default: ./attnprobe.toml)")
    p.add_argument("--out", type=Path, required=True, help="output folder (tables, figures, captions)")
    p.add_argument("--spacing", type=float, default=None,
                   help="preprocessing spacing in mm (default: the model's training spacing, else 1.0)")
    p.add_argument("--limit", type=int, default=None, help="use at most N cases")
    return p


def workspace(path: Path) -> Workspace:
    """The parsed workspace file."""
    return load_workspace(path)


@dataclass(frozen=True)
class LoadedModel:
    """A model from the workspace with what is known about how it was trained."""

    name: str
    arch: str
    model: Any
    roi: tuple[int, int, int]
    train: dict[str, Any]
    checkpoint: Path

    @property
    def label(self) -> str:
        """Display name: the workspace name."""
        return self.name

    @property
    def preset(self) -> str:
        """Trainer preset of the run that wrote the checkpoint, else the workspace name."""
        return str(self.train.get("preset") or self.name)

    @property
    def backbone(self) -> str:
        """Architecture as a display name."""
        return ARCH_LABELS.get(self.arch, self.arch)


def load_model(ws: Workspace, name: str) -> LoadedModel:
    """Resolve a model name (or checkpoint path) and load it in eval mode.

    The ROI is the workspace's, else the training crop, else the model's own.
    """
    ref = resolve_model(name, workspace=ws)
    model, report = load_checkpoint(ref.checkpoint, ref.arch)
    train = report.metadata.get("train")  # the checkpoint's training metadata, read with the weights
    meta = dict(train) if isinstance(train, Mapping) else {}
    roi = ref.roi or (tuple(meta["roi"]) if meta.get("roi") else None) or model.attnprobe_config.get("roi")
    if roi is None:
        raise ConfigError(f"no ROI for model {name!r}", expected="roi = [x, y, z] in the workspace", got="none")
    return LoadedModel(name=ref.name, arch=report.arch, model=model.eval(), roi=tuple(int(v) for v in roi),
                       train=meta, checkpoint=ref.checkpoint)


def dataset(ws: Workspace, name: str) -> DatasetRef:
    """Resolve a dataset name (or path)."""
    return resolve_data(name, workspace=ws)


def preprocessing(loaded: LoadedModel | None, *, roi: Any, spacing: float | None) -> PreprocessConfig:
    """Preprocessing for a model: ``spacing`` when given, else the training spacing, else 1 mm.

    Intensities are scaled by percentiles (the MRI setting, docs/conventions.md), padding goes at the end.
    """
    trained = loaded.train.get("spacing") if loaded is not None else None
    use = spacing if spacing is not None else (float(trained) if trained is not None else 1.0)
    return PreprocessConfig(roi=roi, spacing=use, pad_mode="end")


def save_figure(fig: Any, out: Path, name: str, caption: str) -> Path:
    """Save ``fig`` as ``<out>/<name>.png`` with ``<name>.txt`` holding the one-line caption."""
    import matplotlib.pyplot as plt

    from attnprobe.figures import paper_style

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    with paper_style():
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    (out / f"{name}.txt").write_text(" ".join(caption.split()) + "\n")
    return path


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN as null is left to the caller)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))
    return path


def int_list(text: str) -> list[int]:
    """``"0,16,32"`` -> ``[0, 16, 32]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError("cannot read a list of integers", expected="e.g. 0,16,32,48", got=repr(text)) from None


def names(values: Sequence[str] | None, what: str) -> list[str]:
    """The repeated ``--model``-style option, required non-empty."""
    if not values:
        raise ConfigError(f"no {what} given", expected=f"at least one --{what} NAME", got="none")
    return list(values)
