"""Tests of rnnfast.tasks: generators, success criteria, evaluation, registry.

Expected values are recomputed here independently (explicit per-sequence loops
over decoded inputs, window bounds written out from the documented formulas),
never taken from the module under test.
"""
import numpy as np
import pytest

from rnnfast import tasks
from rnnfast.tasks import Batch, evaluate, get_task

CONVS = ("authors", "martens")
ALL = [(name, conv) for name in tasks.TASKS for conv in CONVS]


def rng(seed=0):
    return np.random.default_rng(seed)


def decode(u):
    """(T, B, n) one-hot -> (T, B) symbols, checking exact one-hotness."""
    assert np.all((u == 0) | (u == 1))
    assert np.all(u.sum(axis=2) == 1)
    return u.argmax(axis=2)


# --------------------------------------------------------------------------- #
# protocol: shapes, dtypes, ranges
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,conv", ALL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_protocol_shapes_dtypes(name, conv, dtype):
    task = get_task(name, convention=conv)
    assert task.loss in ("softmax_ce", "linear_mse")
    assert task.at in ("last", "all")
    b = task.generate(rng(), 7, 30, dtype=dtype)
    assert isinstance(b, Batch)
    T, B, n_in = b.u.shape
    assert B == 7 and n_in == task.n_in
    assert b.u.dtype == np.dtype(dtype) and b.u.flags.c_contiguous
    assert T <= task.max_steps(30)
    if task.loss == "softmax_ce":
        assert b.targets.dtype == np.int64
        assert b.targets.shape == ((B,) if task.at == "last" else (T, B))
        assert b.targets.min() >= 0 and b.targets.max() < task.n_out
    else:
        assert b.targets.shape == (B, task.n_out) and b.targets.dtype == np.dtype(dtype)
    if b.mask is not None:
        assert task.at == "all" and b.mask.shape == (T, B) and b.mask.dtype == bool
    # the reference solver makes no errors, a uniform guess makes some
    y = task.oracle(b.u)
    assert not task.errors(y, b).any()


@pytest.mark.parametrize("name,conv", ALL)
def test_oracle_matches_targets(name, conv):
    task = get_task(name, convention=conv)
    b = task.generate(rng(1), 300, 40)
    y = task.oracle(b.u)
    if task.loss == "linear_mse":
        np.testing.assert_allclose(y, b.targets, rtol=1e-12)
    elif task.at == "last":
        np.testing.assert_array_equal(y.argmax(1), b.targets)


def test_class_and_length_attributes():
    assert get_task("temporal_order").n_in == 6 and get_task("temporal_order").n_out == 4
    assert get_task("temporal_order", convention="martens").n_in == 8
    assert get_task("temporal_order_3bit").n_out == 8
    assert (get_task("addition").n_in, get_task("addition").n_out) == (2, 1)
    assert get_task("permutation").n_in == get_task("permutation").n_out == 100
    assert get_task("permutation").at == "last"
    assert get_task("permutation", convention="martens").at == "all"
    m5, m20 = get_task("memorization_5bit"), get_task("memorization_20bit")
    assert (m5.n_values, m5.n_pos, m5.n_in, m5.n_out) == (2, 5, 4, 3)
    assert (m20.n_values, m20.n_pos, m20.n_in, m20.n_out) == (5, 10, 7, 6)
    assert m5.name == "memorization_5bit" and m20.name == "memorization_20bit"
    assert 5 ** 10 > 2 ** 20


# --------------------------------------------------------------------------- #
# temporal order
# --------------------------------------------------------------------------- #
def _to_windows(L, conv, n_bits):
    """Inclusive marker windows, written out from the documented formulas."""
    if conv == "authors":
        starts = (0.1, 0.5) if n_bits == 2 else (0.1, 0.3, 0.6)
        w = int(L * 0.1)
        return [(int(L * f), int(L * f) + w - 1) for f in starts]
    fr = ((0.01, 0.1), (0.4, 0.5)) if n_bits == 2 else ((0.1, 0.2), (0.33, 0.43), (0.66, 0.76))
    return [(max(1, int(L * a)), int(L * b)) for a, b in fr]


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("name,n_bits", [("temporal_order", 2), ("temporal_order_3bit", 3)])
@pytest.mark.parametrize("L", [10, 11, 37, 55, 200])
def test_temporal_order_markers_and_targets(name, n_bits, conv, L):
    task = get_task(name, convention=conv)
    b = task.generate(rng(L), 3000, L)
    sym = decode(b.u)
    assert sym.shape == (L, 3000)
    wins = _to_windows(L, conv, n_bits)
    hits = [set() for _ in range(n_bits)]
    for j in range(sym.shape[1]):
        s = sym[:, j]
        pos = np.flatnonzero(s < 2)
        assert len(pos) == n_bits
        target = 0
        for k, (p, (lo, hi)) in enumerate(zip(pos, wins)):
            assert lo <= p <= hi, (k, p, lo, hi)
            hits[k].add(int(p))
            target += int(s[p]) << k
        assert b.targets[j] == target
        if conv == "martens":
            assert s[0] == 6 and s[-1] == 7
            assert np.all((s[1:-1] != 6) & (s[1:-1] != 7))
        else:
            assert s.max() <= 5
    # every position of every window is used (the windows are not narrower)
    for k, (lo, hi) in enumerate(wins):
        assert hits[k] == set(range(lo, hi + 1))
    # classes and distractors roughly balanced
    counts = np.bincount(b.targets, minlength=task.n_out)
    assert counts.min() > 3000 / task.n_out * 0.7
    assert set(np.unique(sym[sym >= 2]).tolist()) == {2, 3, 4, 5} | (
        {6, 7} if conv == "martens" else set())


def test_temporal_order_hand_built():
    task = get_task("temporal_order", min_length=10)
    u = np.zeros((10, 2, 6))
    s0 = [2, 1, 3, 4, 5, 0, 2, 2, 3, 4]  # B at 1, A at 5 -> v0=1, v1=0 -> class 1
    s1 = [2, 0, 3, 4, 5, 1, 2, 2, 3, 4]  # A, then B -> class 2
    for t in range(10):
        u[t, 0, s0[t]] = 1
        u[t, 1, s1[t]] = 1
    np.testing.assert_array_equal(task.oracle(u).argmax(1), [1, 2])
    t3 = get_task("temporal_order_3bit", min_length=10)
    u3 = np.zeros((10, 1, 6))
    for t, s in enumerate([2, 1, 3, 0, 5, 2, 1, 2, 3, 4]):  # B, A, B -> 1 + 0 + 4
        u3[t, 0, s] = 1
    assert t3.oracle(u3).argmax(1)[0] == 5


# --------------------------------------------------------------------------- #
# addition / multiplication
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("name", ["addition", "multiplication"])
@pytest.mark.parametrize("L", [10, 23, 100])
def test_arithmetic_markers_and_targets(name, conv, L):
    task = get_task(name, convention=conv)
    seen_T = set()
    hits = {}  # T -> (count, p0 positions seen, p1 positions seen)
    for seed in range(12):
        b = task.generate(rng(seed), 400, L, dtype=np.float32)
        T = b.u.shape[0]
        seen_T.add(T)
        if conv == "authors":
            assert L <= T < L + int(L * 0.1)
        else:
            assert T == L
        w0, w1 = int(T * 0.1), int(T * 0.4)
        vals, mk = b.u[:, :, 1], b.u[:, :, 0]
        assert vals.min() >= 0 and vals.max() < 1
        for j in range(b.u.shape[1]):
            pos = np.flatnonzero(mk[:, j] == 1)
            assert len(pos) == 2
            assert 0 <= pos[0] < w0 and w0 <= pos[1] < w0 + w1
            n_T, h0, h1 = hits.setdefault(T, [0, set(), set()])
            hits[T][0] += 1
            h0.add(int(pos[0]))
            h1.add(int(pos[1]))
            a, c = float(vals[pos[0], j]), float(vals[pos[1], j])
            if name == "multiplication":
                want = a * c
            else:
                want = (a + c) / 2 if conv == "authors" else a + c
            assert b.targets[j, 0] == pytest.approx(want, rel=1e-6)
            neg = set(np.flatnonzero(mk[:, j] == -1).tolist())
            if conv == "authors":
                assert neg == set()
            else:
                assert neg == ({T - 4} if pos[0] == 0 else {0, T - 4})
            assert np.count_nonzero(mk[:, j]) == 2 + len(neg)
    if conv == "authors" and int(L * 0.1) > 1:
        assert len(seen_T) > 1  # the per-minibatch extension varies
    # every position of both windows is used (the windows are not narrower)
    for T, (n_T, h0, h1) in hits.items():
        if n_T >= 400:
            w0, w1 = int(T * 0.1), int(T * 0.4)
            assert h0 == set(range(w0)) and h1 == set(range(w0, w0 + w1)), T
    assert max(v[0] for v in hits.values()) >= 400


def test_arithmetic_hand_built():
    u = np.zeros((20, 1, 2))
    u[:, 0, 1] = 0.9
    u[1, 0] = [1, 0.25]
    u[7, 0] = [1, 0.5]
    assert get_task("addition", min_length=10).oracle(u)[0, 0] == pytest.approx(0.375)
    assert get_task("addition", min_length=10, convention="martens").oracle(u)[0, 0] \
        == pytest.approx(0.75)
    u[0, 0, 0] = -1  # martens start marker is not a value marker
    assert get_task("multiplication", min_length=10).oracle(u)[0, 0] == pytest.approx(0.125)


# --------------------------------------------------------------------------- #
# permutation
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("conv", CONVS)
def test_permutation(conv):
    task = get_task("permutation", convention=conv)
    b = task.generate(rng(3), 500, 25)
    sym = decode(b.u)
    assert set(np.unique(sym[0]).tolist()) == {0, 1}
    assert sym[1:].min() >= 2 and sym[1:].max() <= 99
    assert len(np.unique(sym[1:])) == 98
    if conv == "authors":
        np.testing.assert_array_equal(b.targets, sym[0])
    else:
        np.testing.assert_array_equal(b.targets[:-1], sym[1:])
        np.testing.assert_array_equal(b.targets[-1], sym[0])
    small = get_task("permutation", min_length=2, n_symbols=5, convention=conv)
    s = decode(small.generate(rng(), 50, 2).u)
    assert s.shape == (2, 50) and s[1].min() >= 2 and s[1].max() <= 4


# --------------------------------------------------------------------------- #
# memorization
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("name", ["memorization_5bit", "memorization_20bit"])
@pytest.mark.parametrize("L", [1, 17])
def test_memorization_layout(name, conv, L):
    task = get_task(name, convention=conv)
    nv, n = task.n_values, task.n_pos
    b = task.generate(rng(L), 200, L)
    sym = decode(b.u)
    T = L + 2 * n + (conv == "martens")
    assert sym.shape == (T, 200)
    go = n + L
    for j in range(200):
        s, tg = sym[:, j], b.targets[:, j]
        assert np.all(s[:n] < nv)
        assert s[go] == nv + 1
        rest = np.delete(np.arange(n, T), go - n)
        assert np.all(s[rest] == nv)
        np.testing.assert_array_equal(tg[T - n:], s[:n])  # recall = the pattern
        assert np.all(tg[:T - n] == nv)                   # blank elsewhere
    if conv == "authors":
        assert T - n == go  # go marker is the first recall step
    else:
        assert T - n == go + 1  # go marker one step before the recall period
    assert set(np.unique(sym[:n]).tolist()) == set(range(nv))


def test_memorization_hand_built():
    task = get_task("memorization_5bit", min_length=2)
    pattern = [1, 0, 0, 1, 1]
    T = 2 + 10
    u = np.zeros((T, 1, 4))
    for t in range(T):
        u[t, 0, pattern[t] if t < 5 else 2] = 1
    u[7, 0] = [0, 0, 0, 1]  # go at n_pos + L
    y = task.oracle(u).argmax(2)[:, 0]
    np.testing.assert_array_equal(y, [2] * 7 + pattern)


# --------------------------------------------------------------------------- #
# errors() on hand-built predictions
# --------------------------------------------------------------------------- #
def test_errors_classification_last():
    task = get_task("temporal_order")
    b = Batch(np.zeros((12, 4, 6)), np.array([0, 1, 2, 3]), None)
    y = np.full((4, 4), 0.1)
    y[[0, 1, 2, 3], [0, 2, 2, 0]] = 0.7  # right, wrong, right, wrong
    np.testing.assert_array_equal(task.errors(y, b), [False, True, False, True])
    y2 = np.eye(4)
    y2[2, 0] = np.nan  # non-finite output always counts as an error
    np.testing.assert_array_equal(task.errors(y2, b), [False, False, True, False])
    with pytest.raises(ValueError, match="y"):
        task.errors(np.zeros((4, 3)), b)


@pytest.mark.parametrize("name", ["addition", "multiplication"])
def test_errors_regression_threshold(name):
    task = get_task(name)
    t = np.full((5, 1), 0.5)
    b = Batch(np.zeros((20, 5, 2)), t, None)
    d = np.array([0.0, 0.19, -0.199, 0.201, -0.3])  # squared: 0, .0361, .0396, .0404, .09
    y = t + d[:, None]
    np.testing.assert_array_equal(task.errors(y, b), [False, False, False, True, True])
    y[0, 0] = np.nan
    assert task.errors(y, b)[0]
    loose = get_task(name, threshold=0.1)
    assert not loose.errors(t + d[:, None], b).any()


def test_errors_memorization_steps():
    task = get_task("memorization_5bit", min_length=1)
    b = task.generate(rng(), 3, 4)
    T = b.u.shape[0]
    y = task.oracle(b.u)
    y[T - 2, 0] = np.roll(y[T - 2, 0], 1)  # one wrong recall step in sequence 0
    y[3, 1] = np.roll(y[3, 1], 1)          # one wrong blank step in sequence 1
    np.testing.assert_array_equal(task.errors(y, b), [True, True, False])
    rec = get_task("memorization_5bit", min_length=1, score_steps="recall")
    b2 = rec.generate(rng(), 3, 4)
    assert b2.mask is not None and b2.mask.sum() == 3 * 5
    np.testing.assert_array_equal(b2.mask[:, 0], [False] * (T - 5) + [True] * 5)
    y2 = rec.oracle(b2.u)
    y2[T - 2, 0] = np.roll(y2[T - 2, 0], 1)
    y2[3, 1] = np.roll(y2[3, 1], 1)        # blank steps do not count here
    np.testing.assert_array_equal(rec.errors(y2, b2), [True, False, False])


def test_errors_permutation_martens_reads_last_step_only():
    task = get_task("permutation", convention="martens", min_length=5)
    b = task.generate(rng(), 4, 5)
    y = np.zeros((5, 4, 100))
    y[:-1, :, 99] = 1  # wrong everywhere before the last step: does not count
    y[-1, np.arange(4), b.targets[-1]] = 1
    y[-1, 3] = 0
    y[-1, 3, 1 - b.targets[-1, 3]] = 1
    np.testing.assert_array_equal(task.errors(y, b), [False, False, False, True])


# --------------------------------------------------------------------------- #
# evaluate / success
# --------------------------------------------------------------------------- #
def test_evaluate_oracle_and_chance():
    task = get_task("temporal_order", min_length=20, max_length=40)
    sizes = []

    def perfect(u):
        sizes.append(u.shape[1])
        return task.oracle(u)

    assert evaluate(task, perfect, rng(), n_sequences=1000, chunk=300) == 0.0
    assert sizes == [300, 300, 300, 100]
    const = lambda u: np.tile([1.0, 0, 0, 0], (u.shape[1], 1))  # noqa: E731
    err = evaluate(task, const, rng(), n_sequences=2000, length=30)
    assert 0.70 < err < 0.80  # 3 of 4 classes wrong
    assert tasks.is_solved(0.0) and tasks.is_solved(0.0099) and not tasks.is_solved(0.01)
    assert tasks.error_rate(np.array([True, False, False, False])) == 0.25


def test_evaluate_lengths_and_all_steps():
    task = get_task("memorization_5bit", min_length=3, max_length=9)
    Ts = set()

    def perfect(u):
        Ts.add(u.shape[0])
        return task.oracle(u)

    assert evaluate(task, perfect, rng(), n_sequences=200, chunk=10) == 0.0
    assert Ts <= {L + 10 for L in range(3, 9)} and len(Ts) > 1
    Ts.clear()
    assert evaluate(task, perfect, rng(), n_sequences=50, length=5) == 0.0
    assert Ts == {15}
    blank = lambda u: np.tile(np.eye(3)[2], u.shape[:2] + (1,))  # noqa: E731
    assert evaluate(task, blank, rng(), n_sequences=100) == 1.0


def test_evaluate_bad_arguments():
    task = get_task("addition")
    f = task.oracle
    with pytest.raises(TypeError, match="task"):
        evaluate("addition", f, rng())
    with pytest.raises(TypeError, match="predict_fn"):
        evaluate(task, None, rng())
    with pytest.raises(TypeError, match="rng"):
        evaluate(task, f, 0)
    with pytest.raises(ValueError, match="n_sequences"):
        evaluate(task, f, rng(), n_sequences=0)
    with pytest.raises(ValueError, match="chunk"):
        evaluate(task, f, rng(), chunk=0)
    with pytest.raises(ValueError, match="length"):
        evaluate(task, f, rng(), length=5)
    with pytest.raises(ValueError, match="y"):
        evaluate(task, lambda u: np.zeros(u.shape[1]), rng(), n_sequences=10)


# --------------------------------------------------------------------------- #
# reproducibility, lengths
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name,conv", ALL)
def test_reproducible_by_seed(name, conv):
    task = get_task(name, convention=conv)
    a = task.generate(rng(5), 6, 40)
    b = task.generate(rng(5), 6, 40)
    c = task.generate(rng(6), 6, 40)
    np.testing.assert_array_equal(a.u, b.u)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert (a.mask is None) == (b.mask is None)
    assert a.u.shape != c.u.shape or not np.array_equal(a.u, c.u)


def test_sample_length():
    task = get_task("temporal_order", min_length=50, max_length=60)
    ls = [task.sample_length(rng(s)) for s in range(300)]
    assert min(ls) == 50 and max(ls) == 59
    assert all(isinstance(v, int) for v in ls)
    r1, r2 = rng(9), rng(9)
    seq1 = [task.sample_length(r1) for _ in range(20)]
    assert seq1 == [task.sample_length(r2) for _ in range(20)]
    fixed = get_task("temporal_order", min_length=80, max_length=None)
    assert fixed.sample_length(rng()) == 80 and fixed.max_length == 80
    assert get_task("addition", min_length=70, max_length=70).sample_length(rng()) == 70


# --------------------------------------------------------------------------- #
# registry and bad parameters
# --------------------------------------------------------------------------- #
def test_registry_names_and_roundtrip():
    assert set(tasks.TASKS) >= {"temporal_order", "temporal_order_3bit", "addition",
                                "multiplication", "permutation", "memorization",
                                "memorization_5bit", "memorization_20bit"}
    for name in tasks.TASKS:
        for conv in CONVS:
            t = get_task(name, convention=conv, min_length=30, max_length=90)
            t2 = get_task(t.name, **t.config())
            assert type(t2) is type(t) and t2.config() == t.config()
            assert t.name in t.describe() and type(t).__name__ in repr(t)
    assert isinstance(get_task("Temporal-Order"), tasks.TemporalOrder)
    assert isinstance(get_task("torder3"), tasks.TemporalOrder3Bit)
    assert isinstance(get_task("mul"), tasks.Multiplication)
    m = get_task("memorization", n_values=3, n_pos=4)
    assert (m.name, m.n_in, m.n_out) == ("memorization", 5, 4)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: get_task("tempral_order"), ValueError, "temporal_order"),
    (lambda: get_task(3), TypeError, "name"),
    (lambda: get_task("addition", n_pos=3), TypeError, "n_pos"),
    (lambda: get_task("temporal_order", min_length=9), ValueError, "min_length"),
    (lambda: get_task("addition", min_length=5), ValueError, "min_length"),
    (lambda: get_task("permutation", min_length=1), ValueError, "min_length"),
    (lambda: get_task("memorization", min_length=0), ValueError, "min_length"),
    (lambda: get_task("temporal_order", min_length=60, max_length=50), ValueError, "max_length"),
    (lambda: get_task("temporal_order", min_length=50.0), TypeError, "min_length"),
    (lambda: get_task("temporal_order", convention="sutskever"), ValueError, "convention"),
    (lambda: get_task("memorization", n_values=1), ValueError, "n_values"),
    (lambda: get_task("memorization", n_pos=0), ValueError, "n_pos"),
    (lambda: get_task("memorization", score_steps="some"), ValueError, "score_steps"),
    (lambda: get_task("memorization_5bit", n_values=5), ValueError, "n_values"),
    (lambda: get_task("permutation", n_symbols=2), ValueError, "n_symbols"),
    (lambda: get_task("addition", threshold=0), ValueError, "threshold"),
    (lambda: get_task("addition", threshold=float("nan")), ValueError, "threshold"),
])
def test_bad_parameters(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_generate_bad_arguments():
    task = get_task("temporal_order")
    with pytest.raises(TypeError, match="rng"):
        task.generate(np.random.RandomState(0), 2, 20)
    with pytest.raises(ValueError, match="batch_size"):
        task.generate(rng(), 0, 20)
    with pytest.raises(TypeError, match="batch_size"):
        task.generate(rng(), 2.0, 20)
    with pytest.raises(ValueError, match="length"):
        task.generate(rng(), 2, 9)
    with pytest.raises(TypeError, match="dtype"):
        task.generate(rng(), 2, 20, dtype=np.int32)
    with pytest.raises(TypeError, match="rng"):
        task.sample_length(None)
    with pytest.raises(ValueError, match="u"):
        task.oracle(np.zeros((20, 2, 5)))
    with pytest.raises(ValueError, match="batch.u"):
        task.errors(np.zeros((2, 4)), Batch(np.zeros((20, 2, 5)), np.zeros(2, np.int64), None))


def test_one_batch_type_everywhere():
    from rnnfast.data import CharBatch, MusicBatch
    from rnnfast.nn import batch as nb

    assert Batch is nb.Batch and MusicBatch is nb.Batch and CharBatch is nb.Batch
    b = get_task("temporal_order").generate(np.random.default_rng(0), 3, 20)
    assert type(b) is nb.Batch and b.reset is True and b.origin is None
    assert nb.as_batch((b.u, b.targets)) == nb.Batch(b.u, b.targets, None, True, None)
    with pytest.raises(TypeError, match="minibatch must be"):
        nb.as_batch(b.u)
