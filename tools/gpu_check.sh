#!/usr/bin/env bash
# The whole book on a GPU machine, CUDA visible: the package tests (GPU-marked ones included) and
# every chapter under nbval-lax (they must run, with the real kernels, without error).
# Usage (repository root): bash tools/gpu_check.sh [OUTDIR]   — logs and JUnit XML go to OUTDIR.
set -uo pipefail
out=${1:-/tmp/effsmall-gpu-check}
mkdir -p "$out"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" MPLBACKEND=Agg EFFSMALL_CACHE="${EFFSMALL_CACHE:-/tmp/effsmall-cache}"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())" | tee "$out/env.txt"
# the two halves share the GPU and run side by side (the machine has many cores)
t=$(date +%s)
python3 -m pytest -q -n ${TEST_JOBS:-6} -p no:cacheprovider tests --junitxml="$out/tests.xml" > "$out/tests.log" 2>&1 &
tests_pid=$!
python3 -m pytest -q -n ${NB_JOBS:-6} --dist loadfile -p no:cacheprovider --nbval-lax --nbval-current-env \
    --nbval-cell-timeout=600 --junitxml="$out/chapters.xml" ${CHAPTERS:-chapters} > "$out/chapters.log" 2>&1
echo "chapters rc=$? in $(( $(date +%s) - t )) s: $(tail -1 "$out/chapters.log")"
wait $tests_pid
echo "tests rc=$? in $(( $(date +%s) - t )) s: $(tail -1 "$out/tests.log")"
