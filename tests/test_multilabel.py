"""Multi-label data and custom relations (issue 19 item 5): multi-hot labels ``[N, L]`` and
explicit ``positive_mask`` / ``negative_mask`` ``[N, M]``, for every fused loss, miner and
pair loss, both backends, against the brute-force references of ``tests/reference.py``
(generalised to a relation: :func:`reference.relation`), values and gradients in float64;
single-label data written as one-hot gives exactly today's results."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import reference
import torch
from conftest import CASES, VALUE_TOL, Case, check_loss, leaves_of, value_and_grads
from torch import Tensor

import tripletkit
from tripletkit import losses, miners, stats
from tripletkit.memory import CrossBatchMemory

BACKENDS = ("torch", "numba")
MARGIN = 0.3


def _multi_hot(g: torch.Generator, n: int, labels: int, density: float = 0.35) -> Tensor:
    return (torch.rand(n, labels, generator=g) < density).to(torch.int64)


def _ml_cases() -> dict[str, Case]:
    """Multi-hot batches with the awkward layouts: a sample without labels, every sample
    sharing one label, all disjoint, empty, duplicates, reference sets with and without
    the anchors among them (anchor_offset)."""
    g = torch.Generator().manual_seed(19)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    out = []
    lab = _multi_hot(g, 10, 4)
    lab[3] = 0  # a sample without labels: a negative of everyone, a positive of no one
    out.append(Case("generic", randn(10, 4), lab))
    shared = _multi_hot(g, 6, 3)
    shared[:, 0] = 1
    out.append(Case("one_shared_label", randn(6, 3), shared))
    out.append(Case("all_disjoint", randn(5, 3), torch.eye(5, dtype=torch.int64)))
    out.append(Case("no_labels", randn(4, 3), torch.zeros(4, 3, dtype=torch.int64)))
    out.append(Case("empty", randn(0, 3), torch.zeros(0, 4, dtype=torch.int64)))
    x = randn(8, 3)
    x[1] = x[0]
    x[4] = x[3]
    dup = _multi_hot(g, 8, 3, 0.5)
    dup[1] = dup[0]
    out.append(Case("duplicates", x, dup))
    ref = randn(9, 3)
    ref_lab = _multi_hot(g, 9, 4)
    out.append(Case("refs", randn(5, 3), _multi_hot(g, 5, 4), ref, ref_lab))
    out.append(Case("refs_offset", ref[2:7].clone(), ref_lab[2:7].clone(), ref, ref_lab, 2))
    return {c.name: c for c in out}


ML_CASES = _ml_cases()


@dataclasses.dataclass(frozen=True)
class MaskCase:
    """An explicit relation: anchors, an optional reference set and the two masks
    (random, disjoint, with pairs in neither; the own pair marked positive on purpose)."""

    name: str
    x: Tensor
    ref: Tensor | None
    offset: int | None
    pos: Tensor
    neg: Tensor

    def leaves(self) -> tuple[Tensor, Tensor | None]:
        x = self.x.clone().requires_grad_()
        return x, None if self.ref is None else self.ref.clone().requires_grad_()

    def kwargs(self, ref: Tensor | None) -> dict:
        out: dict = {"positive_mask": self.pos, "negative_mask": self.neg}
        if self.ref is not None:
            out["ref_embeddings"] = ref
        if self.offset is not None:
            out["anchor_offset"] = self.offset
        return out


def _mask_cases() -> dict[str, MaskCase]:
    g = torch.Generator().manual_seed(5)
    out = []
    for name, n, m, has_ref, offset in [
        ("self", 9, 9, False, None),
        ("refs", 5, 8, True, None),
        ("refs_offset", 5, 9, True, 3),
    ]:
        draw = torch.rand(n, m, generator=g)
        pos, neg = draw < 0.3, draw > 0.55  # the middle band: neither
        if not has_ref or offset is not None:
            own = torch.arange(n) + (offset or 0)
            pos[torch.arange(n), own] = True  # the own pair: never used, whatever it says
            neg[torch.arange(n), own] = False
        x = torch.randn(n, 3, generator=g, dtype=torch.float64)
        ref = torch.randn(m, 3, generator=g, dtype=torch.float64) if has_ref else None
        if offset is not None:
            assert ref is not None
            ref[offset : offset + n] = x
        out.append(MaskCase(name, x, ref, offset, pos, neg))
    return {c.name: c for c in out}


MASK_CASES = _mask_cases()

FUSED = {
    "batch_all": losses.batch_all_triplet_loss,
    "batch_hard": losses.batch_hard_triplet_loss,
    "semi_hard": losses.semi_hard_triplet_loss,
}
VARIANTS = {"hinge": {}, "soft": {"soft_margin": True}, "smooth": {"smooth": True}}


def _expected(kind: str, variant: str, x: Tensor, labels, ref, ref_labels, **kw) -> Tensor:
    return reference.fused_loss(
        kind,
        x,
        labels,
        ref,
        ref_labels,
        margin=MARGIN,
        reduction="sum",
        soft_margin=variant == "soft",
        smooth=variant == "smooth",
        **kw,
    )


@pytest.mark.parametrize("name", tuple(ML_CASES))
@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("variant", tuple(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_multi_hot_matches_reference(
    name: str, kind: str, variant: str, backend: str
) -> None:
    c = ML_CASES[name]
    x, ref = c.leaves()
    out = FUSED[kind](
        x,
        c.labels,
        MARGIN,
        reduction="sum",
        backend=backend,
        **VARIANTS[variant],
        **c.ref_kwargs(ref),
    )
    x2, ref2 = c.leaves()
    exp = _expected(kind, variant, x2, c.labels, ref2, c.ref_labels, anchor_offset=c.anchor_offset)
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


@pytest.mark.parametrize("name", tuple(MASK_CASES))
@pytest.mark.parametrize("kind", tuple(FUSED))
@pytest.mark.parametrize("variant", tuple(VARIANTS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_masks_match_reference(name: str, kind: str, variant: str, backend: str) -> None:
    c = MASK_CASES[name]
    x, ref = c.leaves()
    out = FUSED[kind](
        x, None, MARGIN, reduction="sum", backend=backend, **VARIANTS[variant], **c.kwargs(ref)
    )
    x2, ref2 = c.leaves()
    exp = _expected(
        kind,
        variant,
        x2,
        None,
        ref2,
        None,
        anchor_offset=c.offset,
        positive_mask=c.pos,
        negative_mask=c.neg,
    )
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


@pytest.mark.parametrize("kind", ["batch_all", "semi_hard"])
@pytest.mark.parametrize("name", ["generic", "refs_offset"])
def test_torch_width_free_paths_with_multi_hot(kind: str, name: str) -> None:
    """With the input checks off and no bound the torch kernels take their width-free paths
    (sorted rows instead of positive slots): the same values."""
    c = ML_CASES[name]
    x, ref = c.leaves()
    with tripletkit.set_input_checks(False):
        out = FUSED[kind](
            x, c.labels, MARGIN, reduction="sum", backend="torch", **c.ref_kwargs(ref)
        )
    x2, ref2 = c.leaves()
    exp = _expected(kind, "hinge", x2, c.labels, ref2, c.ref_labels, anchor_offset=c.anchor_offset)
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


@pytest.mark.parametrize("kind", tuple(FUSED))
def test_torch_relations_make_no_host_read(kind: str) -> None:
    """The GPU path with a relation: with the input checks off, a fused loss on the torch
    backend reads nothing back from the device, forward and backward, given multi-hot
    labels or explicit masks, on the width-free path and with ``max_positives``, in-batch
    and with a reference set (``syncs.count_syncs``, as ``test_sync_free.py`` does), and
    gives the value of the checked call. With the checks on the counter sees their read:
    it is not blind to this path."""
    from syncs import count_syncs

    fn = FUSED[kind]
    relations: list[tuple[str, Callable, Tensor | None, dict]] = []
    for name in ("generic", "refs_offset"):
        c = ML_CASES[name]
        relations.append((f"multi_hot-{name}", c.leaves, c.labels, c.ref_kwargs()))
    for m in MASK_CASES.values():
        relations.append((f"masks-{m.name}", m.leaves, None, m.kwargs(m.ref)))
    for label, leaves, labels, options in relations:
        x, ref = leaves()
        references = x.shape[0] if ref is None else ref.shape[0]
        for bound in (None, references):  # the width-free path, then a bound that holds
            x, ref = leaves()
            kw = options if ref is None else {**options, "ref_embeddings": ref}

            def call(x=x, labels=labels, bound=bound, kw=kw) -> Tensor:
                return fn(x, labels, backend="torch", max_positives=bound, **kw)

            with tripletkit.set_input_checks(False):
                unchecked = call()
                counter = count_syncs(lambda call=call: call().backward())
            assert counter.total == 0, (label, bound, dict(counter.counts))
            counter = count_syncs(lambda call=call: call().backward())
            assert counter.total >= 1, (label, bound)
            torch.testing.assert_close(unchecked, call(), **VALUE_TOL)


# ----------------------------------------------------------------------------- miners


def _problem(c: Case) -> reference.Problem:
    return reference.problem(c.x, c.labels, c.ref, c.ref_labels, anchor_offset=c.anchor_offset)


def _mask_problem(c: MaskCase) -> reference.Problem:
    return reference.problem(
        c.x, None, c.ref, None, anchor_offset=c.offset, positive_mask=c.pos, negative_mask=c.neg
    )


def _triplet_miners(pb: reference.Problem) -> dict:
    """Miner function (name, options) -> the reference's triplets."""
    out = {
        ("batch_all_triplets", (("active_only", False),)): pb.valid(),
        (
            "batch_all_triplets",
            (("margin", MARGIN), ("active_only", True)),
        ): reference.region_triplets(pb, MARGIN, "active"),
        ("batch_hard_triplets", ()): reference.batch_hard_triplets(pb),
        (
            "batch_hard_triplets",
            (("positive_ranks", (0, 2)), ("negative_ranks", (1, 3))),
        ): reference.ranked_triplets(pb, (0, 2), (1, 3)),
        ("semi_hard_triplets", ()): reference.semi_hard_triplets(pb),
    }
    for region in ("all", "hard", "semihard", "easy"):
        out[("triplet_margin_triplets", (("margin", MARGIN), ("type_of_triplets", region)))] = (
            reference.region_triplets(pb, MARGIN, region)
        )
    return out


def _sorted_if_unordered(name: str, triplets: list) -> list:
    return sorted(triplets) if name == "batch_all_triplets" else triplets


@pytest.mark.parametrize("name", tuple(ML_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_triplet_miners_multi_hot_match_reference(name: str, backend: str) -> None:
    c = ML_CASES[name]
    for (fn, options), expected in _triplet_miners(_problem(c)).items():
        got = getattr(miners, fn)(c.x, c.labels, backend=backend, **dict(options), **c.ref_kwargs())
        assert _sorted_if_unordered(fn, reference.as_list(got)) == _sorted_if_unordered(
            fn, expected
        ), (fn, options)
    counts = stats.triplet_stats(c.x, c.labels, MARGIN, backend=backend, **c.ref_kwargs())
    assert tuple(counts) == reference.counts(_problem(c), MARGIN)


@pytest.mark.parametrize("name", tuple(MASK_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_triplet_miners_masks_match_reference(name: str, backend: str) -> None:
    c = MASK_CASES[name]
    for (fn, options), expected in _triplet_miners(_mask_problem(c)).items():
        got = getattr(miners, fn)(c.x, None, backend=backend, **dict(options), **c.kwargs(c.ref))
        assert _sorted_if_unordered(fn, reference.as_list(got)) == _sorted_if_unordered(
            fn, expected
        ), (fn, options)
    counts = stats.triplet_stats(c.x, None, MARGIN, backend=backend, **c.kwargs(c.ref))
    assert tuple(counts) == reference.counts(_mask_problem(c), MARGIN)


def _sampling(c: Case) -> reference.SamplingProblem:
    return reference.SamplingProblem(c.x, c.labels, c.ref, c.ref_labels, c.anchor_offset)


def _pairs(p) -> tuple[list, list]:
    return (
        list(zip(p.anchor_pos.tolist(), p.positive.tolist(), strict=True)),
        list(zip(p.anchor_neg.tolist(), p.negative.tolist(), strict=True)),
    )


@pytest.mark.parametrize("name", tuple(ML_CASES))
def test_pair_miners_multi_hot_match_reference(name: str) -> None:
    c = ML_CASES[name]
    p = _sampling(c)
    for metric in ("cosine", "euclidean"):
        got = miners.multi_similarity_pairs(c.x, c.labels, 0.1, metric, **c.ref_kwargs())
        assert _pairs(got) == reference.ms_loop(p, 0.1, metric)
        got = miners.pair_margin_pairs(c.x, c.labels, 0.5, 1.5, metric, **c.ref_kwargs())
        assert _pairs(got) == reference.pm_loop(p, 0.5, 1.5, metric)


def _mask_sampling(c: MaskCase, *, negative: bool = True) -> reference.SamplingProblem:
    """The explicit relation of ``c`` as a :class:`reference.SamplingProblem` (labels
    ``None``); ``negative=False`` gives the positive mask alone (negatives: the other
    pairs)."""
    return reference.SamplingProblem(
        c.x,
        None,  # type: ignore[arg-type]
        c.ref,
        None,
        c.offset,
        c.pos,
        c.neg if negative else None,
    )


@pytest.mark.parametrize("negative", [True, False], ids=["both_masks", "positive_mask_only"])
@pytest.mark.parametrize("name", tuple(MASK_CASES))
def test_pair_miners_masks_match_reference(name: str, negative: bool) -> None:
    """Multi-similarity and pair-margin pairs of an explicit relation (pairs in neither
    mask ignored, the own pair never used) equal the loops of ``reference.ms_loop`` /
    ``reference.pm_loop`` over the relation's positives and negatives."""
    c = MASK_CASES[name]
    p = _mask_sampling(c, negative=negative)
    kw = c.kwargs(c.ref)
    if not negative:
        del kw["negative_mask"]
    for metric in ("cosine", "euclidean"):
        got = miners.multi_similarity_pairs(c.x, None, 0.1, metric, **kw)
        assert _pairs(got) == reference.ms_loop(p, 0.1, metric), (c.name, metric)
        got = miners.pair_margin_pairs(c.x, None, 0.5, 1.5, metric, **kw)
        assert _pairs(got) == reference.pm_loop(p, 0.5, 1.5, metric), (c.name, metric)


@pytest.mark.parametrize("name", tuple(ML_CASES))
def test_sampling_miners_draw_valid_triplets(name: str) -> None:
    """Random and distance-weighted sampling draw only triplets of the relation, one per
    anchor that has a positive and a negative."""
    c = ML_CASES[name]
    pos, neg = reference.roles(_sampling(c))
    x = torch.nn.functional.normalize(c.x, dim=1)
    ref = None if c.ref is None else torch.nn.functional.normalize(c.ref, dim=1)
    kw = c.ref_kwargs(ref)
    for got in (
        miners.random_triplets(x, c.labels, generator=miners.make_generator(1), **kw),
        miners.distance_weighted_triplets(x, c.labels, generator=miners.make_generator(1), **kw),
    ):
        triplets = reference.as_list(got)
        assert all(p in pos[a] and n in neg[a] for a, p, n in triplets)
        assert sorted({a for a, _, _ in triplets}) == [
            a for a in range(len(pos)) if pos[a] and neg[a]
        ]


@pytest.mark.parametrize("name", tuple(MASK_CASES))
def test_sampling_miners_with_masks_draw_valid_triplets(name: str) -> None:
    """Random and distance-weighted sampling of an explicit relation: every drawn triplet is
    in the relation (a positive from ``positive_mask``, a negative from ``negative_mask``,
    never a pair in neither nor the own pair, which the cases mark positive), one row per
    positive pair whose anchor has a negative; ``num_triplets=T`` draws ``T`` valid
    triplets. Several seeds, as the draws are random."""
    c = MASK_CASES[name]
    pos, neg = reference.roles(_mask_sampling(c))
    pairs = sorted((a, p) for a in range(len(pos)) if neg[a] for p in pos[a])
    assert pairs, "a case without a positive pair tests nothing"
    x = torch.nn.functional.normalize(c.x, dim=1)
    ref = None if c.ref is None else torch.nn.functional.normalize(c.ref, dim=1)
    kw = c.kwargs(ref)
    negatives_drawn: set[tuple[int, int]] = set()
    for seed in range(4):
        for got in (
            miners.random_triplets(x, None, generator=miners.make_generator(seed), **kw),
            miners.distance_weighted_triplets(x, None, generator=miners.make_generator(seed), **kw),
        ):
            triplets = reference.as_list(got)
            assert all(p in pos[a] and n in neg[a] for a, p, n in triplets), c.name
            assert sorted((a, p) for a, p, _ in triplets) == pairs, c.name
            negatives_drawn |= {(a, n) for a, _, n in triplets}
        got = miners.random_triplets(x, None, 40, generator=miners.make_generator(seed), **kw)
        triplets = reference.as_list(got)
        assert len(triplets) == 40
        assert all(p in pos[a] and n in neg[a] for a, p, n in triplets), c.name
    # the draws reach beyond one negative per anchor (they are draws, not a fixed choice)
    assert len(negatives_drawn) > len({a for a, _ in pairs})


# ------------------------------------------------------------------------ pair losses

PAIR_KINDS = {
    "multi_similarity": losses.multi_similarity_loss,
    "circle": losses.circle_loss,
    "supcon": losses.supcon_loss,
}


@pytest.mark.parametrize("name", tuple(ML_CASES))
@pytest.mark.parametrize("kind", tuple(PAIR_KINDS))
def test_pair_losses_multi_hot_match_reference(name: str, kind: str) -> None:
    c = ML_CASES[name]
    x, ref = c.leaves()
    out = PAIR_KINDS[kind](x, c.labels, reduction="sum", **c.ref_kwargs(ref))
    x2, ref2 = c.leaves()
    exp = reference.similarity_loss(
        kind, x2, c.labels, ref2, c.ref_labels, anchor_offset=c.anchor_offset, reduction="sum"
    )
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))
    x, ref = c.leaves()
    out = losses.contrastive_loss(x, c.labels, None, 0.1, 1.0, reduction="sum", **c.ref_kwargs(ref))
    x2, ref2 = c.leaves()
    exp = reference.contrastive_loss(
        x2,
        c.labels,
        None,
        ref2,
        c.ref_labels,
        pos_margin=0.1,
        neg_margin=1.0,
        reduction="sum",
        anchor_offset=c.anchor_offset,
    )
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


@pytest.mark.parametrize("name", tuple(MASK_CASES))
@pytest.mark.parametrize("kind", tuple(PAIR_KINDS))
def test_pair_losses_masks_match_reference(name: str, kind: str) -> None:
    c = MASK_CASES[name]
    x, ref = c.leaves()
    out = PAIR_KINDS[kind](x, None, reduction="sum", **c.kwargs(ref))
    x2, ref2 = c.leaves()
    exp = reference.similarity_loss(
        kind,
        x2,
        None,
        ref2,
        None,
        anchor_offset=c.offset,
        reduction="sum",
        positive_mask=c.pos,
        negative_mask=c.neg,
    )
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))
    x, ref = c.leaves()
    out = losses.contrastive_loss(x, None, None, 0.1, 1.0, reduction="sum", **c.kwargs(ref))
    x2, ref2 = c.leaves()
    exp = reference.contrastive_loss(
        x2,
        None,
        None,
        ref2,
        None,
        pos_margin=0.1,
        neg_margin=1.0,
        reduction="sum",
        anchor_offset=c.offset,
        positive_mask=c.pos,
        negative_mask=c.neg,
    )
    check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


# ------------------------------------------------- triplet margin loss: swap, per anchor

TML_OPTIONS = {"swap": {"swap": True}, "smooth_swap": {"smooth": True, "swap": True}}


def _relation_cases() -> dict[str, tuple[dict, reference.Problem, Callable]]:
    """Every multi-hot and mask case: the relation's keyword arguments (labels or masks, the
    reference set), its reference :class:`reference.Problem` and a maker of fresh leaves."""
    out: dict[str, tuple[dict, reference.Problem, Callable]] = {}
    for c in ML_CASES.values():
        out[f"multi_hot-{c.name}"] = (
            {"labels": c.labels, **c.ref_kwargs(offset=True)},
            _problem(c),
            c.leaves,
        )
    for m in MASK_CASES.values():
        out[f"masks-{m.name}"] = ({"labels": None, **m.kwargs(m.ref)}, _mask_problem(m), m.leaves)
    return out


RELATION_CASES = _relation_cases()


def _with_leaves(kw: dict, ref: Tensor | None) -> dict:
    """The relation's keyword arguments with this call's reference leaf."""
    out = {k: v for k, v in kw.items() if k not in ("labels", "ref_embeddings")}
    if ref is not None:
        out["ref_embeddings"] = ref
    return out


@pytest.mark.parametrize("option", tuple(TML_OPTIONS))
@pytest.mark.parametrize("name", tuple(RELATION_CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_triplet_margin_loss_swap_with_relations(name: str, option: str, backend: str) -> None:
    """``swap=True`` with ``triplets=None``: every valid triplet of the multi-hot or mask
    relation, the negative distance ``min(d(a, n), d(p, n))``, against the reference's
    explicit loop over the relation's valid triplets (values and gradients, float64)."""
    kw, pb, leaves = RELATION_CASES[name]
    rows = pb.valid()
    for reduction in ("mean", "sum", "mean_nonzero"):
        x, ref = leaves()
        out = losses.triplet_margin_loss(
            x,
            kw["labels"],
            None,
            MARGIN,
            reduction=reduction,
            backend=backend,
            **TML_OPTIONS[option],
            **_with_leaves(kw, ref),
        )
        x2, ref2 = leaves()
        exp = reference.triplet_margin_loss(
            x2, rows, ref2, margin=MARGIN, reduction=reduction, **TML_OPTIONS[option]
        )
        check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


def _drawn(pb: reference.Problem, k: int, seed: int) -> list[tuple[int, int, int]]:
    """The triplets ``triplets_per_anchor=k`` draws from the reference relation's masks
    with a generator seeded ``seed``, anchor by anchor (the draws depend on the masks and
    the generator only; their uniformity is tested in ``test_losses_triplet.py``)."""
    from tripletkit.miners.sampling import _per_anchor_triplets

    pos = torch.zeros(pb.n, pb.m, dtype=torch.bool)
    neg = torch.zeros(pb.n, pb.m, dtype=torch.bool)
    for a in range(pb.n):
        pos[a, pb.positives(a)] = True
        neg[a, pb.negatives(a)] = True
    a, p, n, valid = _per_anchor_triplets(pos, neg, k, torch.Generator().manual_seed(seed))
    keep = valid.reshape(-1).tolist()
    rows = zip(a.reshape(-1).tolist(), p.reshape(-1).tolist(), n.reshape(-1).tolist(), strict=True)
    drawn = [r for r, kept in zip(rows, keep, strict=True) if kept]
    assert all(q in pb.positives(r) and s in pb.negatives(r) for r, q, s in drawn)
    return drawn


@pytest.mark.parametrize("name", tuple(RELATION_CASES))
def test_triplet_margin_loss_per_anchor_with_relations(name: str) -> None:
    """``triplets_per_anchor=3`` on a multi-hot or mask relation draws from the relation's
    positives and negatives (those of the reference loops): the loss of the triplets that a
    generator of the same seed draws from the reference's masks, every reduction, with and
    without the swap (values and gradients, float64)."""
    kw, pb, leaves = RELATION_CASES[name]
    for seed, options in ((0, {}), (1, {"swap": True}), (2, {"smooth": True})):
        rows = _drawn(pb, 3, seed)
        for reduction in ("mean", "sum", "mean_nonzero", "none"):
            x, ref = leaves()
            out = losses.triplet_margin_loss(
                x,
                kw["labels"],
                None,
                MARGIN,
                reduction=reduction,
                triplets_per_anchor=3,
                generator=torch.Generator().manual_seed(seed),
                **options,
                **_with_leaves(kw, ref),
            )
            x2, ref2 = leaves()
            exp = reference.triplet_margin_loss(
                x2, rows, ref2, margin=MARGIN, reduction=reduction, **options
            )
            check_loss(out, leaves_of(x, ref), value_and_grads(exp, leaves_of(x2, ref2)))


def test_triplet_margin_loss_module_with_multi_hot_labels() -> None:
    """The module form takes multi-hot labels: ``swap`` and ``triplets_per_anchor`` (drawn
    from torch's default generator, as the function with ``generator=None``)."""
    c = ML_CASES["refs_offset"]
    for module_options in ({"swap": True}, {"triplets_per_anchor": 2, "swap": True}):
        module = losses.TripletMarginLoss(MARGIN, reduction="sum", **module_options)
        torch.manual_seed(4)
        got = module(c.x, c.labels, None, c.ref, c.ref_labels, anchor_offset=c.anchor_offset)
        torch.manual_seed(4)
        want = losses.triplet_margin_loss(
            c.x, c.labels, None, MARGIN, reduction="sum", **module_options, **c.ref_kwargs()
        )
        assert torch.equal(got, want)


# ------------------------------------------------------------ one-hot: exactly today's


def _one_hot(labels: Tensor | None) -> Tensor | None:
    if labels is None:
        return None
    return (labels[:, None] == torch.arange(10)[None, :]).to(torch.int64)


def _one_hot_case(c: Case) -> Case:
    return dataclasses.replace(c, labels=_one_hot(c.labels), ref_labels=_one_hot(c.ref_labels))


EXACT_FUNCTIONS = [
    *((f"{k}_{v}", FUSED[k], {"reduction": "sum", **VARIANTS[v]}) for k in FUSED for v in VARIANTS),
    ("contrastive", losses.contrastive_loss, {}),
    *((k, f, {}) for k, f in PAIR_KINDS.items()),
    ("batch_all_triplets", miners.batch_all_triplets, {"active_only": False}),
    ("batch_hard_triplets", miners.batch_hard_triplets, {}),
    (
        "batch_hard_windows",
        miners.batch_hard_triplets,
        {"positive_ranks": (0, 2), "negative_ranks": (1, 3)},
    ),
    ("semi_hard_triplets", miners.semi_hard_triplets, {}),
    *(
        (f"region_{r}", miners.triplet_margin_triplets, {"type_of_triplets": r})
        for r in ("all", "hard", "semihard", "easy")
    ),
    ("multi_similarity_pairs", miners.multi_similarity_pairs, {}),
    ("pair_margin_pairs", miners.pair_margin_pairs, {}),
    ("random_triplets", miners.random_triplets, {"generator": "seeded"}),
    ("distance_weighted_triplets", miners.distance_weighted_triplets, {"generator": "seeded"}),
    ("triplet_stats", stats.triplet_stats, {}),
]
_TAKES_BACKEND = {"batch_all", "batch_hard", "semi_hard", "triplet", "region", "stats"}


@pytest.mark.parametrize(
    ("fname", "fn", "options"), EXACT_FUNCTIONS, ids=[e[0] for e in EXACT_FUNCTIONS]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_hot_gives_exactly_single_label_results(
    fname: str, fn, options: dict, backend: str
) -> None:
    for c in CASES.values():
        if fname == "distance_weighted_triplets" and c.anchor_offset is not None:
            continue  # takes no anchor_offset
        one_hot = _one_hot_case(c)
        results = []
        for case in (c, one_hot):
            x, ref = case.leaves()
            if fname == "distance_weighted_triplets":
                x = torch.nn.functional.normalize(x, dim=1)
                ref = None if ref is None else torch.nn.functional.normalize(ref, dim=1)
            kw = dict(options)
            if kw.get("generator") == "seeded":
                kw["generator"] = miners.make_generator(3)
            if any(fname.startswith(t) for t in _TAKES_BACKEND):
                kw["backend"] = backend
            out = fn(x, case.labels, **kw, **case.ref_kwargs(ref))
            if isinstance(out, Tensor) and out.requires_grad:
                results.append(value_and_grads(out, leaves_of(x, ref)))
            else:
                results.append(out)
        single, multi = results
        if (
            isinstance(single, tuple)
            and isinstance(single[0], Tensor)
            and single[0].dim() == 0
            and isinstance(single[1], list)
        ):
            assert torch.equal(single[0], multi[0]), c.name
            assert all(torch.equal(a, b) for a, b in zip(single[1], multi[1], strict=True)), c.name
        else:
            assert all(
                torch.equal(torch.as_tensor(a), torch.as_tensor(b))
                for a, b in zip(single, multi, strict=True)
            ), c.name


def test_one_hot_modules_give_exactly_single_label_results() -> None:
    """The modules accept multi-hot labels (masks are a function-form feature)."""
    c = CASES["generic"]
    oh = _one_hot(c.labels)
    for module in (
        losses.BatchAllTripletLoss(),
        losses.BatchHardTripletLoss(),
        losses.SemiHardTripletLoss(),
        losses.ContrastiveLoss(),
        losses.SupConLoss(),
        miners.BatchHardMiner(),
        miners.SemiHardMiner(),
    ):
        a, b = module(c.x, c.labels), module(c.x, oh)
        if isinstance(a, Tensor):
            assert torch.equal(a, b), type(module).__name__
        else:
            assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True)), type(module).__name__


# ------------------------------------------------------------------ what is refused


def test_bad_relations_are_refused() -> None:
    x = torch.randn(4, 3)
    pm = torch.eye(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="both hold the pair"):
        losses.batch_hard_triplet_loss(x, None, positive_mask=pm, negative_mask=pm)
    with pytest.raises(ValueError, match="not both"):
        losses.batch_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), positive_mask=pm)
    with pytest.raises(ValueError, match=r"\[N, M\]"):
        losses.batch_hard_triplet_loss(x, None, positive_mask=pm[:3])
    with pytest.raises(TypeError, match="bool"):
        losses.batch_hard_triplet_loss(x, None, positive_mask=pm.int())
    with pytest.raises(ValueError, match="0 or 1"):
        losses.batch_hard_triplet_loss(x, torch.tensor([[0, 2], [1, 0], [1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="multi-hot"):
        losses.batch_hard_triplet_loss(
            x, torch.tensor([0, 0, 1, 1]), ref_embeddings=x, ref_labels=torch.ones(4, 2)
        )
    with pytest.raises(ValueError, match="streaming"):
        losses.batch_hard_triplet_loss(x, torch.ones(4, 2), backend="streaming")
    with pytest.raises(ValueError, match="per-class beta"):
        losses.margin_loss(
            x, torch.ones(4, 2), miners.batch_hard_triplets(x, torch.ones(4, 2)), beta=torch.ones(2)
        )


def test_float_and_bool_multi_hot_agree() -> None:
    c = ML_CASES["generic"]
    for labels in (c.labels.bool(), c.labels.double()):
        assert torch.equal(
            losses.batch_all_triplet_loss(c.x, labels), losses.batch_all_triplet_loss(c.x, c.labels)
        )


def test_auto_backend_leaves_streaming_for_masks() -> None:
    """Above the memory budget "auto" streams class labels; a mask relation (its [N, M]
    masks already held) runs numba instead, with the same value."""
    c = ML_CASES["generic"]
    expected = losses.batch_all_triplet_loss(c.x, c.labels, backend="numba")
    tripletkit.set_memory_budget(0)
    try:
        got = losses.batch_all_triplet_loss(c.x, c.labels)
    finally:
        tripletkit.set_memory_budget(None)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ------------------------------------------------------------- memory, distributed


def test_cross_batch_memory_stores_multi_hot_labels() -> None:
    g = torch.Generator().manual_seed(2)
    memory = CrossBatchMemory(6, 3, dtype=torch.float64)
    batches = [
        (torch.randn(4, 3, generator=g, dtype=torch.float64), _multi_hot(g, 4, 3)) for _ in range(3)
    ]
    for x, y in batches:
        memory.enqueue(x, y)
    mem_x, mem_y = memory.get()
    assert mem_y.dtype == torch.bool and mem_y.shape == (6, 3)
    # the memory holds the last 6 rows, oldest first: the second batch's last two, the third
    assert torch.equal(mem_y, torch.cat([batches[1][1][2:], batches[2][1]]).bool())
    x, y = batches[-1]
    leaf = x.clone().requires_grad_()
    loss = losses.batch_all_triplet_loss(
        leaf, y, reduction="sum", ref_embeddings=mem_x, ref_labels=mem_y, anchor_offset=2
    )
    leaf2 = x.clone().requires_grad_()
    expected = reference.fused_loss(
        "batch_all", leaf2, y, mem_x, mem_y, margin=0.2, reduction="sum", anchor_offset=2
    )
    check_loss(loss, [leaf], value_and_grads(expected, [leaf2]))
    with pytest.raises(ValueError, match="reset"):
        memory.enqueue(x, torch.zeros(4, dtype=torch.int64))
    restored = CrossBatchMemory(6, 3, dtype=torch.float64)
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored.get()[1], mem_y)


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from tripletkit.distributed import SHARDED_LOSSES, gather, rank_offset, sharded_loss

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        x, y = _ddp_data()
        rows = slice(0, 3) if rank == 0 else slice(3, 8)  # unequal shards
        leaf = x[rows].clone().requires_grad_()
        all_x, all_y = gather(leaf, y[rows].bool())
        loss = losses.batch_all_triplet_loss(
            leaf,
            y[rows],
            reduction="sum",
            backend="numba",
            ref_embeddings=all_x,
            ref_labels=all_y,
            anchor_offset=rank_offset(3 if rank == 0 else 5),
        )
        loss.backward()
        sharded = {}
        for kind in SHARDED_LOSSES:  # each replica mines its own anchors against the gather
            part = x[rows].clone().requires_grad_()
            options = {} if kind == "contrastive" else {"backend": "torch"}
            value = sharded_loss(kind, part, y[rows], **options)
            value.backward()
            sharded[kind] = (value.detach(), part.grad)
        try:
            gather(leaf.detach(), y[rows] if rank == 0 else y[rows, 0])
            mismatch = ""
        except ValueError as error:
            mismatch = str(error)
        torch.save(
            {
                "y": all_y,
                "loss": loss.detach(),
                "grad": leaf.grad,
                "mismatch": mismatch,
                "sharded": sharded,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def _ddp_data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(8, 3, generator=g, dtype=torch.float64), _multi_hot(g, 8, 3, 0.4)


@pytest.mark.slow
def test_distributed_gather_multi_hot(tmp_path) -> None:
    """Two gloo processes (one spawn) gather multi-hot labels; each replica's batch-all loss
    against the gathered batch, summed over replicas, has the single-process value and
    gradient (the reference); ``sharded_loss`` of every kind gives the single-process loss on
    each replica and, averaged over replicas, its gradient; replicas mixing class and
    multi-hot labels all raise."""
    from ddp import spawn_ranks

    x, y = _ddp_data()
    losses.batch_all_triplet_loss(x, y, backend="numba")  # compile here, not in the workers
    results = spawn_ranks(_ddp_worker, 2, tmp_path, timeout=120.0)
    for r in results:
        assert r["y"].dtype == torch.int64 and torch.equal(r["y"], y)
        assert "labels' shape" in r["mismatch"]
    leaf = x.clone().requires_grad_()
    expected = reference.fused_loss("batch_all", leaf, y, margin=0.2, reduction="sum")
    expected.backward()
    total = results[0]["loss"] + results[1]["loss"]
    torch.testing.assert_close(total, expected.detach(), **VALUE_TOL)
    # gather's backward sums every replica's gradient into the rows' owner: the full gradient
    grad = torch.cat([results[0]["grad"], results[1]["grad"]])
    torch.testing.assert_close(grad, leaf.grad, **VALUE_TOL)
    # sharded_loss: every replica returns the global loss; its gradient is the replica's
    # share scaled by the world size (for DDP's averaging), so half the gathered gradients
    # are the single-process gradient of the whole batch
    from tripletkit.distributed import SHARDED_LOSSES

    for kind, reduction in SHARDED_LOSSES.items():
        leaf = x.clone().requires_grad_()
        if kind == "contrastive":
            expected = reference.contrastive_loss(leaf, y, reduction=reduction)
        else:
            expected = reference.fused_loss(kind, leaf, y, margin=0.2, reduction=reduction)
        expected.backward()
        assert float(expected.detach()) > 0, kind  # a zero loss would test nothing
        for r in results:
            torch.testing.assert_close(r["sharded"][kind][0], expected.detach(), **VALUE_TOL)
        grad = torch.cat([results[0]["sharded"][kind][1], results[1]["sharded"][kind][1]]) / 2
        torch.testing.assert_close(grad, leaf.grad, **VALUE_TOL)
