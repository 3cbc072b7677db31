"""The ``nn.Module`` behind every loss module: validated hyper-parameters, the pure loss
function called with them (see :class:`~tripletkit._module.HyperParameters`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from .._module import HyperParameters

__all__ = ["LossModule"]


class LossModule(HyperParameters):
    """Base class: ``loss(embeddings, labels, ref_embeddings=None, ref_labels=None)`` calls
    :attr:`function` with the module's hyper-parameters. Losses over explicit triplets or
    pairs override :meth:`forward` to take them as a third argument."""

    function: ClassVar[Callable[..., Tensor]]

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        *,
        anchor_offset: int | None = None,
    ) -> Tensor:
        return type(self).function(
            embeddings,
            labels,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
            anchor_offset=anchor_offset,
            **self.options(),
        )
