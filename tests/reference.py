"""A slow, plain NumPy reference of the rnnfast kernels: one step at a time, float64,
written from the equations (not from the kernels) so that the tests compare two independent
implementations."""

import numpy as np

SIGMA = {
    "tanh": (np.tanh, lambda h: 1.0 - h * h),
    "sigmoid": (lambda x: 1.0 / (1.0 + np.exp(-x)), lambda h: h * (1.0 - h)),
    "relu": (lambda x: np.maximum(x, 0.0), lambda h: (h > 0).astype(h.dtype)),
    "linear": (lambda x: x, lambda h: np.ones_like(h)),
}


def forward(u, W_in, W_rec, b, h0, activation):
    """h (T, B, H) and x (T, B, H) for u (T, B, I)."""
    f, _ = SIGMA[activation]
    T, B, _ = u.shape
    H = W_rec.shape[0]
    h_prev = np.zeros((B, H)) if h0 is None else h0
    hs, xs = [], []
    for t in range(T):
        x = np.einsum("hk,bk->bh", W_rec, h_prev) + np.einsum("hi,bi->bh", W_in, u[t]) + b
        h_prev = f(x)
        xs.append(x)
        hs.append(h_prev)
    return np.stack(hs), np.stack(xs)


def backward(u, W_in, W_rec, b, h0, activation, dh, omega_bound=1e-20):
    """All gradients, Ω (authors' form) and its W_rec gradient, and ‖δ_t‖, step by step."""
    _, fprime = SIGMA[activation]
    h, _ = forward(u, W_in, W_rec, b, h0, activation)
    T, B, _ = u.shape
    H = W_rec.shape[0]
    hp = np.zeros((B, H)) if h0 is None else h0
    g = {k: np.zeros_like(v) for k, v in dict(W_in=W_in, W_rec=W_rec, b=b, u=u).items()}
    dx = np.zeros((T, B, H))
    delta_norm = np.zeros((T, B))
    carry = np.zeros((B, H))  # a_{t+1} W_rec
    terms, pairs, og = 0.0, 0, np.zeros((H, H))
    for t in range(T - 1, -1, -1):
        delta = dh[t] + carry
        delta_norm[t] = np.sqrt((delta ** 2).sum(1))
        a = delta * fprime(h[t])
        dx[t] = a
        v = a @ W_rec
        prev = h[t - 1] if t > 0 else hp
        g["W_rec"] += a.T @ prev
        g["W_in"] += a.T @ u[t]
        g["b"] += a.sum(0)
        g["u"][t] = a @ W_in
        for k in range(B):
            d2 = float(delta[k] @ delta[k])
            if d2 >= omega_bound:
                r = float(v[k] @ v[k]) / d2
                terms += (r - 1.0) ** 2
                pairs += 1
                og += 4.0 * (r - 1.0) / d2 * np.outer(a[k], v[k])
        carry = v
    g["h0"] = carry
    g["dx"] = dx
    g["omega"] = terms / pairs if pairs else 0.0
    g["omega_grad"] = og / pairs if pairs else og
    g["dh_norm"] = delta_norm
    return g
