"""backward(..., input_grad=False): the training update's form, which skips ∂E/∂u (and the
second packing of W_in); every other output is the same, bit for bit."""

import numpy as np
import pytest

import rnnfast


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(125, 20, 6, 50), (30, 1, 8, 50), (12, 3, 5, 730)])
@pytest.mark.parametrize("omega", [False, True])
def test_input_grad_false_changes_nothing_else(dtype, shape, omega):
    T, B, I, H = shape
    if H == 730 and dtype == np.float32:
        pytest.skip("the streamed path is taken at this size in float64")
    rng = np.random.default_rng(1)
    u = rng.standard_normal((T, B, I)).astype(dtype)
    W_in = (0.3 * rng.standard_normal((H, I))).astype(dtype)
    W_rec = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dtype)
    b = (0.1 * rng.standard_normal(H)).astype(dtype)
    dh = rng.standard_normal((T, B, H)).astype(dtype)
    for threads in (1, 2):
        fwd = rnnfast.forward(u, W_in, W_rec, b, num_threads=threads)
        full = rnnfast.backward(fwd, dh, omega=omega, num_threads=threads)
        lean = rnnfast.backward(fwd, dh, omega=omega, num_threads=threads, input_grad=False)
        assert lean.u is None and full.u.shape == (T, B, I)
        for name in ("W_in", "W_rec", "b", "h0", "dx"):
            np.testing.assert_array_equal(getattr(lean, name), getattr(full, name), err_msg=name)
        if omega:
            assert lean.omega == full.omega
            np.testing.assert_array_equal(lean.omega_grad, full.omega_grad)


def test_input_grad_false_with_a_workspace():
    rng = np.random.default_rng(2)
    u = rng.standard_normal((20, 4, 3))
    W_in, W_rec, b = rng.standard_normal((16, 3)), 0.2 * rng.standard_normal((16, 16)), np.zeros(16)
    ws = rnnfast.Workspace()
    fwd = rnnfast.forward(u, W_in, W_rec, b, workspace=ws)
    g1 = rnnfast.backward(fwd, dh_last=np.ones((4, 16)), input_grad=False, workspace=ws)
    W1 = g1.W_rec.copy()
    g2 = rnnfast.backward(fwd, dh_last=np.ones((4, 16)), workspace=ws)
    np.testing.assert_array_equal(g2.W_rec, W1)
    assert g1.u is None and g2.u.shape == (20, 4, 3)
