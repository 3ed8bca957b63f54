#!/usr/bin/env bash
# One device run: build rnnfast for AVX2 (x86-64-v3, the target machines' ISA), then
# (1) the torch drop-in's CUDA / half-precision fallback check, (2) the torch tests on this
# machine's torch, (3) OpenMP scaling in bench/peers.py on pinned cores.
set -u
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
T0=$(date +%s)
t() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 3
t "wheels in"
CXXFLAGS="-march=x86-64-v3" python3 -m pip install -q --no-index --no-deps --no-build-isolation \
  --target /tmp/rf -C cmake.define.RNNFAST_NATIVE=OFF \
  -C cmake.define.Eigen3_DIR=/tmp/site/cmeel.prefix/share/eigen3/cmake . > $OUT/build.log 2>&1 || { tail -30 $OUT/build.log; exit 4; }
export PYTHONPATH=/tmp/rf
t "built"
{ lscpu | head -25; nvidia-smi -L; python3 -c "import torch, numpy, rnnfast; print('torch', torch.__version__, 'numpy', numpy.__version__, rnnfast.build_info())"; } > $OUT/machine.txt 2>&1
cat $OUT/machine.txt | grep -E "Model name|^CPU\(s\)|torch|GPU"
t "device_check"
timeout 90 python3 examples/torch/device_check.py > $OUT/device_check.txt 2>&1; echo "device_check rc=$?" >> $OUT/device_check.txt
tail -25 $OUT/device_check.txt
t "torch tests"
timeout 100 python3 -m pytest -q -p no:cacheprovider -x tests/test_torch.py tests/test_torch_parity.py > $OUT/torch_tests.txt 2>&1; echo "pytest rc=$?" >> $OUT/torch_tests.txt
tail -6 $OUT/torch_tests.txt
t "peers scaling"
timeout ${PEERS_S:-150} python3 bench/peers.py --sizes P,S3,PTB --threads 1,2,4 --dtypes float32 \
  --peers rnnfast,torch --modes fwd+BPTT,update --pin --quiet-wait 0 --wait-total 0 --no-memory \
  --rounds 2 --repeats 5 --budget 0.5 --ceiling-n 1024,2048 --out $OUT/peers > $OUT/peers.txt 2>&1; echo "peers rc=$?" >> $OUT/peers.txt
tail -60 $OUT/peers.txt
t "done"
