#!/usr/bin/env bash
# The one prepared GPU session (H100, torch 2.11 + triton 3.6, no network): GPU tests, then the
# side-by-side benchmarks with the peers, whose wheels travel in .whl/ (see benchmarks/README.md).
# Run from the repository root:  bash benchmarks/gpu_session.sh   (results under $OUT or ./bench-out)
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=src:/tmp/site
else
  export PYTHONPATH=src
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
step() {  # step SECONDS NAME CMD...: one bounded step; a failure or hang cannot stop the rest
  local secs=$1 name=$2; shift 2
  echo "=== $name"; local t0=$SECONDS
  timeout -k 5 "$secs" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
  echo "=== $name: exit ${PIPESTATUS[0]} in $((SECONDS - t0)) s"
}
# Steps in order of what the issues need most, bounded so that all of them fit one 600 s call
# (about 570 s at worst; typical runs take far less). The kernel script goes first: it checks
# the cooperative plan (whose programs wait on each other) under its own timeouts, so a bug
# there cannot hang a later step. bench distill compiles torch.compile's form at two shapes
# (most of its time); its 70 s, and bench dpo's 40 s (no torch.compile), came out of the
# other steps' bounds. tests/gpu ends with the compiled (fullgraph, dynamic) and CUDA-graph
# capture tests (issue 17): a timeout there cuts only them; 10 s of ce-kernel's bound went to it.
step 90 ce-kernel python3 benchmarks/gpu_ce_kernel.py --budget 90
step 75 bench-ce python3 -m losskit bench ce --device cuda --out "$OUT"
step 115 lce-script python3 benchmarks/gpu_lce.py
step 100 gpu-tests python3 -m pytest tests/gpu -q --maxfail=10 -p no:cacheprovider
step 80 bench-lce python3 -m losskit bench lce --device cuda --out "$OUT"
step 70 bench-distill python3 -m losskit bench distill --device cuda --out "$OUT"
step 40 bench-dpo python3 -m losskit bench dpo --device cuda --impls gemms,torch,default,lean --out "$OUT"
