#!/usr/bin/env python
"""What saving a long run's per-update history costs: ``HistoryWriter.write`` of N rows (the
first, full write), then a save of ``--new`` more rows (what a run adds between two saves: a
minute of PTB training is ~8,000 updates), as ``Checkpoint`` does it.

    python bench/history_save.py                 # 300,000 rows, then 8,000 more
    python bench/history_save.py --rows 1000 --new 100
"""

import argparse
import os
import tempfile
import time

import numpy as np

from rnnfast.train.history import COLUMNS, History, HistoryWriter


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--new", type=int, default=8_000)
    args = ap.parse_args(argv)
    n, m = args.rows, args.new
    rng = np.random.default_rng(0)
    cols = {k: (np.arange(1, n + m + 1) if k == "update" else rng.random(n + m)).astype(dt)
            for k, dt in COLUMNS.items()}
    cols["action"][:] = 1
    cols["rho"][np.arange(n + m) % 100 != 0] = np.nan  # measured every 100 updates
    h = History()
    h.load_arrays({k: a[:n] for k, a in cols.items()})
    with tempfile.TemporaryDirectory() as d:
        w = HistoryWriter(os.path.join(d, "history"))
        t0 = time.perf_counter()
        w.write(h)
        t1 = time.perf_counter()
        for i in range(n, n + m):
            h.append({k: a[i] for k, a in cols.items()})
        t2 = time.perf_counter()
        w.write(h)
        t3 = time.perf_counter()
    print(f"history of {n:,} rows: first (full) write {t1 - t0:.2f} s; "
          f"a save after {m:,} new rows {t3 - t2:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
