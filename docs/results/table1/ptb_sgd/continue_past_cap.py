"""Continue a finished PTB cell that stopped at its epoch cap (max_epochs) for more epochs, so
that Mikolov's annealing rule can end it ("converged"): the checkpoint is loaded with the
cell's own configuration, then only the cap is raised.

    python continue_past_cap.py RUN_DIR DATA_DIR THREADS MAX_EPOCHS BUDGET_MINUTES

RUN_DIR: a COPY of a table1 cell folder (its checkpoint is continued and overwritten;
log.txt gets the validation lines; results.json and table.md the final table).
"""
import dataclasses
import json
import os
import sys

from rnnfast.experiments.natural import NaturalConfig, NaturalRun, format_table, load_problem

out, data = sys.argv[1], sys.argv[2]
threads, max_epochs, budget = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
with open(os.path.join(out, "results.json")) as f:
    cfg = NaturalConfig.from_dict(json.load(f)["config"])
problem = load_problem(cfg, data)
with open(os.path.join(out, "log.txt"), "a") as f:
    def log(line):
        f.write(line + "\n")
        f.flush()

    # the train column on the first million characters, as every PTB cell
    run = NaturalRun(cfg, problem, out=out, num_threads=threads, progress=False, log=log,
                     train_eval_limit=1_000_000)
    run.load_checkpoint()
    run.config = dataclasses.replace(cfg, max_epochs=max_epochs)
    run.tracker.finished = None          # the cell's recorded end ("max_epochs")
    log(f"continued past the cap at epoch {run.epoch}, update {run.updates}: max_epochs "
        f"{cfg.max_epochs} -> {max_epochs}, lr {run.engine.lr.current}")
    outcome = run.run(budget=budget * 60.0)
    log(format_table(outcome.results))
