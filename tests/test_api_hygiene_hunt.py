"""Adversarial hunt on public API hygiene: annotations, docstrings against signatures,
returned values against their annotations, reprs, copies and pickles, attribute and parameter
consistency across the factor models, and the documented exception types.

The contract used here:
- ``py.typed`` ships and README ("Types") keeps the annotations checked by mypy: every public
  callable's annotations resolve, and a value a call returns is of its annotated type
  (NumPy arrays as ``np.ndarray``, tuples of the annotated arity, ``Self`` the class).
  Resolving them is done two ways: as a type checker sees them (the names of each module's
  ``if TYPE_CHECKING:`` block, with ``recfuse._typing``'s string aliases evaluated), which
  must work, and as ``typing.get_type_hints`` does at run time, which users of runtime typing
  tools (pydantic, typeguard, beartype, sphinx-autodoc-typehints) rely on.
- Parameters sections (numpydoc-like ``name : text`` / ``name: text``) name every parameter
  of the signature; the defaults the docstrings state are the real ones.
- ``recfuse.__init__``: "a wrong kind of argument is a TypeError, a wrong value a
  ValueError, each naming the argument"; a model used before ``fit`` raises RuntimeError
  ("not fitted"), in every model and adapter alike.
- README "Processes": "Models, ``ItemIndex`` and ``MLPScorer`` pickle (in memory)";
  ``FactorRetrieval``: models pickle and deep-copy without their lock and caches. A copy is
  independent of its original (or refused with a clear TypeError, as ``PreparedItems``
  does); repr() of a public object works, is short and does not dump arrays.
"""

from __future__ import annotations

import __future__
import ast
import copy
import functools
import importlib
import inspect
import os
import pickle
import re
import subprocess
import sys
import textwrap
import types
import typing
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import datasets, metrics, split

HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow,
                                             HealthCheck.function_scoped_fixture])

MODELS = (recfuse.ALS, recfuse.BPR, recfuse.SVD, recfuse.SVDpp, recfuse.ExplicitALS)
IMPLICIT_MODELS = (recfuse.ALS, recfuse.BPR)

PUBLIC_MODULES = ["recfuse", "recfuse.serving", "recfuse.compat.implicit",
                  "recfuse.compat.surprise", "recfuse.distributed", "recfuse.metrics",
                  "recfuse.datasets", "recfuse.reference", "recfuse.split"]


# ------------------------------------------------------------------------------ helpers


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in dir(module) if not n.startswith("_")
                 and getattr(getattr(module, n), "__module__", "").startswith(module.__name__)]
    return [n for n in names if n != "__version__"]


def _public_callables():
    """(label, function) for every public function, class constructor, method and property
    getter of the public modules, each function once."""
    seen, out = set(), []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in _public_names(module):
            obj = getattr(module, name)
            targets = []
            if inspect.isclass(obj):
                if "__init__" in obj.__dict__:
                    targets.append((f"{module_name}.{name}", obj.__init__))
                for attr, value in obj.__dict__.items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if isinstance(value, property):
                        value = value.fget
                    if inspect.isfunction(value):
                        targets.append((f"{module_name}.{name}.{attr}", value))
            elif inspect.isfunction(obj):
                targets.append((f"{module_name}.{name}", obj))
            for label, func in targets:
                if id(func) not in seen:
                    seen.add(id(func))
                    out.append((label, func))
    return out


def _type_checking_statements(module):
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        test = getattr(node, "test", None)
        if isinstance(node, ast.If) and (
                (isinstance(test, ast.Name) and test.id.endswith("TYPE_CHECKING"))
                or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")):
            yield from node.body


def _run_type_checking_block(module, namespace, aliases):
    namespace.setdefault("__package__", module.__package__)
    for statement in _type_checking_statements(module):
        code = compile(ast.Module(body=[statement], type_ignores=[]), module.__file__, "exec",
                       flags=__future__.annotations.compiler_flag, dont_inherit=True)
        exec(code, namespace)  # noqa: S102 - recfuse's own source, as a type checker reads it
        for name, value in aliases.items():
            if isinstance(namespace.get(name), str):
                namespace[name] = value


_ALIASES: dict = {}


def _typing_aliases() -> dict:
    """recfuse._typing's aliases (strings) evaluated among the names they refer to."""
    if not _ALIASES:
        module = importlib.import_module("recfuse._typing")
        namespace = dict(vars(module))
        _run_type_checking_block(module, namespace, {})
        _ALIASES.update({name: eval(value, namespace)  # noqa: S307 - recfuse's own aliases
                         for name, value in vars(module).items()
                         if isinstance(value, str) and not name.startswith("_")})
    return _ALIASES


@functools.lru_cache(maxsize=None)
def checker_namespace(module) -> dict:
    """The names a type checker sees in ``module``: its globals plus its TYPE_CHECKING block
    (built once per module; get_type_hints only reads it)."""
    namespace = dict(vars(module))
    _run_type_checking_block(module, namespace, _typing_aliases())
    return namespace


def checker_hints(func) -> dict:
    func = inspect.unwrap(func)
    return typing.get_type_hints(func, globalns=checker_namespace(sys.modules[func.__module__]))


def conforms(value, hint) -> bool:
    """Whether ``value`` is of the resolved annotation ``hint`` (tuples by arity and items,
    dict/list items too; NumPy generics by their origin class)."""
    if hint is typing.Any or hint is object or isinstance(hint, typing.TypeVar):
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is float:  # PEP 484: int is acceptable where float is annotated
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if origin in (list, dict, set, frozenset):
        if not isinstance(value, origin):
            return False
        if origin is dict and args:
            return all(conforms(k, args[0]) and conforms(v, args[1]) for k, v in value.items())
        return all(conforms(v, args[0]) for v in value) if args else True
    if isinstance(origin, type):
        return isinstance(value, origin)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a form this checker does not model (Callable, Iterator's items, ...)


def returns_as_annotated(func, value, owner=None) -> bool:
    hint = checker_hints(func).get("return", typing.Any)
    if hint is typing.Self:
        hint = owner
    return conforms(value, hint)


class _Returns:
    """The values of calls checked against their functions' return annotations; the ones
    that do not conform are listed together at the end of a test."""

    def __init__(self):
        self.wrong = []

    def check(self, label, func, value, owner=None):
        if not returns_as_annotated(func, value, owner):
            self.wrong.append(f"{label}: {type(value).__name__} {value!r:.80}")
        return value

    def assert_all_as_annotated(self):
        assert not self.wrong, "\n".join(self.wrong)


def _ratings(seed=0, n_users=30, n_items=20, n=200):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_users, n), rng.integers(0, n_items, n),
            rng.integers(1, 6, n).astype(np.float64))


USER_ITEMS = sp.random(30, 20, density=0.3, format="csr", random_state=1, dtype=np.float32)
USER_ITEMS_2 = sp.random(30, 20, density=0.3, format="csr", random_state=2, dtype=np.float32)


def _fit(model, other=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, IMPLICIT_MODELS):
            return model.fit(USER_ITEMS_2 if other else USER_ITEMS)
        users, items, ratings = _ratings(1 if other else 0)
        return model.fit(users, items, ratings)


def _small(cls, **extra):
    steps = {"epochs": 3} if cls in (recfuse.SVD, recfuse.SVDpp) else {"iterations": 3}
    return cls(factors=4, random_state=0, **steps, **extra)


@pytest.fixture(scope="module")
def fitted():
    return {cls.__name__: _fit(_small(cls)) for cls in MODELS}


# --------------------------------------------------------------------- annotations


def test_every_public_annotation_resolves_for_a_type_checker():
    """The annotations are valid: with the names a type checker sees (the TYPE_CHECKING
    imports and aliases), every public callable's hints resolve."""
    failures = []
    for label, func in _public_callables():
        try:
            checker_hints(func)
        except Exception as error:  # noqa: BLE001 - collected and reported
            failures.append(f"{label}: {type(error).__name__}: {error}")
    assert not failures, "\n".join(failures)
    assert len(_public_callables()) > 150  # the sweep saw the API, not an empty list


def test_every_public_annotation_resolves_at_run_time():
    # pandas is optional and slow to import: Interactions.to_frame's "pandas.DataFrame" is
    # named for type checkers only, and resolves at run time with pandas given
    pandas = pytest.importorskip("pandas")
    failures = []
    for label, func in _public_callables():
        try:
            typing.get_type_hints(func, localns={"pandas": pandas})
        except Exception as error:  # noqa: BLE001 - collected and reported
            failures.append(f"{label}: {type(error).__name__}: {error}")
    assert not failures, f"{len(failures)} unresolvable, e.g.\n" + "\n".join(failures[:15])


def test_main_entry_points_resolve_at_run_time():
    for func in (recfuse.ALS.__init__, recfuse.ALS.fit, recfuse.ALS.recommend,
                 recfuse.SVD.predict, recfuse.topk, recfuse.load,
                 recfuse.Recommender.recommend, metrics.evaluate):
        typing.get_type_hints(func)


# ------------------------------------------------------------ returns vs annotations


def test_model_returns_match_annotations(fitted, tmp_path):
    """fit, recommend (one user and a batch), similar_*, predict, recommend_all (iterator and
    file), save, load, get/set_params and the fitted properties return what they annotate."""
    returns = _Returns()
    check = returns.check

    for name, model in fitted.items():
        cls = type(model)
        check(f"{name}.fit", cls.fit, _fit(copy.deepcopy(model)), cls)
        check(f"{name}.recommend", cls.recommend, model.recommend(0, k=3))
        check(f"{name}.recommend batch", cls.recommend, model.recommend([0, 1], k=3))
        check(f"{name}.similar_items", cls.similar_items, model.similar_items(0, k=3))
        check(f"{name}.similar_users", cls.similar_users, model.similar_users([0, 1], k=3))
        check(f"{name}.get_params", cls.get_params, model.get_params())
        check(f"{name}.set_params", cls.set_params, copy.deepcopy(model).set_params(), cls)
        check(f"{name}.recommend_all", cls.recommend_all, model.recommend_all(k=2))
        check(f"{name}.recommend_all path", cls.recommend_all,
              model.recommend_all(k=2, path=tmp_path / f"{name}.parquet"))
        check(f"{name}.save", cls.save, model.save(tmp_path / f"{name}.npz"))
        check("load", recfuse.load, recfuse.load(tmp_path / f"{name}.npz"))
        for prop in ("user_factors", "item_factors", "user_bias", "item_bias", "global_mean",
                     "rating_scale", "implicit_factors"):
            attr = inspect.getattr_static(cls, prop, None)
            if isinstance(attr, property):
                check(f"{name}.{prop}", attr.fget, getattr(model, prop))
        if hasattr(model, "predict"):
            check(f"{name}.predict scalar", cls.predict, model.predict(0, 1))
            check(f"{name}.predict numpy scalar", cls.predict,
                  model.predict(np.int64(0), np.int64(1)))
            check(f"{name}.predict list", cls.predict, model.predict([0, 1], [0, 1]))
    als = copy.deepcopy(fitted["ALS"])
    check("ALS.loss", recfuse.ALS.loss, als.loss())
    check("ALS.update_users", recfuse.ALS.update_users, als.update_users([0], USER_ITEMS[:1]))
    check("ALS.update_items", recfuse.ALS.update_items,
          als.update_items([0], USER_ITEMS[:, :1].T.tocsr()))
    returns.assert_all_as_annotated()


def test_retrieval_ranking_serving_returns_match_annotations(fitted):
    returns = _Returns()
    check = returns.check

    rng = np.random.default_rng(0)
    items = rng.standard_normal((20, 4)).astype(np.float32)
    check("backends", recfuse.backends, recfuse.backends())
    check("topk", recfuse.topk, recfuse.topk(items[:2], items, 3))
    index = recfuse.ItemIndex(items)
    check("ItemIndex.search", recfuse.ItemIndex.search, index.search(items[:2], 3))
    check("ItemIndex.search 1-d", recfuse.ItemIndex.search, index.search(items[0], 3))
    for name, value in vars(recfuse.ItemIndex).items():
        if isinstance(value, property):
            check(f"ItemIndex.{name}", value.fget, getattr(index, name))
    layers = [(rng.standard_normal((8, 8)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 8)).astype(np.float32), None, "sigmoid")]
    scorer = recfuse.MLPScorer(layers)
    for name, value in vars(recfuse.MLPScorer).items():
        if isinstance(value, property):
            check(f"MLPScorer.{name}", value.fget, getattr(scorer, name))
    check("MLPScorer.score", recfuse.MLPScorer.score, scorer.score(np.ones((3, 8), np.float32)))
    prepared = check("prepare_items", recfuse.MLPScorer.prepare_items,
                     scorer.prepare_items(items, item_column=4))
    candidates = rng.integers(0, 20, (2, 5))
    check("score_candidates", recfuse.MLPScorer.score_candidates,
          scorer.score_candidates(items[:2], candidates, prepared))
    check("rank", recfuse.MLPScorer.rank, scorer.rank(items[:2], candidates, prepared, k=3))
    check("rank 1 user", recfuse.MLPScorer.rank, scorer.rank(items[0], candidates[0], prepared, k=3))
    als = fitted["ALS"]
    ranker = recfuse.MLPRanker(hidden=(8,), epochs=1, random_state=0)
    check("MLPRanker.fit", recfuse.MLPRanker.fit,
          ranker.fit(USER_ITEMS, als.user_factors, als.item_factors), recfuse.MLPRanker)
    check("MLPRanker.to_scorer", recfuse.MLPRanker.to_scorer, ranker.to_scorer())
    check("MLPRanker.predict_logits", recfuse.MLPRanker.predict_logits,
          ranker.predict_logits(np.ones((3, 8), np.float32)))
    rec = recfuse.Recommender(copy.deepcopy(als), k=3)
    for name, value in vars(recfuse.Recommender).items():
        if isinstance(value, property):
            check(f"Recommender.{name}", value.fget, getattr(rec, name))
    check("Recommender.recommend", recfuse.Recommender.recommend, rec.recommend(0))
    check("recommend_batch", recfuse.Recommender.recommend_batch, rec.recommend_batch([0, 1]))
    check("observe", recfuse.Recommender.observe,
          rec.observe({"user": [0], "item": [1], "weight": [1.0]}))
    check("pending_events", recfuse.Recommender.pending_events, rec.pending_events())
    check("swap_model", recfuse.Recommender.swap_model, rec.swap_model(copy.deepcopy(als)))
    with recfuse.MicroBatcher(rec) as batcher:
        check("MicroBatcher.recommend", recfuse.MicroBatcher.recommend, batcher.recommend(0))
    returns.assert_all_as_annotated()


def test_data_path_returns_match_annotations(fitted):
    returns = _Returns()
    check = returns.check

    users, items, ratings = _ratings()
    log = recfuse.Interactions.from_arrays(users, items, ratings, timestamps=np.arange(200.0))
    for name, value in vars(recfuse.Interactions).items():
        if isinstance(value, property):
            check(f"Interactions.{name}", value.fget, getattr(log, name))
    check("from_matrix", recfuse.Interactions.from_matrix,
          recfuse.Interactions.from_matrix(USER_ITEMS), recfuse.Interactions)
    check("k_core", recfuse.Interactions.k_core, log.k_core(1), recfuse.Interactions)
    check("weighted", recfuse.Interactions.weighted, log.weighted("bm25"), recfuse.Interactions)
    ids = log.user_ids
    check("IdMap.to_internal", recfuse.IdMap.to_internal, ids.to_internal([0, 1]))
    check("IdMap.to_external", recfuse.IdMap.to_external, ids.to_external([0, 1]))
    check("IdMap.from_values", recfuse.IdMap.from_values, recfuse.IdMap.from_values(["a", "b"]))
    check("leave_last_n", split.leave_last_n, split.leave_last_n(log, 1))
    check("random_split", split.random_split, split.random_split(log))
    check("random_split csr", split.random_split, split.random_split(USER_ITEMS))
    check("per_user_split", split.per_user_split, split.per_user_split(USER_ITEMS))
    check("temporal_split", split.temporal_split, split.temporal_split(log, test_fraction=0.2))
    recommended = fitted["ALS"].recommend(np.arange(30), k=3)[0]
    train, test = split.random_split(USER_ITEMS, seed=0)
    check("evaluate", metrics.evaluate, metrics.evaluate(fitted["ALS"], train, test, k=3))
    check("ranking_metrics", metrics.ranking_metrics, metrics.ranking_metrics(recommended, USER_ITEMS))
    check("rmse", metrics.rmse, metrics.rmse([1, 2], [1, 3]))
    check("mae float32", metrics.mae, metrics.mae(np.array([1, 2], np.float32),
                                                  np.array([1, 3], np.float32)))
    check("catalog_coverage", metrics.catalog_coverage, metrics.catalog_coverage(recommended, 20))
    check("novelty", metrics.novelty, metrics.novelty(recommended, USER_ITEMS))
    check("intra_list_diversity", metrics.intra_list_diversity,
          metrics.intra_list_diversity(recommended, fitted["ALS"].item_factors))
    check("synthetic_implicit", datasets.synthetic_implicit, datasets.synthetic_implicit(20, 10, 50))
    check("synthetic_explicit", datasets.synthetic_explicit, datasets.synthetic_explicit(20, 10, 50))
    check("synthetic_event_log", datasets.synthetic_event_log,
          datasets.synthetic_event_log(20, 10, 50))
    check("train_test_split_per_user", datasets.train_test_split_per_user,
          datasets.train_test_split_per_user(USER_ITEMS))
    returns.assert_all_as_annotated()


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_documented_result_shapes_and_dtypes(cls, fitted):
    """ids int64 with -1 padding, scores float32 with -inf padding (README, Recommendation);
    one user gives 1-d rows, a batch 2-d; recommend_all chunks are len(users) x k."""
    model = fitted[cls.__name__]
    ids, scores = model.recommend(0, k=25)  # more than the 20 items: padded
    assert ids.shape == scores.shape == (25,)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids[-1] == -1 and scores[-1] == -np.inf
    ids, scores = model.recommend(np.array([0, 1, 2]), k=4)
    assert ids.shape == scores.shape == (3, 4)
    users, ids, scores = next(iter(model.recommend_all(k=4, batch_size=7)))
    assert users.shape == (7,) and ids.shape == scores.shape == (7, 4)
    similar, cosines = model.similar_items([3, 4], k=2)
    assert similar.shape == cosines.shape == (2, 2) and similar.dtype == np.int64


# ------------------------------------------------------------ docstrings vs signatures


def _parameters_section(doc: str):
    """Names documented in a numpydoc-like Parameters section, or None without one."""
    match = re.search(r"\n\s*Parameters\s*\n\s*-{3,}\s*\n(.*?)(?:\n\s*\n|\Z)", doc, re.S)
    if not match:
        return None
    body = textwrap.dedent(match.group(1))
    names = set()
    for line in body.splitlines():
        entry = re.match(r"^([A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_]\w*)*)\s*:(?:\s|$)", line)
        if entry:
            names.update(name.strip() for name in entry.group(1).split(","))
    return names


def test_parameters_sections_name_every_parameter():
    """Where a public class or function has a Parameters section, every parameter of its
    signature appears there (or in a later section of the same docstring: SVD's "Then:")."""
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in _public_names(module):
            obj = getattr(module, name)
            doc = inspect.getdoc(obj) or ""
            documented = _parameters_section("\n" + doc)
            if documented is None:
                continue
            try:
                signature = inspect.signature(obj)
            except (TypeError, ValueError):
                continue
            for parameter in signature.parameters.values():
                if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    continue
                if parameter.name not in documented and not re.search(
                        rf"(?<![\w.]){re.escape(parameter.name)}\s*:", doc):
                    missing.append(f"{module_name}.{name}({parameter.name})")
    assert not missing, missing


def test_stated_defaults_are_the_signature_defaults():
    """Defaults the docstrings state in words."""
    assert inspect.signature(recfuse.ALS).parameters["cg_steps"].default == 3
    assert inspect.signature(recfuse.ALS).parameters["confidence"].default == "linear"
    assert inspect.signature(recfuse.ItemIndex).parameters["storage"].default == "auto"
    for cls in (recfuse.BPR, recfuse.ExplicitALS, recfuse.SVD):
        assert np.dtype(inspect.signature(cls).parameters["dtype"].default) == np.float32
    assert inspect.signature(recfuse.Recommender).parameters["num_threads"].default is None
    from recfuse.distributed import DaskALS, SparkALS
    assert DaskALS().get_params()["random_state"] == 0  # "defaults to 0 here"
    assert SparkALS().get_params()["random_state"] == 0
    assert inspect.signature(DaskALS).parameters["broadcast"].default == "smaller"


def test_ranking_metrics_at_k_default_k_is_10(fitted):
    """"``k`` defaults to 10" (metrics.ranking_metrics_at_k)."""
    train, test = split.random_split(USER_ITEMS, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = metrics.ranking_metrics_at_k(fitted["ALS"], train, test)
        ten = metrics.ranking_metrics_at_k(fitted["ALS"], train, test, k=10)
    assert default == ten


def test_observe_weight_defaults_to_one(fitted):
    """Recommender.observe: "optionally "weight" (default 1)"."""
    a = recfuse.Recommender(copy.deepcopy(fitted["ALS"]), k=5)
    b = recfuse.Recommender(copy.deepcopy(fitted["ALS"]), k=5)
    a.observe({"user": [3, 3], "item": [1, 2]})
    b.observe({"user": [3, 3], "item": [1, 2], "weight": [1.0, 1.0]})
    assert np.array_equal(a.pending_events().weights, b.pending_events().weights)
    assert np.array_equal(a.recommend(3).ids, b.recommend(3).ids)


# ---------------------------------------------------------------------------- reprs


def _repr_objects(fitted):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((2000, 8)).astype(np.float32)
    layers = [(rng.standard_normal((8, 8)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 8)).astype(np.float32), None, "sigmoid")]
    scorer = recfuse.MLPScorer(layers)
    from recfuse.compat import surprise
    from recfuse.compat.implicit import AlternatingLeastSquares
    from recfuse.distributed import DaskALS
    objects = {f"{name} fitted": model for name, model in fitted.items()}
    objects.update({f"{cls.__name__} unfitted": cls() for cls in MODELS})
    objects.update({
        "ItemIndex": recfuse.ItemIndex(items, item_bias=np.zeros(2000)),
        "MLPScorer": scorer,
        "PreparedItems": scorer.prepare_items(items[:, :4], item_column=4),
        "MLPRanker": recfuse.MLPRanker(),
        "Recommender": recfuse.Recommender(fitted["ALS"], k=3),
        "Interactions": recfuse.Interactions.from_arrays(np.arange(5000), np.arange(5000)),
        "IdMap": recfuse.IdMap(np.arange(10 ** 5)),
        "implicit ALS": AlternatingLeastSquares(),
        "surprise SVD": surprise.SVD(),
        "DaskALS": DaskALS(),
    })
    return objects


def test_reprs_work_are_short_and_dump_no_arrays(fitted):
    long = []
    for name, obj in _repr_objects(fitted).items():
        text = repr(obj)
        if len(text) > 300 or "array(" in text or "\n" in text:
            long.append(f"{name}: {len(text)} chars: {text[:120]}")
    assert not long, long


def test_rerank_repr_is_short():
    rules = recfuse.Rerank(item_categories=np.arange(999) % 7, category_cap=2,
                           allow=np.arange(900))
    text = repr(rules)
    assert len(text) <= 300 and "array(" not in text, f"{len(text)} chars: {text[:200]}"


def test_idmap_repr_is_short_with_long_ids():
    ids = recfuse.IdMap(["x" * 10_000, "y", "z"])
    assert len(repr(ids)) <= 300, len(repr(ids))


# ------------------------------------------------------------- copies and pickles


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_deep_copies_are_equal_and_independent(cls, how, fitted):
    original = fitted[cls.__name__]
    before_u, before_i = original.user_factors.copy(), original.item_factors.copy()
    before = original.recommend([0, 1, 2], k=5)
    twin = copy.deepcopy(original) if how == "deepcopy" else pickle.loads(pickle.dumps(original))
    assert type(twin) is cls and twin.get_params().keys() == original.get_params().keys()
    after = twin.recommend([0, 1, 2], k=5)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])
    assert twin.user_factors is not original.user_factors
    twin.user_factors[0] = 123.0  # in place, on the copy
    twin.item_factors[:] = 0.0
    _fit(twin, other=True)  # a refit of the copy
    if hasattr(twin, "update_users"):
        twin.update_users([0, 1], USER_ITEMS_2[:2])
    assert np.array_equal(original.user_factors, before_u)
    assert np.array_equal(original.item_factors, before_i)
    again = original.recommend([0, 1, 2], k=5)
    assert np.array_equal(before[0], again[0]) and np.array_equal(before[1], again[1])


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_shallow_copy_refit_leaves_the_original(cls, fitted):
    """copy.copy shares the arrays (Python's shallow copy) but a fit or fold-in of the copy
    publishes new tables: the original keeps its fit."""
    original = copy.deepcopy(fitted[cls.__name__])
    before = original.recommend([0, 1], k=5)
    twin = copy.copy(original)
    _fit(twin, other=True)
    if hasattr(twin, "update_users"):
        twin.update_users([0], USER_ITEMS_2[:1])
    after = original.recommend([0, 1], k=5)
    assert np.array_equal(before[0], after[0]) and np.array_equal(before[1], after[1])


def test_index_and_scorer_pickle_in_memory():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((50, 6)).astype(np.float32)
    index = recfuse.ItemIndex(items, metric="cosine")
    twin = pickle.loads(pickle.dumps(index))
    assert all(np.array_equal(a, b) for a, b in zip(index.search(items[:3], 4),
                                                    twin.search(items[:3], 4)))
    scorer = recfuse.MLPScorer([(rng.standard_normal((4, 6)).astype(np.float32), None, "relu"),
                                (rng.standard_normal((1, 4)).astype(np.float32), None, "identity")])
    for other in (pickle.loads(pickle.dumps(scorer)), copy.deepcopy(scorer)):
        assert np.array_equal(scorer.score(items), other.score(items))


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps],
                         ids=["copy", "deepcopy", "pickle"])
def test_prepared_items_refuse_copies_clearly(how):
    items = np.ones((5, 4), np.float32)
    scorer = recfuse.MLPScorer([(np.ones((3, 8), np.float32), None, "relu"),
                                (np.ones((1, 3), np.float32), None, "identity")])
    with pytest.raises(TypeError, match="PreparedItems"):
        how(scorer.prepare_items(items, item_column=4))


def test_recommender_shallow_copy_is_independent_or_refused(fitted):
    original = recfuse.Recommender(copy.deepcopy(fitted["ALS"]), k=3)
    before = original.recommend(5).ids.copy()
    try:
        twin = copy.copy(original)
    except TypeError:
        return  # refused: acceptable
    twin.observe({"user": [5, 5, 5], "item": list(before), "weight": [5.0, 5.0, 5.0]})
    assert len(original.pending_events().users) == 0
    assert np.array_equal(original.recommend(5).ids, before)


@pytest.mark.parametrize("what", ["Recommender", "MicroBatcher"])
def test_serving_objects_refuse_pickling_clearly(what, fitted):
    rec = recfuse.Recommender(fitted["ALS"], k=3)
    obj = rec if what == "Recommender" else recfuse.MicroBatcher(rec)
    try:
        with pytest.raises(TypeError, match=what):
            pickle.dumps(obj)
    finally:
        if what == "MicroBatcher":
            obj.close()


_BATCHER_COPY = """
import copy, warnings, numpy as np, scipy.sparse as sp, recfuse
warnings.simplefilter("ignore")
seen = sp.random(30, 20, density=0.3, format="csr", random_state=1, dtype=np.float32)
rec = recfuse.Recommender(recfuse.ALS(factors=4, iterations=2, random_state=0).fit(seen), k=3)
batcher = recfuse.MicroBatcher(rec)
try:
    twin = copy.copy(batcher)
except TypeError as error:
    print("refused", error)
else:
    import os, threading
    closing = threading.Thread(target=twin.close, daemon=True)
    closing.start()
    closing.join(10)                  # twin.close() must return
    if closing.is_alive():
        print("close of the copy hangs", flush=True)
        os._exit(3)
    print("original", batcher.recommend(5).ids)
batcher.close()
print("done")
"""


def test_microbatcher_shallow_copy_close_returns():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "RECFUSE_"))}
    done = subprocess.run([sys.executable, "-c", _BATCHER_COPY], timeout=120,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-2000:]
    assert "done" in done.stdout


# --------------------------------------------------- attributes and parameters alike


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_fitted_models_share_attribute_names(cls, fitted):
    model = fitted[cls.__name__]
    params = model.get_params()
    for name in ("factors", "dtype", "backend", "num_threads", "random_state"):
        assert name in params, name
    for name in ("user_factors", "item_factors"):
        table = getattr(model, name)
        assert isinstance(table, np.ndarray) and table.ndim == 2, name
        assert table.shape[1] == model.factors and table.dtype == np.dtype(model.dtype), name
    assert model.user_factors.shape[0] == 30 and model.item_factors.shape[0] == 20
    assert model.backend_used in {info.name for info in recfuse.backends()}
    fresh = cls()
    assert fresh.user_factors is None and fresh.item_factors is None


BAD_VALUES = {
    "factors": ["8", 8.0, 0, -3, True, None, 10 ** 9],
    "num_threads": ["2", -1, 1.5, True, 10 ** 9],
    "backend": ["nope", 3, "CPU", None, ""],
    "dtype": [np.int32, "float16", np.float16, "nope", 3, np.complex64],
    "random_state": ["x", -1, 1.5, True, np.random.RandomState(0)],
}


@HYPOTHESIS
@given(name=st.sampled_from(sorted(BAD_VALUES)), data=st.data())
def test_same_bad_parameter_same_error_across_models(name, data):
    """The shared parameters are checked alike: one bad value, one exception type, and a
    message naming the parameter, for all five models (and DaskALS/the implicit adapter where
    they take it)."""
    value = data.draw(st.sampled_from(BAD_VALUES[name]))
    outcomes = {}
    for cls in MODELS:
        try:
            cls(**{name: value})
            outcomes[cls.__name__] = "accepted"
        except (TypeError, ValueError) as error:
            assert name in str(error), (cls.__name__, str(error))
            outcomes[cls.__name__] = type(error).__name__
    assert len(set(outcomes.values())) == 1, outcomes
    assert "accepted" not in outcomes.values(), outcomes


@HYPOTHESIS
@given(value=st.one_of(st.text(max_size=3), st.floats(allow_nan=True), st.booleans(),
                       st.integers(-10, 10), st.none(), st.lists(st.integers(), max_size=2)))
def test_factors_type_and_value_errors(value):
    """factors: an integer >= 1 (bool is not one); TypeError for a wrong kind, ValueError for
    a wrong value, the same in every model."""
    kinds = set()
    for cls in MODELS:
        try:
            model = cls(factors=value)
        except TypeError:
            kinds.add("TypeError")
            assert isinstance(value, bool) or not isinstance(value, int)
        except ValueError:
            kinds.add("ValueError")
            assert isinstance(value, int) and not isinstance(value, bool) and value < 1
        else:
            kinds.add("accepted")
            assert model.factors == value and isinstance(value, int) and value >= 1
    assert len(kinds) == 1


# -------------------------------------------------------------------- exceptions


UNFITTED_CALLS = {
    "recommend": lambda m: m.recommend(0, k=3),
    "recommend_all": lambda m: list(m.recommend_all(k=3)),
    "similar_items": lambda m: m.similar_items(0, k=3),
    "similar_users": lambda m: m.similar_users(0, k=3),
    "save": lambda m: m.save(os.path.join(os.devnull, "never.npz")),
    "predict": lambda m: m.predict([0], [0]),
    "update_users": lambda m: m.update_users([0], USER_ITEMS[:1]),
    "update_items": lambda m: m.update_items([0], USER_ITEMS[:, :1].T.tocsr()),
    "loss": lambda m: m.loss(USER_ITEMS),
}


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_unfitted_models_raise_runtime_error(cls):
    for name, call in UNFITTED_CALLS.items():
        model = cls()
        if not hasattr(model, name):
            continue
        with pytest.raises(RuntimeError, match="not fitted"):
            call(model)
        assert model.get_params() == cls().get_params()  # nothing changed


def test_unfitted_adapters_and_ranker_raise_runtime_error():
    from recfuse.compat import surprise
    from recfuse.compat.implicit import AlternatingLeastSquares
    from recfuse.distributed import DaskALS, SparkALS
    with pytest.raises(RuntimeError, match="not fitted"):
        AlternatingLeastSquares().recommend(0, USER_ITEMS[0])
    with pytest.raises(RuntimeError, match="not fitted"):
        surprise.SVD().predict(0, 0)
    with pytest.raises(RuntimeError, match="not fitted"):
        recfuse.MLPRanker().to_scorer()
    for cls in (DaskALS, SparkALS):
        with pytest.raises(RuntimeError, match="not fitted"):
            cls().to_local()


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_set_params_unknown_name_is_value_error_and_changes_nothing(cls):
    model = _small(cls)
    before = model.get_params()
    with pytest.raises(ValueError, match="no parameter 'bogus'"):
        model.set_params(factors=8, bogus=1)
    assert model.get_params() == before
    with pytest.raises(TypeError, match="bogus"):
        cls(bogus=1)


def test_distributed_models_have_the_same_short_repr():
    """DaskALS and SparkALS share their parameters, and their repr (SparkALS had none)."""
    distributed = pytest.importorskip("recfuse.distributed")
    for cls in (distributed.DaskALS, distributed.SparkALS):
        text = repr(cls(factors=8, iterations=3))
        assert text == (f"{cls.__name__}(factors=8, regularization=0.01, alpha=1.0, "
                        f"iterations=3, solver='cg', dtype=float32)")
