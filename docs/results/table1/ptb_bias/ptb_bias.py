"""A PTB Table 1 cell with the biases b and b_out trained (the cells have none: the paper's
reported setting, "500 sigmoid units, no biases", from its longer version, which we have not
seen). Every other setting is the cell's; resumable: rerun the same command.

    python ptb_bias.py METHOD AHEAD DATA OUT BUDGET_MINUTES [THREADS]
    python ptb_bias.py SGD-CR 1 ~/.local/share/rnnfast ptb-bias-SGD-CR 150 2
"""
import sys

from rnnfast.experiments.natural import NaturalRun, load_problem, ptb_config

if len(sys.argv) not in (6, 7):
    sys.exit(__doc__)
method, ahead, data, out, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], \
    float(sys.argv[5])
threads = int(sys.argv[6]) if len(sys.argv) == 7 else 2
cfg = ptb_config(method, ahead, biases=True)
print(cfg.to_dict(), flush=True)
# the cells' protocol (run_cell): the train column scores the first million characters
run = NaturalRun(cfg, load_problem(cfg, data), out=out, num_threads=threads, progress=False,
                 log=lambda line: print(line, flush=True), train_eval_limit=1_000_000)
try:
    run.load_checkpoint()
except FileNotFoundError:
    pass
outcome = run.run(budget=max(60.0 * budget - run.tracker.train_seconds, 0.0))
print(outcome.results, flush=True)
