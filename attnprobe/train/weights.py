"""The weights a training run starts from: an ``init`` checkpoint, or reproducible random weights."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from attnprobe.errors import ConfigError
from attnprobe.models.checkpoints import LoadReport, load_checkpoint
from attnprobe.models.registry import adapter_for, build_model, model_config
from attnprobe.train.presets import TrainConfig, get_preset

__all__ = ["initial_model"]


def initial_model(config: TrainConfig, *, allow_random_init: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[nn.Module, LoadReport | None]:
    """The model a run starts from: the ``init`` checkpoint, or random weights.

    Seeds with ``set_determinism(config.seed)`` first, so random weights (all of them, or the
    layers the checkpoint lacks) are reproducible. A checkpoint whose output layer has another
    number of classes keeps everything but that layer (reported through ``log``). The model's
    config ROI is set to the training crop, so later tools use the ROI it was trained with.

    Raises
    ------
    ConfigError
        A pretrained preset without ``init`` (unless ``allow_random_init``).
    CheckpointError
        An ``init`` that does not load (see :func:`attnprobe.models.load_checkpoint`).
    """
    from monai.utils import set_determinism

    log = log or (lambda _msg: None)
    spec = get_preset(config.preset)
    set_determinism(seed=config.seed)
    report = None
    if config.init is None:
        if spec.pretrained and not allow_random_init:
            raise ConfigError(f"preset {config.preset!r} starts from pretrained weights but no init was given",
                              expected="init=NAME|PATH (a model in attnprobe.toml or a checkpoint)",
                              got="init=None", fix="pass --init ct (or --init none to train from random weights, "
                                                   "or use --preset scratch)")
        model = build_model(config.arch, preset=config.model_preset, out_channels=config.n_classes)
    else:
        from attnprobe.workspace import resolve_model

        ref = resolve_model(config.init)
        model, report = load_checkpoint(ref.checkpoint, config.arch, preset=config.model_preset,
                                        compat=config.init_compat)
        log(f"init {ref.name}: {report.summary()}")
        if report.notice:
            log(f"note: {report.notice}")
        if int(model_config(model).get("out_channels", config.n_classes)) != config.n_classes:
            model = _replace_head(model, config, log)
    # nn.Module.__setattr__ is typed for tensors and modules only; this is a plain attribute
    model.attnprobe_config = {**model_config(model), "roi": tuple(config.roi)}  # type: ignore[assignment]
    return model.train(), report


def _replace_head(model: nn.Module, config: TrainConfig, log: Callable[[str], None]) -> nn.Module:
    fresh = build_model(adapter_for(model).name, preset=config.model_preset,
                        **{**model_config(model), "out_channels": config.n_classes})
    old, new = model.state_dict(), fresh.state_dict()
    keep = {k: v for k, v in old.items() if k in new and new[k].shape == v.shape}
    dropped = sorted(set(old) - set(keep))
    fresh.load_state_dict(keep, strict=False)
    log(f"output layer re-initialised for {config.n_classes} classes (dropped {dropped})")
    return fresh
