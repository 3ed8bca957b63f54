#!/usr/bin/env bash
# Piano-midi.de seed study: every method x seeds 1-4 (+ SGD-CR with the lr halving watching
# validation), one thread per run, one core per run, in parallel.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
T0=$(date +%s); t() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
CXXFLAGS="-march=x86-64-v3" python3 -m pip install -q --no-index --no-deps --no-build-isolation \
  --target /tmp/rf -C cmake.define.RNNFAST_NATIVE=OFF -C build.tool-args=-j16 \
  -C cmake.define.Eigen3_DIR=/tmp/site/cmeel.prefix/share/eigen3/cmake . > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 4; }
export PYTHONPATH=/tmp/rf
t built
lscpu | grep -E "Model name|^CPU\(s\)"
k=0
SPECS=${SPECS:-"SGD:1 SGD:2 SGD:3 SGD:4 SGD-C:1 SGD-C:2 SGD-C:3 SGD-C:4 SGD-CR:1 SGD-CR:2 SGD-CR:3 SGD-CR:4 SGD-CR:1:valid SGD-CR:2:valid SGD-CR:3:valid SGD-CR:4:valid"}
for spec in $SPECS; do
  IFS=: read m s mon <<< "$spec"; mon=${mon:-train}
  d=/tmp/runs/$m-s$s-$mon; mkdir -p $d
  taskset -c $k python3 -c "import sys; from rnnfast.cli import main; sys.exit(main())" reproduce music --dataset Piano-midi.de --data .devwork/data/music \
    --method $m --seed $s --monitor $mon --threads 1 --budget ${BUDGET:-6} ${EXTRA:-} --out $d --no-progress --quiet > $d/stdout.txt 2>&1 &
  k=$((k+1))
done
wait
t runs done
python3 - <<'PY'
import json, glob, os
rows = []
for d in sorted(glob.glob("/tmp/runs/*")):
    r = {"run": os.path.basename(d)}
    p = os.path.join(d, "results.json")
    if os.path.exists(p):
        r.update(json.load(open(p)))
    else:
        r["error"] = open(os.path.join(d, "stdout.txt")).read()[-800:]
    rows.append(r)
json.dump(rows, open(os.environ["OUT"] + "/piano_seeds.json", "w"), indent=1, default=str)
for r in rows:
    print(r["run"], {k: r.get(k) for k in ("ours", "epochs", "stopped", "train_seconds")} if "error" not in r else r["error"][-300:])
PY
t done
