"""The CUDA batch-Hogwild SVD (recfuse._cuda.svd_epochs_hogwild, cuda/sgd.cu) on a device.

Written before the kernel ever ran on a GPU: these tests are its first check. With one warp
holding every rating (batch >= nnz) an epoch is the sequential reference; with many warps
(Hogwild, not deterministic) the training RMSE must fall and everything stay finite.
Marked ``gpu``: they skip, with the reason, where the CUDA backend is not available.
"""

from __future__ import annotations

import numpy as np
import pytest

from recfuse import reference
from recfuse._als import cuda as cuda_backend

pytestmark = pytest.mark.gpu

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]


def skip_unless_available(name: str, backend) -> None:
    available, reason = backend.availability()
    if not available:
        pytest.skip(f"{name}: {reason}")


@pytest.fixture(scope="module")
def cuda():
    skip_unless_available("cuda", cuda_backend)
    from recfuse import _cuda

    return _cuda


def problem(dtype, k, n_users=300, n_items=200, n=6000, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n).astype(np.int32)
    items = rng.integers(0, n_items, n).astype(np.int32)
    taste = rng.normal(size=(n_users, 4)) @ rng.normal(size=(4, n_items))
    ratings = np.clip(np.round(3 + taste[users, items]), 1, 5).astype(dtype)
    start = (np.zeros(n_users, dtype), np.zeros(n_items, dtype),
             rng.normal(0, 0.1, (n_users, k)).astype(dtype),
             rng.normal(0, 0.1, (n_items, k)).astype(dtype))
    return users, items, ratings, start


def rmse(users, items, ratings, mu, bu, bi, P, Q):
    predicted = mu + bu[users] + bi[items] + np.einsum("nk,nk->n", P[users].astype(np.float64),
                                                       Q[items].astype(np.float64))
    return float(np.sqrt(np.mean((predicted - ratings) ** 2)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [8, 32, 50, 100, 256])
def test_one_warp_is_the_sequential_reference(cuda, dtype, k):
    users, items, ratings, start = problem(dtype, k, n=2000)
    mu = float(ratings.mean())
    lr, reg = (0.01, 0.02, 0.005, 0.007, 0.0), (0.02, 0.05, 0.03, 0.01, 0.0)
    expected = reference.svd_sgd_epoch(users, items, ratings, mu, *start, lr=lr[:4], reg=reg[:4])
    got = [a.copy() for a in start]
    cuda.svd_epochs_hogwild(users, items, ratings, mu, *got, lr, reg, True, 1, users.size)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hogwild_epochs_lower_the_training_error(cuda, dtype):
    users, items, ratings, start = problem(dtype, 64, n=50_000)
    mu = float(ratings.mean())
    model = [a.copy() for a in start]
    before = rmse(users, items, ratings, mu, *model)
    cuda.svd_epochs_hogwild(users, items, ratings, mu, *model, (0.005,) * 5, (0.02,) * 5, True,
                            10, 32)
    assert all(np.all(np.isfinite(a)) for a in model)
    assert rmse(users, items, ratings, mu, *model) < 0.8 * before


def test_bad_arguments_raise(cuda):
    users, items, ratings, start = problem(np.float32, 8, n=100)
    model = [a.copy() for a in start]
    args = (users, items, ratings, 3.0, *model, (0.01,) * 5, (0.02,) * 5, True, 1)
    bad = users.copy()
    bad[3] = 10_000
    with pytest.raises(ValueError, match="outside"):
        cuda.svd_epochs_hogwild(bad, *args[1:])
    with pytest.raises(ValueError, match="batch"):
        cuda.svd_epochs_hogwild(*args, 0)
    wide = np.zeros((300, cuda.SVD_MAX_FACTORS + 1), np.float32)
    with pytest.raises(ValueError, match="factors"):
        cuda.svd_epochs_hogwild(users, items, ratings, 3.0, model[0], model[1], wide,
                                np.zeros((200, cuda.SVD_MAX_FACTORS + 1), np.float32),
                                (0.01,) * 5, (0.02,) * 5, True, 1)


def test_svd_model_trains_on_the_cuda_backend(cuda):
    import recfuse

    users, items, ratings, _ = problem(np.float32, 32, n=50_000)
    on_gpu = recfuse.SVD(factors=32, epochs=10, backend="cuda", random_state=0)
    on_gpu.fit(users, items, ratings)
    on_cpu = recfuse.SVD(factors=32, epochs=10, backend="cpu", random_state=0)
    on_cpu.fit(users, items, ratings)
    assert on_gpu.backend_used == "cuda"
    error_gpu = np.sqrt(np.mean((on_gpu.predict(users, items, clip=False) - ratings) ** 2))
    error_cpu = np.sqrt(np.mean((on_cpu.predict(users, items, clip=False) - ratings) ** 2))
    assert np.isfinite(error_gpu) and error_gpu < 1.1 * error_cpu


def test_models_without_a_cuda_kernel_pass_over_it(cuda):
    import recfuse

    users, items, ratings, _ = problem(np.float32, 8, n=2_000)
    with pytest.raises(RuntimeError, match="no svdpp_epoch kernel"):
        recfuse.SVDpp(factors=8, epochs=1, backend="cuda").fit(users, items, ratings)
    model = recfuse.SVDpp(factors=8, epochs=1, backend="auto").fit(users, items, ratings)
    assert model.backend_used != "cuda"


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_device_resident_fit_is_the_reference_over_epochs(cuda, dtype):
    """svd_hogwild keeps the model on the device between epochs() calls: with one warp
    (batch >= nnz), three calls of one epoch each are three reference epochs, and download
    copies the model back."""
    users, items, ratings, start = problem(dtype, 40, n=1500)
    mu = float(ratings.mean())
    lr, reg = (0.01, 0.02, 0.005, 0.007, 0.0), (0.02, 0.05, 0.03, 0.01, 0.0)
    expected = [a.copy() for a in start]
    for _ in range(3):
        expected = reference.svd_sgd_epoch(users, items, ratings, mu, *expected, lr=lr[:4],
                                           reg=reg[:4])
    host = [a.copy() for a in start]
    fit = cuda.svd_hogwild(users, items, ratings, *host)
    for _ in range(3):
        fit.epochs(mu, lr, reg, True, 1, users.size)
    np.testing.assert_array_equal(host[2], start[2])  # nothing copied back yet
    fit.download(*host)
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    for a, b in zip(host, expected):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)
    with pytest.raises(ValueError, match="shapes"):
        fit.download(host[0], host[1], host[2][:, :8].copy(), host[3][:, :8].copy())
    with pytest.raises(ValueError, match="batch"):
        fit.epochs(mu, lr, reg, True, 1, 0)


def test_svd_callback_sees_the_device_model(cuda):
    """With the cuda backend the model lives on the device during fit; a callback's RMSE
    comes from the model copied back, and the fitted model is the last epoch's."""
    import recfuse

    users, items, ratings, _ = problem(np.float32, 16, n=20_000)
    seen = []
    model = recfuse.SVD(factors=16, epochs=6, backend="cuda", random_state=0)
    model.fit(users, items, ratings, callback=lambda epoch, error: seen.append(error))
    assert len(seen) == 6 and seen[-1] < seen[0]
    final = np.sqrt(np.mean((model.predict(users, items, clip=False) - ratings) ** 2))
    assert final == pytest.approx(seen[-1], rel=1e-5)


@pytest.fixture(scope="module")
def cupy_sgd():
    from recfuse._sgd import cupy_backend

    skip_unless_available("cupy", cupy_backend)
    return cupy_backend


@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_fit_follows_the_cpu_block_schedule(cupy_sgd, dtype):
    """SVD(backend="cupy") runs the CPU's block schedule (one warp per block of a diagonal):
    from the same starting draws it ends where the CPU fit does, up to rounding; a resident
    fit's epochs equal svd_epoch called once per epoch."""
    import recfuse
    from recfuse._sgd.common import make_blocks

    users, items, ratings, start = problem(dtype, 24, n=20_000)
    fits = {name: recfuse.SVD(factors=24, epochs=8, dtype=dtype, backend=name, random_state=0)
            .fit(users, items, ratings) for name in ("cupy", "cpu")}
    assert fits["cupy"].backend_used == "cupy"
    np.testing.assert_allclose(fits["cupy"].predict(users, items, clip=False),
                               fits["cpu"].predict(users, items, clip=False),
                               atol=1e-3 if dtype == np.float32 else 1e-9)

    blocks = make_blocks(users, items, 300, 200, 4, np.random.default_rng(1))
    ordered = np.ascontiguousarray(ratings[blocks.order])
    lr, reg = (0.01, 0.02, 0.005, 0.007, 0.0), (0.02, 0.05, 0.03, 0.01, 0.0)
    stepped = [a.copy() for a in start]
    for _ in range(3):
        cupy_sgd.svd_epoch(blocks, ordered, 3.0, *stepped, lr, reg, True, 0)
    resident = [a.copy() for a in start]
    fit = cupy_sgd.svd_trainer(blocks, ordered, *resident)
    fit.epochs(3.0, lr, reg, True, 3)
    fit.download(*resident)
    for a, b in zip(resident, stepped):
        np.testing.assert_array_equal(a, b)  # the same launches: the same bits


def test_cupy_has_no_svdpp_kernel(cupy_sgd):
    import recfuse

    users, items, ratings, _ = problem(np.float32, 8, n=2_000)
    with pytest.raises(RuntimeError, match="no svdpp_epoch kernel"):
        recfuse.SVDpp(factors=8, epochs=1, backend="cupy").fit(users, items, ratings)
