"""The public names that other code depends on: module paths, names, signatures.

These are contracts from the project's issues; a rename here breaks users' code. The table
:data:`SIGNATURES` pins the full signature (names, order, positional-or-keyword vs
keyword-only, defaults) of every public function and class of the public modules, written in
Python's own syntax; a public name that is not in the table fails the suite too.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

#: The modules whose every public function and class is pinned.
PUBLIC_MODULES = (
    "tripletkit.miners",
    "tripletkit.losses",
    "tripletkit.stats",
    "tripletkit.metrics",
    "tripletkit.samplers",
    "tripletkit.memory",
    "tripletkit.distances",
    "tripletkit.distributed",
    "tripletkit.neighbours",
)

_REFS = "ref_embeddings=None, ref_labels=None, anchor_offset=None"
_MINED = f"*, {_REFS}, normalize=False, backend='auto'"
_FORWARD = "embeddings, labels, ref_embeddings=None, ref_labels=None"
_LOSS_FORWARD = f"{_FORWARD}, *, anchor_offset=None"
_FUSED = "margin=0.2, metric='euclidean', soft_margin=False"
#: The keyword-only tail of the functions whose torch kernels take a bound on the positives.
_BOUNDED = f"{_MINED}, max_positives=None"
#: The fused triplet losses' tail: their bound, then the smooth hinge (issue 19).
_FUSED_TAIL = f"{_BOUNDED}, smooth=False"
_WINDOWS = "positive_ranks=(0, 1), negative_ranks=(0, 1)"
_BOUNDED_MODULE = "*, normalize=False, backend='auto', max_positives=None"
_FUSED_MODULE = f"{_BOUNDED_MODULE}, smooth=False"
_SIMILARITY_TAIL = f"*, {_REFS}"
_PAIRS_FORWARD = (
    "embeddings, labels, pairs=None, ref_embeddings=None, ref_labels=None, *, anchor_offset=None"
)

#: The function forms that take ``positive_mask`` / ``negative_mask`` (issue 19), pinned as
#: the last two keyword-only parameters of each.
_MASKED = {
    "batch_all_triplets",
    "batch_hard_triplets",
    "semi_hard_triplets",
    "triplet_margin_triplets",
    "distance_weighted_triplets",
    "random_triplets",
    "multi_similarity_pairs",
    "pair_margin_pairs",
    "batch_all_parts",
    "batch_all_triplet_loss",
    "batch_hard_parts",
    "batch_hard_triplet_loss",
    "semi_hard_parts",
    "semi_hard_triplet_loss",
    "triplet_margin_loss",
    "contrastive_parts",
    "contrastive_loss",
    "multi_similarity_parts",
    "multi_similarity_loss",
    "circle_parts",
    "circle_loss",
    "supcon_parts",
    "supcon_loss",
    "triplet_stats",
}

#: (module, name) -> {callable: parameters}, the parameters as a ``def`` would list them
#: (``self`` left out). For a function the callable is ``""``; for a class, ``"__init__"``,
#: ``"forward"`` (the ``nn.Module``\ s) and its public methods.
SIGNATURES: dict[tuple[str, str], dict[str, str]] = {
    # ---------------------------------------------------------------- tripletkit.miners
    ("tripletkit.miners", "batch_all_triplets"): {
        "": f"embeddings, labels, margin=0.2, metric='euclidean', active_only=True, {_MINED}"
    },
    ("tripletkit.miners", "batch_hard_triplets"): {
        "": f"embeddings, labels, metric='euclidean', {_WINDOWS}, {_MINED}"
    },
    ("tripletkit.miners", "semi_hard_triplets"): {
        "": f"embeddings, labels, margin=0.2, metric='euclidean', active_only=False, {_BOUNDED}"
    },
    ("tripletkit.miners", "triplet_margin_triplets"): {
        "": f"embeddings, labels, margin=0.2, type_of_triplets='all', metric='euclidean', {_MINED}"
    },
    ("tripletkit.miners", "distance_weighted_triplets"): {
        "": "embeddings, labels, cutoff=0.5, nonzero_loss_cutoff=1.4, "
        f"*, {_REFS}, normalize=False, generator=None"
    },
    ("tripletkit.miners", "random_triplets"): {
        "": f"embeddings, labels, num_triplets=None, *, {_REFS}, generator=None"
    },
    ("tripletkit.miners", "multi_similarity_pairs"): {
        "": f"embeddings, labels, epsilon=0.1, metric='cosine', *, {_REFS}, normalize=False"
    },
    ("tripletkit.miners", "pair_margin_pairs"): {
        "": "embeddings, labels, pos_margin=0.0, neg_margin=1.0, metric='euclidean', "
        f"*, {_REFS}, normalize=False"
    },
    ("tripletkit.miners", "make_generator"): {"": "seed=0"},
    ("tripletkit.miners", "Miner"): {"__init__": "**options", "forward": _FORWARD},
    ("tripletkit.miners", "MinerStats"): {
        "__init__": "num_triplets, num_pos_pairs, num_neg_pairs, num_anchors, pos_distance, "
        "neg_distance",
        "as_dict": "",
    },
    ("tripletkit.miners", "miner_stats"): {
        "": "mined, embeddings, ref_embeddings=None, metric='euclidean', normalize=False"
    },
    ("tripletkit.miners", "SeededMiner"): {
        "__init__": "seed, **options",
        "forward": _FORWARD,
        "manual_seed": "seed",
    },
    ("tripletkit.miners", "BatchAllMiner"): {
        "__init__": "margin=0.2, metric='euclidean', active_only=True, *, normalize=False, "
        "backend='auto'",
        "forward": _FORWARD,
    },
    ("tripletkit.miners", "BatchHardMiner"): {
        "__init__": f"metric='euclidean', {_WINDOWS}, *, normalize=False, backend='auto'",
        "forward": _FORWARD,
    },
    ("tripletkit.miners", "SemiHardMiner"): {
        "__init__": "margin=0.2, metric='euclidean', active_only=False, *, normalize=False, "
        "backend='auto', max_positives=None",
        "forward": _FORWARD,
    },
    ("tripletkit.miners", "TripletMarginMiner"): {
        "__init__": "margin=0.2, type_of_triplets='all', metric='euclidean', *, "
        "normalize=False, backend='auto'",
        "forward": _FORWARD,
    },
    ("tripletkit.miners", "DistanceWeightedMiner"): {
        "__init__": "cutoff=0.5, nonzero_loss_cutoff=1.4, *, normalize=False, seed=0",
        "forward": _FORWARD,
        "manual_seed": "seed",
    },
    ("tripletkit.miners", "RandomTripletMiner"): {
        "__init__": "num_triplets=None, *, seed=0",
        "forward": _FORWARD,
        "manual_seed": "seed",
    },
    ("tripletkit.miners", "MultiSimilarityMiner"): {
        "__init__": "epsilon=0.1, metric='cosine', *, normalize=False",
        "forward": _FORWARD,
    },
    ("tripletkit.miners", "PairMarginMiner"): {
        "__init__": "pos_margin=0.0, neg_margin=1.0, metric='euclidean', *, normalize=False",
        "forward": _FORWARD,
    },
    # ---------------------------------------------------------------- tripletkit.losses
    ("tripletkit.losses", "batch_all_triplet_loss"): {
        "": f"embeddings, labels, {_FUSED}, reduction='mean_nonzero', {_FUSED_TAIL}"
    },
    ("tripletkit.losses", "batch_hard_triplet_loss"): {
        "": f"embeddings, labels, {_FUSED}, reduction='mean', {_WINDOWS}, {_FUSED_TAIL}"
    },
    ("tripletkit.losses", "semi_hard_triplet_loss"): {
        "": f"embeddings, labels, {_FUSED}, reduction='mean', {_FUSED_TAIL}"
    },
    ("tripletkit.losses", "batch_all_parts"): {"": f"embeddings, labels, {_FUSED}, {_FUSED_TAIL}"},
    ("tripletkit.losses", "batch_hard_parts"): {
        "": f"embeddings, labels, {_FUSED}, {_WINDOWS}, {_FUSED_TAIL}"
    },
    ("tripletkit.losses", "semi_hard_parts"): {"": f"embeddings, labels, {_FUSED}, {_FUSED_TAIL}"},
    ("tripletkit.losses", "multi_similarity_loss"): {
        "": "embeddings, labels, pairs=None, alpha=2.0, beta=50.0, base=0.5, reduction='mean', "
        f"{_SIMILARITY_TAIL}"
    },
    ("tripletkit.losses", "multi_similarity_parts"): {
        "": f"embeddings, labels, pairs=None, alpha=2.0, beta=50.0, base=0.5, {_SIMILARITY_TAIL}"
    },
    ("tripletkit.losses", "circle_loss"): {
        "": f"embeddings, labels, pairs=None, m=0.4, gamma=80.0, reduction='mean', {_SIMILARITY_TAIL}"
    },
    ("tripletkit.losses", "circle_parts"): {
        "": f"embeddings, labels, pairs=None, m=0.4, gamma=80.0, {_SIMILARITY_TAIL}"
    },
    ("tripletkit.losses", "supcon_loss"): {
        "": f"embeddings, labels, pairs=None, temperature=0.1, reduction='mean', {_SIMILARITY_TAIL}"
    },
    ("tripletkit.losses", "supcon_parts"): {
        "": f"embeddings, labels, pairs=None, temperature=0.1, {_SIMILARITY_TAIL}"
    },
    ("tripletkit.losses", "MultiSimilarityLoss"): {
        "__init__": "alpha=2.0, beta=50.0, base=0.5, reduction='mean'",
        "forward": _PAIRS_FORWARD,
    },
    ("tripletkit.losses", "CircleLoss"): {
        "__init__": "m=0.4, gamma=80.0, reduction='mean'",
        "forward": _PAIRS_FORWARD,
    },
    ("tripletkit.losses", "SupConLoss"): {
        "__init__": "temperature=0.1, reduction='mean'",
        "forward": _PAIRS_FORWARD,
    },
    ("tripletkit.losses", "triplet_margin_loss"): {
        "": f"embeddings, labels, triplets=None, {_FUSED}, reduction='mean', {_MINED}, "
        "smooth=False, swap=False, triplets_per_anchor='all', generator=None"
    },
    ("tripletkit.losses", "triplet_terms"): {
        "": "d_ap, d_an, margin, soft_margin, *, smooth=False"
    },
    ("tripletkit.losses", "contrastive_loss"): {
        "": "embeddings, labels, pairs=None, pos_margin=0.0, neg_margin=1.0, "
        f"metric='euclidean', reduction='mean', *, {_REFS}, normalize=False"
    },
    ("tripletkit.losses", "contrastive_parts"): {
        "": "embeddings, labels, pos_margin=0.0, neg_margin=1.0, metric='euclidean', "
        f"*, {_REFS}, normalize=False"
    },
    ("tripletkit.losses", "margin_loss"): {
        "": "embeddings, labels, indices, beta=1.2, margin=0.2, nu=0.0, metric='euclidean', "
        "reduction='mean', *, ref_embeddings=None, ref_labels=None, normalize=False"
    },
    ("tripletkit.losses", "reduce_parts"): {"": "total, n_valid, n_active, reduction"},
    ("tripletkit.losses", "Parts"): {"__new__": "total, n_valid, n_active"},
    ("tripletkit.losses", "BatchAllTripletLoss"): {
        "__init__": f"{_FUSED}, reduction='mean_nonzero', {_FUSED_MODULE}",
        "forward": _LOSS_FORWARD,
    },
    ("tripletkit.losses", "BatchHardTripletLoss"): {
        "__init__": f"{_FUSED}, reduction='mean', {_WINDOWS}, {_FUSED_MODULE}",
        "forward": _LOSS_FORWARD,
    },
    ("tripletkit.losses", "SemiHardTripletLoss"): {
        "__init__": f"{_FUSED}, reduction='mean', {_FUSED_MODULE}",
        "forward": _LOSS_FORWARD,
    },
    ("tripletkit.losses", "TripletMarginLoss"): {
        "__init__": f"{_FUSED}, reduction='mean', *, normalize=False, backend='auto', "
        "smooth=False, swap=False, triplets_per_anchor='all'",
        "forward": "embeddings, labels, triplets=None, ref_embeddings=None, ref_labels=None, "
        "*, anchor_offset=None",
    },
    ("tripletkit.losses", "ContrastiveLoss"): {
        "__init__": "pos_margin=0.0, neg_margin=1.0, metric='euclidean', reduction='mean', "
        "*, normalize=False",
        "forward": "embeddings, labels, pairs=None, ref_embeddings=None, ref_labels=None, "
        "*, anchor_offset=None",
    },
    ("tripletkit.losses", "MarginLoss"): {
        "__init__": "margin=0.2, beta=1.2, *, learn_beta=True, num_classes=None, nu=0.0, "
        "metric='euclidean', reduction='mean', normalize=False",
        "forward": "embeddings, labels, indices, ref_embeddings=None, ref_labels=None",
    },
    # ---------------------------------------------------------------- the others
    ("tripletkit.stats", "triplet_stats"): {
        "": f"embeddings, labels, margin=0.2, metric='euclidean', {_MINED}"
    },
    ("tripletkit.metrics", "retrieval_metrics"): {
        "": "query, query_labels, *, ref_embeddings=None, ref_labels=None, k=(1, 5, 10), "
        "metric='euclidean', chunk_size=1024"
    },
    ("tripletkit.metrics", "RetrievalMetrics"): {
        "__init__": "precision_at_1, recall_at_k, r_precision, mean_average_precision_at_r"
    },
    ("tripletkit.samplers", "PKBatchSampler"): {
        "__init__": "labels, p, k, *, seed=0, num_replicas=None, rank=None, "
        "small_classes='replace'",
        "set_epoch": "epoch",
    },
    ("tripletkit.samplers", "HardClassPKBatchSampler"): {
        "__init__": "labels, p, k, *, hard_fraction=0.5, group_size=2, momentum=0.5, seed=0, "
        "num_replicas=None, rank=None, small_classes='replace'",
        "set_epoch": "epoch",
        "update": "embeddings, labels",
        "reset": "",
    },
    ("tripletkit.samplers", "CategoryPKBatchSampler"): {
        "__init__": "labels, categories, c, p, k, *, seed=0, num_replicas=None, rank=None, "
        "small_classes='replace'",
        "set_epoch": "epoch",
    },
    ("tripletkit.samplers", "NeighbourPKBatchSampler"): {
        "__init__": "labels, p, k, *, num_neighbours=8, hard_fraction=0.5, group_size=2, "
        "skip_hardest=0, positive_ratio=None, metric='euclidean', backend='torch', "
        "memory_budget=268435456, seed=0, num_replicas=None, rank=None, "
        "small_classes='replace'",
        "set_epoch": "epoch",
        "refresh": "model=None, data=None, *, embeddings=None, batch_size=256, device=None, "
        "num_workers=0, progress=False",
    },
    ("tripletkit.neighbours", "embed_dataset"): {
        "": "model, data, *, batch_size=256, device=None, num_workers=0, progress=False, "
        "distributed=None"
    },
    ("tripletkit.neighbours", "nearest_neighbours"): {
        "": "embeddings, labels, num_negatives, num_positives=0, *, metric='euclidean', "
        "skip_hardest=0, positive_ratio=None, backend='torch', faiss_index='Flat', "
        "memory_budget=268435456, queries=None"
    },
    ("tripletkit.neighbours", "Neighbours"): {
        "__new__": "negatives, negative_distances, positives, positive_distances"
    },
    ("tripletkit.memory", "CrossBatchMemory"): {
        "__init__": "size, dim, *, device=None, dtype=torch.float32",
        "enqueue": "embeddings, labels",
        "get": "",
        "reset": "",
    },
    ("tripletkit.distances", "pairwise_distance"): {"": "x, y=None, metric='euclidean'"},
    ("tripletkit.distances", "paired_distance"): {"": "x, y, metric='euclidean'"},
    ("tripletkit.distances", "normalize_embeddings"): {"": "x, eps=1e-12"},
    ("tripletkit.distributed", "gather"): {"": "embeddings, labels"},
    ("tripletkit.distributed", "rank_offset"): {"": "n_local"},
    ("tripletkit.distributed", "sharded_loss"): {
        "": "kind, embeddings, labels, *, margin=None, metric='euclidean', soft_margin=None, "
        "smooth=None, pos_margin=None, neg_margin=None, reduction=None, normalize=False, backend=None"
    },
}

#: The public constants of those modules, with their values.
CONSTANTS = {
    ("tripletkit.miners", "TYPES_OF_TRIPLETS"): ("all", "hard", "semihard", "easy"),
    ("tripletkit.losses", "REDUCTIONS"): ("mean", "sum", "mean_nonzero", "none"),
    ("tripletkit.losses", "FUSED_REDUCTIONS"): ("mean", "sum", "mean_nonzero"),
    ("tripletkit.samplers", "SMALL_CLASSES"): ("replace", "skip"),
    ("tripletkit.distances", "METRICS"): ("euclidean", "sqeuclidean", "cosine"),
    ("tripletkit.neighbours", "NEIGHBOUR_METRICS"): ("euclidean", "sqeuclidean", "cosine"),
    ("tripletkit.neighbours", "BACKENDS"): ("torch", "faiss"),
    ("tripletkit.neighbours", "DEFAULT_MEMORY_BUDGET"): 268435456,
    ("tripletkit.distributed", "SHARDED_LOSSES"): {
        "batch_all": "mean_nonzero",
        "batch_hard": "mean",
        "semi_hard": "mean",
        "contrastive": "mean",
    },
}


def _expected(parameters: str) -> inspect.Signature:
    """The signature of ``def f(<parameters>)``."""
    return inspect.signature(eval(f"lambda {parameters}: None", {"torch": torch}))


def _actual(obj: object, member: str) -> inspect.Signature:
    """The signature of ``obj`` (a function) or of its ``member``, without ``self``/``cls``."""
    if not member:
        return inspect.signature(obj)
    sig = inspect.signature(getattr(obj, member))
    return sig.replace(parameters=list(sig.parameters.values())[1:])


def _parameters(sig: inspect.Signature) -> list[tuple[str, object, object]]:
    """``(name, kind, default)`` of every parameter (annotations left out)."""
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


SIGNATURE_CASES = [
    (module, name, member, params)
    for (module, name), members in SIGNATURES.items()
    for member, params in members.items()
]


@pytest.mark.parametrize(
    ("module", "name", "member", "params"),
    SIGNATURE_CASES,
    ids=[f"{n}.{m}" if m else n for _, n, m, _ in SIGNATURE_CASES],
)
def test_signature(module: str, name: str, member: str, params: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    assert inspect.isclass(obj) == bool(member), "classes pin members, functions themselves"
    if not member and name in _MASKED:  # issue 19: explicit relations, last and by keyword
        params = f"{params}, positive_mask=None, negative_mask=None"
    actual = _parameters(_actual(obj, member))
    expected = _parameters(_expected(params))
    assert actual == expected, f"{module}.{name}{'.' + member if member else ''}"


@pytest.mark.parametrize("name", sorted(_MASKED))
def test_functions_taking_masks_annotate_labels_optional(name: str) -> None:
    """Where ``positive_mask`` / ``negative_mask`` are accepted, ``labels=None`` is how the
    relation is given instead: the annotation says so (``Tensor | None``)."""
    (module,) = [m for (m, n) in SIGNATURES if n == name]
    obj = getattr(importlib.import_module(module), name)
    assert inspect.signature(obj).parameters["labels"].annotation == "Tensor | None", name


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_function_and_class_is_pinned(module: str) -> None:
    """Each name of the module's ``__all__`` is in :data:`SIGNATURES` (functions, classes)
    or :data:`CONSTANTS`; and each class pins its ``forward`` if it is an ``nn.Module``."""
    mod = importlib.import_module(module)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if callable(obj):
            assert (module, name) in SIGNATURES, f"{module}.{name} has no pinned signature"
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
                assert "forward" in SIGNATURES[(module, name)], f"{module}.{name}.forward"
        else:
            assert (module, name) in CONSTANTS, f"{module}.{name} is not pinned"
    pinned = {n for m, n in [*SIGNATURES, *CONSTANTS] if m == module}
    assert pinned <= set(mod.__all__), f"pinned but not public: {pinned - set(mod.__all__)}"


@pytest.mark.parametrize(("key", "value"), list(CONSTANTS.items()), ids=[k[1] for k in CONSTANTS])
def test_constant(key: tuple[str, str], value: object) -> None:
    module, name = key
    assert getattr(importlib.import_module(module), name) == value


def test_parts_and_named_tuple_fields() -> None:
    from tripletkit.losses import Parts

    assert Parts._fields == ("total", "n_valid", "n_active")


# ------------------------------------------------------------------ exports

#: The public submodules of each package, whose names the package exports.
PACKAGES = {
    "tripletkit.miners": (
        "tripletkit.miners.triplet",
        "tripletkit.miners.sampling",
        "tripletkit.miners.pairs",
        "tripletkit.miners._base",
    ),
    "tripletkit.losses": (
        "tripletkit.losses.triplet",
        "tripletkit.losses.pairwise",
        "tripletkit.losses.margin",
        "tripletkit.losses._reduce",
    ),
}
#: Names in a submodule's ``__all__`` that its package deliberately leaves out: the
#: cutoffs' validator of distance-weighted sampling (importable from
#: ``tripletkit.miners.sampling``) and the reduction helpers the loss files share (and their dtype decorator).
NOT_EXPORTED = {
    "tripletkit.miners.sampling": {"check_cutoffs"},
    "tripletkit.losses._reduce": {
        "in_input_dtype",
        "keep_in_graph",
        "listed_terms",
        "reduce_terms",
    },
}


@pytest.mark.parametrize("package", list(PACKAGES))
def test_packages_export_every_public_name(package: str) -> None:
    pkg = importlib.import_module(package)
    expected: set[str] = set()
    for sub in PACKAGES[package]:
        mod = importlib.import_module(sub)
        names = set(mod.__all__) - NOT_EXPORTED.get(sub, set())
        for name in names:
            assert getattr(pkg, name) is getattr(mod, name), f"{package}.{name} is not {sub}'s"
        expected |= names
    assert sorted(pkg.__all__) == sorted(expected)
    assert len(set(pkg.__all__)) == len(pkg.__all__)
    # Every function and class defined in the public submodules, bar the documented
    # exceptions, is exported: nothing public is reachable only through a submodule.
    for sub in PACKAGES[package]:
        mod = importlib.import_module(sub)
        for name, obj in vars(mod).items():
            defined_here = getattr(obj, "__module__", None) == sub
            if (
                defined_here
                and not name.startswith("_")
                and (inspect.isclass(obj) or inspect.isfunction(obj))
            ):
                assert name in pkg.__all__ or name in NOT_EXPORTED.get(sub, set()), f"{sub}.{name}"


def test_mining_reexports_every_mining_function() -> None:
    from tripletkit import miners, mining

    functions = {
        "batch_all_triplets",
        "batch_hard_triplets",
        "semi_hard_triplets",
        "triplet_margin_triplets",
        "distance_weighted_triplets",
        "random_triplets",
        "multi_similarity_pairs",
        "pair_margin_pairs",
    }
    assert functions == {n for n in miners.__all__ if n.endswith(("_triplets", "_pairs"))}
    assert set(mining.__all__) == functions | {"TYPES_OF_TRIPLETS"}
    for name in mining.__all__:
        assert getattr(mining, name) is getattr(miners, name), name


def test_top_level_names() -> None:
    import tripletkit

    for name in tripletkit.__all__:
        assert hasattr(tripletkit, name), name
    from tripletkit.distances import paired_distance, pairwise_distance
    from tripletkit.metrics import RetrievalMetrics, retrieval_metrics

    assert tripletkit.RetrievalMetrics is RetrievalMetrics
    assert tripletkit.retrieval_metrics is retrieval_metrics
    assert tripletkit.pairwise_distance is pairwise_distance
    assert tripletkit.paired_distance is paired_distance


# ------------------------------------------------------------------ contracts of 0.1

# (module, attribute, leading parameter names in order)
CONTRACT = [
    ("tripletkit.distances", "pairwise_distance", ["x", "y", "metric"]),
    ("tripletkit.miners", "BatchAllMiner", ["margin", "metric", "active_only"]),
    ("tripletkit.miners", "BatchHardMiner", ["metric"]),
    ("tripletkit.miners", "SemiHardMiner", ["margin", "metric"]),
    ("tripletkit.miners", "TripletMarginMiner", ["margin", "type_of_triplets", "metric"]),
    (
        "tripletkit.losses",
        "TripletMarginLoss",
        ["margin", "metric", "soft_margin", "reduction"],
    ),
    ("tripletkit.losses", "ContrastiveLoss", ["pos_margin", "neg_margin", "metric", "reduction"]),
    (
        "tripletkit.losses",
        "batch_all_triplet_loss",
        ["embeddings", "labels", "margin", "metric", "soft_margin", "reduction"],
    ),
    (
        "tripletkit.losses",
        "batch_hard_triplet_loss",
        ["embeddings", "labels", "margin", "metric", "soft_margin", "reduction"],
    ),
    (
        "tripletkit.losses",
        "semi_hard_triplet_loss",
        ["embeddings", "labels", "margin", "metric", "soft_margin", "reduction"],
    ),
    ("tripletkit.stats", "triplet_stats", ["embeddings", "labels", "margin", "metric"]),
]

DEFAULTS = {
    ("tripletkit.losses", "batch_all_triplet_loss", "reduction"): "mean_nonzero",
    ("tripletkit.losses", "batch_hard_triplet_loss", "reduction"): "mean",
    ("tripletkit.losses", "semi_hard_triplet_loss", "reduction"): "mean",
    ("tripletkit.losses", "batch_all_triplet_loss", "margin"): 0.2,
    ("tripletkit.miners", "BatchAllMiner", "active_only"): True,
    ("tripletkit.losses", "ContrastiveLoss", "pos_margin"): 0.0,
    ("tripletkit.losses", "ContrastiveLoss", "neg_margin"): 1.0,
    ("tripletkit.losses", "TripletMarginLoss", "reduction"): "mean",
}


def _params(obj: object) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
    names = [p for p in inspect.signature(target).parameters if p != "self"]
    return names


@pytest.mark.parametrize(("module", "name", "params"), CONTRACT)
def test_contract_names_and_arguments(module: str, name: str, params: list[str]) -> None:
    obj = getattr(importlib.import_module(module), name)
    assert _params(obj)[: len(params)] == params


@pytest.mark.parametrize(("key", "value"), list(DEFAULTS.items()))
def test_contract_defaults(key: tuple[str, str, str], value: object) -> None:
    module, name, param = key
    obj = getattr(importlib.import_module(module), name)
    target = obj.__init__ if inspect.isclass(obj) else obj
    assert inspect.signature(target).parameters[param].default == value


@pytest.mark.parametrize(
    ("cls", "call"),
    [
        ("BatchAllMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
        ("BatchHardMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
        ("SemiHardMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
        ("TripletMarginMiner", ["embeddings", "labels", "ref_embeddings", "ref_labels"]),
    ],
)
def test_miner_call_signature(cls: str, call: list[str]) -> None:
    miner = getattr(importlib.import_module("tripletkit.miners"), cls)
    assert list(inspect.signature(miner.forward).parameters)[1:] == call


def test_loss_call_signatures() -> None:
    from tripletkit.losses import ContrastiveLoss, TripletMarginLoss

    assert list(inspect.signature(TripletMarginLoss.forward).parameters)[1:4] == [
        "embeddings",
        "labels",
        "triplets",
    ]
    assert list(inspect.signature(ContrastiveLoss.forward).parameters)[1:4] == [
        "embeddings",
        "labels",
        "pairs",
    ]


def test_triplets_is_a_named_3_tuple() -> None:
    import torch

    from tripletkit.types import Pairs, Triplets

    t = Triplets.empty()
    a, p, n = t
    assert t._fields == ("anchor", "positive", "negative")
    assert all(x.dtype == torch.int64 for x in (a, p, n))
    assert Pairs._fields == ("anchor_pos", "positive", "anchor_neg", "negative")


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```(?:bash|sh|shell)?\n(.*?)```", section, re.S)
    assert block is not None, "the Quick start section has no shell code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_quick_start_has_two_commands_and_ci_runs_the_second() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    match = re.search(r"^README_TEST_COMMAND='(.*)'$", ci, re.M)
    assert match is not None
    assert match.group(1) == commands[1]
