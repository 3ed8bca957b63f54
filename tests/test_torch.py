"""rnnfast.torch: the torch.nn.RNN drop-in, its Ω hook and clip_grad_norm.

Every comparison is against torch.nn.RNN itself (or tests/reference.py for Ω), never against
stored numbers."""

import subprocess
import sys
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnfast  # noqa: E402
import rnnfast.torch as rt  # noqa: E402
from rnnfast.nn.clipping import AutoThreshold, NonFiniteGradientError  # noqa: E402

import reference  # noqa: E402  (tests/reference.py)

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 1e-5}
PARAMS = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")

# (T, B, I, H), T=1 and B=1 included.
SHAPES = [(1, 1, 3, 4), (1, 5, 2, 3), (7, 1, 4, 5), (13, 6, 5, 9), (4, 3, 1, 1)]


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    """torch.nn.RNN on one thread: its many small OpenMP regions crawl on a busy 2-core
    machine, and the comparisons do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_rel(a, b, tol, what=""):
    """max |a - b| <= tol * max |b| (relative to the tensor's scale)."""
    a = a.detach().double()
    b = b.detach().double()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(float(b.abs().max()), 1e-300) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} x {scale:.3g}"


def pair(I, H, *, nonlinearity="tanh", bias=True, batch_first=False, dtype=F64, seed=0, **kw):
    """A torch.nn.RNN and an rnnfast.torch.RNN holding the same parameters."""
    torch.manual_seed(seed)
    ref = torch.nn.RNN(I, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                       dtype=dtype)
    ours = rt.RNN(I, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                  dtype=dtype, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def run(module, x, hx, G, Gn):
    """output, h_n and the gradients of E = Σ output·G + Σ h_n·Gn w.r.t. everything that
    requires grad (after a fresh zero_grad)."""
    module.zero_grad(set_to_none=True)
    for t in (x, hx):
        if t is not None and t.grad is not None:
            t.grad = None
    out, hn = module(x, hx)
    grads = {}
    if out.requires_grad:
        ((out * G).sum() + (hn * Gn).sum()).backward()
        grads = {n: p.grad for n, p in module.named_parameters()}
        grads["input"] = x.grad
        grads["hx"] = None if hx is None else hx.grad
    return out, hn, grads


def compare(ref, ours, x, hx, dtype):
    """Run both modules on the same input and check outputs and every gradient."""
    H = ours.hidden_size
    if x.dim() == 3:
        B = x.shape[0] if ours.batch_first else x.shape[1]
        hn_shape = (1, B, H)
    else:
        hn_shape = (1, H)
    gen = torch.Generator().manual_seed(x.numel())
    G = torch.randn(tuple(x.shape[:-1]) + (H,), generator=gen, dtype=dtype)
    Gn = torch.randn(hn_shape, generator=gen, dtype=dtype)
    o1, h1, g1 = run(ref, x, hx, G, Gn)
    o2, h2, g2 = run(ours, x, hx, G, Gn)
    tol = TOL[dtype]
    assert o2.dtype == dtype and h2.dtype == dtype
    assert_rel(o2, o1, tol, "output")
    assert_rel(h2, h1, tol, "h_n")
    assert o2.requires_grad == o1.requires_grad
    assert set(g1) == set(g2)
    for k in g1:
        if g1[k] is None:
            assert g2[k] is None, k
        else:
            assert g2[k] is not None, k
            assert_rel(g2[k], g1[k], tol, k)
    return g1, g2


# --------------------------------------------------------------------------------------------
# Import hygiene
# --------------------------------------------------------------------------------------------

def test_import_rnnfast_does_not_import_torch():
    code = "import sys, rnnfast; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rnnfast_torch_imports_the_real_torch():
    assert rt.torch is sys.modules["torch"]
    assert rt.torch.nn.RNN is torch.nn.RNN
    assert "rnnfast" not in rt.torch.__file__


# --------------------------------------------------------------------------------------------
# Parity with torch.nn.RNN
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["nohx", "hx"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["TB", "BT"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_matches_torch_nn_rnn(nonlinearity, bias, batch_first, with_hx, dtype):
    # A stable seed per parameter set (hash() of strings changes with every process, so the
    # extra shape used to differ from run to run).
    key = repr((nonlinearity, bias, batch_first, with_hx)).encode()
    rng = np.random.default_rng(zlib.crc32(key))
    shapes = SHAPES + [tuple(int(v) for v in rng.integers(1, [20, 9, 8, 17]))]
    for k, (T, B, I, H) in enumerate(shapes):
        ref, ours = pair(I, H, nonlinearity=nonlinearity, bias=bias, batch_first=batch_first,
                         dtype=dtype, seed=k)
        gen = torch.Generator().manual_seed(100 + k)
        x = torch.randn((B, T, I) if batch_first else (T, B, I), generator=gen, dtype=dtype)
        x.requires_grad_(True)
        hx = None
        if with_hx:
            hx = (0.5 * torch.randn((1, B, H), generator=gen, dtype=dtype)).requires_grad_(True)
        compare(ref, ours, x, hx, dtype)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_unbatched_input(batch_first, with_hx, dtype):
    ref, ours = pair(3, 5, batch_first=batch_first, dtype=dtype)
    x = torch.randn(6, 3, dtype=dtype, requires_grad=True)
    hx = torch.randn(1, 5, dtype=dtype, requires_grad=True) if with_hx else None
    out, hn = ours(x, hx)
    assert out.shape == (6, 5) and hn.shape == (1, 5)
    compare(ref, ours, x, hx, dtype)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_thread_counts_match_torch(num_threads):
    ref, ours = pair(8, 33, dtype=F64, num_threads=num_threads)
    x = torch.randn(11, 17, 8, dtype=F64, requires_grad=True)
    compare(ref, ours, x, torch.randn(1, 17, 33, dtype=F64, requires_grad=True), F64)


@pytest.mark.parametrize("which", ["input", "hx", "params", "input+hx", "nothing"])
def test_requires_grad_combinations(which):
    ref, ours = pair(4, 6)
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad="input" in which)
    hx = torch.randn(1, 3, 6, dtype=F64, requires_grad="hx" in which)
    for m in (ref, ours):
        m.requires_grad_(which == "params")
    compare(ref, ours, x, hx, F64)


def test_non_contiguous_input_and_hx():
    ref, ours = pair(4, 6, batch_first=True)
    big = torch.randn(3, 14, 8, dtype=F64)
    x = big[:, ::2, 1:5].requires_grad_(True)        # (B=3, T=7, I=4), strided
    hx = torch.randn(6, 3, dtype=F64).t()[None].requires_grad_(True)  # (1, 3, 6), strided
    assert not x.is_contiguous() and not hx.is_contiguous()
    compare(ref, ours, x, hx, F64)
    ref, ours = pair(4, 6)
    xt = torch.randn(9, 7, 4, dtype=F64).transpose(0, 1).requires_grad_(True)  # (7, 9, 4)
    compare(ref, ours, xt, None, F64)


def test_no_grad_and_inference_mode():
    ref, ours = pair(4, 6, dtype=F32)
    x = torch.randn(5, 3, 4)
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            o1, h1 = ref(x)
            o2, h2 = ours(x)
        assert o2.grad_fn is None and h2.grad_fn is None and not o2.requires_grad
        assert_rel(o2, o1, 1e-5, "output")
        assert_rel(h2, h1, 1e-5, "h_n")


@pytest.mark.parametrize("layers", [1, 3])
def test_backward_twice_accumulates_and_biases_do_not_alias(layers):
    torch.manual_seed(0)
    ours = rt.RNN(3, 4, layers, bidirectional=layers > 1, dtype=F64)  # one node for the stack
    x = torch.randn(5, 2, 3, dtype=F64)
    out, hn = ours(x)
    loss = out.square().sum() + hn.sum()
    loss.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in ours.named_parameters()}
    for n, p in ours.named_parameters():
        if n.startswith("bias_ih"):  # b_ih and b_hh get equal gradients in separate memory
            q = getattr(ours, n.replace("bias_ih", "bias_hh"))
            assert p.grad.data_ptr() != q.grad.data_ptr() and torch.equal(p.grad, q.grad)
    loss.backward()
    for n, p in ours.named_parameters():
        assert_rel(p.grad, 2 * once[n], 1e-14, n)


def test_only_h_n_or_only_output_used():
    for use in ("out", "hn"):
        ref, ours = pair(3, 4)
        x = torch.randn(6, 2, 3, dtype=F64, requires_grad=True)
        grads = []
        for m in (ref, ours):
            x.grad = None
            m.zero_grad()
            out, hn = m(x)
            (out.sin().sum() if use == "out" else hn.cos().sum()).backward()
            grads.append([x.grad] + [p.grad for p in m.parameters()])
        for a, b in zip(*grads):
            assert_rel(b, a, 1e-10, use)


def test_in_place_changes_before_backward_are_caught():
    _, ours = pair(3, 4)
    out, hn = ours(torch.randn(5, 2, 3, dtype=F64))
    with torch.no_grad():
        ours.weight_hh_l0.mul_(2.0)
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()
    out, hn = ours(torch.randn(5, 2, 3, dtype=F64))
    out.add_(1.0)
    with pytest.raises(RuntimeError, match="inplace"):
        (out.sum() + hn.sum()).backward()


def test_zero_copy_where_layouts_allow(monkeypatch):
    seen = []
    real = rnnfast.core.forward

    def spy(*args, **kw):
        fwd = real(*args, **kw)
        seen.append(fwd)
        return fwd

    monkeypatch.setattr(rnnfast.core, "forward", spy)
    for batch_first in (False, True):
        _, ours = pair(4, 6, batch_first=batch_first)
        x = torch.randn((3, 5, 4) if batch_first else (5, 3, 4), dtype=F64, requires_grad=True)
        hx = torch.randn(1, 3, 6, dtype=F64)
        out, _ = ours(x, hx)
        fwd = seen[-1]
        # the weights and hx are never copied; the input only without batch_first
        assert np.shares_memory(fwd.W_in, ours.weight_ih_l0.detach().numpy())
        assert np.shares_memory(fwd.W_rec, ours.weight_hh_l0.detach().numpy())
        assert np.shares_memory(fwd.h0, hx.numpy())
        assert np.shares_memory(fwd.u, x.detach().numpy()) == (not batch_first)
        # output is the kernel's own array
        assert out.data_ptr() == fwd.h.ctypes.data


# --------------------------------------------------------------------------------------------
# Parameters and state_dicts
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_same_parameters_and_default_init(bias):
    torch.manual_seed(123)
    ref = torch.nn.RNN(5, 7, bias=bias)
    torch.manual_seed(123)
    ours = rt.RNN(5, 7, bias=bias)
    r, o = dict(ref.named_parameters()), dict(ours.named_parameters())
    assert list(r) == list(o) == list(PARAMS[:4 if bias else 2])
    for n in r:
        assert o[n].shape == r[n].shape and o[n].dtype == r[n].dtype
        assert torch.equal(o[n], r[n]), n
    assert float(o["weight_hh_l0"].detach().abs().max()) <= 1 / np.sqrt(7)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_loads_both_ways(bias):
    ref = torch.nn.RNN(3, 4, bias=bias, dtype=F64)
    ours = rt.RNN(3, 4, bias=bias, dtype=F64)
    ours.load_state_dict(ref.state_dict())           # strict: same keys, same shapes
    for n, p in ref.named_parameters():
        assert torch.equal(getattr(ours, n), p)
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(-0.5)
    ref.load_state_dict(ours.state_dict())
    for n, p in ours.named_parameters():
        assert torch.equal(getattr(ref, n), p)
    x = torch.randn(4, 2, 3, dtype=F64)
    assert_rel(ours(x)[0], ref(x)[0], 1e-12)


def test_from_torch_and_to_torch():
    torch.manual_seed(3)
    ref = torch.nn.RNN(3, 4, nonlinearity="relu", batch_first=True, dtype=F64)
    ours = rt.RNN.from_torch(ref, num_threads=1, omega=0.0)
    assert (ours.nonlinearity, ours.batch_first, ours.num_threads, ours.omega) == ("relu", True, 1, 0.0)
    back = ours.to_torch()
    assert type(back) is torch.nn.RNN and back.batch_first and back.nonlinearity == "relu"
    x = torch.randn(2, 5, 3, dtype=F64)
    assert_rel(ours(x)[0], ref(x)[0], 1e-12)
    assert_rel(back(x)[0], ref(x)[0], 0.0)
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        rt.RNN.from_torch(torch.nn.GRU(3, 4))


def test_module_conversions_and_repr():
    ours = rt.RNN(3, 4, nonlinearity="relu", bias=False)
    assert ours.weight_ih_l0.dtype == torch.get_default_dtype()
    ours.double()
    out, _ = ours(torch.randn(2, 1, 3, dtype=F64))
    assert out.dtype == F64
    assert "nonlinearity=relu" in repr(ours) and "bias=False" in repr(ours)
    ours.flatten_parameters()
    assert [list(map(tuple, (w.shape for w in ws))) for ws in ours.all_weights] == [[(4, 3), (4, 4)]]


# --------------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity,batch_first", [("tanh", False), ("relu", True)])
def test_gradcheck(nonlinearity, batch_first):
    _, ours = pair(2, 3, nonlinearity=nonlinearity, batch_first=batch_first)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn((3, 4, 2) if batch_first else (4, 3, 2), generator=gen, dtype=F64,
                    requires_grad=True)
    hx = torch.randn(1, 3, 3, generator=gen, dtype=F64, requires_grad=True)
    params = [getattr(ours, n).detach().clone().requires_grad_(True) for n in PARAMS]

    def f(x, hx, *ps):
        return torch.func.functional_call(ours, dict(zip(PARAMS, ps)), (x, hx))

    assert torch.autograd.gradcheck(f, (x, hx, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(proj_size=2), dict(device="cuda") if not torch.cuda.is_available() else dict(proj_size=3),
])
def test_constructor_errors_are_torchs(kwargs):
    with pytest.raises(Exception) as torch_exc:
        torch.nn.RNN(3, 4, **kwargs)
    with pytest.raises(type(torch_exc.value)) as ours_exc:
        rt.RNN(3, 4, **kwargs)
    assert str(ours_exc.value) == str(torch_exc.value)


def test_dropout_with_one_layer_warns_exactly_like_torch():
    with pytest.warns(UserWarning) as torch_warn:
        torch.nn.RNN(3, 4, dropout=0.5)
    with pytest.warns(UserWarning) as ours_warn:
        rt.RNN(3, 4, dropout=0.5)
    assert [str(w.message) for w in ours_warn] == [str(w.message) for w in torch_warn]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt.RNN(3, 4, 2, dropout=0.5)      # with layers to drop between: no warning (as torch)


@pytest.mark.parametrize("kwargs,exc", [
    (dict(nonlinearity="gelu"), ValueError),
    (dict(hidden_size=0), ValueError),
    (dict(bias="yes"), TypeError),
    (dict(batch_first=1), TypeError),
    (dict(dropout=1.5), ValueError),
])
def test_invalid_constructor_arguments_raise_like_torch(kwargs, exc):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc):
        torch.nn.RNN(**args)
    with pytest.raises(exc):
        rt.RNN(**args)


def test_invalid_rnnfast_options():
    with pytest.raises(TypeError, match="omega"):
        rt.RNN(3, 4, omega=True)
    with pytest.raises(ValueError, match="omega"):
        rt.RNN(3, 4, omega=-1.0)
    with pytest.raises(ValueError, match="num_threads"):
        rt.RNN(3, 4, num_threads=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        rt.RNN(3, 4, nonsense=1)


@pytest.mark.parametrize("case", ["input_size", "hx_shape", "hx_dims_batched", "hx_dims_unbatched",
                                  "input_dims", "dtype_mismatch", "empty"])
def test_bad_forward_arguments_raise_what_torch_raises(case):
    ref, ours = pair(3, 4, dtype=F32)
    x, hx = torch.zeros(5, 2, 3), None
    if case == "input_size":
        x = torch.zeros(5, 2, 7)
    elif case == "hx_shape":
        hx = torch.zeros(1, 3, 4)
    elif case == "hx_dims_batched":
        hx = torch.zeros(2, 4)
    elif case == "hx_dims_unbatched":
        x, hx = torch.zeros(5, 3), torch.zeros(1, 1, 4)
    elif case == "input_dims":
        x = torch.zeros(5, 2, 3, 1)
    elif case == "dtype_mismatch":
        x = torch.zeros(5, 2, 3, dtype=F64)
    elif case == "empty":
        x = torch.zeros(0, 2, 3)
    with pytest.raises(Exception) as torch_exc:
        ref(x, hx)
    with pytest.raises(type(torch_exc.value)) as ours_exc:
        ours(x, hx)
    assert str(ours_exc.value) == str(torch_exc.value)


def test_input_that_is_not_a_tensor():
    with pytest.raises(TypeError, match="input: expected a Tensor or PackedSequence"):
        rt.RNN(3, 4)(np.zeros((5, 2, 3), np.float32))


# --------------------------------------------------------------------------------------------
# The Ω hook
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_omega_hook_matches_reference(nonlinearity, alpha):
    T, B, I, H = 9, 4, 3, 6
    ref, ours = pair(I, H, nonlinearity=nonlinearity, omega=alpha, seed=5)
    assert ours.last_omega is None
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(T, B, I, generator=gen, dtype=F64, requires_grad=True)
    hx = torch.randn(1, B, H, generator=gen, dtype=F64)
    G = torch.randn(T, B, H, generator=gen, dtype=F64)
    Gn = torch.randn(1, B, H, generator=gen, dtype=F64)
    _, _, g_ref = run(ref, x, hx, G, Gn)
    _, _, g_ours = run(ours, x, hx, G, Gn)

    dh = G.numpy().copy()
    dh[-1] += Gn[0].numpy()
    p = {n: getattr(ref, n).detach().numpy() for n in PARAMS}
    want = reference.backward(x.detach().numpy(), p["weight_ih_l0"], p["weight_hh_l0"],
                              p["bias_ih_l0"] + p["bias_hh_l0"], hx[0].numpy(), nonlinearity, dh)
    assert ours.last_omega == pytest.approx(want["omega"], rel=1e-10)
    assert ours.last_omega_pairs == T * B
    assert_rel(ours.last_omega_grad, torch.from_numpy(want["omega_grad"]), 1e-10, "omega_grad")
    assert g_ref["hx"] is None and g_ours["hx"] is None
    for k in PARAMS + ("input",):
        expect = g_ref[k]
        if k == "weight_hh_l0":
            expect = expect + alpha * torch.from_numpy(want["omega_grad"])
        assert_rel(g_ours[k], expect, 1e-10, k)


def test_omega_off_by_default_and_settable():
    _, ours = pair(3, 4)
    x = torch.randn(5, 2, 3, dtype=F64)
    ours(x)[0].sum().backward()
    assert ours.omega is None and ours.last_omega is None and ours.last_omega_grad is None
    ours.omega = 1.0
    ours.zero_grad()
    ours(x)[0].sum().backward()
    assert ours.last_omega is not None and ours.last_omega >= 0
    assert ours.last_omega_grad.shape == (4, 4)
    assert "omega=1.0" in repr(ours)
    with pytest.raises(TypeError):
        ours.omega = "big"


# --------------------------------------------------------------------------------------------
# A training loop that runs unchanged with either module
# --------------------------------------------------------------------------------------------

def _train(rnn_class, steps=20):
    """Predict the running mean of the inputs' first feature and the scaled running sum of
    the second at every step: an RNN, a linear readout, MSE (plus a small penalty on h_n),
    SGD with momentum and torch's norm clipping. Nothing here knows which RNN it trains."""
    torch.manual_seed(0)
    rnn = rnn_class(4, 16, batch_first=True, dtype=F64)
    readout = torch.nn.Linear(16, 2, dtype=F64)
    params = list(rnn.parameters()) + list(readout.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(8, 12, 4, generator=gen, dtype=F64)
        y = torch.stack([x[..., 0].cumsum(1) / torch.arange(1, 13),
                         x[..., 1].cumsum(1) / 4], -1)
        h0 = torch.zeros(1, 8, 16, dtype=F64)
        out, hn = rnn(x, h0)
        loss = torch.nn.functional.mse_loss(readout(out), y) + 1e-3 * hn.square().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
    return np.array(losses), rnn


def test_training_loop_same_losses_with_either_module():
    l_ref, m_ref = _train(torch.nn.RNN)
    l_ours, m_ours = _train(rt.RNN)
    assert l_ref[-5:].mean() < 0.8 * l_ref[:5].mean()  # it learns something
    np.testing.assert_allclose(l_ours, l_ref, rtol=1e-10, atol=0)
    for n, p in m_ref.named_parameters():
        assert_rel(getattr(m_ours, n), p, 1e-10, n)


# --------------------------------------------------------------------------------------------
# clip_grad_norm
# --------------------------------------------------------------------------------------------

def _with_grads(*arrays, dtype=F64):
    ps = []
    for a in arrays:
        p = torch.nn.Parameter(torch.zeros(np.shape(a), dtype=dtype))
        p.grad = torch.tensor(a, dtype=dtype)
        ps.append(p)
    return ps


def test_clip_norm_and_clipping_match_torch():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(5, 4)), rng.normal(size=7), rng.normal(size=(3, 3))]
    ours, theirs = _with_grads(*arrays), _with_grads(*arrays)
    norm = float(np.sqrt(sum((a ** 2).sum() for a in arrays)))
    res = rt.clip_grad_norm(ours, 1.0)
    total = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert res.norm == pytest.approx(float(total), rel=1e-14) == pytest.approx(norm, rel=1e-14)
    assert res.clipped and res.action == "clipped" and res.scale == pytest.approx(1.0 / norm)
    for p, q, a in zip(ours, theirs, arrays):
        np.testing.assert_allclose(p.grad.numpy(), a / norm, rtol=1e-14)
        np.testing.assert_allclose(q.grad.numpy(), a / norm, rtol=1e-5)  # torch adds ε
    # below the threshold nothing is touched
    below = _with_grads(*arrays)
    res = rt.clip_grad_norm(below, 2 * norm)
    assert not res.clipped and res.action == "ok" and res.norm == pytest.approx(norm)
    for p, a in zip(below, arrays):
        assert np.array_equal(p.grad.numpy(), a)


def test_clip_threshold_equality_and_strict():
    ps = _with_grads([3.0, 4.0])
    assert rt.clip_grad_norm(ps, 5.0).clipped
    assert not rt.clip_grad_norm(ps, 5.0, strict=True).clipped


def test_clip_float32_norm_does_not_overflow():
    ps = _with_grads(np.full(10, 1e30), dtype=F32)
    res = rt.clip_grad_norm(ps, 1.0, absurd=None)
    assert np.isfinite(res.norm) and res.norm == pytest.approx(1e30 * np.sqrt(10), rel=1e-6)
    assert float(ps[0].grad.norm()) == pytest.approx(1.0, rel=1e-5)


def test_clip_nonfinite_policies():
    named = lambda: [("a", _with_grads([1.0, 2.0])[0]), ("b", _with_grads([np.nan, 1.0])[0])]
    with pytest.raises(NonFiniteGradientError, match="'b'") as exc:
        rt.clip_grad_norm(named(), 1.0, nonfinite="raise")
    assert exc.value.param == "b"
    # the default policy is the authors' shrink, which needs the recurrent weights
    with pytest.raises(NonFiniteGradientError, match="nonfinite='shrink'.*weight_hh"):
        rt.clip_grad_norm(named(), 1.0)
    params = named()
    res = rt.clip_grad_norm(params, 1.0, nonfinite="skip")
    assert res.action == "skipped" and not res.clipped
    assert all(float(p.grad.abs().sum()) == 0 for _, p in params)
    # absurd norms count as bad too
    with pytest.raises(NonFiniteGradientError):
        rt.clip_grad_norm(_with_grads([1e11]), 1.0, nonfinite="raise")
    assert rt.clip_grad_norm(_with_grads([1e11]), 1.0, absurd=None).clipped


def test_clip_shrink_policy_on_an_rnn():
    rnn = rt.RNN(3, 4, dtype=F64)
    for p in rnn.parameters():
        p.grad = torch.full_like(p, np.inf)
    res = rt.clip_grad_norm(rnn.named_parameters(), 1.0, nonfinite="shrink")   # finds weight_hh
    assert res.action == "shrunk"
    assert torch.equal(rnn.weight_hh_l0.grad, 0.02 * rnn.weight_hh_l0.detach())
    for n in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
        assert float(getattr(rnn, n).grad.abs().sum()) == 0
    # unnamed parameters need recurrent=
    for p in rnn.parameters():
        p.grad = torch.full_like(p, np.nan)
    with pytest.raises(NonFiniteGradientError, match="recurrent"):
        rt.clip_grad_norm(rnn.parameters(), 1.0, nonfinite="shrink")
    for p in rnn.parameters():  # (the refused call's effect on .grad: see the test below)
        p.grad = torch.full_like(p, np.nan)
    res = rt.clip_grad_norm(rnn.parameters(), 1.0, nonfinite="shrink", recurrent=rnn.weight_hh_l0,
                            shrink=0.5)
    assert res.action == "shrunk"
    assert torch.equal(rnn.weight_hh_l0.grad, 0.5 * rnn.weight_hh_l0.detach())



def test_refused_shrink_leaves_the_gradients_untouched():
    # shrink without recurrent weights raises; the caller can then retry with recurrent=,
    # so the refused call must not have zeroed the gradients on its way
    rnn = rt.RNN(3, 4, dtype=F64)
    for p in rnn.parameters():
        p.grad = torch.full_like(p, np.nan)
    with pytest.raises(NonFiniteGradientError, match="recurrent"):
        rt.clip_grad_norm(rnn.parameters(), 1.0, nonfinite="shrink")
    for p in rnn.parameters():
        assert bool(torch.isnan(p.grad).all())

def test_clip_auto_threshold_and_none():
    auto = AutoThreshold(factor=1.0, warmup=2, decay=None)
    for norm in (2.0, 4.0):                          # warm-up: no threshold yet
        res = rt.clip_grad_norm(_with_grads([norm]), auto)
        assert not res.clipped and res.threshold is None
    ps = _with_grads([10.0])
    res = rt.clip_grad_norm(ps, auto)                # threshold = mean(2, 4) = 3
    assert res.clipped and res.threshold == pytest.approx(3.0)
    assert float(ps[0].grad) == pytest.approx(3.0)
    res = rt.clip_grad_norm(_with_grads([10.0]), None)
    assert res.norm == 10.0 and not res.clipped
    with pytest.raises(ValueError, match="AutoThreshold"):
        rt.clip_grad_norm(_with_grads([1.0]), "auto")


def test_clip_elementwise_and_missing_grads():
    ps = _with_grads([0.5, -3.0, 2.0])
    unused = torch.nn.Parameter(torch.zeros(2))      # .grad None: ignored
    res = rt.clip_grad_norm(ps + [unused], 1.0, mode="elementwise")
    assert res.clipped and res.norm == pytest.approx(np.sqrt(0.25 + 9 + 4))
    assert ps[0].grad.tolist() == [0.5, -1.0, 1.0] and unused.grad is None
    with pytest.raises(rt.UnsupportedError, match="CPU"):
        p = torch.nn.Parameter(torch.zeros(2, device="meta"))
        p.grad = torch.zeros(2, device="meta")
        rt.clip_grad_norm([p], 1.0)


def test_deepcopy_and_pickle_keep_the_configuration():
    import copy
    import io

    ours = rt.RNN(3, 4, nonlinearity="relu", omega=0.5, num_threads=1, dtype=F64)
    buf = io.BytesIO()
    torch.save(ours, buf)
    buf.seek(0)
    for other in (copy.deepcopy(ours), torch.load(buf, weights_only=False)):
        assert (other.omega, other.num_threads, other.nonlinearity) == (0.5, 1, "relu")
        x = torch.randn(4, 2, 3, dtype=F64)
        assert torch.equal(other(x)[0], ours(x)[0])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # dynamo internals
def test_torch_compile_of_the_module_matches_torch():
    ref, ours = pair(3, 4)
    compiled = torch.compile(ours)
    x = torch.randn(5, 2, 3, dtype=F64)
    grads = []
    for m, params in ((ref, ref), (compiled, ours)):
        out, hn = m(x)
        (out.square().sum() + hn.sum()).backward()
        grads.append([out] + [p.grad for p in params.parameters()])
    for a, b in zip(*grads):
        assert_rel(b, a, 1e-10)
