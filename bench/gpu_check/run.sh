#!/usr/bin/env bash
# The GPU check (see the other files here): on a machine with an NVIDIA GPU,
#   GPU_CHECK_INSTALL=1 OUT=/some/dir bench/gpu_check/run.sh   (WORKTREE=1: also the tree)
# GPU_CHECK_DRY=1 GPU_CHECK_FAKE=1: plumbing test on a CPU box (no NVML, no torch).
# GPU_CHECK_PACKING_S=420: also packing_gpu.py (grasps/s at 1-4 rounds at once, and what
# max_rounds_per_gpu = "auto" chose), in that many seconds.
# Tests the committed code (.whl/head.tar, made by `git archive HEAD ...`) when that
# snapshot exists, else the checkout itself. Everything lands under $OUT.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

# -- dependencies the image lacks (structlog; anyio only if older than 4.4) ---------------
# With GPU_CHECK_INSTALL=1 (only on a throwaway machine such as the lent device) into the
# interpreter's own site-packages (a test starts a child with PYTHONPATH=ROOT alone, so
# /tmp/site would be lost there); otherwise, never touching the interpreter, into /tmp/site.
pip_in() {
  if [ "${GPU_CHECK_INSTALL:-0}" = 1 ] && python3 -m pip install -q --no-index --no-deps \
      --no-compile --no-cache-dir --upgrade "$@"; then
    return 0
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$@"
}
if ls "$REPO"/.whl/structlog-*.whl >/dev/null 2>&1; then
  python3 -c "import structlog" 2>/dev/null || pip_in "$REPO"/.whl/structlog-*.whl || exit 1
  if ! python3 -c "import importlib.metadata as m,sys; v=tuple(int(x) for x in m.version('anyio').split('.')[:2]); sys.exit(v<(4,4))"; then
    pip_in "$REPO"/.whl/anyio-*.whl || exit 1
  fi
fi
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}

{
  nvidia-smi; nvidia-smi -L
  nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,memory.free,utilization.gpu --format=csv
  uname -a; id; ls -l /proc/self/ns/pid
  python3 - <<'PY'
import importlib.metadata as m, sys
print(sys.version)
for p in ("torch", "anyio", "structlog", "nvidia-ml-py", "numpy", "scipy", "pytest", "hypothesis"):
    try: print(p, m.version(p))
    except Exception as e: print(p, "MISSING", e)
import torch; print("torch cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.device_count())
PY
} > "$OUT/env.txt" 2>&1
el "env:"; grep -E "Driver Version|NVIDIA H|^torch|^anyio|^structlog|^nvidia-ml-py" "$OUT/env.txt" | head -8

# -- which source --------------------------------------------------------------------
if [ -f "$REPO/.whl/head.tar" ]; then
  SRC=/tmp/gpu_check_head; rm -rf "$SRC"; mkdir -p "$SRC/bench"
  tar -xf "$REPO/.whl/head.tar" -C "$SRC" && cp -r "$HERE" "$SRC/bench/gpu_check"
else
  SRC=$REPO
fi
BASE_PP=$PYTHONPATH

run_suite() {  # $1 source root, $2 out dir, $3 "probe" to run parts 1-3 too, $4 budget s
  local root=$1 out=$2; mkdir -p "$out"
  # The project is not pip-installed there: rounds the tests start (cwd = a temp folder,
  # `python -m supervisor.emulator`) must find it through PYTHONPATH.
  local -x PYTHONPATH=$root:$BASE_PP
  ( cd "$root" && el "pytest test_gpus.py test_samples.py test_health.py -k 'not slow' ($root)" &&
    timeout 100 python3 -m pytest -v -p no:cacheprovider -rs tests/test_gpus.py tests/test_samples.py \
      tests/test_health.py -k "not slow" > "$out/pytest.txt" 2>&1
    echo "pytest rc=$?"; grep -E "real_nvml|FAILED|ERROR|SKIPPED" "$out/pytest.txt" | cut -c1-250 | head -12
    tail -1 "$out/pytest.txt" )
  if [ "$3" = probe ]; then
    ( cd "$root" && el "probe_check (parts 1-3)" &&
      timeout 75 python3 bench/gpu_check/probe_check.py "$out" > "$out/probe_check.txt" 2>&1
      echo "probe_check rc=$?"; grep -E "FAILED|Error" "$out/probe_check.txt" | head -5 )
  fi
  ( cd "$root" && el "experiments (part 4)" &&
    GPU_CHECK_EXP_BUDGET_S=$4 GPU_CHECK_WORK=/tmp/gpu_check_work_$(basename "$out") \
      timeout $(( $4 + 40 )) python3 bench/gpu_check/experiments.py "$out" ${GPU_CHECK_DRY:+--dry} > "$out/experiments.txt" 2>&1
    echo "experiments rc=$?"; grep -E "^EXP|Traceback|Error" "$out/experiments.txt" | cut -c1-300 | head -12 )
}

run_suite "$SRC" "$OUT/head" "${GPU_CHECK_PROBE:-probe}" ${GPU_CHECK_EXP_S:-150}
if [ "${WORKTREE:-0}" = 1 ] && [ "$SRC" != "$REPO" ]; then
  run_suite "$REPO" "$OUT/tree" noprobe 100
fi
if [ -n "${GPU_CHECK_PACKING_S:-}" ]; then  # packing on the card (issue 16): a table
  ( cd "$SRC" && el "packing_gpu.py (${GPU_CHECK_PACKING_S} s)" &&
    PYTHONPATH=$SRC:$BASE_PP timeout $(( GPU_CHECK_PACKING_S + 120 )) python3 \
      bench/gpu_check/packing_gpu.py "$OUT" --budget-s "$GPU_CHECK_PACKING_S" \
      ${GPU_CHECK_DRY:+--dry} > "$OUT/packing_gpu.txt" 2>&1
    echo "packing_gpu rc=$?"; grep -E "^\|" "$OUT/packing_gpu.txt" )
fi
el "summary"
python3 "$HERE/summarize.py" "$OUT" 2>&1 | tee "$OUT/summary.txt"
el "done"
