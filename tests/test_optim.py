"""SGD / momentum / Nesterov updates, schedules, state round trips."""

import numpy as np
import pytest

from rnnfast.nn import optim as O


def quad_grad(p):
    # f(θ) = ½ Σ a θ², ∇ = a θ
    return {"w": np.array([1.0, 3.0]) * p["w"]}


def test_plain_sgd():
    p = {"w": np.array([1.0, -2.0])}
    opt = O.SGD(lr=0.1)
    opt.step(p, {"w": np.array([0.5, 1.0])})
    np.testing.assert_allclose(p["w"], [0.95, -2.1])
    assert opt.velocity == {}


def test_classical_momentum_matches_definition():
    p = {"w": np.array([1.0, -2.0])}
    opt = O.SGD(lr=0.1, momentum=0.9)
    theta, v = p["w"].copy(), np.zeros(2)
    for _ in range(5):
        g = quad_grad(p)
        v = 0.9 * v - 0.1 * np.array([1.0, 3.0]) * theta
        theta = theta + v
        opt.step(p, g)
        np.testing.assert_allclose(p["w"], theta, rtol=1e-14)


def test_nesterov_matches_lookahead_form():
    # Sutskever's form: v ← μv − lr ∇f(θ + μv); θ ← θ + v. With φ = θ + μv stored,
    # the reformulated update must track φ exactly.
    mu, lr = 0.9, 0.05
    a = np.array([1.0, 3.0])
    theta, v = np.array([1.0, -2.0]), np.zeros(2)
    p = {"w": theta + mu * v}
    opt = O.SGD(lr=lr, momentum=mu, nesterov=True)
    for _ in range(6):
        v = mu * v - lr * a * (theta + mu * v)
        theta = theta + v
        opt.step(p, {"w": a * p["w"]})
        np.testing.assert_allclose(p["w"], theta + mu * v, rtol=1e-12)


def test_float32_stays_float32():
    p = {"w": np.ones(3, np.float32)}
    opt = O.SGD(lr=0.1, momentum=0.5)
    opt.step(p, {"w": np.ones(3, np.float32)})
    assert p["w"].dtype == np.float32 and opt.velocity["w"].dtype == np.float32


def test_state_dict_round_trip():
    p = {"w": np.array([1.0, -2.0])}
    a = O.SGD(lr=0.1, momentum=0.9)
    for _ in range(3):
        a.step(p, quad_grad(p))
    b = O.SGD(lr=0.5, momentum=0.9)
    b.load_state_dict(a.state_dict())
    q = {"w": p["w"].copy()}
    a.step(p, quad_grad(p))
    b.step(q, quad_grad(q))
    assert np.array_equal(p["w"], q["w"]) and b.steps == a.steps
    with pytest.raises(ValueError, match="momentum"):
        O.SGD(lr=0.1).load_state_dict(a.state_dict())


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="momentum"):
        O.SGD(momentum=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        O.SGD(nesterov=True)
    with pytest.raises(ValueError, match="lr"):
        O.SGD(lr=-1)
    with pytest.raises(KeyError, match="'v'"):
        O.SGD().step({"w": np.zeros(2), "v": np.zeros(1)}, {"w": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        O.SGD().step({"w": np.zeros(2)}, {"w": np.zeros(3)})


def test_schedules():
    assert O.Constant(0.3)(1000) == 0.3
    s = O.StepDecay(1.0, 10, 0.5)
    assert [s(0), s(9), s(10), s(25)] == [1.0, 1.0, 0.5, 0.25]
    inv = O.InverseTime(0.5, 1.0)
    assert inv(0) == 0.5 and inv(1) == 0.25 and inv(3) == 0.125
    h = O.HalveOnRise(1.0)
    for err, want in [(5.0, 1.0), (4.0, 1.0), (4.5, 0.5), (4.6, 0.25), (3.0, 0.25)]:
        h.observe(err)
        assert h(0) == want
    h2 = O.HalveOnRise(1.0)
    h2.load_state_dict(h.state_dict())
    h2.observe(3.5)
    assert h2(0) == 0.125


def test_anneal_is_mikolovs_rule():
    a = O.Anneal(1.0)  # factor 1/2, 0.3% relative improvement
    # (observed error, lr after it, annealing)
    for err, lr, annealing in [(2.0, 1.0, False),     # first observation: nothing to compare
                               (1.9, 1.0, False),     # 5% better: keep
                               (1.898, 0.5, True),    # 0.1% better: start halving
                               (1.7, 0.25, True),     # then halved after every epoch
                               (1.69, 0.125, True)]:  # 1.69·1.003 <= 1.7: a real improvement
        a.observe(err)
        assert (a(123), a.annealing, a.finished) == (lr, annealing, False)
    a.observe(1.689)  # 0.06% better while annealing: finished
    assert (a(0), a.finished) == (0.0625, True)
    # a rise counts as a small improvement; NaN too
    r = O.Anneal(0.4, factor=0.25, min_improvement=0.01)
    r.observe(3.0)
    r.observe(3.1)
    assert r.annealing and not r.finished and r(0) == pytest.approx(0.1)
    r.observe(float("nan"))
    assert r.finished
    # a state round trip continues identically
    b = O.Anneal(1.0)
    for err in (2.0, 1.9, 1.898):
        b.observe(err)
    c = O.Anneal(1.0)
    c.load_state_dict(b.state_dict())
    b.observe(1.7)
    c.observe(1.7)
    assert (b(0), b.annealing, b.finished) == (c(0), c.annealing, c.finished) == (0.25, True, False)
    for bad in (dict(factor=1.0), dict(factor=0.0), dict(min_improvement=1.0),
                dict(min_improvement=-0.1)):
        with pytest.raises(ValueError):
            O.Anneal(1.0, **bad)


def test_make_schedule():
    assert isinstance(O.make_schedule("constant", 0.1), O.Constant)
    s = O.make_schedule("step:100:0.1", 1.0)
    assert s(100) == pytest.approx(0.1)
    assert O.make_schedule("inverse:10", 2.0)(10) == pytest.approx(1.0)
    assert isinstance(O.make_schedule("halve", 1.0), O.HalveOnRise)
    an = O.make_schedule("anneal:0.25:0.01", 1.0)
    assert isinstance(an, O.Anneal) and (an.factor, an.min_improvement) == (0.25, 0.01)
    assert O.make_schedule("anneal", 1.0).min_improvement == 0.003
    for bad in ("anneal:0.5:0.1:3", "cosine", "step", "step:x", "step:1.5", "constant:3", ""):
        with pytest.raises(ValueError, match="schedule"):
            O.make_schedule(bad, 1.0)
    assert isinstance(O.as_schedule(0.2), O.Constant)
    with pytest.raises(TypeError):
        O.as_schedule("fast")
