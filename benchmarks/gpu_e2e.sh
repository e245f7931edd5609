#!/usr/bin/env bash
# `care train` and `care score` end to end on a lent GPU, in one command (docs/gpu.md): unpack what
# benchmarks/gpu_wheels.sh packed (the pinned stack and onnxruntime-gpu, when .devcarry/ is here), put the image's
# CUDA libraries on the loader's path for ONNX Runtime, then run benchmarks/gpu_e2e.py with these arguments.
#   bash benchmarks/gpu_e2e.sh --shape 1b --device cuda --out "$OUT/e2e_1b.json"     # on the GPU machine
#   bash benchmarks/gpu_e2e.sh --shape tiny --device cpu                            # here (the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
site=${CARE_DEVICE_SITE:-/tmp/care-site}
if [[ -f .devcarry/call1/site.tar.xz && ! -d "$site/zenml" ]]; then
  mkdir -p "$site"
  "$python" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    .devcarry/call1/site.tar.xz "$site"
fi
parts=${CARE_ORT_PARTS:-/tmp/care-ort-parts}
if [[ -f .devcarry/call2/ort.tar.xz.part2 && ! -f "$site/onnxruntime/capi/libonnxruntime_providers_cuda.so" ]]; then
  cat "$parts/ort.tar.xz.part1" .devcarry/call2/ort.tar.xz.part2 > /tmp/care-ort.tar.xz
  echo "$(cat .devcarry/call2/ort.tar.xz.sha256)  /tmp/care-ort.tar.xz" | sha256sum -c --quiet
  "$python" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    /tmp/care-ort.tar.xz "$site"
fi
if [[ -d "$site" ]]; then
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  nvidia_libs=$("$python" -c "import glob, os, site; print(':'.join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + '/nvidia/*/lib/*.so*')})))")
  export LD_LIBRARY_PATH="${nvidia_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
exec "$python" benchmarks/gpu_e2e.py "$@"
