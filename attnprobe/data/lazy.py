"""Cases that are preprocessed on first use (each torchrun rank prepares only its share)."""

from __future__ import annotations

from functools import cached_property

import torch

from attnprobe.data.io import CaseRef
from attnprobe.data.preprocess import PreparedCase, PreprocessConfig, prepare_case


class LazyCase:
    """A :class:`CaseRef` plus its preprocessing, run the first time it is needed."""

    def __init__(self, ref: CaseRef, config: PreprocessConfig) -> None:
        self.ref = ref
        self.config = config
        self.case_id = ref.case_id

    @cached_property
    def prepared(self) -> PreparedCase:
        return prepare_case(self.ref, self.config)

    @property
    def image(self) -> torch.Tensor:
        return self.prepared.image

    @property
    def mask(self) -> torch.Tensor:
        return self.prepared.mask

    @property
    def label(self) -> torch.Tensor | None:
        return self.prepared.label

    def __repr__(self) -> str:
        return f"LazyCase({self.case_id!r})"
