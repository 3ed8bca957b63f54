"""Shared by the Table 1 music probes (omega_weight/run.py, piano_batch/run.py,
patience/run.py): run `rnnfast reproduce music` once per setting, resumably, and read back
every finished run of an output folder."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor


def ints(text):
    """A comma-separated list of integers (an argparse type)."""
    return [int(x) for x in text.split(",")]


def run_all(runs, jobs):
    """Run each (folder, CLI arguments after `reproduce music`, --method included) of `runs`,
    `jobs` at a time, one thread each. A folder whose results.json exists is skipped; one cut
    short is resumed."""

    def run(spec):
        d, extra = spec
        if os.path.exists(os.path.join(d, "results.json")):
            return
        os.makedirs(d, exist_ok=True)
        cmd = [sys.executable, "-c", "import sys; from rnnfast.cli import main; sys.exit(main())",
               "reproduce", "music", "--threads", "1", "--out", d,
               "--no-progress", "--quiet", *extra]
        if os.path.exists(os.path.join(d, "options.json")):
            cmd.append("--resume")  # a run cut short: continue it
        with open(os.path.join(d, "stdout.txt"), "a") as f:
            subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, runs))


def finished(out):
    """results.json of every finished run in `out` (also those of earlier calls), by folder."""
    rows = []
    for name in sorted(os.listdir(out)):
        p = os.path.join(out, name, "results.json")
        if os.path.exists(p):
            with open(p) as f:
                rows.append(json.load(f))
    return rows
