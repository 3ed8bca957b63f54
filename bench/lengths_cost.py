"""Cost of variable sequence lengths (``lengths=``): a ragged batch (lengths uniform in
[1, T], PackedSequence order) against the full batch and against a dense batch of
T' = Σ len_b / B steps (the same number of valid rows), float32 forward + BPTT without ∂E/∂u.
Interleaved rounds; prints median [min-max] of the ratios.

    python bench/lengths_cost.py
"""

import time

import numpy as np

import rnnfast


def timeit(f, n):
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n


def main(rounds=9):
    for (T, B, I, H), thr in [((125, 20, 6, 50), 1), ((100, 32, 8, 100), 1),
                              ((200, 64, 64, 256), 1), ((100, 32, 8, 100), 2)]:
        dt = np.float32
        rng = np.random.default_rng(0)
        u = rng.standard_normal((T, B, I)).astype(dt)
        Wi = (rng.standard_normal((H, I)) * .3).astype(dt)
        Wr = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(dt)
        b = np.zeros(H, dt)
        dh = rng.standard_normal((T, B, H)).astype(dt)
        L = np.sort(rng.integers(1, T + 1, size=B))[::-1].copy()
        Te = int(round(L.sum() / B))

        def run(lens, TT=T):
            f = rnnfast.forward(u[:TT], Wi, Wr, b, lengths=lens, num_threads=thr)
            rnnfast.backward(f, dh[:TT], input_grad=False, num_threads=thr)

        n = max(2, int(0.1 / timeit(lambda: run(None), 2)))
        full, dense, unsorted = [], [], []
        Lu = rng.permutation(L)
        for _ in range(rounds):
            t0 = timeit(lambda: run(None), n)
            t1 = timeit(lambda: run(L), n)
            t2 = timeit(lambda: run(None, Te), n)
            t3 = timeit(lambda: run(Lu), n)
            full.append(t1 / t0)
            dense.append(t1 / t2)
            unsorted.append(t3 / t1)

        def q(v):
            return "%.3f [%.3f-%.3f]" % (np.median(v), min(v), max(v))

        print((T, B, I, H), "threads", thr, "Σlen/(T·B) = %.3f" % (L.sum() / (T * B)),
              "| ragged/full", q(full), "| ragged/dense(T')", q(dense),
              "| unsorted/sorted", q(unsorted), flush=True)


if __name__ == "__main__":
    main()
