"""Cross-batch memory of past embeddings (XBM).

Wang, Zhang, Huang & Scott (2020), "Cross-Batch Memory for Embedding Learning": once the
embedding drifts slowly, embeddings of recent batches are still good stand-ins for the
current model's, so a queue of them gives every anchor far more positives and negatives to
mine from than one batch holds, at the cost of memory only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ._checks import check_embeddings, check_labels, check_positive_int

__all__ = ["CrossBatchMemory"]


class CrossBatchMemory:
    """A ring buffer of detached embeddings and their labels (XBM, Wang et al. 2020).

    The memory holds the last ``size`` enqueued rows. Stored embeddings are detached copies:
    no gradient flows into the memory and the caller's tensors are never aliased. Embeddings
    of another floating dtype are cast to the memory's ``dtype``; a batch on another device
    is refused (create the memory with ``device=`` instead, so that no hidden host/device
    copy runs every step).

    Usage: compute the loss of the batch against itself, plus the loss of the batch's anchors
    against the memory, reading the memory *before* enqueueing the current batch so that
    anchors never meet themselves; then enqueue the batch::

        from tripletkit.losses import batch_hard_triplet_loss

        memory = CrossBatchMemory(size=8192, dim=128, device="cuda")
        for images, labels in loader:
            emb = model(images)
            loss = batch_hard_triplet_loss(emb, labels)
            if len(memory) > 0:
                mem_emb, mem_labels = memory.get()
                loss = loss + batch_hard_triplet_loss(
                    emb, labels, ref_embeddings=mem_emb, ref_labels=mem_labels
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            memory.enqueue(emb.detach(), labels)

    Any tripletkit loss or miner that takes ``ref_embeddings`` / ``ref_labels`` works the
    same way; the anchors are not among the references, so no ``anchor_offset`` is needed.
    XBM starts using the memory only after a warm-up of some iterations, when the embedding
    has stopped changing fast. With DistributedDataParallel, gather the batch from every
    replica (``torch.distributed.all_gather``) and enqueue the gathered batch on every
    replica; the memories then stay identical across replicas and nothing else changes.

    Args:
        size: number of rows the memory keeps.
        dim: embedding width ``D``.
        device: device of the memory (default: torch's default device, normally the CPU).
        dtype: floating dtype of the stored embeddings.

    Shape:
        - enqueue: embeddings ``[B, D]``, labels ``[B]`` (integer) or multi-hot ``[B, C]``.
        - get: embeddings ``[L, D]`` in ``dtype``, labels ``[L]`` int64 (or bool
          ``[L, C]``), oldest row first,
          with ``L = len(memory) <= size``.

    Examples:
        >>> memory = CrossBatchMemory(size=3, dim=2)
        >>> memory.enqueue(torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1]))
        >>> memory.enqueue(torch.tensor([[2.0, 2.0], [3.0, 3.0]]), torch.tensor([2, 3]))
        >>> emb, labels = memory.get()
        >>> labels.tolist(), len(memory), memory.is_full
        ([1, 2, 3], 3, True)
        >>> emb[:, 0].tolist()
        [1.0, 2.0, 3.0]
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.size = check_positive_int(size, "size")
        self.dim = check_positive_int(dim, "dim")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.dtype = dtype
        self._embeddings = torch.zeros(self.size, self.dim, dtype=dtype, device=device)
        # The buffer's device, so that "cuda" resolves to the "cuda:0" the batches report.
        self.device = self._embeddings.device
        self._labels = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        self._next = 0  # row the next enqueued row is written to
        self._filled = 0

    def __len__(self) -> int:
        """Number of rows filled, at most ``size``."""
        return self._filled

    @property
    def is_full(self) -> bool:
        """Whether ``size`` rows have been enqueued (older rows are now being overwritten)."""
        return self._filled == self.size

    def reset(self) -> None:
        """Forget every stored row."""
        self._embeddings.zero_()
        self._labels.zero_()
        self._next = 0
        self._filled = 0

    def enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        """Append a batch, overwriting the oldest rows once the memory is full.

        A batch larger than ``size`` keeps only its last ``size`` rows. The embeddings are
        detached, copied and cast to the memory dtype; they must be on the memory's device,
        with ``dim`` features and finite values.

        Args:
            embeddings: ``[B, D]`` floating tensor.
            labels: ``[B]`` integer tensor on the same device, or multi-hot ``[B, L]``
                (stored as bool ``[size, L]``; an empty memory takes the kind of its first
                batch).
        """
        if isinstance(embeddings, Tensor) and embeddings.device != self.device:
            raise ValueError(
                f"embeddings are on {embeddings.device} but the memory is on {self.device}; "
                "create the memory with device= matching the embeddings"
            )
        emb = check_embeddings(embeddings)
        if emb.shape[1] != self.dim:
            raise ValueError(
                f"embeddings have {emb.shape[1]} features but the memory has dim={self.dim}"
            )
        lab = check_labels(labels, emb.shape[0], emb.device, multi_hot=True)
        self._fit_labels(lab)
        emb = emb.detach().to(self.dtype)
        n = emb.shape[0]
        if n == 0:
            return
        if n >= self.size:
            self._embeddings.copy_(emb[n - self.size :])
            self._labels.copy_(lab[n - self.size :])
            self._next = 0
            self._filled = self.size
            return
        first = min(n, self.size - self._next)
        end = self._next + first
        self._embeddings[self._next : end].copy_(emb[:first])
        self._labels[self._next : end].copy_(lab[:first])
        rest = n - first
        if rest:
            self._embeddings[:rest].copy_(emb[first:])
            self._labels[:rest].copy_(lab[first:])
        self._next = (self._next + n) % self.size
        self._filled = min(self.size, self._filled + n)

    def _fit_labels(self, lab: Tensor) -> None:
        """Class labels ``[B]`` or multi-hot ``[B, L]``: an empty memory takes the kind of
        its first batch; a filled one refuses the other kind."""
        if lab.shape[1:] == self._labels.shape[1:]:
            return
        if self._filled:
            raise ValueError(
                f"the memory holds labels of shape [*, {', '.join(map(str, self._labels.shape[1:]))}] "
                f"(class labels: [*]) but the batch's are {tuple(lab.shape)}; reset() it first"
            )
        self._labels = torch.zeros((self.size, *lab.shape[1:]), dtype=lab.dtype, device=self.device)

    def get(self) -> tuple[Tensor, Tensor]:
        """The stored rows, oldest first: ``(embeddings [L, D], labels [L])``.

        The tensors are new copies, so they stay valid (for example in an autograd graph)
        after later :meth:`enqueue` calls.
        """
        if self._filled < self.size:
            return (
                self._embeddings[: self._filled].clone(),
                self._labels[: self._filled].clone(),
            )
        order = torch.arange(self.size, device=self.device).add_(self._next).remainder_(self.size)
        return self._embeddings[order], self._labels[order]

    def state_dict(self) -> dict[str, object]:
        """The memory's contents, to resume training exactly (``torch.save`` it with the
        model): ``size``, ``dim``, ``embeddings [L, D]`` and ``labels [L]`` oldest first (on
        the memory's device, in its dtype)."""
        embeddings, labels = self.get()
        return {"size": self.size, "dim": self.dim, "embeddings": embeddings, "labels": labels}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Restore a :meth:`state_dict`: :meth:`get` then returns the saved rows, and later
        :meth:`enqueue` calls overwrite them in the saved order. Rows saved on another device
        or in another dtype are copied to the memory's (once, here).

        Raises:
            ValueError: a state of a memory with another ``size`` or ``dim``, or missing keys.
        """
        missing = {"size", "dim", "embeddings", "labels"} - set(state)
        if missing:
            raise ValueError(f"not a CrossBatchMemory state: missing {sorted(missing)}")
        if (state["size"], state["dim"]) != (self.size, self.dim):
            raise ValueError(
                f"the state is of a memory with size={state['size']}, dim={state['dim']}; "
                f"this one has size={self.size}, dim={self.dim}"
            )
        emb = torch.as_tensor(state["embeddings"]).to(self.device, self.dtype)
        lab = torch.as_tensor(state["labels"])
        lab = lab.to(self.device, torch.bool if lab.dim() == 2 else torch.int64)
        filled = emb.shape[0]
        if emb.shape != (filled, self.dim) or lab.shape[:1] != (filled,) or filled > self.size:
            raise ValueError(
                f"the state's embeddings {tuple(emb.shape)} and labels {tuple(lab.shape)} do "
                f"not fit a memory of size={self.size}, dim={self.dim}"
            )
        self.reset()
        self._fit_labels(lab)
        self._embeddings[:filled].copy_(emb)
        self._labels[:filled].copy_(lab)
        self._filled = filled
        self._next = filled % self.size

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, dim={self.dim}, filled={self._filled}, "
            f"device={self.device}, dtype={self.dtype})"
        )
