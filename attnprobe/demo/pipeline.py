"""The steps of ``attnprobe demo`` as small library functions, and :func:`run_demo` that chains them.

Every step takes plain inputs (paths, models, prepared cases) and returns or writes plain
outputs, so the steps are usable one by one on real data. :func:`run_demo` runs them on
generated phantoms (docs/definitions.md) and lays out a run folder that ``attnprobe figures`` and the
report read back::

    OUT/
      data/                     phantoms: NIfTI, datalist_mri.json, datalist_ct.json, phantoms.json
      pretrained/               the CT checkpoints used (copied from attnprobe/demo/pretrained, or trained)
      ssl/                      their encoders re-exported in the self-supervised key layouts
      train/<arch>-<preset>/    fine-tuning runs (config.json, metrics.csv, last.pt)
      capture/<arch>-base.zarr  a capture store (stage-3 attention, every block output) of padded inputs
      adi/<arch>-base/          padding sweep: adi.csv, adi.parquet, adi.nc, summary.csv, adi.json
      attention/<arch>-base.npz one block's attention mapped onto one input volume
      cka/<arch>-<preset>/      CKA pretrained vs fine-tuned: cka.nc, cka.csv, summary.json
      eval/<arch>-<preset>/     cases.csv, summary.json (as ``attnprobe evaluate`` writes them)
      extent/<arch>/            extent.csv, efficiency.csv (as ``attnprobe data extent``)
      tumors/tumors.csv         per-case tumor features, k-means cluster and phantom cluster
      figures/                  one image and one one-line caption (.txt) per figure
      attnprobe.toml            a workspace naming every model and data set (for analyses/)
      demo.json                 settings, checkpoint provenance and load checks, timings
      report.md, report.html

The CT-"pretrained" checkpoints are *supervised* tiny models (encoder and decoder) trained on
CT phantoms of other "patients" (another seed) and stored in the fine-tuned key layouts
(``state_dict`` with ``swinViT.*`` / ``transformer.*`` and decoder keys, float16). A brief
fine-tune cannot train a decoder from scratch, so encoder-only weights would leave every
fine-tuned model at zero Dice and the detection figure empty; the demo still exercises the
self-supervised layouts by re-exporting each encoder as MONAI's ``model_swinvit.pt`` and
SMIT's ``student``/``module.backbone.`` layouts and loading them back (:func:`check_ssl_layout`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import nn

from attnprobe.demo.progress import Advance, OnProgress, Steps
from attnprobe.environment import versions
from attnprobe.errors import ConfigError
from attnprobe.metrics.sweep import SweepSpec
from attnprobe.models import ARCH_LABELS, model_config
from attnprobe.models.adapter import as_triple
from attnprobe.workflows.attention import attention_volume
from attnprobe.workflows.capture import capture_swept as capture_store
from attnprobe.workflows.cases import longest_cases, prepare_cases
from attnprobe.workflows.cka import ModelComparison, save_cka, share_baseline
from attnprobe.workflows.sweep import offline_agreement, online_sweep, save_adi

__all__ = [
    "Tier",
    "TIERS",
    "ARCHS",
    "DemoSettings",
    "PretrainSpec",
    "DemoResult",
    "settings_for",
    "demo_plan",
    "pretrained_dir",
    "find_pretrained",
    "make_phantoms",
    "pretrain_ct",
    "save_supervised_layout",
    "export_ssl_encoder",
    "check_ssl_layout",
    "finetune",
    "prepare_cases",
    "attention_volume",
    "longest_cases",
    "block_cka",
    "evaluate_model",
    "write_evaluation",
    "crop_efficiency",
    "tumor_table",
    "capture_store",
    "offline_agreement",
    "write_workspace",
    "run_demo",
]

Tier = Literal["smoke", "quick", "full"]
TIERS: tuple[Tier, ...] = get_args(Tier)
ARCHS: tuple[str, ...] = ("swin_unetr", "smit")

PRETRAINED_FILES = {"swin_unetr": "swin_unetr_ct_tiny.pt", "smit": "smit_ct_tiny.pt"}
"""File name of each architecture's CT checkpoint in ``attnprobe/demo/pretrained``."""

CT_ONLY = "CT only"
"""Preset label of the pretrained CT model evaluated on MRI without fine-tuning."""

Log = Callable[[str], None]


def _tick(advance: Advance, by: int = 1) -> Callable[..., None]:
    """A callback for any ``on_case``/``on_step`` signature that advances a step by ``by`` per call
    (typed, where a lambda binding ``advance`` as a default argument is not)."""

    def tick(*_args: Any) -> None:
        advance(by=by)

    return tick

#: the block whose attention the demo keeps for the attention-on-anatomy figure: the finest one
#: whose float16 map of a 64³ input stays small (Swin UNETR's 7³ windows make stage 0 ~90 MB)
ATTENTION_BLOCK = {"swin_unetr": "stage1.block0", "smit": "stage0.block0"}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, kw_only=True)
class DemoSettings:
    """Sizes of one demo run.

    Parameters
    ----------
    tier
        ``"smoke"`` (every step at its smallest, for the test suite), ``"quick"`` (sized for
        five minutes on two CPU cores; each run's report states its measured time) or ``"full"``
        (the default: more cases and training).
    n_cases
        MRI phantom cases (the CT rendering of the same anatomy is written too).
    split
        ``(train, validation, test)`` fractions of the cases.
    axial_range_mm
        Range the axial extent of a case is drawn from (mm): short cases are padded to the
        64³ cube (whose axial side is 128 mm at 2 mm), long ones fill it.
    spacing_mm
        Voxel size of the phantoms and of every preprocessing step (isotropic, mm).
    backbones
        Architectures to run.
    presets
        Fine-tuning presets (docs/conventions.md).
    model_preset
        Architecture preset of the models (``"tiny"``: feature 12, pretrained cube 64³).
    epochs, max_steps, num_samples, lr
        Fine-tuning: epochs, an optional cap on optimisation steps, crops per volume and the
        AdamW learning rate.
    validate
        Validate after the last epoch (and keep ``best.pt``).
    paddings
        Padding amounts of the ADI sweep (voxels along ``z``).
    sweep_cases, cka_cases, eval_cases, capture_cases, ablation_cases
        Test cases used by the sweep (the axially longest ones, whose content fills the cube
        at zero padding), CKA, evaluation (``None``: all), the capture store and the causal
        test (``None``: all).
    cka_baseline_seeds
        Random initialisations of the CKA baseline (docs/cka.md), computed once per backbone.
    cka_crops
        Random crops per case for CKA (examples = cases x crops); the cases are prepared at
        the anisotropic crop around their tumor, so one crop (the whole input) by default.
    pretrain_steps
        Steps of CT pretraining when the shipped checkpoints are missing.
    seed
        Seed of the phantoms, training and crops.
    """

    tier: Tier
    n_cases: int
    split: tuple[float, float, float]
    axial_range_mm: tuple[float, float] = (40.0, 160.0)
    spacing_mm: float = 2.0
    backbones: tuple[str, ...] = ARCHS
    presets: tuple[str, ...] = ("base", "act")
    model_preset: str = "tiny"
    epochs: int = 1
    max_steps: int | None = None
    num_samples: int = 2
    lr: float = 1e-3
    validate: bool = False
    paddings: tuple[int, ...] = (0, 16, 32, 48)
    sweep_cases: int = 4
    cka_cases: int = 8
    cka_crops: int = 1
    eval_cases: int | None = None
    capture_cases: int = 2
    ablation_cases: int | None = None
    cka_baseline_seeds: int = 2
    pretrain_steps: int = 480
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ConfigError("unknown demo tier", expected=" | ".join(TIERS), got=repr(self.tier))
        unknown = [b for b in self.backbones if b not in ARCHS]
        if unknown or not self.backbones:
            raise ConfigError("unknown demo backbone", expected=f"some of {ARCHS}", got=repr(self.backbones))
        from attnprobe.train.presets import get_preset

        for preset in self.presets:
            get_preset(preset)
        for name in ("n_cases", "epochs", "num_samples", "sweep_cases", "cka_cases", "cka_crops",
                     "capture_cases", "pretrain_steps", "cka_baseline_seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"bad demo setting {name}", expected="a positive integer", got=repr(value))
        if self.capture_cases > self.sweep_cases:
            raise ConfigError("the capture store holds cases of the sweep", expected="capture_cases <= sweep_cases",
                              got=f"{self.capture_cases} > {self.sweep_cases}")
        if self.cka_cases * self.cka_crops < 4:
            raise ConfigError("too few CKA examples", expected="cka_cases * cka_crops >= 4 (unbiased HSIC)",
                              got=f"{self.cka_cases} x {self.cka_crops}")

    def as_dict(self) -> dict[str, Any]:
        """Plain builtins (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


_TIER_SETTINGS: dict[str, dict[str, Any]] = {
    # Every step at its smallest: 6 cases, one optimisation step per run, two padding levels.
    "smoke": dict(n_cases=6, split=(1 / 3, 0.0, 2 / 3), axial_range_mm=(90.0, 140.0), epochs=1, max_steps=1,
                  num_samples=1, paddings=(0, 32), sweep_cases=2, cka_cases=4, eval_cases=2,
                  capture_cases=1, ablation_cases=2, cka_baseline_seeds=1, pretrain_steps=2),
    # Sized for five minutes on two cores (3 min 22 s to 4 min 35 s measured): 40 one-crop steps per fine-tuning
    # run (5 epochs of 8 volumes; fine-tuning is most of the run's CPU time) at a high learning rate;
    # with 3 epochs no model detected a tumor, with 5 the act preset detects more tumors than base on both
    # backbones (SMIT 7/8 vs 0/8, Swin UNETR 3/8 vs 2/8; 6 epochs: 8/8 vs 4/8 and 6/8 vs 4/8, but 4 min 50 s);
    # three padding amounts; CKA on 6 test cases (intervals need 5; the random-init baseline doubles
    # its forwards) and the causal test on 4 (a Swin UNETR forward with
    # the flow reducer and the edit costs several plain ones).
    "quick": dict(n_cases=16, split=(0.5, 0.0, 0.5), epochs=5, num_samples=1, lr=3e-3, paddings=(0, 24, 48),
                  sweep_cases=3, cka_cases=6, eval_cases=None, capture_cases=2, ablation_cases=4),
    # The default: more cases, longer fine-tuning with a validation split.
    "full": dict(n_cases=40, split=(0.6, 0.1, 0.3), epochs=4, num_samples=2, validate=True, sweep_cases=8,
                 cka_cases=12, eval_cases=None, capture_cases=2),
}


def settings_for(tier: Tier = "full", **overrides: Any) -> DemoSettings:
    """The :class:`DemoSettings` of a tier, with optional overrides (e.g. ``backbones=("smit",)``)."""
    if tier not in TIERS:
        raise ConfigError("unknown demo tier", expected=" | ".join(TIERS), got=repr(tier),
                          fix="use 'quick' or 'full' (the default)")
    return DemoSettings(tier=tier, **{**_TIER_SETTINGS[tier], **overrides})


@dataclass(frozen=True, kw_only=True)
class PretrainSpec:
    """How the CT-"pretrained" fixture checkpoints are made (``fixtures/make_pretrained.py``).

    Supervised tumor segmentation on CT phantoms of other "patients" than the demo's MRI cases
    (another dataset seed), with a CT soft-tissue window, on crops of the model's own ROI
    (64x64x32 for ``tiny``): crops that lie in real tissue, as the large random crops of real CT
    pretraining do (the CT phantoms are axially short, so a 64³ cube would be mostly padding).

    Parameters
    ----------
    n_cases
        CT phantom cases, all used for training.
    data_seed
        Dataset seed of the CT phantoms.
    steps
        Optimisation steps (the schedule is sized to end there).
    crop
        Training crop ``(x, y, z)``; ``None``: the architecture preset's ROI.
    num_samples, lr
        Crops per volume and AdamW learning rate.
    spacing_mm
        Phantom voxel size and preprocessing spacing (mm).
    window_hu
        Fixed intensity window mapped to [0, 1] (HU).
    seed
        Training seed (weights, data order, crops).
    """

    n_cases: int = 24
    data_seed: int = 1000
    steps: int = 480
    crop: tuple[int, int, int] | None = None
    num_samples: int = 2
    lr: float = 2e-3
    spacing_mm: float = 2.0
    window_hu: tuple[float, float] = (-175.0, 250.0)
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain builtins (tuples as lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- pretrained checkpoints


def pretrained_dir() -> Path:
    """The CT checkpoints shipped inside the package (``attnprobe/demo/pretrained``, package data)."""
    return Path(__file__).resolve().parent / "pretrained"


def find_pretrained(arch: str, folder: str | os.PathLike[str] | None = None) -> Path | None:
    """The CT checkpoint of ``arch`` in ``folder`` (default :func:`pretrained_dir`), or None."""
    if arch not in PRETRAINED_FILES:
        raise ConfigError("no demo checkpoint for this architecture", expected=f"one of {list(PRETRAINED_FILES)}",
                          got=repr(arch))
    path = Path(folder if folder is not None else pretrained_dir()) / PRETRAINED_FILES[arch]
    return path if path.is_file() else None


def make_phantoms(out_dir: str | os.PathLike[str], *, n: int, seed: int, spacing_mm: float,
                  split: Sequence[float], axial_range_mm: Sequence[float] = (40.0, 120.0),
                  modalities: Sequence[str] = ("mri", "ct")) -> dict[str, Path]:
    """Write phantom cases at an isotropic spacing; return modality -> datalist path.

    See :func:`attnprobe.data.phantoms.write_phantom_dataset` for the layout.
    """
    from attnprobe.workflows.phantoms import write_phantoms

    return write_phantoms(out_dir, n=n, seed=seed, modalities=tuple(modalities), split=tuple(split),
                          spacing=(spacing_mm,) * 3, axial_range_mm=tuple(axial_range_mm))


def save_supervised_layout(model: nn.Module, path: str | os.PathLike[str], *,
                           info: Mapping[str, Any] | None = None) -> Path:
    """Save a model as a fine-tuned checkpoint: ``{"state_dict": ...}``, compactly.

    The key names are the model's own (``swinViT.*`` / ``transformer.*`` and the decoder), as
    in MONAI's and SMIT's fine-tuning scripts. To keep the file small, floating tensors are
    stored as float16 and integer buffers whose values fit (the relative position indices,
    half of a tiny Swin UNETR's bytes as int64) as int16; loading copies them into the
    model's own dtypes; equal integer buffers (every block's index of one window size) share
    one storage, which ``torch.save`` writes once. ``info`` (plain builtins) is stored next to
    the weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shared: dict[tuple[Any, ...], torch.Tensor] = {}
    state = {}
    for key, value in model.state_dict().items():
        tensor = _compact(value.detach().cpu())
        if not tensor.is_floating_point():
            digest = hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
            tensor = shared.setdefault((tensor.dtype, tuple(tensor.shape), digest), tensor)
        state[key] = tensor
    tmp = path.with_name(path.name + ".tmp")
    # the compat mode it computes goes with the weights (attnprobe.models.compat)
    info = {"compat": model_config(model).get("compat", "current"), **dict(info or {})}
    torch.save({"state_dict": state, "info": info}, tmp)
    tmp.replace(path)
    return path


def _compact(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.to(torch.float16).contiguous()
    info = torch.iinfo(torch.int16)
    if t.dtype in (torch.int32, torch.int64) and (t.numel() == 0 or (int(t.min()) >= info.min and int(t.max()) <= info.max)):
        return t.to(torch.int16).contiguous()
    return t.contiguous()


def pretrain_ct(arch: str, out_path: str | os.PathLike[str], *, spec: PretrainSpec | None = None,
                work_dir: str | os.PathLike[str], model_preset: str = "tiny", log: Log | None = None,
                on_step: Callable[[int, int, float], None] | None = None) -> Path:
    """Train a tiny CT tumor-segmentation model and save it as a CT-"pretrained" checkpoint.

    Parameters
    ----------
    arch
        ``"swin_unetr"`` or ``"smit"``.
    out_path
        Checkpoint to write (fine-tuned layout, float16; see :func:`save_supervised_layout`).
    spec
        Data and training sizes (default :class:`PretrainSpec`).
    work_dir
        Folder for the CT phantoms (reused when already there) and the training run.
    model_preset
        Architecture preset.
    log
        Message sink.
    on_step
        Called with ``(step, total, loss)`` after every optimisation step.

    Returns
    -------
    Path
        ``out_path``.
    """
    from attnprobe.models.checkpoints import load_checkpoint
    from attnprobe.models.registry import resolve_config
    from attnprobe.train.presets import resolve_train_config
    from attnprobe.train.trainer import train

    spec = spec or PretrainSpec()
    crop = as_triple(spec.crop if spec.crop is not None else resolve_config(arch, model_preset)["roi"], "crop")
    work = Path(work_dir)
    datalist = work / "ct_data" / "datalist_ct.json"
    if not datalist.is_file():
        make_phantoms(work / "ct_data", n=spec.n_cases, seed=spec.data_seed, spacing_mm=spec.spacing_mm,
                      split=(1.0, 0.0, 0.0), modalities=("ct",))
    # "scratch" trains from random weights for 2 x epochs: size the schedule to end at `steps`.
    epochs = max(1, math.ceil(spec.steps / (2 * spec.n_cases)))
    config = resolve_train_config("scratch", arch=arch, model_preset=model_preset, epochs=epochs,
                                  roi=crop, num_samples=spec.num_samples,
                                  lr=spec.lr, spacing=spec.spacing_mm, intensity="fixed",
                                  a_min=spec.window_hu[0], a_max=spec.window_hu[1], seed=spec.seed)
    losses: list[float] = []

    def step(info: Any) -> None:
        losses.append(float(info.loss))
        if on_step is not None:
            on_step(int(info.step), min(int(info.total_steps), spec.steps), float(info.loss))

    t0 = time.perf_counter()
    result = train(config, datalist, work / f"train-{arch}", val_split=None, overwrite=True,
                   stop_after_steps=spec.steps, on_step=step, log=log)
    model, _ = load_checkpoint(result.last, arch, preset=model_preset)
    tail = losses[-max(1, len(losses) // 4):]
    info = {"made_by": "attnprobe.demo.pipeline.pretrain_ct", "arch": arch, "model_preset": model_preset,
            "modality": "ct", "task": "supervised tumor segmentation", "spec": spec.as_dict(),
            "roi": list(config.roi), "steps": result.steps_done, "final_loss": float(np.mean(tail)) if tail else None,
            "seconds": round(time.perf_counter() - t0, 1)}
    return save_supervised_layout(model, out_path, info=info)


def export_ssl_encoder(checkpoint: str | os.PathLike[str], arch: str, out_path: str | os.PathLike[str], *,
                       model_preset: str = "tiny") -> Path:
    """Re-export the encoder of a checkpoint in the self-supervised key layout of its architecture.

    - ``swin_unetr``: MONAI's ``model_swinvit.pt`` -- ``{"state_dict": {"module.<key>": ...}}`` with
      the ``swinViT.`` prefix removed and the MLP layers named ``fc1``/``fc2``.
    - ``smit``: ``{"student": {"module.backbone.<key>": ...}}`` with ``transformer.`` removed.

    Only encoder keys are written, as in real self-supervised checkpoints.
    """
    from attnprobe.models.checkpoints import load_checkpoint

    model, _ = load_checkpoint(checkpoint, arch, preset=model_preset)
    encoder: dict[str, torch.Tensor] = {}
    if arch == "swin_unetr":
        for key, value in model.state_dict().items():
            if key.startswith("swinViT."):
                name = key[len("swinViT."):].replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
                encoder["module." + name] = value
        payload: dict[str, Any] = {"state_dict": encoder, "epoch": 0}
    elif arch == "smit":
        for key, value in model.state_dict().items():
            if key.startswith("transformer."):
                encoder["module.backbone." + key[len("transformer."):]] = value
        payload = {"student": encoder, "epoch": 0}
    else:
        raise ConfigError("no self-supervised layout for this architecture", expected=f"one of {ARCHS}",
                          got=repr(arch))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return out


def check_ssl_layout(ssl_path: str | os.PathLike[str], source: str | os.PathLike[str], arch: str, *,
                     model_preset: str = "tiny") -> dict[str, Any]:
    """Load a self-supervised-layout file back and check it against the checkpoint it came from.

    Returns
    -------
    dict
        ``format`` (as the loader names it), ``matched``, ``missing_backbone``, ``missing`` (decoder
        keys: not in a self-supervised file), ``identical`` (every encoder tensor equal to the
        source's) and ``naive_matched``: how many keys the naive load -- strip the wrapper's
        ``module.`` prefix and ``load_state_dict(strict=False)`` -- would have loaded.
    """
    from attnprobe.models.checkpoints import load_checkpoint, read_checkpoint
    from attnprobe.models.registry import build_model, get_adapter

    # the re-exported encoder carries no record of its mode: it is the source's
    reference, ref_report = load_checkpoint(source, arch, preset=model_preset)
    model, report = load_checkpoint(ssl_path, arch, preset=model_preset, compat=ref_report.compat)
    adapter = get_adapter(arch)
    own, ref = model.state_dict(), reference.state_dict()
    encoder = [k for k in ref if adapter.is_backbone_key(k)]
    identical = all(torch.equal(own[k], ref[k]) for k in encoder)
    raw = read_checkpoint(ssl_path)
    inner = sd if isinstance(sd := raw.get("state_dict"), Mapping) else raw.get("student", {})
    naive = {k[len("module."):] if k.startswith("module.") else k for k in inner}
    naive_matched = len(naive & set(build_model(arch, preset=model_preset).state_dict()))
    return {"file": Path(ssl_path).name, "format": report.format, "matched": len(report.matched),
            "encoder_keys": len(encoder), "missing_backbone": len(report.missing_backbone),
            "missing": len(report.missing), "unexpected": len(report.unexpected), "identical": bool(identical),
            "naive_matched": int(naive_matched)}


# --------------------------------------------------------------------------- fine-tuning


def finetune(arch: str, preset: str, *, init: str | os.PathLike[str], data: str | os.PathLike[str],
             out_dir: str | os.PathLike[str], settings: DemoSettings, log: Log | None = None,
             on_step: Callable[[int, int, float], None] | None = None) -> Path:
    """Fine-tune ``init`` on ``data`` with a trainer preset; return the checkpoint to use.

    Returns ``best.pt`` when the run validated, else ``last.pt``.
    """
    from attnprobe.train.presets import resolve_train_config
    from attnprobe.workflows.training import run_training

    config = resolve_train_config(preset, arch=arch, model_preset=settings.model_preset, epochs=settings.epochs,
                                  init=None if preset == "scratch" else os.fspath(init),
                                  spacing=settings.spacing_mm, num_samples=settings.num_samples,
                                  lr=settings.lr, seed=settings.seed, val_every=settings.epochs)

    def step(info: Any) -> None:
        if on_step is not None:
            total = int(info.total_steps) if settings.max_steps is None else min(int(info.total_steps),
                                                                                   settings.max_steps)
            on_step(int(info.step), total, float(info.loss))

    result = run_training(config, data, out_dir, val_split="validation" if settings.validate else None,
                          overwrite=True, stop_after_steps=settings.max_steps, on_step=step, log=log)
    return result.best if result.best is not None else result.last


# --------------------------------------------------------------------------- analysis steps


#: the demo's causal test: the plain forward and attention to padding keys masked in every block
#: (docs/ablation.md; ``attnprobe ablate`` runs the per-stage masks and token ablations too)
ABLATION_INTERVENTIONS = ("none", "mask-all")


def ablation(model: nn.Module, cases: Sequence[Any], *, paddings: Sequence[int], out_dir: str | os.PathLike[str],
             seed: int, info: Mapping[str, Any],
             on_step: Callable[[str, int, str], None] | None = None) -> dict[str, Any]:
    """Run the causal test on labelled cases, write the run folder, return what the report states:
    per intervention at the largest padding, the change in Dice and detection against the plain
    forward with its bootstrap 95 % interval, and the plain forward's Dice change from padding 0.
    ``on_step`` is called with ``(case, padding, intervention)`` after each forward."""
    from attnprobe.workflows.ablation import ablation_run, intervention_plan, run_interventions

    plan = intervention_plan(model, ABLATION_INTERVENTIONS)
    spec = SweepSpec(paddings=tuple(int(p) for p in paddings))
    # Dice over the whole volume: every case counts (a missed tumor scores 0, not "no value")
    outcome = run_interventions(model, cases, plan, spec, metric_options={"scope": "volume"}, n_resamples=1000,
                                seed=seed, on_step=on_step)
    summary = outcome.summary
    label = info.get("label")
    ablation_run(outcome, info={**info, "interventions": list(ABLATION_INTERVENTIONS),
                                "padding_sweep": list(spec.paddings), "scope": "volume"},
                 label=str(label) if label is not None else None).save(out_dir)
    top = max(spec.paddings)
    at = summary.set_index(["intervention", "padding"])
    plain = at.loc[("none", top)]
    out: dict[str, Any] = {"padding": top, "n_cases": int(plain.get("delta_dice_n", 0)),
                           "dice_none": {int(p): _float(at.loc[("none", p)].get("dice_mean")) for p in spec.paddings}}
    for name in ABLATION_INTERVENTIONS[1:]:
        row = at.loc[(name, top)]
        out[name] = {m: [_float(row.get(f"delta_{m}")), _float(row.get(f"delta_{m}_ci_low")),
                         _float(row.get(f"delta_{m}_ci_high"))] for m in ("dice", "detection", "adi")}
    return out


def _float(value: Any) -> float | None:
    v = float(value) if value is not None else math.nan
    return None if math.isnan(v) else v


def block_cka(ref_model: nn.Module, tgt_model: nn.Module, cases: Sequence[Any], *, crops: int,
              crop_size: Sequence[int] | None, seed: int = 0, names: tuple[str, str] = ("ref", "tgt"),
              baseline_seeds: int = 0, bootstrap: int = 1000, on_case: Callable[[str], None] | None = None) -> Any:
    """CKA between every block output of two models on identical crops (docs/cka.md).

    Pooled examples (8³ adaptive average pooling of ``x, y, z``, by name), linear kernel,
    unbiased HSIC: :func:`attnprobe.metrics.reuse.compare_models` with its default
    :class:`~attnprobe.metrics.reuse.CKAConfig`. Returns the ``cka`` DataArray with dims
    ``("ref", "tgt")`` (block names as coordinates), with case-bootstrap intervals
    (``bootstrap`` resamples; from 5 cases) and, for ``baseline_seeds`` > 0, the random-init
    baseline. ``on_case`` is called with each case id once all its crops ran, also in the
    baseline passes (progress).
    """
    import warnings

    from attnprobe.metrics.reuse import CKAConfig

    comparison = ModelComparison(ref_model, tgt_model, list(cases), crops=crops, crop_size=crop_size, seed=seed,
                                 names=names, config=CKAConfig(bootstrap=bootstrap),
                                 baseline="random-init" if baseline_seeds > 0 else "none",
                                 baseline_seeds=max(1, baseline_seeds))
    with warnings.catch_warnings():
        # the report states n and the intervals; the small-n advice is for users' own runs
        warnings.filterwarnings("ignore", message="only .* examples", category=UserWarning)
        warnings.filterwarnings("ignore", message="CKA intervals and p-values need", category=UserWarning)
        return comparison.run(on_case=on_case)


def evaluate_model(model: nn.Module, data: str | os.PathLike[str], *, roi: Sequence[int], spacing_mm: float | None,
                   split: str = "test", limit: int | None = None, window: tuple[float, float] | None = None,
                   on_case: Callable[[str], None] | None = None,
                   overlay: str | os.PathLike[str] | None = None) -> list[Any]:
    """Predict every case by sliding-window inference and score it on the label's grid (docs/conventions.md).

    Preprocessing: ``spacing_mm``, intensity scaled by percentiles (or by a fixed ``window``
    ``(a_min, a_max)``, e.g. HU for CT), whole volume; the prediction is mapped back to the
    native grid and compared with the label file there. ``overlay``: an ``.npz`` file to keep the
    first scored case in (``image``, ``label``, ``prediction`` on the native grid, ``spacing``,
    ``case``), for the prediction-vs-reference figure.
    """
    from attnprobe.data.preprocess import PreprocessConfig
    from attnprobe.train.inference import InferenceConfig
    from attnprobe.workflows.evaluation import predict_and_score

    if window is None:
        config = PreprocessConfig(roi="full", spacing=spacing_mm, pad_mode="end")
    else:
        config = PreprocessConfig(roi="full", spacing=spacing_mm, pad_mode="end", intensity="fixed",
                                  a_min=float(window[0]), a_max=float(window[1]))
    return predict_and_score(model, list_labelled(data, split=split, limit=limit), preprocess=config,
                             inference=InferenceConfig(roi=as_triple(roi, "roi")), overlay=overlay,
                             on_case=on_case).results


def write_evaluation(results: Sequence[Any], out_dir: str | os.PathLike[str], *, info: Mapping[str, Any]) -> Path:
    """Write ``cases.csv`` and ``summary.json`` in the format of ``attnprobe evaluate`` (plus ``info``)."""
    from attnprobe.train.evaluate import DEFAULT_DEFINITIONS
    from attnprobe.workflows.evaluation import evaluation_run

    out = Path(out_dir)
    preset, backbone = info.get("preset"), info.get("backbone")
    # the overlay figure's case sits next to the scores: it belongs to the run
    evaluation_run(results, info=info, metric_options=DEFAULT_DEFINITIONS, preset=preset, backbone=backbone
                   ).save(out, extra_files=("overlay.npz",))
    return out


def crop_efficiency(data: str | os.PathLike[str], *, arch: str, model_preset: str, spacing_mm: float,
                    split: str = "all") -> tuple[pd.DataFrame, pd.DataFrame, Any]:
    """Axial extents, token efficiency of the pretrained cube and of shallower crops, and the recommendation.

    Returns
    -------
    (extents, efficiency, recommendation)
        Per-case extents, the per-(candidate, stage) summary of
        :func:`attnprobe.workflows.extent.summarize_efficiency` with an ``arch`` column, and the
        :class:`~attnprobe.workflows.extent.CropRecommendation`.
    """
    from attnprobe.workflows.extent import study_crops

    cases = prepare_cases(data, split=split, roi="full", spacing_mm=spacing_mm)
    study = study_crops(cases, arch=arch, model_preset=model_preset, spacing_z=spacing_mm)
    summary = study.efficiency
    summary.insert(0, "arch", arch)
    return study.extents, summary, study.recommendation


def tumor_table(data: str | os.PathLike[str], *, split: str = "all",
                phantoms_json: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, Any]:
    """Per-case tumor features and their k-means clustering (docs/conventions.md), from image and label files.

    Returns
    -------
    (wide, clustering)
        One row per case (features, ``cluster``; ``phantom_cluster`` when ``phantoms_json`` names
        the generating cluster of each case) and the :class:`~attnprobe.data.tumor_stats.ClusterResult`.
    """
    from attnprobe.data.io import list_cases
    from attnprobe.workflows.tumors import tumor_analysis, with_phantom_clusters

    analysis = tumor_analysis(list_cases(data, split=split))  # type: ignore[arg-type]
    wide = analysis.wide
    if phantoms_json is not None:
        wide = with_phantom_clusters(wide, phantoms_json)
    return wide, analysis.clustering


def write_workspace(path: str | os.PathLike[str], *, models: Mapping[str, Mapping[str, Any]],
                    datasets: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write an ``attnprobe.toml``: ``models`` name -> {arch, checkpoint, roi}, ``datasets`` name -> {path, split}.

    Paths inside the file's folder are written relative to it.
    """
    path = Path(path)
    root = path.parent.resolve()

    def rel(p: Any) -> str:
        target = Path(p).resolve()
        try:
            return target.relative_to(root).as_posix()
        except ValueError:
            return target.as_posix()

    def value(v: Any) -> str:
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return repr(v)
        return json.dumps(str(v))  # a TOML basic string has JSON's escapes

    lines = ["# Written by attnprobe demo: the run's models and data sets by name.", ""]
    for kind, table in (("models", models), ("datasets", datasets)):
        for name, entry in table.items():
            lines.append(f"[{kind}.{json.dumps(name)}]")
            for key, v in entry.items():
                if v is None:
                    continue
                lines.append(f"{key} = {value(rel(v) if key in ('checkpoint', 'path') else v)}")
            lines.append("")
    path.write_text("\n".join(lines))
    return path


# --------------------------------------------------------------------------- the whole demo


@dataclass(frozen=True)
class DemoResult:
    """Outcome of :func:`run_demo`.

    Attributes
    ----------
    out_dir
        The run folder.
    report_md, report_html
        The reports.
    figures
        Figure files written (one caption ``.txt`` next to each).
    seconds
        Wall time of the whole run.
    timings
        Seconds per step.
    """

    out_dir: Path
    report_md: Path
    report_html: Path
    figures: tuple[Path, ...]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)


def _label(arch: str, preset: str) -> str:
    return f"{arch}-{preset}"


def _load(path: Path, arch: str, model_preset: str) -> nn.Module:
    from attnprobe.models.checkpoints import load_checkpoint

    model, _ = load_checkpoint(path, arch, preset=model_preset)
    return model.eval()


def _probe_preset(settings: DemoSettings) -> str:
    return "base" if "base" in settings.presets else settings.presets[0]


def _missing_pretrained(settings: DemoSettings, source: Path | None) -> list[str]:
    return [arch for arch in settings.backbones if find_pretrained(arch, source) is None]


def demo_plan(settings: DemoSettings, *, pretrain: Sequence[str] = ()) -> list[str]:
    """Every step :func:`run_demo` runs for ``settings``, in order (``pretrain``: architectures
    whose CT checkpoint must be trained first)."""
    probe = _probe_preset(settings)
    plan = ["phantoms", *(f"pretrain {arch}" for arch in pretrain), "pretrained checkpoints"]
    plan += [f"fine-tune {_label(a, p)}" for a in settings.backbones for p in settings.presets]
    plan.append("prepare test cases")
    for arch in settings.backbones:
        for preset in settings.presets:
            name = _label(arch, preset)
            plan.append(f"ADI padding sweep {name}")
            if preset == probe:
                plan += [f"capture {name}", f"attention stores {name}"]
    plan += [f"ablation {_label(a, probe)}" for a in settings.backbones]
    plan += [f"CKA {arch}" for arch in settings.backbones]
    plan += [f"evaluate {_label(a, 'ct')}" for a in settings.backbones]
    plan += [f"evaluate {_label(a, p)}" for a in settings.backbones for p in settings.presets]
    plan += ["token efficiency", "tumor clusters", "figures", "report"]
    return plan


def _pretrained(arch: str, out: Path, settings: DemoSettings, source: Path | None, steps: Steps) -> tuple[Path, dict[str, Any]]:
    """Copy the shipped CT checkpoint into the run, or train one when it is missing."""
    from attnprobe.models.checkpoints import sha256_of

    target = out / "pretrained" / PRETRAINED_FILES[arch]
    found = find_pretrained(arch, source)
    if found is not None:
        if found.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, target)
        origin = "shipped"
    else:
        spec = replace(PretrainSpec(), steps=settings.pretrain_steps)
        steps.log(f"no shipped CT checkpoint for {arch} in {source or pretrained_dir()}: training one now "
                  f"({spec.steps} steps; ship them with `python fixtures/make_pretrained.py`)")
        with steps.step(f"pretrain {arch}", total=spec.steps, unit="steps") as advance:
            pretrain_ct(arch, target, spec=spec, work_dir=out / "pretrained" / "work",
                        model_preset=settings.model_preset, log=None,
                        on_step=lambda s, n, _loss: advance(s, n))
        origin = "trained by this run"
    info = torch.load(target, map_location="cpu", weights_only=True).get("info", {})
    return target, {"origin": origin, "source": str(found) if found else None, "file": str(target),
                    "sha256": sha256_of(target), "bytes": target.stat().st_size, "info": info}


def _finetune_steps(settings: DemoSettings, data: Path, preset: str, arch: str) -> int:
    """Optimisation steps a fine-tuning run will take (known before it starts, for progress)."""
    from attnprobe.data.io import list_cases
    from attnprobe.train.presets import resolve_train_config

    config = resolve_train_config(preset, arch=arch, model_preset=settings.model_preset, epochs=settings.epochs)
    n_train = len(list_cases(data, split="training"))
    total = math.ceil(n_train / config.batch_size) * settings.epochs
    return total if settings.max_steps is None else min(total, settings.max_steps)


def run_demo(out_dir: str | os.PathLike[str], *, settings: DemoSettings | None = None,
             pretrained: str | os.PathLike[str] | None = None, figure_format: str = "png",
             log: Log | None = None, on_progress: OnProgress | None = None) -> DemoResult:
    """Run every demo step into ``out_dir`` and write the figures and the report.

    Parameters
    ----------
    out_dir
        Run folder (created; files of an earlier run there are replaced).
    settings
        Sizes (default ``settings_for("full")``).
    pretrained
        Folder holding the CT checkpoints (default ``attnprobe/demo/pretrained``); missing ones are
        trained first (slower).
    figure_format
        ``"png"``, ``"pdf"`` or ``"svg"`` (the HTML report embeds PNGs only).
    log
        Message sink (one line per step).
    on_progress
        Receives a :class:`~attnprobe.demo.progress.ProgressEvent` when a step starts, as it
        advances (optimisation steps, cases, forwards, figure groups) and when it ends; the
        plan of steps is :func:`demo_plan`.

    Returns
    -------
    DemoResult
    """
    from attnprobe.demo.report import write_report
    from attnprobe.figures.discover import draw_figures
    from attnprobe.train.presets import anisotropic_roi, pretrained_roi

    settings = settings or settings_for("full")
    log = log or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = Path(pretrained) if pretrained else None
    steps = Steps(demo_plan(settings, pretrain=_missing_pretrained(settings, source)), log=log,
                  on_progress=on_progress)
    t_start = time.perf_counter()
    cpu_start = _cpu_seconds()
    record: dict[str, Any] = {"settings": settings.as_dict(), "versions": versions(),
                              "machine": _machine(), "pretrained": {}, "ssl": {}, "checks": {}}
    test_split = "test"

    with steps.step("phantoms"):
        datalists = make_phantoms(out / "data", n=settings.n_cases, seed=settings.seed,
                                  spacing_mm=settings.spacing_mm, split=settings.split,
                                  axial_range_mm=settings.axial_range_mm)
    mri = datalists["mri"]

    ct: dict[str, Path] = {}
    for arch in settings.backbones:
        ct[arch], record["pretrained"][arch] = _pretrained(arch, out, settings, source, steps)
    with steps.step("pretrained checkpoints", total=len(settings.backbones), unit="backbones") as advance:
        for arch in settings.backbones:
            ssl = export_ssl_encoder(ct[arch], arch, out / "ssl" / (
                "model_swinvit.pt" if arch == "swin_unetr" else "smit_ssl_student.pt"), model_preset=settings.model_preset)
            record["ssl"][arch] = check_ssl_layout(ssl, ct[arch], arch, model_preset=settings.model_preset)
            advance()

    tuned: dict[tuple[str, str], Path] = {}
    for arch in settings.backbones:
        for preset in settings.presets:
            name = _label(arch, preset)
            total = _finetune_steps(settings, mri, preset, arch)
            with steps.step(f"fine-tune {name}", total=total, unit="steps") as advance:
                tuned[(arch, preset)] = finetune(
                    arch, preset, init=ct[arch], data=mri, out_dir=out / "train" / name, settings=settings,
                    # mypy cannot infer a lambda with a default argument
                    on_step=lambda s, n, _loss, advance=advance: advance(s, n))  # type: ignore[misc]

    cube = {arch: pretrained_roi(arch, settings.model_preset) for arch in settings.backbones}
    aniso = {arch: anisotropic_roi(arch, settings.model_preset) for arch in settings.backbones}
    probe_preset = _probe_preset(settings)
    with steps.step("prepare test cases", total=len(settings.backbones), unit="backbones") as advance:
        cases, cka_inputs, longest = {}, {}, {}
        for arch in settings.backbones:
            cases[arch] = prepare_cases(mri, split=test_split, roi=cube[arch], spacing_mm=settings.spacing_mm)
            # CKA examples: tumor-centred anisotropic crops, mostly real tissue, so that block outputs
            # differ by anatomy rather than by how much of the input is padding.
            cka_inputs[arch] = prepare_cases(mri, split=test_split, roi=aniso[arch], spacing_mm=settings.spacing_mm,
                                             limit=settings.cka_cases)
            longest[arch] = longest_cases(cases[arch], settings.sweep_cases)
            advance()

    frames: dict[str, pd.DataFrame] = {}
    for arch in settings.backbones:
        for preset in settings.presets:
            name = _label(arch, preset)
            model = _load(tuned[(arch, preset)], arch, settings.model_preset)
            sweep = longest[arch]
            with steps.step(f"ADI padding sweep {name}", total=len(sweep) * len(settings.paddings),
                            unit="forwards") as advance:
                # the fixed-ROI padding sweep along z (docs/definitions.md), saved as `attnprobe adi` does
                frame = online_sweep(model, sweep, SweepSpec(paddings=tuple(int(p) for p in settings.paddings)),
                                     on_step=_tick(advance), check_fractions=False)
                save_adi(frame, out / "adi" / name,
                         {"model": name, "arch": arch, "preset": preset,
                          "checkpoint": str(tuned[(arch, preset)]), "roi": list(cube[arch]),
                          "paddings": list(settings.paddings), "axis": "z", "pad_mode": "end",
                          "sweep_mode": "fixed-roi"}, label=f"{ARCH_LABELS[arch]} ({preset})")
            if preset != probe_preset:
                continue
            frames[arch] = frame
            # The store shows the largest amount of the sweep, where padding matters most; it keeps
            # each input crop and its box, so the attention figure is drawn from the store.
            padding = max(settings.paddings)
            store_cases = longest[arch][:settings.capture_cases]
            with steps.step(f"capture {name}", total=len(store_cases), unit="cases") as advance:
                # The sweep's own inputs at that amount: offline metrics must equal the online ones.
                store = capture_store(model, store_cases, out / "capture" / f"{name}.zarr", padding=padding,
                                      on_case=_tick(advance),
                                      attrs={"model": name, "label": f"{ARCH_LABELS[arch]} ({preset})"})
                record["checks"][f"offline_vs_online_{arch}"] = offline_agreement(store, frames[arch])
            # One case at no padding and at the largest amount: attention on the anatomy, side by side.
            amounts = sorted({0, max(settings.paddings)})
            with steps.step(f"attention stores {name}", total=len(amounts), unit="forwards") as advance:
                for amount in amounts:
                    capture_store(model, longest[arch][:1], out / "capture" / f"{name}-attention-p{amount}.zarr",
                                  padding=amount, taps=(f"{ATTENTION_BLOCK[arch]}.attn",), dtype="float16",
                                  attrs={"model": name, "label": f"{ARCH_LABELS[arch]} ({preset})"})
                    advance()

    record["ablation"] = {}
    for arch in settings.backbones:
        name = _label(arch, probe_preset)
        paddings = (0, max(settings.paddings))
        chosen = cases[arch][:settings.ablation_cases] if settings.ablation_cases else cases[arch]
        n_forwards = len(chosen) * len(paddings) * len(ABLATION_INTERVENTIONS)
        with steps.step(f"ablation {name}", total=n_forwards, unit="forwards") as advance:
            record["ablation"][arch] = ablation(
                _load(tuned[(arch, probe_preset)], arch, settings.model_preset), chosen,
                paddings=paddings, out_dir=out / "ablation" / name, seed=settings.seed,
                info={"model": name, "label": f"{ARCH_LABELS[arch]} ({probe_preset})", "arch": arch,
                      "checkpoint": str(tuned[(arch, probe_preset)]), "roi": list(cube[arch])},
                on_step=lambda *_a, advance=advance: advance())

    for arch in settings.backbones:
        n_inputs = len(cka_inputs[arch])
        # the random-init baseline runs once per backbone: it is the same for every fine-tuned target
        passes = len(settings.presets) + settings.cka_baseline_seeds
        with steps.step(f"CKA {arch}", total=passes * n_inputs * settings.cka_crops, unit="crops") as advance:
            ref_model = _load(ct[arch], arch, settings.model_preset)
            baseline = None
            for preset in settings.presets:
                tgt_model = _load(tuned[(arch, preset)], arch, settings.model_preset)
                matrix = block_cka(ref_model, tgt_model, cka_inputs[arch], crops=settings.cka_crops, crop_size=None,
                                   seed=settings.seed, names=(f"ct-{arch}", _label(arch, preset)),
                                   baseline_seeds=settings.cka_baseline_seeds if baseline is None else 0,
                                   on_case=_tick(advance, settings.cka_crops))
                baseline = share_baseline(matrix, baseline)
                save_cka(matrix, out / "cka" / _label(arch, preset))

    eval_models: list[tuple[str, str, Path]] = [(arch, CT_ONLY, ct[arch]) for arch in settings.backbones]
    eval_models += [(arch, preset, tuned[(arch, preset)]) for arch in settings.backbones for preset in settings.presets]
    n_eval = len(list_labelled(mri, split=test_split, limit=settings.eval_cases))
    for arch, preset, checkpoint in eval_models:
        name = _label(arch, "ct" if preset == CT_ONLY else preset)
        with steps.step(f"evaluate {name}", total=n_eval, unit="cases") as advance:
            roi = aniso[arch] if preset == "act" else cube[arch]
            results = evaluate_model(_load(checkpoint, arch, settings.model_preset), mri, roi=roi,
                                     spacing_mm=settings.spacing_mm, split=test_split, limit=settings.eval_cases,
                                     on_case=_tick(advance),
                                     overlay=out / "eval" / name / "overlay.npz")
            write_evaluation(results, out / "eval" / name,
                             info={"model": str(checkpoint), "preset": preset, "backbone": ARCH_LABELS[arch],
                                   "arch": arch, "roi": list(roi), "split": test_split})

    with steps.step("token efficiency", total=len(settings.backbones), unit="backbones") as advance:
        recommendations = {}
        for arch in settings.backbones:
            extents, efficiency, rec = crop_efficiency(mri, arch=arch, model_preset=settings.model_preset,
                                                       spacing_mm=settings.spacing_mm)
            folder = out / "extent" / arch
            folder.mkdir(parents=True, exist_ok=True)
            extents.to_csv(folder / "extent.csv", index=False)
            efficiency.to_csv(folder / "efficiency.csv", index=False)
            recommendations[arch] = {"roi": list(rec.roi), "reason": rec.reason,
                                     "stage0_efficiency": rec.stage0_efficiency,
                                     "axial_quantile_mm": rec.axial_quantile_mm, "coverage": rec.coverage}
            advance()
        record["recommendations"] = recommendations

    with steps.step("tumor clusters"):
        wide, clustering = tumor_table(mri, phantoms_json=out / "data" / "phantoms.json")
        (out / "tumors").mkdir(parents=True, exist_ok=True)
        wide.to_csv(out / "tumors" / "tumors.csv", index=False)
        record["tumors"] = {"k": int(clustering.k), "silhouette": {str(k): v for k, v in clustering.silhouette.items()},
                            "features": list(clustering.features)}

    models_toml: dict[str, dict[str, Any]] = {}
    for arch in settings.backbones:
        models_toml[f"ct-{arch}"] = {"arch": arch, "checkpoint": ct[arch], "roi": list(cube[arch])}
        for preset in settings.presets:
            models_toml[_label(arch, preset)] = {"arch": arch, "checkpoint": tuned[(arch, preset)],
                                                 "roi": list(aniso[arch] if preset == "act" else cube[arch])}
    write_workspace(out / "attnprobe.toml", models=models_toml,
                    datasets={"mri": {"path": mri, "split": test_split},
                              "mri-all": {"path": mri, "split": "all"},
                              "ct": {"path": datalists["ct"], "split": test_split}})

    with steps.step("figures", unit="figure groups") as advance:
        figures = draw_figures(out, out / "figures", fmt=figure_format,  # type: ignore[arg-type]
                               on_group=lambda done, total: advance(done, total))

    record["timings"] = dict(steps.timings)
    record["cpu_timings"] = dict(steps.cpu_timings)
    record["seconds_before_report"] = time.perf_counter() - t_start
    record["machine"]["load_average_end"] = _load_average()
    record["cpu_seconds_before_report"] = _cpu_seconds() - cpu_start
    record["process_seconds_before_report"] = _process_seconds()
    (out / "demo.json").write_text(json.dumps(record, indent=1, default=str))
    with steps.step("report"):
        md, html = write_report(out, figures=figures)
    seconds = time.perf_counter() - t_start
    record["timings"] = dict(steps.timings)
    record["cpu_timings"] = dict(steps.cpu_timings)
    record["seconds"] = seconds
    record["cpu_seconds"] = _cpu_seconds() - cpu_start
    record["process_seconds"] = _process_seconds()
    (out / "demo.json").write_text(json.dumps(record, indent=1, default=str))
    return DemoResult(out_dir=out, report_md=md, report_html=html, figures=tuple(f.path for f in figures),
                      seconds=seconds, timings=dict(steps.timings))


def list_labelled(data: str | os.PathLike[str], *, split: str, limit: int | None) -> list[Any]:
    """The labelled cases of a datalist split that :func:`evaluate_model` scores (first ``limit``)."""
    from attnprobe.workflows.evaluation import labelled_cases

    return labelled_cases(data, split=split, limit=limit)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children (s)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _process_seconds() -> float | None:
    """Wall time since this process started (imports included), where the platform tells it."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as fh:
            start = int(fh.read().rsplit(")", 1)[1].split()[19]) / ticks
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        return None


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_start": _load_average()}


