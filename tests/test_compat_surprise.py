"""recfuse.compat.surprise against Surprise itself: the same SVD model (same initial
factors, same order, float64) and use inside surprise.model_selection.cross_validate."""

from __future__ import annotations

import numpy as np
import pytest

from recfuse.compat.surprise import SVD, SVDpp

surprise = pytest.importorskip("surprise", reason="scikit-surprise is not installed")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    n = 4000
    users, items = rng.integers(0, 150, n), rng.integers(0, 100, n)
    taste = rng.normal(size=(150, 2)) @ rng.normal(size=(2, 100))
    ratings = np.clip(np.round(3 + taste[users, items]), 1, 5)
    path = tmp_path_factory.mktemp("ratings") / "ratings.tsv"
    np.savetxt(path, np.c_[users, items, ratings], fmt="%d", delimiter="\t")
    reader = surprise.Reader(line_format="user item rating", sep="\t", rating_scale=(1, 5))
    return surprise.Dataset.load_from_file(str(path), reader)


@pytest.mark.parametrize("biased", [True, False])
def test_svd_is_surprises_model(dataset, biased):
    trainset = dataset.build_full_trainset()
    kwargs = dict(n_factors=12, n_epochs=8, biased=biased, lr_bi=0.01, reg_pu=0.05,
                  random_state=3)
    ours = SVD(**kwargs).fit(trainset)
    theirs = surprise.SVD(**kwargs).fit(trainset)
    np.testing.assert_allclose(ours.pu, theirs.pu, atol=1e-9)
    np.testing.assert_allclose(ours.qi, theirs.qi, atol=1e-9)
    np.testing.assert_allclose(ours.bu, theirs.bu, atol=1e-9)
    probes = [("1", "2", None), ("3", "999", 4.0), ("999", "5", None), ("999", "998", 2.0)]
    for uid, iid, r in probes:
        mine, reference = ours.predict(uid, iid, r), theirs.predict(uid, iid, r)
        assert mine.est == pytest.approx(reference.est, abs=1e-9), (uid, iid)
        assert (mine.uid, mine.iid, mine.r_ui) == (reference.uid, reference.iid, reference.r_ui)
    testset = trainset.build_testset()[:200] + [("999", "5", 3.0)]
    np.testing.assert_allclose([p.est for p in ours.test(testset)],
                               [p.est for p in theirs.test(testset)], atol=1e-9)


def test_cross_validate_with_surprises_own_loop(dataset):
    from surprise.model_selection import KFold, cross_validate

    folds = KFold(n_splits=3, random_state=0)
    for ours, theirs in [(SVD(n_factors=10, n_epochs=10, random_state=0),
                          surprise.SVD(n_factors=10, n_epochs=10, random_state=0)),
                         (SVDpp(n_factors=8, n_epochs=10, random_state=0),
                          surprise.SVDpp(n_factors=8, n_epochs=10, random_state=0))]:
        mine = cross_validate(ours, dataset, measures=["rmse", "mae"], cv=folds)
        reference = cross_validate(theirs, dataset, measures=["rmse", "mae"], cv=folds)
        # SVD is the same model; SVD++ differs in the order of its implicit updates.
        tolerance = 1e-6 if isinstance(ours, SVD) else 0.02
        np.testing.assert_allclose(mine["test_rmse"], reference["test_rmse"], atol=tolerance)
        np.testing.assert_allclose(mine["test_mae"], reference["test_mae"], atol=tolerance)


def test_parallel_cross_validate(dataset):
    """n_jobs=2 sends the algorithm to worker processes (pickled in memory): the serial
    answers."""
    from surprise.model_selection import KFold, cross_validate

    folds = KFold(n_splits=2, random_state=0)
    algorithm = SVD(n_factors=5, n_epochs=5, random_state=0)
    serial = cross_validate(algorithm, dataset, measures=["rmse"], cv=folds)
    parallel = cross_validate(algorithm, dataset, measures=["rmse"], cv=folds, n_jobs=2)
    np.testing.assert_allclose(parallel["test_rmse"], serial["test_rmse"])


def test_a_diverging_grid_point_is_scored_as_surprise_scores_it(dataset):
    """Surprise trains on to NaN/inf at a learning rate too high and clips the predictions;
    a grid search over such a point finishes with Surprise's numbers, and the adapter keeps
    Surprise's resolved per-parameter rates."""
    from surprise.model_selection import GridSearchCV, KFold

    grid = {"n_factors": [3], "n_epochs": [5], "lr_all": [0.005, 0.5], "random_state": [0]}
    results = []
    for algorithm in (surprise.SVD, SVD):
        search = GridSearchCV(algorithm, grid, measures=["rmse"], cv=KFold(2, random_state=0))
        search.fit(dataset)
        results.append(search.cv_results["mean_test_rmse"])
    np.testing.assert_allclose(results[1], results[0], rtol=1e-9)
    diverged = SVD(n_factors=3, n_epochs=5, lr_all=0.5, random_state=0).fit(
        dataset.build_full_trainset())
    assert not np.isfinite(diverged.pu).all()  # the point the grid had to get through
    resolved = SVD(n_factors=5, reg_bu=0.1)
    assert (resolved.lr_bu, resolved.reg_bu, resolved.reg_qi) == (0.005, 0.1, 0.02)


def test_parallel_grid_and_unfitted_errors(dataset):
    trainset = dataset.build_full_trainset()
    fast = SVD(n_factors=8, n_epochs=5, random_state=0, grid=4, num_threads=2).fit(trainset)
    assert 1 <= fast.predict("1", "2").est <= 5
    with pytest.raises(RuntimeError, match="not fitted"):
        SVD().predict("1", "2")
    with pytest.raises(ValueError, match="lr must be > 0"):
        SVD(lr_all=0)


@pytest.mark.parametrize("algorithm", [SVD, SVDpp])
def test_unfitted_default_prediction_and_estimate(algorithm):
    # as predict and test: not an AttributeError on the missing trainset
    with pytest.raises(RuntimeError, match="not fitted"):
        algorithm().default_prediction()
    with pytest.raises(RuntimeError, match="not fitted"):
        algorithm().estimate("UKN__1", 0)


@pytest.mark.parametrize("algorithm, options", [(SVD, {"biased": True}),
                                                (SVD, {"biased": False}), (SVDpp, {})])
def test_prediction_details_are_surprises(dataset, algorithm, options):
    trainset = dataset.build_full_trainset()
    kwargs = dict(n_factors=6, n_epochs=3, random_state=1, **options)
    ours = algorithm(**kwargs).fit(trainset)
    theirs = getattr(surprise, algorithm.__name__)(**kwargs).fit(trainset)
    probes = [("1", "2", None), ("3", "999", 4.0), ("999", "5", None), ("999", "998", 2.0)]
    for uid, iid, r in probes:
        mine, reference = ours.predict(uid, iid, r), theirs.predict(uid, iid, r)
        assert mine.details == reference.details, (uid, iid)
        assert mine.est == pytest.approx(reference.est, abs=0.05 if algorithm is SVDpp
                                         else 1e-9), (uid, iid)
    testset = [(uid, iid, r if r is not None else 3.0) for uid, iid, r in probes]
    mine, reference = ours.test(testset), theirs.test(testset)
    assert [p.details for p in mine] == [p.details for p in reference]
    mine[2].details["reason"] = "changed"  # each prediction has its own details
    assert mine[3].details == reference[3].details


@pytest.mark.parametrize("algorithm", [SVD, SVDpp])
def test_ratings_outside_the_readers_scale_train_as_in_surprise(algorithm):
    """Surprise's rating_scale only clips the predictions: a Reader whose scale does not
    cover the data (the default (1, 5) for 0.5-5 or 0-10 ratings) still trains. The adapter
    refused such a trainset (ValueError from recfuse's own rating_scale check)."""
    import pandas as pd

    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"user": rng.integers(0, 30, 500), "item": rng.integers(0, 20, 500),
                          "rating": rng.integers(0, 11, 500) / 2})  # 0 to 5 by halves
    data = surprise.Dataset.load_from_df(frame, surprise.Reader(rating_scale=(1, 5)))
    trainset = data.build_full_trainset()
    kwargs = dict(n_factors=4, n_epochs=3, random_state=0)
    ours = algorithm(**kwargs).fit(trainset)
    theirs = getattr(surprise, algorithm.__name__)(**kwargs).fit(trainset)
    tolerance = 1e-9 if algorithm is SVD else 0.05
    for uid, iid in [(1, 2), (3, 99), (99, 4)]:
        for clip in (True, False):
            mine, reference = ours.predict(uid, iid, clip=clip), theirs.predict(uid, iid, clip=clip)
            assert mine.est == pytest.approx(reference.est, abs=tolerance), (uid, iid, clip)
    estimates = [p.est for p in ours.test(trainset.build_testset())]
    assert min(estimates) >= 1 and max(estimates) <= 5  # clipped to the Reader's scale


def test_test_takes_any_iterable_of_triples(dataset):
    """Surprise's test() reads the testset once; the vectorised one read it three times and
    took its len(): a generator (or an iterator) raised TypeError."""
    algorithm = SVD(n_factors=4, n_epochs=2, random_state=0).fit(dataset.build_full_trainset())
    testset = dataset.build_full_trainset().build_testset()[:20] + [("999", "5", 3.0)]
    expected = algorithm.test(testset)
    for given in (iter(testset), (triple for triple in testset), tuple(testset)):
        assert algorithm.test(given) == expected


@pytest.mark.parametrize("algorithm", [SVD, SVDpp])
def test_attributes_set_after_construction_count_as_in_surprise(dataset, algorithm):
    """Surprise's fit reads self.n_epochs, self.n_factors, self.lr_bu... when it runs; the
    adapter built its recfuse model in __init__, so algo.n_epochs = 3 was silently ignored
    and algo.n_factors = 7 failed ("initial_factors P must have 5 columns")."""
    trainset = dataset.build_full_trainset()
    changes = [("n_epochs", 3), ("n_factors", 7), ("lr_bu", 0.05), ("reg_qi", 0.3)]
    if algorithm is SVD:
        changes.append(("biased", False))
    testset = trainset.build_testset()[:100]
    for name, value in changes:
        ours = algorithm(n_factors=5, n_epochs=6, random_state=0)
        setattr(ours, name, value)
        ours.fit(trainset)
        built = algorithm(**{"n_factors": 5, "n_epochs": 6, "random_state": 0, name: value})
        built.fit(trainset)
        assert ours.test(testset) == built.test(testset), name
        if algorithm is SVD:  # the same model as Surprise's, mutated the same way
            theirs = surprise.SVD(n_factors=5, n_epochs=6, random_state=0)
            setattr(theirs, name, value)
            theirs.fit(trainset)
            np.testing.assert_allclose(ours.pu, theirs.pu, atol=1e-9, err_msg=name)
            np.testing.assert_allclose(ours.bu, theirs.bu, atol=1e-9, err_msg=name)
            np.testing.assert_allclose([p.est for p in ours.test(testset)],
                                       [p.est for p in theirs.test(testset)], atol=1e-9,
                                       err_msg=name)


def test_predictions_print_as_surprises(dataset, capsys):
    ours = SVD(n_factors=3, n_epochs=2, random_state=0).fit(dataset.build_full_trainset())
    theirs = surprise.SVD(n_factors=3, n_epochs=2, random_state=0).fit(
        dataset.build_full_trainset())
    for probe in [("1", "2", None), ("999", "5", 4.0)]:
        assert str(ours.predict(*probe)) == str(theirs.predict(*probe))
        ours.predict(*probe, verbose=True)
        mine = capsys.readouterr().out
        theirs.predict(*probe, verbose=True)
        assert mine == capsys.readouterr().out


@pytest.mark.parametrize("algorithm, options", [(SVDpp, {}), (SVD, {"grid": 4})])
def test_a_seed_reproduces_the_fit(dataset, algorithm, options):
    """Surprise's only randomness is the initial factors, drawn from random_state. The
    adapter's SVD++ also visited the users in an order recfuse.SVDpp drew from its own
    unseeded generator (and SVD with grid != 1 laid the ratings out so): two fits with
    random_state=0 gave different predictions. SVD++ now visits the users in id order, as
    Surprise does, and a grid's layout is drawn from random_state."""
    trainset = dataset.build_full_trainset()
    testset = trainset.build_testset()[:200]
    first, second = (algorithm(n_factors=5, n_epochs=3, random_state=0, **options).fit(trainset)
                     for _ in range(2))
    assert first.test(testset) == second.test(testset)
    refit = first.fit(trainset)  # an int seed: the same start again, as in Surprise
    assert refit.test(testset) == second.test(testset)


@pytest.mark.parametrize("algorithm", [SVD, SVDpp])
def test_repr_and_attribute_docs(dataset, algorithm):
    # as recfuse's own models and compat.implicit's: the settings, and the data once fitted
    # (it printed as <recfuse.compat.surprise.SVD object at 0x...>); the Surprise attributes
    # say what they hold
    algo = algorithm(n_factors=3, n_epochs=2, random_state=0)
    name = algorithm.__name__
    biased = ", biased=True" if algorithm is SVD else ""
    expected = (f"recfuse.compat.surprise.{name}(n_factors=3, n_epochs=2{biased}, "
                f"lr_all={algo.lr_all}, reg_all=0.02, random_state=0)")
    assert repr(algo) == expected
    trainset = dataset.build_full_trainset()
    algo.fit(trainset)
    assert repr(algo) == (expected[:-1] + f", fitted on {trainset.n_users} users x "
                                           f"{trainset.n_items} items)")
    for attribute in ("bu", "bi", "pu", "qi", "default_prediction") + \
            (("yj",) if algorithm is SVDpp else ()):
        assert getattr(algorithm, attribute).__doc__, attribute
