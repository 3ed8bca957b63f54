"""Does training past the solve turn the second bit's transient into an attractor?

    python docs/results/generalization/longer/run.py OUT [--config authors] [--seeds 0,1,2,3,4]
        [--max-updates 1000000] [--every 50000] [--sequences 1000] [--time-limit SECONDS]

Each seed trains the generalisation protocol's model (``rnnfast reproduce generalization``'s
settings for ``--config``, the same seed and so the same run up to the point where that
protocol stops) but does not stop at zero validation errors: it goes on to ``--max-updates``.
Every ``--every`` updates, and at every validation with at most 0.1% errors (10 of 10,000),
the model is tested on ``--sequences`` fresh sequences at each of LENGTHS (the same sequences
every time: one fixed stream per length) and saved to OUT/seed-k/models/. OUT/seed-k/long.json
holds the tests, OUT/tests.md all of them, OUT/summary.md each seed's best snapshot (with
``--confirm`` tested again on 10,000 sequences at every length of the paper) and
OUT/errors_vs_updates.png the figure. Resumable: rerun the same command (a checkpoint every
20,000 updates and when the time limit cuts a run).
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace

import numpy as np

from rnnfast.experiments.generalization import evaluate_lengths, generalization_engine, preset
from rnnfast.fileio import atomic_write_json, atomic_write_text, json_safe
from rnnfast.nn.init import spectral_radius
from rnnfast.train import Checkpoint, Validation
from rnnfast.train.callbacks import Callback

LENGTHS = (50, 100, 200, 500, 1000, 5000)
#: Validation error rates (of 10,000 sequences) at which a snapshot is tested too.
NEAR_ZERO = 0.001


class LongTest(Callback):
    """Test the model at LENGTHS every ``every`` updates and at every validation with at most
    NEAR_ZERO errors (the first zero-error one marked); rows go to ``path`` (atomic), models
    to ``models_dir``."""

    def __init__(self, path, models_dir, every, n_sequences):
        self.path, self.models_dir = path, models_dir
        self.every, self.n = int(every), int(n_sequences)
        self.rows = []
        self.first_zero = None
        self._reason = None  # set by a validation, acted on at the end of its update

    def on_validation(self, engine, record):
        if self.first_zero is None and record["error"] == 0.0:
            self.first_zero = engine.update
            self._reason = "first zero-error validation"
        elif record["error"] is not None and record["error"] <= NEAR_ZERO:
            self._reason = "near-zero validation"

    def on_update_end(self, engine, batch, row):
        reason, self._reason = self._reason, None
        if engine.update % self.every == 0:
            reason = reason or "every"
        if reason is not None:
            self.test(engine, reason)

    def test(self, engine, reason):
        model = engine.model
        t0 = time.perf_counter()
        # one thread, as the run's training: two runs share the two cores
        rows = evaluate_lengths(model, "temporal_order", LENGTHS, n_sequences=self.n,
                                num_threads=1)
        omega = engine.history["omega"][-1000:]
        valid = engine.validations[-1]["error"] if engine.validations else None
        self.rows.append({
            "update": engine.update, "reason": reason, "valid_error": valid,
            "rho": spectral_radius(model.params["W_rec"]),
            "omega_last_1000": float(np.nanmean(omega)) if omega.size else None,
            "errors": {str(r["length"]): r["error_rate"] for r in rows},
            "seconds": time.perf_counter() - t0})
        os.makedirs(self.models_dir, exist_ok=True)
        model.save(os.path.join(self.models_dir, f"update-{engine.update:07d}.npz"))
        atomic_write_json(self.path, {"first_zero": self.first_zero, "rows": self.rows})
        e = self.rows[-1]["errors"]
        print(f"  update {engine.update:>7,} ({reason}): valid {valid}, rho "
              f"{self.rows[-1]['rho']:.2f}, errors % " + " ".join(
                  f"{L}:{100 * e[str(L)]:.1f}" for L in LENGTHS), flush=True)

    def state_dict(self):
        return {"rows": self.rows, "first_zero": self.first_zero}

    def load_state_dict(self, state):
        self.rows, self.first_zero = list(state["rows"]), state["first_zero"]


def run_seed(settings, out, n_sequences, every, time_limit):
    """Train one seed to ``settings.max_updates`` (or the time limit); True when finished."""
    os.makedirs(out, exist_ok=True)
    engine, task = generalization_engine(settings, num_threads=1)
    test = LongTest(os.path.join(out, "long.json"), os.path.join(out, "models"), every,
                    n_sequences)
    config = {k: v for k, v in json_safe(asdict(settings)).items() if k != "max_updates"}
    checkpoint = Checkpoint(os.path.join(out, "checkpoint.npz"), every=20_000, config=config)
    callbacks = [Validation(task, every=settings.valid_every, size=settings.valid_size,
                            batch=1000), test, checkpoint]
    if os.path.exists(checkpoint.path):
        checkpoint.restore(engine, callbacks)
        print(f"  resumed at update {engine.update:,}", flush=True)
    if engine.update >= settings.max_updates:
        return True
    result = engine.fit(task, max_updates=settings.max_updates, time_limit=time_limit,
                        callbacks=callbacks)
    return result.stopped == "max_updates"


def worst(row):
    """The largest error rate of a test row over LENGTHS."""
    return max(row["errors"][str(L)] for L in LENGTHS)


def confirm(out, row, n_sequences=10_000):
    """The paper's test of one snapshot: ``n_sequences`` per length at every one of the
    paper's lengths (cached in ``out/confirm-<update>.json``)."""
    from rnnfast.experiments.generalization import GENERALIZATION_LENGTHS
    from rnnfast.nn.model import RNNModel

    path = os.path.join(out, f"confirm-{row['update']:07d}.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    model = RNNModel.load(os.path.join(out, "models", f"update-{row['update']:07d}.npz"))
    rows = evaluate_lengths(model, "temporal_order", GENERALIZATION_LENGTHS,
                            n_sequences=n_sequences, seed=54321, num_threads=1)
    doc = {"update": row["update"], "sequences": n_sequences,
           "errors": {str(r["length"]): r["error_rate"] for r in rows}}
    atomic_write_json(path, doc)
    return doc


def end_state_clusters(model, length=5000, n_sequences=400, seed=1):
    """Sizes of the clusters the final states of ``n_sequences`` fresh sequences of ``length``
    steps fall into (greedy: a state joins the nearest centre within 5% of its norm, else
    starts a cluster), largest first. Four clean clusters: four attractors, one per class."""
    from rnnfast import tasks

    task = tasks.get_task("temporal_order", min_length=length, max_length=length)
    batch = task.generate(np.random.default_rng(seed), n_sequences, length, dtype=model.dtype)
    h = model.forward(batch.u, num_threads=1).h_last.astype(np.float64)  # (n, H)
    centres, sizes = [], []
    for x in h:
        d = [np.linalg.norm(x - c) for c in centres]
        if d and min(d) < 0.05 * np.linalg.norm(x):
            sizes[int(np.argmin(d))] += 1
        else:
            centres.append(x)
            sizes.append(1)
    return sorted(sizes, reverse=True)


def probe_figure(out, docs):
    """OUT/memory_probes.png: the linear probes (rnnfast.analysis.memory) of each seed's first
    zero-error snapshot (what the authors' stopping rule returns) and of its best one."""
    from rnnfast.experiments.generalization import memory_probes
    from rnnfast.nn.model import RNNModel
    from rnnfast.plots import plot_memory_probes

    models = []
    for s, d in docs.items():
        picks = {"best": min(d["rows"], key=worst)["update"]}
        if d["first_zero"] is not None:
            picks["first zero"] = d["first_zero"]
        for tag, update in picks.items():
            model = RNNModel.load(os.path.join(out, f"seed-{s}", "models",
                                               f"update-{update:07d}.npz"))
            models.append({"seed": f"{s}, {tag} ({update:,})",
                           "probes": memory_probes(model, s, num_threads=1),
                           "end_state_clusters": end_state_clusters(model)})
    atomic_write_json(os.path.join(out, "memory_probes.json"), {"models": models})
    plot_memory_probes({"models": models}, os.path.join(out, "memory_probes.png"))
    return {m["seed"]: m["end_state_clusters"] for m in models}


def summarize(out, seeds, max_updates, confirm_best=False):
    """OUT/summary.md (per seed: the snapshots tested, the best one; with ``confirm_best`` the
    best snapshot tested again on 10,000 sequences at each of the paper's lengths),
    OUT/tests.md (every test) and the figure."""
    docs = {}
    for s in seeds:
        path = os.path.join(out, f"seed-{s}", "long.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                docs[s] = json.load(f)
    head = " | ".join(f"{L}" for L in LENGTHS)
    lines = [f"| seed | update | why | valid errors | rho | Omega | {head} |",
             "|---|---|---|---|---|---|" + "---|" * len(LENGTHS)]
    for s, d in docs.items():
        for r in d["rows"]:
            lines.append(
                f"| {s} | {r['update']:,} | {r['reason']} | {100 * r['valid_error']:.2f}% | "
                f"{r['rho']:.2f} | {r['omega_last_1000']:.3f} | "
                + " | ".join(f"{100 * r['errors'][str(L)]:.1f}" for L in LENGTHS) + " |")
    atomic_write_text(os.path.join(out, "tests.md"), "\n".join(lines) + "\n")
    summary = [f"| seed | updates run | first zero-error validation | snapshots tested | "
               f"error-free at every length | best snapshot (update: errors % at "
               f"{' / '.join(str(L) for L in LENGTHS)}) |",
               "|---|---|---|---|---|---|"]
    confirmed = []
    for s, d in docs.items():
        rows = d["rows"]
        best = min(rows, key=worst)
        free = sum(1 for r in rows if worst(r) == 0.0)
        summary.append(
            f"| {s} | {rows[-1]['update']:,} | "
            f"{'-' if d['first_zero'] is None else format(d['first_zero'], ',')} | {len(rows)} | "
            f"{free} | {best['update']:,}: "
            + " / ".join(f"{100 * best['errors'][str(L)]:.1f}" for L in LENGTHS) + " |")
        if confirm_best:
            confirmed.append((s, confirm(os.path.join(out, f"seed-{s}"), best)))
    if confirmed:
        clusters = probe_figure(out, docs)
        lengths = list(confirmed[0][1]["errors"])
        summary += ["", "Each seed's best snapshot on 10,000 fresh sequences per length "
                    "(error %):", "",
                    "| seed | update | " + " | ".join(lengths) + " |",
                    "|---|---|" + "---|" * len(lengths)]
        for s, c in confirmed:
            summary.append(f"| {s} | {c['update']:,} | "
                           + " | ".join(f"{100 * c['errors'][L]:.2f}" for L in lengths) + " |")
        summary += ["", "Clusters of the final states of 400 sequences of 5000 steps "
                    "(`end_state_clusters`; four clean ones: an attractor per class):", ""]
        summary += [f"- seed {k}: {len(v)} clusters, sizes {v[:8]}{' ...' if len(v) > 8 else ''}"
                    for k, v in clusters.items()]
    atomic_write_text(os.path.join(out, "summary.md"), "\n".join(summary) + "\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    from rnnfast.plots import save_figure
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    for ax, L in zip(axes, (50, 200, 5000)):
        for s, d in docs.items():
            rows = d["rows"]
            line, = ax.plot([r["update"] for r in rows],
                            [100 * r["errors"][str(L)] for r in rows], marker=".", ms=3,
                            lw=0.8, label=f"seed {s}")
            if d["first_zero"] is not None:
                ax.axvline(d["first_zero"], color=line.get_color(), lw=0.8, ls=":")
        ax.set_title(f"test length {L}")
        ax.set_xlabel("updates")
        ax.set_xlim(0, max_updates)
    axes[0].set_ylabel("errors (%) on fresh sequences")
    axes[-1].legend(fontsize=8)
    fig.suptitle("SGD-CR on lengths 50-200, trained past the first zero-error validation "
                 "(dotted): every 50k updates and at every validation below 0.1%")
    fig.tight_layout()
    save_figure(fig, os.path.join(out, "errors_vs_updates.png"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--config", default="authors")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--max-updates", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=50_000)
    ap.add_argument("--sequences", type=int, default=1000)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds, all seeds")
    ap.add_argument("--confirm", action="store_true",
                    help="test each seed's best snapshot on 10,000 sequences per paper length")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    settings = replace(preset(a.config), max_updates=a.max_updates)
    deadline = None if a.time_limit is None else time.perf_counter() + a.time_limit
    for s in seeds:
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and left <= 0:
            print("time limit reached; rerun to continue", flush=True)
            break
        print(f"=== seed {s}", flush=True)
        run_seed(replace(settings, seed=s), os.path.join(a.out, f"seed-{s}"), a.sequences,
                 a.every, left)
        summarize(a.out, seeds, a.max_updates)
    summarize(a.out, seeds, a.max_updates, confirm_best=a.confirm)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # the engine has saved the checkpoint
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130)
