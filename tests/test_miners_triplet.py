"""``tripletkit.miners.triplet``: the batch-all, batch-hard, semi-hard and margin-region
mining functions and their modules, against brute-force selection over all triplets."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    BACKENDS,
    BAD_INPUTS,
    CASES,
    DATA_ERRORS,
    DEGENERATE,
    MARGIN,
    METRICS,
    NO_OFFSET,
    Case,
    X,
    Y,
)
from reference import (
    Problem,
    as_list,
    batch_hard_triplets,
    distance_matrix,
    problem,
    ranked_triplets,
    region_triplets,
    semi_hard_triplets,
)

from tripletkit import miners
from tripletkit.miners import BatchAllMiner, BatchHardMiner, SemiHardMiner, TripletMarginMiner
from tripletkit.types import Triplets

pytestmark = pytest.mark.usefixtures("one_thread")

TYPES = ("all", "hard", "semihard", "easy")


def _problem(c: Case, metric: str, normalize: bool = False, offset: bool = True) -> Problem:
    return problem(
        c.x,
        c.labels,
        c.ref,
        c.ref_labels,
        metric=metric,
        normalize=normalize,
        anchor_offset=c.anchor_offset if offset else None,
    )


def assert_triplets(got: object, expected: list[tuple[int, int, int]], what: str = "") -> None:
    """Same triplets as a set, and in the documented order."""
    assert isinstance(got, Triplets)
    for t in got:
        assert t.dtype == torch.int64 and t.dim() == 1
    rows = as_list(got)
    assert len(set(rows)) == len(rows), "a triplet is listed twice"
    missing, extra = set(expected) - set(rows), set(rows) - set(expected)
    assert not missing and not extra, (
        f"{what}: missing {sorted(missing)}, unexpected {sorted(extra)}"
    )
    assert rows == expected, f"{what}: same triplets, wrong order"


def _semi_hard_expected(pb: Problem, active_only: bool, margin: float) -> list:
    rows = semi_hard_triplets(pb)
    if active_only:
        rows = [(a, p, n) for a, p, n in rows if pb.d[a][p] - pb.d[a][n] + margin > 0]
    return rows


# ------------------------------------------------------------------ pure functions


def test_batch_all_triplets(case: Case, metric: str, backend: str) -> None:
    pb = _problem(case, metric)
    for active_only in (False, True):
        got = miners.batch_all_triplets(
            case.x,
            case.labels,
            margin=MARGIN,
            metric=metric,
            active_only=active_only,
            backend=backend,
            **case.ref_kwargs(),
        )
        assert_triplets(got, region_triplets(pb, MARGIN, "active" if active_only else "valid"))


def test_batch_hard_triplets(case: Case, metric: str, backend: str) -> None:
    got = miners.batch_hard_triplets(
        case.x, case.labels, metric=metric, backend=backend, **case.ref_kwargs()
    )
    assert_triplets(got, batch_hard_triplets(_problem(case, metric)))


def test_semi_hard_triplets(case: Case, metric: str, backend: str) -> None:
    pb = _problem(case, metric)
    for active_only in (False, True):
        got = miners.semi_hard_triplets(
            case.x,
            case.labels,
            margin=MARGIN,
            metric=metric,
            active_only=active_only,
            backend=backend,
            **case.ref_kwargs(),
        )
        assert_triplets(got, _semi_hard_expected(pb, active_only, MARGIN))


def test_triplet_margin_triplets(case: Case, metric: str, backend: str) -> None:
    pb = _problem(case, metric)
    for type_of_triplets in TYPES:
        got = miners.triplet_margin_triplets(
            case.x,
            case.labels,
            margin=MARGIN,
            type_of_triplets=type_of_triplets,
            metric=metric,
            backend=backend,
            **case.ref_kwargs(),
        )
        assert_triplets(got, region_triplets(pb, MARGIN, type_of_triplets), type_of_triplets)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_duplicate_references_tie_to_lowest_index(
    seed: int, dtype: torch.dtype, backend: str
) -> None:
    """Rows 20-22 are exact copies of rows 0-2 (same labels, classes of their own), so every
    other anchor sees each pair as two negatives at exactly the same distance: the lower
    index must win. Coordinates are small integers so that the library's matrix product is
    exact too (in general it may round identical columns differently in the last bit);
    selection is checked on the explicit-loop distances, in which copies tie by construction."""
    rows, copies = 20, 3
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, (rows, 5), generator=g).to(torch.float64)
    x = torch.cat([x, x[:copies]]).to(dtype)
    labels = torch.arange(rows + copies) % 4
    labels[:copies] = torch.tensor([10, 11, 12])
    labels[rows:] = labels[:copies]
    pb = Problem(distance_matrix(x.double(), None, "euclidean"), labels)
    hard = batch_hard_triplets(pb)
    semi = semi_hard_triplets(pb)
    assert any(n < copies for _, _, n in hard + semi)  # the ties are really met
    assert_triplets(miners.batch_hard_triplets(x, labels, backend=backend), hard, "batch_hard")
    assert_triplets(miners.semi_hard_triplets(x, labels, backend=backend), semi, "semi_hard")


def test_default_thread_count(backend: str) -> None:
    """The other tests run single-threaded (see ``one_thread``); here every miner runs with
    the default thread counts on the awkward cases."""
    import numba

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    torch.set_num_threads(max(2, torch.get_num_threads()))
    for name in ("duplicates", "grid", "refs_offset"):
        c = CASES[name]
        pb = _problem(c, "euclidean")
        kw = {"backend": backend, **c.ref_kwargs()}
        assert_triplets(
            miners.batch_all_triplets(c.x, c.labels, margin=MARGIN, **kw),
            region_triplets(pb, MARGIN, "active"),
        )
        assert_triplets(miners.batch_hard_triplets(c.x, c.labels, **kw), batch_hard_triplets(pb))
        assert_triplets(
            miners.semi_hard_triplets(c.x, c.labels, margin=MARGIN, **kw), semi_hard_triplets(pb)
        )
        assert_triplets(
            miners.triplet_margin_triplets(c.x, c.labels, margin=MARGIN, **kw),
            region_triplets(pb, MARGIN, "all"),
        )


@pytest.mark.parametrize("margin", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("metric_", ["euclidean", "sqeuclidean"])
def test_region_boundaries_on_exact_distances(backend: str, margin: float, metric_: str) -> None:
    """On the integer grid ``t`` hits 0 and ``m`` exactly: hard includes ``t == 0``,
    semihard includes ``t == m`` but not ``t == 0``, easy excludes ``t == m``; the active
    batch-all triplets exclude a zero hinge."""
    c = CASES["grid"]
    pb = _problem(c, metric_)
    ts = {pb.d[a][n] - pb.d[a][p] for a, p, n in pb.valid()}
    assert 0.0 in ts and margin in ts  # the boundaries are really exercised
    for region in TYPES:
        got = miners.triplet_margin_triplets(
            c.x, c.labels, margin=margin, type_of_triplets=region, metric=metric_, backend=backend
        )
        assert_triplets(got, region_triplets(pb, margin, region))
    got = miners.batch_all_triplets(c.x, c.labels, margin=margin, metric=metric_, backend=backend)
    assert_triplets(got, region_triplets(pb, margin, "active"))
    got = miners.semi_hard_triplets(
        c.x, c.labels, margin=margin, metric=metric_, active_only=True, backend=backend
    )
    assert_triplets(got, _semi_hard_expected(pb, True, margin))


def test_negative_margin_regions(backend: str) -> None:
    c = CASES["generic"]
    pb = _problem(c, "euclidean")
    for region in TYPES:
        got = miners.triplet_margin_triplets(
            c.x, c.labels, margin=-0.3, type_of_triplets=region, backend=backend
        )
        assert_triplets(got, region_triplets(pb, -0.3, region))


#: Margins of the region property (issue 19): negative, zero and positive.
REGION_MARGINS = (-0.1, -0.05, 0.0, 0.05, 0.2)


def _dense_case(seed: int, with_ref: bool) -> Case:
    """Points within about one unit, so that every region is populated at every margin of
    :data:`REGION_MARGINS`; with a reference set that contains the anchors (offset 3)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(10, 2, generator=g, dtype=torch.float64)
    labels = torch.arange(10) % 3
    if not with_ref:
        return Case(f"dense{seed}", x, labels)
    ref = torch.cat([torch.rand(3, 2, generator=g, dtype=torch.float64), x])
    ref_labels = torch.cat([torch.tensor([0, 1, 3]), labels])
    return Case(f"dense{seed}-ref", x, labels, ref, ref_labels, 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("margin", REGION_MARGINS)
@pytest.mark.parametrize("with_ref", [False, True], ids=["batch", "refs"])
def test_regions_are_subsets_of_all(seed: int, margin: float, with_ref: bool, backend: str) -> None:
    """For every margin: each region is its brute-force set; "hard" and "semihard" lie in
    "all", "easy" is its complement among the valid triplets, and the kernel's counts
    (``triplet_counts``: easy, semi-hard, hard) are the sizes of those regions."""
    from tripletkit.kernels import triplet_counts

    c = _dense_case(seed, with_ref)
    pb = _problem(c, "euclidean")
    got = {}
    for region in TYPES:
        mined = miners.triplet_margin_triplets(
            c.x, c.labels, margin, region, backend=backend, **c.ref_kwargs()
        )
        assert_triplets(mined, region_triplets(pb, margin, region), region)
        got[region] = set(as_list(mined))
    valid = set(pb.valid())
    assert got["hard"] <= got["all"] and got["semihard"] <= got["all"]
    assert got["all"] | got["easy"] == valid and not got["all"] & got["easy"]
    assert got["all"] and got["easy"], "vacuous"
    if margin <= 0:
        assert got["hard"] == got["all"] and not got["semihard"]
    dist = torch.cdist(c.x, c.x if c.ref is None else c.ref)
    own = torch.arange(10) + (c.anchor_offset or 0)
    ref_labels = c.labels if c.ref_labels is None else c.ref_labels
    counts = triplet_counts(dist, c.labels, ref_labels, own, margin, backend=backend).tolist()
    # the matrix above is torch.cdist's, not the miners': compare with its own regions
    pb2 = Problem(dist, c.labels, c.ref_labels, c.anchor_offset)
    sizes = [len(region_triplets(pb2, margin, r)) for r in ("valid", "easy", "semihard", "hard")]
    assert counts == sizes
    assert counts[0] == sum(counts[1:])


@pytest.mark.parametrize("name", ["generic", "duplicates", "refs", "refs_offset"])
def test_normalize(name: str, metric: str, backend: str) -> None:
    c = CASES[name]
    pb = _problem(c, metric, normalize=True)
    kw = {"metric": metric, "normalize": True, "backend": backend, **c.ref_kwargs()}
    assert_triplets(
        miners.batch_all_triplets(c.x, c.labels, margin=MARGIN, **kw),
        region_triplets(pb, MARGIN, "active"),
    )
    assert_triplets(miners.batch_hard_triplets(c.x, c.labels, **kw), batch_hard_triplets(pb))
    assert_triplets(
        miners.semi_hard_triplets(c.x, c.labels, margin=MARGIN, **kw),
        _semi_hard_expected(pb, False, MARGIN),
    )
    assert_triplets(
        miners.triplet_margin_triplets(c.x, c.labels, margin=MARGIN, type_of_triplets="hard", **kw),
        region_triplets(pb, MARGIN, "hard"),
    )


def test_self_pair_excluded_only_with_offset() -> None:
    """A reference identical to the anchor with its label is a positive, unless it *is*
    the anchor (``anchor_offset``)."""
    ref = torch.tensor([[0.0], [1.0], [5.0]], dtype=torch.float64)
    ref_labels = torch.tensor([0, 1, 0])
    x, labels = ref[:1].clone(), ref_labels[:1].clone()
    kw = {"ref_embeddings": ref, "ref_labels": ref_labels, "backend": "torch"}
    got = miners.batch_all_triplets(x, labels, active_only=False, **kw)
    assert as_list(got) == [(0, 0, 1), (0, 2, 1)]
    got = miners.batch_all_triplets(x, labels, active_only=False, anchor_offset=0, **kw)
    assert as_list(got) == [(0, 2, 1)]


# ----------------------------------------------------------------------- modules


@pytest.mark.parametrize("name", NO_OFFSET)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_miner_modules(name: str, metric: str, backend: str) -> None:
    c = CASES[name]
    pb = _problem(c, metric)
    args = (c.x, c.labels, c.ref, c.ref_labels)
    for active_only in (False, True):
        miner = BatchAllMiner(MARGIN, metric, active_only, backend=backend)
        expected = region_triplets(pb, MARGIN, "active" if active_only else "valid")
        assert_triplets(miner(*args), expected)
        miner = SemiHardMiner(MARGIN, metric, active_only, backend=backend)
        assert_triplets(miner(*args), _semi_hard_expected(pb, active_only, MARGIN))
    assert_triplets(BatchHardMiner(metric, backend=backend)(*args), batch_hard_triplets(pb))
    for t in TYPES:
        miner = TripletMarginMiner(MARGIN, t, metric, backend=backend)
        assert_triplets(miner(*args), region_triplets(pb, MARGIN, t))


@pytest.mark.parametrize("name", ["generic", "refs"])
def test_miner_modules_normalize(name: str, backend: str) -> None:
    c = CASES[name]
    pb = _problem(c, "euclidean", normalize=True)
    args = (c.x, c.labels, c.ref, c.ref_labels)
    assert_triplets(BatchHardMiner(normalize=True, backend=backend)(*args), batch_hard_triplets(pb))
    assert_triplets(
        TripletMarginMiner(MARGIN, "semihard", normalize=True, backend=backend)(*args),
        region_triplets(pb, MARGIN, "semihard"),
    )
    assert_triplets(
        BatchAllMiner(MARGIN, normalize=True, backend=backend)(*args),
        region_triplets(pb, MARGIN, "active"),
    )


def test_miner_module_auto_backend() -> None:
    c = CASES["duplicates"]
    pb = _problem(c, "euclidean")
    assert_triplets(BatchHardMiner()(c.x, c.labels), batch_hard_triplets(pb))
    assert_triplets(miners.semi_hard_triplets(c.x, c.labels, margin=MARGIN), semi_hard_triplets(pb))


@pytest.mark.parametrize("name", DEGENERATE)
def test_no_valid_triplet_gives_empty_triplets(name: str, backend: str) -> None:
    c = CASES[name]
    args = (c.x, c.labels, c.ref, c.ref_labels)
    modules = [
        BatchAllMiner(backend=backend),
        BatchAllMiner(active_only=False, backend=backend),
        BatchHardMiner(backend=backend),
        SemiHardMiner(backend=backend),
        *(TripletMarginMiner(type_of_triplets=t, backend=backend) for t in TYPES),
    ]
    for miner in modules:
        got = miner(*args)
        assert isinstance(got, Triplets)
        assert got.num_triplets == 0
        for t in got:
            assert t.shape == (0,) and t.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_like_float32(dtype: torch.dtype, backend: str) -> None:
    c = CASES["generic"]
    x = c.x.to(dtype)
    x32 = x.float()
    for fn, kw in [
        (miners.batch_all_triplets, {"active_only": False}),
        (miners.batch_all_triplets, {}),
        (miners.batch_hard_triplets, {}),
        (miners.semi_hard_triplets, {}),
        (miners.triplet_margin_triplets, {"type_of_triplets": "semihard"}),
    ]:
        got = fn(x, c.labels, backend=backend, **kw)
        want = fn(x32, c.labels, backend=backend, **kw)
        assert as_list(got) == as_list(want), fn.__name__
    pb = _problem(Case("f32", x32.double(), c.labels), "euclidean")
    assert set(as_list(miners.batch_hard_triplets(x, c.labels, backend=backend))) == set(
        batch_hard_triplets(pb)
    )


def test_float32_mines_like_float64(backend: str) -> None:
    c = CASES["generic"]
    for fn in (miners.batch_hard_triplets, miners.semi_hard_triplets):
        assert as_list(fn(c.x.float(), c.labels, backend=backend)) == as_list(
            fn(c.x, c.labels, backend=backend)
        )


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int8])
def test_integer_label_dtypes(dtype: torch.dtype, backend: str) -> None:
    c = CASES["generic"]
    got = miners.batch_hard_triplets(c.x, c.labels.to(dtype), backend=backend)
    assert_triplets(got, batch_hard_triplets(_problem(c, "euclidean")))


# ------------------------------------------------------------------------- errors

MINING_FUNCTIONS = (
    miners.batch_all_triplets,
    miners.batch_hard_triplets,
    miners.semi_hard_triplets,
    miners.triplet_margin_triplets,
)
MINER_CLASSES = (BatchAllMiner, BatchHardMiner, SemiHardMiner, TripletMarginMiner)


@pytest.mark.parametrize("fn", MINING_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    ("kw", "exc", "words"), [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)
def test_mining_bad_input(fn, kw: dict, exc: type, words: list[str]) -> None:
    kw = dict(kw)
    with pytest.raises(exc) as info:
        fn(kw.pop("embeddings"), kw.pop("labels"), **kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize(
    "fn",
    [miners.batch_all_triplets, miners.semi_hard_triplets, miners.triplet_margin_triplets],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -float("inf")])
def test_mining_non_finite_margin(fn, margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        fn(X, Y, margin=margin)


@pytest.mark.parametrize("fn", [miners.triplet_margin_triplets], ids=lambda f: f.__name__)
def test_unknown_type_of_triplets(fn) -> None:
    with pytest.raises(ValueError) as info:
        fn(X, Y, type_of_triplets="semi-hard")
    for w in ("'semi-hard'", *map(repr, TYPES)):
        assert w in str(info.value)
    with pytest.raises(ValueError) as info:
        TripletMarginMiner(type_of_triplets="medium")
    for w in ("'medium'", *map(repr, TYPES)):
        assert w in str(info.value)


@pytest.mark.parametrize("cls", MINER_CLASSES, ids=lambda c: c.__name__)
def test_miner_constructor_errors(cls) -> None:
    with pytest.raises(ValueError) as info:
        cls(metric="hamming")
    for w in ("'hamming'", *map(repr, METRICS)):
        assert w in str(info.value)
    with pytest.raises(ValueError) as info:
        cls(backend="gpu")
    for w in ("'gpu'", "'auto'", *map(repr, BACKENDS)):
        assert w in str(info.value)
    if cls is not BatchHardMiner:
        for margin in (float("nan"), float("inf")):
            with pytest.raises(ValueError, match="margin"):
                cls(margin=margin)
        with pytest.raises(TypeError, match="margin"):
            cls(margin="0.2")


@pytest.mark.parametrize("cls", MINER_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("kw", "exc", "words"),
    [b[1:] for b in DATA_ERRORS],
    ids=[b[0] for b in DATA_ERRORS],
)
def test_miner_module_bad_input(cls, kw: dict, exc: type, words: list[str]) -> None:
    kw = dict(kw)
    with pytest.raises(exc) as info:
        cls(backend="torch")(
            kw.pop("embeddings"),
            kw.pop("labels"),
            kw.pop("ref_embeddings", None),
            kw.pop("ref_labels", None),
        )
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# ---------------------------------------------------------------------------------------------
# Rank windows of batch-hard mining

#: ``(positive_ranks, negative_ranks)``: the default, skipping the hardest, windows wider
#: than the classes (fewer members than the window), and a window that starts past them.
RANK_WINDOWS = [
    ((0, 1), (0, 1)),
    ((0, 1), (2, 5)),
    ((1, 3), (0, 2)),
    ((0, 4), (0, 9)),
    ((5, 7), (0, 1)),
]


@pytest.mark.parametrize(("positive_ranks", "negative_ranks"), RANK_WINDOWS)
def test_batch_hard_rank_windows(
    case: Case, backend: str, positive_ranks: tuple[int, int], negative_ranks: tuple[int, int]
) -> None:
    pb = problem(case.x, case.labels, case.ref, case.ref_labels, anchor_offset=case.anchor_offset)
    want = ranked_triplets(pb, positive_ranks, negative_ranks)
    got = miners.batch_hard_triplets(
        case.x,
        case.labels,
        "euclidean",
        positive_ranks,
        negative_ranks,
        backend=backend,
        **case.ref_kwargs(),
    )
    assert as_list(got) == want
    if case.anchor_offset is None:  # the module's call has no anchor_offset
        module = BatchHardMiner(
            positive_ranks=positive_ranks, negative_ranks=negative_ranks, backend=backend
        )
        assert as_list(module(case.x, case.labels, case.ref, case.ref_labels)) == want


def test_default_windows_are_batch_hard(case: Case) -> None:
    pb = problem(case.x, case.labels, case.ref, case.ref_labels, anchor_offset=case.anchor_offset)
    assert ranked_triplets(pb, (0, 1), (0, 1)) == batch_hard_triplets(pb)


@pytest.mark.parametrize(
    ("window", "exc", "words"),
    [
        ((1, 1), ValueError, "0 <= lo < hi"),
        ((2, 1), ValueError, "0 <= lo < hi"),
        ((-1, 2), ValueError, "0 <= lo < hi"),
        ((0, 1, 2), TypeError, "pair of ints"),
        ((0.0, 1), TypeError, "pair of ints"),
        (1, TypeError, "pair of ints"),
        ((True, 2), TypeError, "pair of ints"),
    ],
)
@pytest.mark.parametrize("which", ["positive_ranks", "negative_ranks"])
def test_bad_rank_windows(window: object, exc: type, words: str, which: str) -> None:
    with pytest.raises(exc, match=which):
        miners.batch_hard_triplets(X, Y, **{which: window})
    with pytest.raises(exc, match=words):
        BatchHardMiner(**{which: window})
