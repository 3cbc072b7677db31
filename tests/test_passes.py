"""Passes over ``N x M`` data on the torch path, counted by :mod:`benchmarks.passes` (bytes of
``N x M``-sized tensors read or written, in float32 ``N x M`` arrays), pinned as multiples of
``torch.cdist`` forward + backward counted the same way: N = 1,024, D = 128, checks off,
K = 8 and 64, with the width (``max_positives=K - 1``) and without it (the module forms,
which remember the width and verify it on the device).

The counter itself is checked on operations whose traffic is known by hand.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FUSED, MODULES

import tripletkit
from benchmarks.passes import PassCounter, cdist_passes, count_passes

N = 1024
#: The issue's targets, as multiples of cdist's passes.
TARGETS = {"batch_hard": 1.4, "semi_hard": 4.0, "batch_all": 3.0}
FUNCTIONS = FUSED


# ---------------------------------------------------------------------------------------------
# The counter


def _count(fn, n: int = 64, m: int = 32) -> PassCounter:
    with PassCounter(n, m) as counter:
        fn()
    return counter


def test_counter_counts_reads_and_writes_in_float32_matrices() -> None:
    a, b = torch.randn(64, 32), torch.randn(64, 32)
    assert _count(lambda: a + b).passes == 3  # two reads, one write
    assert _count(lambda: a.double()).passes == 3  # one read, a write of twice the bytes
    assert _count(lambda: a > b).passes == 2.25  # a bool write is a quarter
    assert _count(lambda: a.add_(b)).passes == 2  # self read and written: counted once
    assert _count(lambda: a.sum()).passes == 1


def test_counter_skips_views_small_tensors_and_expanded_storage() -> None:
    a = torch.randn(64, 32)
    assert _count(lambda: (a.t(), a[:10], a.view(-1), a.detach())).passes == 0
    assert _count(lambda: a[:10] * 2).passes == 0  # a chunk smaller than N x M
    ones = torch.ones(()).expand(64, 32)  # stride 0: one element of storage
    assert _count(lambda: a * ones).passes == pytest.approx(2, abs=1e-3)
    assert _count(lambda: torch.empty(64, 32)).passes == 0  # allocates, writes nothing


def test_counter_counts_indexed_reads_and_writes_by_what_they_touch() -> None:
    a = torch.randn(64, 32)
    idx = torch.zeros(64, 1, dtype=torch.int64)
    assert _count(lambda: a.gather(1, idx)).passes == 64 / a.numel()  # 64 elements of a
    assert _count(lambda: a.scatter_(1, idx, 1.0)).passes == 64 / a.numel()
    full = torch.zeros(64, 32, dtype=torch.int64)
    assert _count(lambda: a.gather(1, full)).passes == 1 + 2 + 1  # source, index, output


def test_count_passes_sees_the_kernels_in_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch kernels chunk over anchors; a chunk is smaller than N x M and would not be
    seen: :func:`count_passes` runs them in one chunk."""
    from tripletkit.kernels import torch_backend

    monkeypatch.setattr(torch_backend, "_CPU_CHUNK_ELEMENTS", 1024)  # 16 rows a chunk
    x, y = torch.randn(64, 8), torch.arange(64) // 4
    dist = torch.cdist(x, x)

    def kernel() -> None:
        torch_backend.batch_all_hinge(dist, y, y, torch.arange(64), 0.2, 3)

    assert len(torch_backend._chunks(64, 64 * 4, dist.device)) > 1
    assert count_passes(kernel, 64, 64, one_chunk=False) == 0
    assert count_passes(kernel, 64, 64) > 5


# ---------------------------------------------------------------------------------------------
# The pinned counts


@pytest.fixture(scope="module")
def cdist() -> float:
    return cdist_passes(N)


def _inputs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(k)
    y = (torch.arange(N) // k)[torch.randperm(N, generator=gen)]
    return torch.randn(N, 128, generator=gen).requires_grad_(), y


@pytest.mark.parametrize("width", [True, False], ids=["width", "module-no-width"])
@pytest.mark.parametrize("k", [8, 64])
@pytest.mark.parametrize("loss", tuple(TARGETS))
def test_passes_within_the_targets(loss: str, k: int, width: bool, cdist: float) -> None:
    x, y = _inputs(k)
    if width:

        def step() -> None:
            FUNCTIONS[loss](x, y, backend="torch", max_positives=k - 1).backward()

    else:
        module = MODULES[loss](backend="torch")

        def step() -> None:
            module(x, y).backward()

    with tripletkit.set_input_checks(False):
        step()  # the module's first call reads the width
        passes = count_passes(step, N, N)
    assert passes <= TARGETS[loss] * cdist, f"{passes:.1f} passes, {passes / cdist:.2f}x cdist"


def test_cdist_reference_is_a_handful_of_passes(cdist: float) -> None:
    """Guard: the reference is what the counter should see for cdist (product, clean-up,
    backward), so that the targets above are not met by a counter that sees nothing."""
    assert 8 <= cdist <= 16
