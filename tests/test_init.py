"""Initialisations: distributions, smart_tanh sparsity and spectral radius, seeding."""

import numpy as np
import pytest

from rnnfast.nn import init as I


@pytest.mark.parametrize("per", ["incoming", "outgoing"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smart_tanh_sparsity_and_spectral_radius(per, dtype):
    p = I.initialize("smart_tanh", 6, 50, 4, rng=3, dtype=dtype, sparse_per=per)
    W = p["W_rec"]
    assert W.dtype == dtype
    nz = np.count_nonzero(W, axis=1 if per == "incoming" else 0)
    assert np.all(nz == 15), nz
    rho = np.max(np.abs(np.linalg.eigvals(W.astype(np.float64))))
    assert rho == pytest.approx(0.95, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert I.spectral_radius(W) == pytest.approx(rho, rel=1e-12)


def test_smart_tanh_incoming_is_paper_outgoing_is_authors():
    a = I.initialize("smart_tanh", 3, 30, 2, rng=0, sparse_per="incoming")["W_rec"]
    b = I.initialize("smart_tanh", 3, 30, 2, rng=0, sparse_per="outgoing")["W_rec"]
    # same draws, the sparsity pattern is transposed
    assert np.array_equal(a != 0, (b != 0).T)


def test_smart_tanh_small_hidden_layer_keeps_all():
    W = I.initialize("smart_tanh", 2, 8, 2, rng=1)["W_rec"]
    assert np.count_nonzero(W) == 64
    assert I.spectral_radius(W) == pytest.approx(0.95)


@pytest.mark.parametrize("scheme,scale", [("sigmoid", 0.01), ("basic_tanh", 0.1)])
def test_gaussian_schemes_scale(scheme, scale):
    p = I.initialize(scheme, 40, 200, 30, rng=0)
    for k in ("W_in", "W_rec", "W_out"):
        assert p[k].std() == pytest.approx(scale, rel=0.05)
        assert abs(p[k].mean()) < scale * 0.05
    assert p["W_in"].shape == (200, 40) and p["W_rec"].shape == (200, 200)
    assert p["W_out"].shape == (30, 200)
    assert np.all(p["b"] == 0) and np.all(p["b_out"] == 0)
    assert I.default_activation(scheme) == ("sigmoid" if scheme == "sigmoid" else "tanh")


def test_smart_tanh_inputs_and_outputs_small():
    p = I.initialize("smart_tanh", 50, 100, 50, rng=0)
    assert p["W_in"].std() == pytest.approx(0.01, rel=0.05)
    assert p["W_out"].std() == pytest.approx(0.01, rel=0.05)


def test_orthogonal_and_identity():
    p = I.initialize("orthogonal", 3, 20, 2, rng=0, gain=1.5)
    W = p["W_rec"]
    np.testing.assert_allclose(W @ W.T, 2.25 * np.eye(20), atol=1e-12)
    p = I.initialize("identity", 3, 20, 2, rng=0, gain=0.9)
    np.testing.assert_array_equal(p["W_rec"], 0.9 * np.eye(20))
    assert I.default_activation("identity") == "relu"


@pytest.mark.parametrize("scheme", I.INIT_SCHEMES)
def test_seeded_and_reproducible(scheme):
    a = I.initialize(scheme, 4, 16, 3, rng=7)
    b = I.initialize(scheme, 4, 16, 3, rng=np.random.default_rng(7))
    c = I.initialize(scheme, 4, 16, 3, rng=8)
    for k in a:
        assert np.array_equal(a[k], b[k])
    if scheme != "identity":
        assert not np.array_equal(a["W_in"], c["W_in"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="init scheme 'xavier'"):
        I.initialize("xavier", 2, 3, 4)
    with pytest.raises(ValueError, match="n_hidden"):
        I.initialize("basic_tanh", 2, 0, 4)
    with pytest.raises(TypeError, match="dtype"):
        I.initialize("basic_tanh", 2, 3, 4, dtype=np.int32)
    with pytest.raises(ValueError, match="sparse_per"):
        I.initialize("smart_tanh", 2, 3, 4, sparse_per="rows")
    with pytest.raises(TypeError, match="rng"):
        I.initialize("basic_tanh", 2, 3, 4, rng="seed")
    with pytest.raises(ValueError, match="square"):
        I.spectral_radius(np.zeros((2, 3)))
