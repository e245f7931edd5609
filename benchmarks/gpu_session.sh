#!/usr/bin/env bash
# The two device calls of a lent GPU session (docs/gpu.md), each one command under the 10-minute limit:
#   bash benchmarks/gpu_session.sh call1   carry .devcarry/call1: the 8B fold step (variants, profile,
#                                          equivalence), 8B scoring, then the authors' recipe side by side
#   bash benchmarks/gpu_session.sh call2   carry .devcarry/call2, on the still-warm machine: `care train` and
#                                          `care score --device cuda` end to end at the Llama-3.2-1B shape
# Prepare here first: `bash benchmarks/gpu_wheels.sh`, and move .dvc-store/ aside for the calls (a call carries
# 64 MiB). Every figure lands in $OUT as JSON, with the logs, whatever stage stops early.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
out=${OUT:?set OUT to the folder that comes back}
site=${CARE_DEVICE_SITE:-/tmp/care-site}
python=${PYTHON:-python3}
case "${1:-}" in
  call1)
    mkdir -p "$site" /tmp/care-ort-parts
    cp .devcarry/call1/ort.tar.xz.part1 /tmp/care-ort-parts/ || exit 9
    "$python" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
      .devcarry/call1/site.tar.xz "$site" || exit 9
    export PYTHONPATH="$site:$PWD"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
    timeout 420 "$python" benchmarks/gpu_pipeline.py --shape 8b --work /tmp/w8b --out "$out/gpu_8b.json" \
      --stages init,train,profile,equivalence,score --profile-out "$out/profile_8b.txt" --deadline-s 360 \
      > "$out/gpu_8b.log" 2>&1
    echo "gpu_pipeline rc=$?"
    timeout 130 "$python" benchmarks/peer_recipe.py --shape 8b --base /tmp/w8b/base --out "$out/peer_8b.json" \
      --deadline-s 100 > "$out/peer_8b.log" 2>&1
    echo "peer_recipe rc=$?"
    tail -n 3 "$out/gpu_8b.log" "$out/peer_8b.log"
    ;;
  call2)
    test -d "$site/zenml" || { echo "call1's unpacked stack is gone: the machine was not warm" >&2; exit 9; }
    timeout 560 bash benchmarks/gpu_e2e.sh --shape 1b --device cuda --work /tmp/e2e --out "$out/e2e_1b.json" \
      --timeout-s 480 > "$out/e2e_1b.log" 2>&1
    echo "gpu_e2e rc=$?"
    tail -n 5 "$out/e2e_1b.log"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh call1|call2 (docs/gpu.md)" >&2
    exit 2
    ;;
esac
