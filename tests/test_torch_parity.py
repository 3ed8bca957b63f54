"""rnnfast.torch.RNN against torch.nn.RNN over every option: a random matrix of
configurations (layers, directions, dropout, batch_first, bias, tanh/relu, h0, unbatched and
PackedSequence input, float32/float64), outputs and every gradient; module compatibility
(state_dict, attributes, isinstance), saving and loading, graph capture, fallbacks and
replace_rnn. Every expected value comes from torch itself, computed in the test."""

import io
import itertools
import pickle
import random
import re
import subprocess
import sys
import warnings

import pytest

torch = pytest.importorskip("torch")

import rnnfast.torch as rt  # noqa: E402
from torch.nn.utils.rnn import (PackedSequence, pack_padded_sequence,  # noqa: E402
                                pad_packed_sequence)

F64, F32 = torch.float64, torch.float32
TOL = {F64: 1e-10, F32: 1e-5}


@pytest.fixture(autouse=True, scope="module")
def _torch_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_rel(a, b, tol, what=""):
    """max |a - b| <= tol * max(1, max |b|)."""
    assert a is not None and b is not None, what
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (what, a.shape, b.shape)
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= tol * scale, f"{what}: max abs error {err:.3g} > {tol:g} x {scale:.3g}"


def twins(*args, seed=0, **kwargs):
    """A torch.nn.RNN and an rnnfast.torch.RNN with the same configuration and a copy of the
    same parameters (not shared: each accumulates its own gradients)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():   # dropout with one layer: torch's warning, tested elsewhere
        warnings.filterwarnings("ignore", "dropout option adds dropout", UserWarning)
        ref = torch.nn.RNN(*args, **kwargs)
        ours = rt.RNN(*args, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# --------------------------------------------------------------------------------------------
# The random matrix of options
# --------------------------------------------------------------------------------------------

def draw_case(i):
    r = random.Random(i)
    return dict(
        L=r.randint(1, 3), bidirectional=r.random() < 0.5, batch_first=r.random() < 0.5,
        bias=r.random() < 0.75, nonlinearity=r.choice(["tanh", "relu"]),
        h0=r.random() < 0.5, kind=r.choice(["batched", "batched", "unbatched", "packed_sorted",
                                            "packed_unsorted"]),
        dtype=r.choice([F32, F64]), dropout=r.choice([0.0, 0.0, 0.3]),
        training=r.random() < 0.7, T=r.randint(1, 7), B=r.randint(1, 5), I=r.randint(1, 5),
        H=r.randint(1, 6), input_grad=r.random() < 0.7,
    )


CASES = [draw_case(i) for i in range(48)]


def _case_id(c):
    return (f"L{c['L']}{'bi' if c['bidirectional'] else ''}-{c['kind']}-{c['nonlinearity']}"
            f"{'-bf' if c['batch_first'] else ''}{'' if c['bias'] else '-nobias'}"
            f"{'-h0' if c['h0'] else ''}-p{c['dropout']}{'-train' if c['training'] else '-eval'}"
            f"-{str(c['dtype'])[-7:]}")


def run_case(module, c, x, lengths, hx, G, Gn, seed):
    """output (padded, time-major or as given), h_n and the gradients of
    E = Σ output·G + Σ h_n·Gn for module on the case's input; dropout masks from ``seed``."""
    module.zero_grad(set_to_none=True)
    module.train(c["training"])
    xs = x.detach().clone().requires_grad_(c["input_grad"])
    hs = None if hx is None else hx.detach().clone().requires_grad_(True)
    inp = xs
    if c["kind"].startswith("packed"):
        inp = pack_padded_sequence(xs, lengths, batch_first=c["batch_first"],
                                   enforce_sorted=c["kind"] == "packed_sorted")
    torch.manual_seed(seed)
    out, hn = module(inp, hs)
    if isinstance(out, PackedSequence):
        assert isinstance(inp, PackedSequence)
        packed_meta = (out.batch_sizes, out.sorted_indices, out.unsorted_indices)
        out, out_lengths = pad_packed_sequence(out, batch_first=c["batch_first"])
        assert torch.equal(out_lengths, lengths)
    else:
        packed_meta = None
    E = (out * G).sum() + (hn * Gn).sum()
    E.backward()
    grads = {n: p.grad for n, p in module.named_parameters()}
    grads["input"] = xs.grad
    grads["hx"] = None if hs is None else hs.grad
    return out, hn, grads, packed_meta


@pytest.mark.parametrize("c", CASES, ids=_case_id)
def test_random_options_match_torch(c):
    D = 2 if c["bidirectional"] else 1
    ref, ours = twins(c["I"], c["H"], c["L"], nonlinearity=c["nonlinearity"], bias=c["bias"],
                      batch_first=c["batch_first"], dropout=c["dropout"],
                      bidirectional=c["bidirectional"], dtype=c["dtype"], seed=len(_case_id(c)))
    g = torch.Generator().manual_seed(hash(_case_id(c)) % 2**31)
    T, B = c["T"], c["B"]
    lengths = None
    if c["kind"] == "unbatched":
        x = torch.randn(T, c["I"], generator=g, dtype=c["dtype"])                  # (T, I)
        hx = torch.randn(c["L"] * D, c["H"], generator=g, dtype=c["dtype"]) if c["h0"] else None
        G = torch.randn(T, D * c["H"], generator=g, dtype=c["dtype"])
        Gn = torch.randn(c["L"] * D, c["H"], generator=g, dtype=c["dtype"])
    else:
        shape = (B, T) if c["batch_first"] else (T, B)
        x = torch.randn(*shape, c["I"], generator=g, dtype=c["dtype"])             # (T, B, I)
        hx = torch.randn(c["L"] * D, B, c["H"], generator=g, dtype=c["dtype"]) if c["h0"] else None
        if c["kind"].startswith("packed"):
            lengths = torch.randint(1, T + 1, (B,), generator=g)
            lengths[torch.randint(0, B, (1,), generator=g)] = T   # the padded length is T
            if c["kind"] == "packed_sorted":
                lengths = lengths.sort(descending=True).values
        G = torch.randn(*shape, D * c["H"], generator=g, dtype=c["dtype"])
        Gn = torch.randn(c["L"] * D, B, c["H"], generator=g, dtype=c["dtype"])
    seed = 1234
    o1, h1, g1, m1 = run_case(ref, c, x, lengths, hx, G, Gn, seed)
    o2, h2, g2, m2 = run_case(ours, c, x, lengths, hx, G, Gn, seed)
    tol = TOL[c["dtype"]]
    assert o2.dtype == o1.dtype and h2.dtype == h1.dtype
    assert_rel(o2, o1, tol, "output")
    assert_rel(h2, h1, tol, "h_n")
    if m1 is not None:
        for a, b in zip(m1, m2):
            assert (a is None and b is None) or torch.equal(a, b)
    assert set(g1) == set(g2)
    for k in g1:
        if g1[k] is None:
            assert g2[k] is None, k
        else:
            assert_rel(g2[k], g1[k], tol, k)


def test_the_matrix_covers_every_option():
    """The random draws above include every value of every option."""
    for key, values in [("L", {1, 2, 3}), ("bidirectional", {False, True}),
                        ("batch_first", {False, True}), ("bias", {False, True}),
                        ("nonlinearity", {"tanh", "relu"}), ("h0", {False, True}),
                        ("kind", {"batched", "unbatched", "packed_sorted", "packed_unsorted"}),
                        ("dtype", {F32, F64}), ("dropout", {0.0, 0.3}),
                        ("training", {False, True})]:
        assert {c[key] for c in CASES} == values, key
    assert any(c["dropout"] and c["training"] and c["L"] > 1 for c in CASES)
    assert any(c["dropout"] and c["training"] and c["L"] > 1 and c["kind"].startswith("packed")
               for c in CASES)


def test_packed_h_n_is_each_sequences_last_valid_step():
    """Independent of the packing code: each sequence alone through torch.nn.RNN."""
    ref, ours = twins(3, 4, 2, bidirectional=True, dtype=F64)
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, 3, dtype=F64)
    out, hn = ours(pack_padded_sequence(x, lengths, enforce_sorted=False))
    out, _ = pad_packed_sequence(out)
    for b, n in enumerate(lengths.tolist()):
        o_b, h_b = ref(x[:n, b])                                  # unbatched, exactly n steps
        assert_rel(out[:n, b], o_b, 1e-12, "output")
        assert not out[n:, b].any()                                 # zeros at padding
        assert_rel(hn[:, b], h_b, 1e-12, "h_n")


def test_dropout_only_in_training_and_drawn_like_torch():
    ref, ours = twins(3, 5, 3, dropout=0.5, dtype=F64)
    plain = rt.RNN(3, 5, 3, dtype=F64)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 3, dtype=F64)
    ours.eval()
    assert torch.equal(ours(x)[0], plain(x)[0])                   # eval: no dropout
    ours.train()
    torch.manual_seed(3)
    a = ours(x)[0]
    torch.manual_seed(3)
    b = ref(x)[0]
    assert_rel(a, b, 1e-12, "same masks as torch")
    assert not torch.allclose(a, plain(x)[0])                     # dropout did something
    torch.manual_seed(4)
    assert not torch.allclose(a, ours(x)[0])                      # a new draw per call


def test_parallel_directions_equal_serial():
    ours = rt.RNN(4, 6, 2, bidirectional=True, dtype=F64, num_threads=2)
    x = torch.randn(7, 3, 4, dtype=F64, requires_grad=True)
    res = []
    for parallel in (True, False):
        rt.PARALLEL_DIRECTIONS = parallel
        try:
            ours.zero_grad(set_to_none=True)
            x.grad = None
            out, hn = ours(x)
            (out.square().sum() + hn.sum()).backward()
            res.append([out, hn, x.grad] + [p.grad for p in ours.parameters()])
        finally:
            rt.PARALLEL_DIRECTIONS = True
    for a, b in zip(*res):
        assert_rel(a, b, 1e-12)


# --------------------------------------------------------------------------------------------
# Module compatibility
# --------------------------------------------------------------------------------------------

CONFIGS = [dict(), dict(num_layers=3), dict(bidirectional=True), dict(bias=False, num_layers=2,
           bidirectional=True)]


@pytest.mark.parametrize("kw", CONFIGS, ids=str)
def test_state_dict_and_attributes_are_torchs(kw):
    ref, ours = twins(3, 4, **kw)
    assert isinstance(ours, torch.nn.RNN)
    sd_r, sd_o = ref.state_dict(), ours.state_dict()
    assert list(sd_r) == list(sd_o)
    assert all(sd_r[k].shape == sd_o[k].shape for k in sd_r)
    assert ours._flat_weights_names == ref._flat_weights_names
    assert all(a is b for a, b in zip(ours._flat_weights, ours.parameters()))
    assert [[p.shape for p in ws] for ws in ours.all_weights] == \
        [[p.shape for p in ws] for ws in ref.all_weights]
    assert ours.extra_repr() == ref.extra_repr()
    ours.flatten_parameters()                                     # a no-op, as on the CPU
    torch.manual_seed(9)
    fresh_ref = torch.nn.RNN(3, 4, **kw)
    torch.manual_seed(9)
    fresh_ours = rt.RNN(3, 4, **kw)                               # same default init draws
    for a, b in zip(fresh_ref.parameters(), fresh_ours.parameters()):
        assert torch.equal(a, b)
    ref2 = torch.nn.RNN(3, 4, **kw)
    ref2.load_state_dict(ours.state_dict())                       # and back
    x = torch.randn(5, 2, 3)
    assert_rel(ours(x)[0], ref2(x)[0], 1e-5)
    ours.double()                                                 # _apply keeps _flat_weights
    assert ours._flat_weights[0].dtype == F64 and ours(x.double())[0].dtype == F64


def test_repr_adds_only_rnnfast_options():
    m = rt.RNN(3, 4, 2, nonlinearity="relu", num_threads=1, omega=0.5)
    assert repr(m) == "RNN(3, 4, num_layers=2, nonlinearity=relu, num_threads=1, omega=0.5)"


class Net(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        self.out = torch.nn.Linear(4 * (2 if rnn.bidirectional else 1), 2)

    def forward(self, x):
        return self.out(self.rnn(x)[0])


SAFE = [Net, torch.nn.Linear]


def test_save_load_patterns():
    torch.manual_seed(0)
    net = Net(rt.RNN(3, 4, 2, bidirectional=True, dropout=0.1, omega=0.0))
    x = torch.randn(5, 2, 3)
    net.eval()
    want = net(x)
    # the whole model, weights_only=True (the default) with the program's own safe globals
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    with torch.serialization.safe_globals(SAFE):
        back = torch.load(buf)
    assert type(back.rnn) is rt.RNN and back.rnn.omega == 0.0
    assert torch.equal(back(x), want)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), want)
    # a state_dict into either class
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf)
    plain = Net(torch.nn.RNN(3, 4, 2, bidirectional=True)).eval()
    plain.load_state_dict(sd)
    assert_rel(plain(x), want, 1e-5)
    # pickle and deepcopy
    assert torch.equal(pickle.loads(pickle.dumps(net))(x), want)
    import copy
    assert torch.equal(copy.deepcopy(net)(x), want)


def test_load_in_a_fresh_process(tmp_path):
    """The failure of the issue: torch.load in a new process, weights_only default."""
    torch.manual_seed(0)
    rnn = rt.RNN(3, 4, 2)
    torch.save(rnn, tmp_path / "m.pt")
    code = ("import torch, rnnfast.torch; m = torch.load(r'%s'); "
            "assert type(m).__name__ == 'RNN' and m.num_layers == 2; "
            "print(float(m(torch.ones(2, 1, 3))[0].sum()))" % (tmp_path / "m.pt"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with torch.no_grad():
        want = float(rnn(torch.ones(2, 1, 3))[0].sum())
    assert float(out.stdout) == pytest.approx(want, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Graph capture and double backward
# --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
@pytest.mark.parametrize("no_grad", [True, False])
def test_jit_trace_follows_new_inputs(no_grad):
    m = rt.RNN(3, 4, 2, bidirectional=True, batch_first=True, dtype=F64)
    example = torch.randn(2, 5, 3, dtype=F64)
    with torch.no_grad() if no_grad else torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(m, (example,))
    for shape in [(2, 5, 3), (4, 9, 3), (1, 1, 3)]:
        x = torch.randn(*shape, dtype=F64, requires_grad=True)
        a, ha = traced(x)
        b, hb = m(x)
        assert_rel(a, b, 1e-12, "output")
        assert_rel(ha, hb, 1e-12, "h_n")
        ga, = torch.autograd.grad(a.sum() + ha.sum(), x)
        gb, = torch.autograd.grad(b.sum() + hb.sum(), x)
        assert_rel(ga, gb, 1e-12, "input gradient")


@pytest.mark.slow
def test_fake_implementations_give_the_real_shapes():
    """What torch.compile / torch.export see of the operators (fake tensors, no kernels)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    m = rt.RNN(3, 4, 2, bidirectional=True)
    x = torch.randn(6, 2, 3, requires_grad=True)
    out, hn = m(x)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx = mode.from_tensor(x)
        f_out, f_hn = m(fx)
        assert f_out.shape == out.shape and f_hn.shape == hn.shape
        g, = torch.autograd.grad(f_out.sum() + f_hn.sum(), fx)
        assert g.shape == x.shape


@pytest.mark.slow
def test_custom_operators_pass_opcheck():
    """torch.library.opcheck: schema, fake (meta) implementation and autograd registration."""
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 4, 3, 2, 5
    u = torch.randn(T, B, I, dtype=F64, generator=g, requires_grad=True)
    h0 = torch.randn(2, B, H, dtype=F64, generator=g, requires_grad=True)
    w = [torch.randn(*s, dtype=F64, generator=g, requires_grad=True)
         for s in [(H, I), (H, H), (H,)] * 2]
    lengths = torch.tensor([4, 2, 3])
    for lens in (None, lengths):
        torch.library.opcheck(torch.ops.rnnfast.rnn_layer.default,
                              (u, h0, w, lens, "tanh", 1))


def test_double_backward_raises_naming_the_limitation():
    m = rt.RNN(3, 4, 2)
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, _ = m(x)
    with pytest.raises(RuntimeError, match="double backward .* not supported"):
        g, = torch.autograd.grad(out.square().sum(), x, create_graph=True)
        g.sum().backward()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_torch_compile_fullgraph_gives_eagers_numbers_and_gradients():
    torch._dynamo.reset()
    m = rt.RNN(3, 4, 2, bidirectional=True, batch_first=True, dtype=F64)

    def loss(x, hx):
        out, hn = m(x, hx)
        return out.sin().sum() + hn.cos().sum()

    compiled = torch.compile(loss, fullgraph=True)
    for B, T in [(2, 5), (3, 7)]:
        x = torch.randn(B, T, 3, dtype=F64, requires_grad=True)
        hx = torch.randn(4, B, 4, dtype=F64, requires_grad=True)
        params = [x, hx] + list(m.parameters())
        want = loss(x, hx)
        g_want = torch.autograd.grad(want, params)
        got = compiled(x, hx)
        g_got = torch.autograd.grad(got, params)
        assert_rel(got, want, 1e-12, "loss")
        for a, b in zip(g_got, g_want):
            assert_rel(a, b, 1e-12, "gradient")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_torch_export_follows_new_inputs():
    m = rt.RNN(3, 4, 2, bidirectional=True, dtype=F64).eval()
    ep = torch.export.export(m, (torch.randn(5, 2, 3, dtype=F64),))
    x = torch.randn(5, 2, 3, dtype=F64)
    for a, b in zip(ep.module()(x), m(x)):
        assert_rel(a, b, 1e-12)


class Packing(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, lengths):
        return self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))[1]


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_jit_trace_of_packed_input_is_refused_at_capture():
    m = Packing(rt.RNN(3, 4))
    with pytest.raises(RuntimeError, match="jit.trace cannot record a PackedSequence"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.trace(m, (torch.randn(5, 2, 3), torch.tensor([5, 3])))


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_omega_is_refused_under_capture():
    m = rt.RNN(3, 4, omega=0.1)
    with pytest.raises(RuntimeError, match="omega .* eager mode only"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.trace(m, (torch.randn(5, 2, 3),))


# --------------------------------------------------------------------------------------------
# Fallback to torch's implementation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_other_dtypes_run_torchs_implementation_with_one_warning(dtype):
    ref, ours = twins(3, 4, 2, bidirectional=True)
    ref.to(dtype)
    ours.to(dtype)
    x = torch.randn(5, 2, 3).to(dtype)
    rt._warned.clear()
    with pytest.warns(RuntimeWarning, match=f"{dtype}.*torch.nn.RNN's own implementation"):
        out, hn = ours(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x)                                                   # once only
    r_out, r_hn = ref(x)
    assert torch.equal(out, r_out) and torch.equal(hn, r_hn)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float16, torch.float64])
def test_input_of_another_dtype_than_the_weights_raises_torchs_error_without_warning(dtype):
    ref, ours = twins(3, 4)                                       # float32 weights
    x = torch.ones(5, 2, 3, dtype=dtype)
    with pytest.raises(Exception) as want:
        ref(x)
    rt._warned.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")                            # no fallback warning
        with pytest.raises(type(want.value), match=re.escape(str(want.value)[:40])):
            ours(x)


def test_meta_tensors_run_torchs_implementation():
    ours = rt.RNN(3, 4, 2, device="meta")
    rt._warned.clear()
    with pytest.warns(RuntimeWarning, match="meta"):
        out, hn = ours(torch.empty(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 4) and hn.shape == (2, 2, 4) and out.is_meta


def test_empty_input_behaves_like_torch():
    ref, ours = twins(3, 4)
    for x in [torch.zeros(0, 2, 3), torch.zeros(4, 0, 3)]:
        try:
            want = ref(x)
        except Exception as e:  # noqa: BLE001 - whatever torch raises, we raise
            with pytest.raises(type(e), match=str(e)[:20]):
                ours(x)
        else:
            got = ours(x)
            assert all(a.shape == b.shape for a, b in zip(got, want))


@pytest.mark.parametrize("case", ["hx_layers", "hx_batch_packed", "dtype"])
def test_bad_input_raises_what_torch_raises(case):
    ref, ours = twins(3, 4, 2, bidirectional=True)
    x, hx = torch.randn(5, 2, 3), None
    if case == "hx_layers":
        hx = torch.zeros(2, 2, 4)
    elif case == "hx_batch_packed":
        x, hx = pack_padded_sequence(x, [5, 3]), torch.zeros(4, 3, 4)
    else:
        x = x.double()
    with pytest.raises(Exception) as e_ref:
        ref(x, hx)
    with pytest.raises(type(e_ref.value)) as e_ours:
        ours(x, hx)
    assert str(e_ours.value) == str(e_ref.value)


def test_hx_of_another_dtype_is_named():
    ours = rt.RNN(3, 4)
    with pytest.raises(ValueError, match="hx"):
        ours(torch.randn(5, 2, 3), torch.zeros(1, 2, 4, dtype=F64))


# --------------------------------------------------------------------------------------------
# replace_rnn
# --------------------------------------------------------------------------------------------

class Deep(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
        self.rnns = torch.nn.ModuleList([torch.nn.RNN(3, 4, 2, dropout=0.2),
                                         torch.nn.RNN(4, 4, bidirectional=True)])
        self.lstm = torch.nn.LSTM(8, 2)

    def forward(self, x):
        h = self.rnns[0](self.enc(x))[0]
        return self.lstm(self.rnns[1](h)[0])[0]


def test_replace_rnn_swaps_in_place_and_keeps_parameters():
    torch.manual_seed(0)
    model = Deep()
    ref = Deep()
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    params_before = list(model.parameters())
    model.eval()
    assert rt.replace_rnn(model, num_threads=1) is model
    assert all(type(m) is rt.RNN for m in model.rnns) and type(model.lstm) is torch.nn.LSTM
    assert model.rnns[0].num_threads == 1 and not model.rnns[0].training
    assert all(a is b for a, b in zip(params_before, model.parameters()))  # the optimizer's
    model.train()
    ref.train()
    x = torch.randn(6, 2, 3)
    for m in (model, ref):
        torch.manual_seed(1)
        m(x).square().sum().backward()
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        assert_rel(a.grad, b.grad, 1e-5, n)
    opt.step()                                                    # moves the swapped module
    assert not torch.equal(model.rnns[0].weight_hh_l0, ref.rnns[0].weight_hh_l0)
    bare = torch.nn.RNN(2, 3)
    swapped = rt.replace_rnn(bare)
    assert type(swapped) is rt.RNN and swapped.weight_hh_l0 is bare.weight_hh_l0
    with pytest.raises(TypeError, match="model"):
        rt.replace_rnn(3)


# --------------------------------------------------------------------------------------------
# Ω on stacks
# --------------------------------------------------------------------------------------------

def test_omega_on_every_recurrent_weight():
    torch.manual_seed(0)
    x = torch.randn(9, 3, 2, dtype=F64)
    G = torch.randn(9, 3, 8, dtype=F64)
    plain = rt.RNN(2, 4, 2, bidirectional=True, dtype=F64)
    monitored = rt.RNN(2, 4, 2, bidirectional=True, dtype=F64, omega=0.0)
    weighted = rt.RNN(2, 4, 2, bidirectional=True, dtype=F64, omega=2.0)
    for m in (monitored, weighted):
        m.load_state_dict(plain.state_dict())
    for m in (plain, monitored, weighted):
        (m(x)[0] * G).sum().backward()
    names = [n for n in plain._flat_weights_names if n.startswith("weight_hh")]
    assert plain.last_omega is None
    grads = monitored.last_omega_grad
    assert sorted(grads) == sorted(names)
    assert monitored.last_omega == pytest.approx(sum(v[0] for v in monitored._omega_stats.values()))
    assert monitored.last_omega > 0 and monitored.last_omega_pairs > 0
    for n, p in plain.named_parameters():
        extra = 2.0 * grads[n] if n in grads else 0.0
        assert_rel(getattr(monitored, n).grad, p.grad, 1e-12, n)
        assert_rel(getattr(weighted, n).grad, p.grad + extra, 1e-12, n)


@pytest.mark.slow
def test_bench_torch_stack_smoke():
    import pathlib
    script = pathlib.Path(__file__).resolve().parents[1] / "bench" / "torch_stack.py"
    out = subprocess.run([sys.executable, str(script), "--smoke"], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "rnnfast.torch.RNN serial" in out.stdout and "rnnfast core" in out.stdout


def test_operator_takes_lengths_in_any_order():
    """rnnfast::rnn_layer with unsorted lengths equals the sorted call on permuted rows."""
    g = torch.Generator().manual_seed(0)
    T, B, I, H = 5, 4, 2, 3
    u = torch.randn(T, B, I, dtype=F64, generator=g)
    h0 = torch.randn(2, B, H, dtype=F64, generator=g)
    w = [torch.randn(*s, dtype=F64, generator=g) for s in [(H, I), (H, H), (H,)] * 2]
    lengths = torch.tensor([2, 5, 1, 4])
    perm = lengths.argsort(descending=True)
    G = torch.randn(T, B, 2 * H, dtype=F64, generator=g)
    Gn = torch.randn(2, B, H, dtype=F64, generator=g)

    def grads(u, h0, lengths, G, Gn):
        args = [t.clone().requires_grad_() for t in [u, h0] + w]
        out, hn = torch.ops.rnnfast.rnn_layer(args[0], args[1], args[2:], lengths, "tanh", 1)
        ((out * G).sum() + (hn * Gn).sum()).backward()
        return out, hn, [a.grad for a in args]

    o1, h1, g1 = grads(u, h0, lengths, G, Gn)
    o2, h2, g2 = grads(u[:, perm], h0[:, perm], lengths[perm], G[:, perm], Gn[:, perm])
    assert_rel(o1[:, perm], o2, 1e-12, "output")
    assert_rel(h1[:, perm], h2, 1e-12, "h_n")
    assert_rel(g1[0][:, perm], g2[0], 1e-12, "du")
    assert_rel(g1[1][:, perm], g2[1], 1e-12, "dh0")
    for a, b in zip(g1[2:], g2[2:]):
        assert_rel(a, b, 1e-12, "weights")
