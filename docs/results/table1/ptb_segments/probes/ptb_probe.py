"""One variant of the PTB 1-step cell for a fixed number of updates, on one thread, validated
every ``valid_every`` updates (the probes of ../README.md).

    python ptb_probe.py NAME OVERRIDES_JSON UPDATES DATA_DIR OUT_DIR
    python ptb_probe.py bias '{"biases": true}' 50176 ~/.local/share/rnnfast probes

OVERRIDES_JSON: NaturalConfig fields over the paper's SGD-CR settings (``method`` and
``ahead`` too; the probes here ran when PTB's initial weights were N(0, 0.01²): pass
``"init_scale": 0.01`` to repeat them with today's defaults; ``"scales": {"W_out": 0.1}``
multiplies a matrix drawn with ``init_scale`` so that its standard deviation is the one given,
before the first update). Writes OUT_DIR/NAME.log (the config, then one line per validation) and
OUT_DIR/NAME/ (checkpoint: rerunning resumes).
"""
import json
import os
import sys

from rnnfast.experiments.natural import NaturalRun, load_problem, ptb_config

name, over, updates, data, out_dir = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4], sys.argv[5]
method = over.pop("method", "SGD-CR")
scales = over.pop("scales", {})
cfg = ptb_config(method, over.pop("ahead", 1), valid_every=over.pop("valid_every", 6272),
                 patience=0, **over)
problem = load_problem(cfg, data)
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, f"{name}.log"), "a") as log:
    def say(line):
        log.write(line + "\n")
        log.flush()

    say(f"{name}: {json.dumps(cfg.to_dict())}" + (f" scales {json.dumps(scales)}" if scales else ""))
    run = NaturalRun(cfg, problem, out=os.path.join(out_dir, name), num_threads=1,
                     progress=False, log=say)
    try:
        run.load_checkpoint()
    except FileNotFoundError:  # a fresh run: set the initial scales asked for
        for k, std in scales.items():
            run.model.params[k] *= std / cfg.init_scale
    run.run(max_updates=updates, final=False)
    say("done")
