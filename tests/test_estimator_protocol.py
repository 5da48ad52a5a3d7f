"""scikit-learn's estimator protocol on every model: ``get_params(deep=...)`` gives the
constructor's parameters, ``set_params`` checks each value as the constructor does (all or
nothing), ``sklearn.base.clone`` gives an unfitted model of equal parameters. On a fitted
model ``set_params`` refuses new values of the settings that shape its fitted state
(factors, dtype, biased, activation), and takes the others, keeping its fit usable
(recommend, save and load) until the next fit."""

from __future__ import annotations

import inspect
import json
import pathlib

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import persistence
from recfuse.distributed import DaskALS, SparkALS
from recfuse.distributed._common import DistributedALSBase

N_USERS, N_ITEMS = 30, 20


def _implicit(seed=1):
    return sp.random(N_USERS, N_ITEMS, density=0.25, format="csr", random_state=seed)


def _ratings(seed=1):
    matrix = _implicit(seed)
    matrix.data = np.round(1 + 4 * matrix.data)  # ratings 1..5
    return matrix


def _features(seed=2):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N_USERS, 3)), rng.standard_normal((N_ITEMS, 3))


# class, valid non-default parameters, (a bad value's name, the value)
MODELS = {
    "ALS": (recfuse.ALS,
            dict(factors=5, regularization=0.5, alpha=2.0, iterations=3, solver="cholesky",
                 cg_steps=2, dtype="float64", backend="cpu", num_threads=1, random_state=4,
                 confidence="raw"),
            ("solver", "lu")),
    "SVD": (recfuse.SVD,
            dict(factors=5, epochs=3, lr=0.01, reg=0.1, biased=False, init_mean=0.1,
                 init_std=0.2, lr_bu=0.02, reg_qi=0.3, dtype="float64", grid=2, shuffle=False,
                 backend="cpu", num_threads=1, random_state=4),
            ("lr", 0.0)),
    "SVDpp": (recfuse.SVDpp,
              dict(factors=5, epochs=3, lr=0.01, reg=0.1, init_std=0.2, lr_yj=0.02,
                   reg_yj=0.3, dtype="float64", shuffle=False, backend="cpu", random_state=4),
              ("lr_yj", 0.0)),
    "ExplicitALS": (recfuse.ExplicitALS,
                    dict(factors=5, iterations=3, reg=0.2, biased=False, reg_bias=0.3,
                         init_std=0.2, dtype="float64", backend="cpu", num_threads=1,
                         random_state=4),
                    ("reg", 0.0)),
    "BPR": (recfuse.BPR,
            dict(factors=5, lr=0.02, reg=0.1, iterations=3, dtype="float64", grid=2,
                 max_tries=7, backend="cpu", num_threads=1, random_state=4),
            ("max_tries", 0)),
    "MLPRanker": (recfuse.MLPRanker,
                  dict(hidden=(6, 3), activation="tanh", negatives=2, epochs=2, batch_size=64,
                       learning_rate=0.01, l2=0.001, random_state=4),
                  ("activation", "sigmoid")),
    "DaskALS": (DaskALS,
                dict(factors=5, regularization=0.5, iterations=3, solver="cholesky",
                     dtype="float64", random_state=4, blocks=3, checkpoint_every=2,
                     broadcast="never", max_retries=1),
                ("broadcast", "always")),
    "SparkALS": (SparkALS,
                 dict(factors=5, alpha=2.0, confidence="raw", random_state=4, blocks=2,
                      barrier=True),
                 ("barrier", "yes")),
}
NAMES = list(MODELS)


def _constructor_parameters(cls) -> set:
    """The names the constructor takes (a distributed model's keyword arguments are those of
    DistributedALSBase)."""
    names = set()
    for owner in (cls, DistributedALSBase) if issubclass(cls, DistributedALSBase) else (cls,):
        names |= {name for name, parameter in inspect.signature(owner).parameters.items()
                  if parameter.kind is not inspect.Parameter.VAR_KEYWORD}
    return names


def _fitted(name: str, **params):
    cls = MODELS[name][0]
    model = cls(**{"random_state": 0, **params})
    if name in ("ALS", "BPR"):
        return model.fit(_implicit())
    if name == "MLPRanker":
        return model.fit(_implicit(), *_features())
    return model.fit(_ratings())


def _same_error(make, change):
    """The exception type and message of ``make()`` and of ``change()``: the same."""
    with pytest.raises((TypeError, ValueError)) as made:
        make()
    with pytest.raises(type(made.value)) as changed:
        change()
    assert str(changed.value) == str(made.value)
    return made.value


@pytest.mark.parametrize("name", NAMES)
def test_get_params_gives_the_constructor_parameters(name):
    cls, others, _ = MODELS[name]
    model = cls()
    params = model.get_params()
    assert set(params) == _constructor_parameters(cls)
    assert model.get_params(deep=True) == model.get_params(deep=False) == params
    assert cls(**params).get_params() == params
    # values as given: the very objects (sklearn.base.clone checks identity)
    model = cls(**others)
    given = model.get_params(deep=False)
    assert {key: given[key] for key in others} == others
    for key, value in others.items():
        assert given[key] is value, key


@pytest.mark.parametrize("name", NAMES)
def test_set_params_round_trips(name):
    cls, others, _ = MODELS[name]
    model = cls()
    assert model.set_params(**others) is model
    wanted = cls(**others).get_params()
    assert model.get_params() == wanted
    assert model.set_params() is model and model.get_params() == wanted
    assert model.set_params(**model.get_params()).get_params() == wanted
    back = cls().get_params()
    assert model.set_params(**back).get_params() == back


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_value_raises_the_constructors_error_and_changes_nothing(name):
    cls, others, (bad_name, bad_value) = MODELS[name]
    model = cls(**others)
    before = model.get_params()
    _same_error(lambda: cls(**{bad_name: bad_value}),
                lambda: model.set_params(**{bad_name: bad_value}))
    assert model.get_params() == before
    # with valid changes beside it: none of them is made either
    valid = cls().get_params()
    valid.pop(bad_name)
    with pytest.raises((TypeError, ValueError), match=bad_name):
        model.set_params(**valid, **{bad_name: bad_value})
    assert model.get_params() == before
    # a wrong type: the constructor's TypeError
    error = _same_error(lambda: cls(random_state="seed"),
                        lambda: model.set_params(random_state="seed"))
    assert isinstance(error, TypeError) and model.get_params() == before


def test_checks_across_parameters_are_the_constructors():
    """SVD's starting factors must stay finite in the dtype: a check of init_mean, init_std
    and dtype together, made by set_params as by the constructor."""
    model = recfuse.SVD(init_mean=1e39, dtype="float64")
    _same_error(lambda: recfuse.SVD(init_mean=1e39, dtype="float32"),
                lambda: model.set_params(dtype="float32"))
    assert model.get_params()["dtype"] == "float64"
    model.set_params(init_mean=0.0, dtype="float32")
    assert model.get_params()["dtype"] == "float32"


@pytest.mark.parametrize("name", NAMES)
def test_an_unknown_name_is_a_value_error_naming_it(name):
    cls, others, _ = MODELS[name]
    model = cls(**others)
    before = model.get_params()
    with pytest.raises(ValueError, match=r"no parameter 'nope'.*random_state"):
        model.set_params(nope=1)
    with pytest.raises(ValueError, match=r"'nope', 'n_factors'"):
        model.set_params(random_state=9, nope=1, n_factors=3)
    assert model.get_params() == before


@pytest.mark.parametrize("name", NAMES)
def test_sklearn_clone_gives_an_unfitted_model_of_equal_params(name):
    base = pytest.importorskip("sklearn.base")
    cls, others, _ = MODELS[name]
    model = cls(**others)
    twin = base.clone(model)
    assert type(twin) is cls and twin is not model
    assert twin.get_params() == model.get_params()
    # other spellings of the values clone too (sklearn checks that the clone keeps what it
    # was given)
    spelled = {"random_state": np.int64(4)}
    if "dtype" in others:
        spelled["dtype"] = np.float64
    if "factors" in others:
        spelled["factors"] = np.int64(5)
    if name == "MLPRanker":
        spelled["hidden"] = [6, np.int64(3)]
    twin = base.clone(cls(**{**others, **spelled}))
    assert twin.get_params() == model.get_params()


def test_clone_keeps_a_generator_and_a_path(tmp_path):
    base = pytest.importorskip("sklearn.base")
    rng = np.random.default_rng(3)
    model = recfuse.ALS(random_state=rng)
    twin = base.clone(model)
    assert isinstance(twin.random_state, np.random.Generator)
    assert twin.random_state is not rng  # a copy, as sklearn copies a RandomState
    assert twin.random_state.bit_generator.state == rng.bit_generator.state
    assert model.get_params()["random_state"] is rng
    folder = DaskALS(checkpoint_dir=pathlib.Path(tmp_path))
    assert base.clone(folder).get_params()["checkpoint_dir"] == str(tmp_path)


@pytest.mark.parametrize("name", ["ALS", "SVD", "SVDpp", "ExplicitALS", "BPR", "MLPRanker"])
def test_clone_of_a_fitted_model_is_unfitted(name):
    base = pytest.importorskip("sklearn.base")
    model = _fitted(name, **{"factors": 4} if name != "MLPRanker" else {"hidden": (4,)})
    twin = base.clone(model)
    assert twin.get_params() == model.get_params()
    with pytest.raises(RuntimeError, match="not fitted"):
        twin.to_scorer() if name == "MLPRanker" else twin.recommend(0, k=3)


# ----------------------------------------------------------------------------- fitted models
# for each model: the settings that shape its fitted state, each with a new value (fitted
# with factors=4, dtype float32, biased=True, activation "relu"), and other settings, which a
# fitted model takes
SHAPING = {
    "ALS": dict(factors=6, dtype="float64"),
    "SVD": dict(factors=6, dtype="float64", biased=False),
    "SVDpp": dict(factors=6, dtype="float64"),
    "ExplicitALS": dict(factors=6, dtype="float64", biased=False),
    "BPR": dict(factors=6, dtype="float64"),
    "MLPRanker": dict(activation="tanh"),
}
OTHERS = {
    "ALS": dict(regularization=0.5, iterations=3, solver="cholesky"),
    "SVD": dict(epochs=3, lr=0.01, reg_qi=0.1),
    "SVDpp": dict(epochs=3, lr_yj=0.01),
    "ExplicitALS": dict(iterations=2, reg=0.5, reg_bias=0.1),
    "BPR": dict(lr=0.02, iterations=3),
    "MLPRanker": dict(hidden=(3, 2), epochs=2, l2=0.001),
}
SAVED = ["ALS", "SVD", "SVDpp", "ExplicitALS", "BPR"]  # MLPRanker has no model file


def _fitted_small(name: str):
    if name == "MLPRanker":
        return _fitted(name, hidden=(4,))
    return _fitted(name, factors=4, backend="cpu")


def _results(model):
    if isinstance(model, recfuse.MLPRanker):
        users, items = _features()
        rows = np.concatenate([users[:5], items[:5]], axis=1).astype(np.float32)
        return [model.predict_logits(rows), model.to_scorer().score(rows)]
    ids, scores = model.recommend(np.arange(N_USERS), k=5)
    similar = model.similar_items(np.arange(N_ITEMS), k=3)
    out = [ids, scores, *similar]
    if hasattr(model, "predict"):
        out.append(model.predict(np.arange(N_USERS), np.arange(N_USERS) % N_ITEMS))
    return out


def _assert_same_results(model, before):
    for got, want in zip(_results(model), before, strict=True):
        np.testing.assert_array_equal(got, want)


def _refit(name, model):
    if name in ("ALS", "BPR"):
        return model.fit(_implicit())
    if name == "MLPRanker":
        return model.fit(_implicit(), *_features())
    return model.fit(_ratings())


@pytest.mark.parametrize("name", list(SHAPING))
def test_fit_checks_settings_assigned_by_hand(name):
    """An attribute assigned by hand skips set_params' checks: fit checks every setting
    first, with the constructor's error, and a refused fit leaves the fitted model as it
    was (a negative regularization assigned so was trained with)."""
    cls, _, (bad_name, bad_value) = MODELS[name]
    model = _fitted_small(name)
    before = _results(model)
    setattr(model, bad_name, bad_value)
    _same_error(lambda: cls(**{bad_name: bad_value}), lambda: _refit(name, model))
    setattr(model, bad_name, cls().get_params()[bad_name])
    _assert_same_results(model, before)
    model.dtype = "float64" if name != "MLPRanker" else None  # a spelling the check converts
    if name != "MLPRanker":
        assert _refit(name, model).dtype == np.float64


@pytest.mark.parametrize("name", list(SHAPING))
def test_set_params_refuses_new_fit_shaping_values_on_a_fitted_model(name):
    model = _fitted_small(name)
    before, results = model.get_params(), _results(model)
    for key, value in SHAPING[name].items():
        current = before[key]
        # alone, and beside a valid change of another setting: nothing changes either way
        for extra in ({}, {"random_state": 9}):
            with pytest.raises(ValueError) as refused:
                model.set_params(**{key: value}, **extra)
            message = str(refused.value)
            assert message.startswith(f"{name} is fitted: {key} shapes the fitted ")
            assert f"made with {key}={current!r}" in message
            assert f"sklearn.base.clone(model).set_params({key}={value!r})" in message
            assert message.endswith("or make a new model, and fit that")
            assert model.get_params() == before
            _assert_same_results(model, results)
        # the current value is accepted (in another spelling too), and changes nothing
        assert model.set_params(**{key: current}) is model
        if key == "dtype":
            model.set_params(dtype=np.float32)
        assert model.get_params() == before
        _assert_same_results(model, results)
    # all of them at once: named together
    with pytest.raises(ValueError, match="set (it|them) on an unfitted copy") as refused:
        model.set_params(**SHAPING[name])
    assert all(f"made with {key}=" in str(refused.value) for key in SHAPING[name])
    assert model.get_params() == before
    model.set_params(**before)  # every current value: accepted
    assert model.get_params() == before
    _assert_same_results(model, results)


@pytest.mark.parametrize("name", list(SHAPING))
def test_unfitted_models_and_clones_take_every_value(name):
    base = pytest.importorskip("sklearn.base")
    model = _fitted_small(name)
    twin = base.clone(model).set_params(**SHAPING[name], **OTHERS[name])
    fresh = type(model)(**model.get_params()).set_params(**SHAPING[name], **OTHERS[name])
    assert twin.get_params() == fresh.get_params()
    assert {key: twin.get_params()[key] for key in SHAPING[name]} == SHAPING[name]
    _refit(name, twin.set_params(random_state=0))  # fits with the new values
    if name == "MLPRanker":
        assert [W.shape for W in twin.weights] == [(3, 6), (2, 3), (1, 2)]
        # and, fitted, now refuses another activation
        with pytest.raises(ValueError, match="activation shapes the fitted weights"):
            twin.set_params(activation="relu")
    else:
        assert twin.user_factors.shape[1] == 6 and twin.user_factors.dtype == np.float64
        with pytest.raises(ValueError, match=r"factors shapes the fitted tables \(6 columns\)"):
            twin.set_params(factors=4)


@pytest.mark.parametrize("name", list(OTHERS))
def test_a_fitted_model_takes_other_settings_and_keeps_its_fit(name, tmp_path):
    model = _fitted_small(name)
    before = _results(model)
    model.set_params(**OTHERS[name])
    assert {key: model.get_params()[key] for key in OTHERS[name]} == OTHERS[name]
    _assert_same_results(model, before)
    if name in SAVED:
        # save and load: the same parameters, the same fitted state
        path = tmp_path / "model.npz"
        model.save(path)
        header, _ = persistence.read_model(path)
        assert set(header) == {"format", "version", "model", "params"}
        assert header["params"] == model.get_params()
        loaded = recfuse.load(path)
        assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
        _assert_same_results(loaded, before)
        mapped = recfuse.load(path, mmap=True)
        assert mapped.get_params() == model.get_params()
        np.testing.assert_array_equal(mapped.recommend(0, k=5)[1], before[1][0])
        loaded.save(tmp_path / "again.npz")
        assert persistence.read_model(tmp_path / "again.npz")[0] == header
    # the next fit uses the new settings
    refit = _refit(name, type(model)(**{**model.get_params(), "random_state": 0}))
    _refit(name, model.set_params(random_state=0))
    for got, want in zip(_results(model), _results(refit), strict=True):
        np.testing.assert_array_equal(got, want)


def test_als_fold_in_after_set_params():
    model = _fitted("ALS", factors=4, backend="cpu").set_params(regularization=0.5,
                                                                  solver="cholesky")
    rows = _implicit(seed=5)[:2]
    vectors = model.update_users([0, N_USERS + 1], rows)
    assert vectors.shape == (2, 4) and vectors.dtype == np.float32
    assert model.user_factors.shape == (N_USERS + 2, 4)
    ids, _ = model.recommend(N_USERS + 1, user_items=rows[1], k=3)
    assert ids.shape == (3,)
    assert np.isfinite(model.loss())


def test_a_fitted_spark_als_refuses_new_fit_shaping_values():
    """pyspark is not installed here: the fitted state the refusal reads (n_users, set by
    fit) is set by hand."""
    model = SparkALS(factors=4, blocks=2)
    model.n_users, model.n_items = N_USERS, N_ITEMS
    before = model.get_params()
    with pytest.raises(ValueError, match=r"^SparkALS is fitted: factors shapes the fitted "
                                         r"tables \(4 columns\), made with factors=4"):
        model.set_params(factors=6, barrier=True)
    with pytest.raises(ValueError, match=r"set_params\(dtype='float64'\)"):
        model.set_params(dtype="float64")
    assert model.get_params() == before
    model.set_params(factors=4, dtype="float32", blocks=3, barrier=True)
    assert model.get_params() == dict(before, blocks=3, barrier=True)


def test_dask_als_after_set_params(tmp_path):
    base = pytest.importorskip("sklearn.base")
    pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("pyarrow")
    import dask.dataframe as dd
    import pandas as pd

    coo = _implicit().tocoo()
    frame = dd.from_pandas(pd.DataFrame({"user": coo.row.astype(np.int64),
                                         "item": coo.col.astype(np.int64),
                                         "weight": coo.data}), npartitions=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0", silence_logs=40) as cluster:
        with distributed.Client(cluster) as client:
            model = DaskALS(factors=4, iterations=2, random_state=0, backend="cpu").fit(
                frame, "user", "item", "weight", client=client)
            local = model.to_local()
            before = local.recommend(np.arange(local.user_factors.shape[0]), k=5)
            plan = model.transfer_plan()
            params = model.get_params()
            with pytest.raises(ValueError, match=r"^DaskALS is fitted: factors shapes the "
                                                 r"fitted tables \(4 columns\)"):
                model.set_params(factors=6, iterations=3)
            with pytest.raises(ValueError, match="dtype shapes the fitted tables"):
                model.set_params(dtype="float64")
            assert model.get_params() == params and model.transfer_plan() == plan
            model.set_params(factors=4, dtype="float32", blocks=2, iterations=3)
            assert model.get_params() == dict(params, blocks=2, iterations=3)
            local = model.to_local()
            assert local.user_factors.shape[1] == 4 and local.user_factors.dtype == np.float32
            for got, want in zip(local.recommend(np.arange(local.user_factors.shape[0]), k=5),
                                 before):
                np.testing.assert_array_equal(got, want)
            model.save(tmp_path / "saved")
            with open(tmp_path / "saved" / "model.json", encoding="utf-8") as handle:
                document = json.load(handle)
            assert document["params"]["iterations"] == 3
            assert document["params"] == model._als_params()
            # an unfitted copy takes new factors and dtype, and fits with them
            twin = base.clone(model).set_params(factors=6, dtype="float64")
            twin.fit(frame, "user", "item", "weight", client=client)
            refit = twin.to_local()
            assert refit.user_factors.shape[1] == 6 and refit.user_factors.dtype == np.float64
