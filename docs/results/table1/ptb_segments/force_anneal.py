"""Continue a PTB run from its checkpoint with Mikolov's annealing started now: the lr halved
at once (then after every epoch, as the rule does once started) instead of waiting for an
epoch that improves validation by less than 0.3%.

    python force_anneal.py RUN_DIR DATA_DIR THREADS BUDGET_MINUTES

RUN_DIR: a copy of a `rnnfast reproduce ptb --out` folder (its checkpoint is continued and
overwritten; log.txt gets the validation lines; results.json the final table).
"""
import json
import os
import sys

from rnnfast.experiments.natural import NaturalConfig, NaturalRun, format_table, load_problem

out, data, threads, budget = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
cfg = NaturalConfig.from_dict(json.load(open(os.path.join(out, "config.json"))))
problem = load_problem(cfg, data)
with open(os.path.join(out, "log.txt"), "a") as f:
    def log(line):
        f.write(line + "\n")
        f.flush()

    run = NaturalRun(cfg, problem, out=out, num_threads=threads, progress=False, log=log)
    run.load_checkpoint()
    lr = run.engine.lr
    if not lr.annealing:
        lr.annealing, lr.current = True, lr.current * lr.factor
    log(f"forced annealing at epoch {run.epoch}, update {run.updates}: lr {lr.current}")
    outcome = run.run(budget=budget * 60.0)
    log(format_table(outcome.results))
