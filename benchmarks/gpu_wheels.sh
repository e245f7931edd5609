#!/usr/bin/env bash
# What a lent GPU machine's image lacks, packed here for its Python 3.12 on x86-64 (docs/gpu.md):
#   .devcarry/site.tar.xz   the pinned stack (transformers < 4.58 for optimum-onnx, its tokenizers and hub client,
#                           peft, pydantic, Optimum's exporter, liger-kernel) and what `care train` needs besides
#                           (ZenML, Great Expectations, crepes, rouge-score, ...), installed into one tree
#   .devcarry/ort.tar.xz.*  onnxruntime-gpu 1.31.1 (CUDA 13), its CUDA provider stripped to sm_90 kernels
#                           (benchmarks/strip_fatbin.py), split into parts
# and lays them out as one folder per device call under the 64 MiB a call carries: .devcarry/call1 (the tree and
# the first ORT part) and .devcarry/call2 (the rest). Run here, in the repository root; .devcarry/ is ignored by git.
# benchmarks/gpu_e2e.sh unpacks them there.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
out=.devcarry
build=$out/build
rm -rf "$out" && mkdir -p "$build/wheels" "$out/call1" "$out/call2"
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: "${PLATFORMS[@]/#/--platform=}")
PINNED=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0
        peft==0.21.2 pydantic==2.12.5 pydantic_core==2.41.5 pydantic-settings==2.16.3 annotated-types==0.8.0
        typing-inspection==0.4.5 typing_extensions==4.16.0 liger-kernel==0.7.0)
CARE_TRAIN=(zenml==0.98.0 great_expectations==1.24.1 crepes==0.9.1 nltk==3.10.4 alembic==1.15.2 altair==6.3.0
            asgiref==3.10.0 cachetools==7.3.3 cffi==2.1.1 cryptography==50.0.2 defusedxml==0.7.1 docker==7.1.0
            jsonref==1.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 Mako==1.4.3 marshmallow==4.4.0
            mistune==3.4.0 opentelemetry-api==1.43.0 opentelemetry-instrumentation==0.64b0
            opentelemetry-instrumentation-logging==0.64b0 opentelemetry-sdk==1.43.0
            opentelemetry-semantic-conventions==0.64b0 orjson==3.13.0 platformdirs==4.14.9 pycparser==3.12
            pydot==4.0.1 PyJWT==2.15.1 python-dotenv==1.2.4 referencing==0.37.0 rpds-py==2026.9.1
            ruamel.yaml==0.19.1 SQLAlchemy==2.0.58 SQLAlchemy-Utils==0.43.0 sqlmodel==0.0.38 structlog==26.1.0
            greenlet==3.5.6 distro==1.9.0 GitPython==3.2.1 gitdb==4.0.12 smmap==5.0.3 tzlocal==5.4.5 PyMySQL==1.1.3
            passlib==1.7.4)
"$python" -m pip download -q --no-deps "${TARGET[@]}" -d "$build/wheels" "${PINNED[@]}" "${CARE_TRAIN[@]}"
"$python" -m pip wheel -q --no-deps -w "$build/wheels" rouge-score==0.1.2  # a pure-Python sdist
"$python" -m pip install -q --no-deps --no-compile "${TARGET[@]}" --target "$build/site" "$build"/wheels/*.whl
tar -C "$build/site" -cf - . | xz -9 -T2 > "$out/call1/site.tar.xz"

"$python" -m pip download -q --no-deps "${TARGET[@]}" -d "$build/ort-wheel" onnxruntime-gpu==1.31.1
"$python" -m pip install -q --no-deps --no-compile "${TARGET[@]}" --target "$build/ort" "$build"/ort-wheel/*.whl
cuda_provider=$build/ort/onnxruntime/capi/libonnxruntime_providers_cuda.so
"$python" benchmarks/strip_fatbin.py "$cuda_provider" "$cuda_provider.sm90" 90
mv "$cuda_provider.sm90" "$cuda_provider"
rm -f "$build/ort/onnxruntime/capi/libonnxruntime_providers_tensorrt.so"  # not used here
tar -C "$build/ort" -cf - . | xz -9 -T2 > "$build/ort.tar.xz"
# call1 carries the site tree plus the first part of ORT, call2 the rest; the working tree itself travels too
site_bytes=$(stat -c %s "$out/call1/site.tar.xz")
first=$(( 60 * 1024 * 1024 - site_bytes - ${TREE_BYTES:-2500000} ))
head -c "$first" "$build/ort.tar.xz" > "$out/call1/ort.tar.xz.part1"
tail -c +"$(( first + 1 ))" "$build/ort.tar.xz" > "$out/call2/ort.tar.xz.part2"
sha256sum "$build/ort.tar.xz" | cut -d' ' -f1 > "$out/call2/ort.tar.xz.sha256"
rm -rf "$build"
du -b "$out"/call1/* "$out"/call2/*
