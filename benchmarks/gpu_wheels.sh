#!/usr/bin/env bash
# The wheels a lent GPU machine's image lacks for benchmarks/gpu_pipeline.py, for its Python 3.12 on x86-64:
# the pinned stack (transformers < 4.58 for optimum-onnx, the image has 5.x; its tokenizers and hub client),
# Optimum's ONNX exporter, the pinned peft, and pydantic for care.params. Run here, in the repository root;
# the wheels land in .whl/ (ignored by git: .gitignore) and travel with the device call's `carry: [".whl"]`.
# docs/gpu.md has the command that installs them there and runs the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2 optimum==2.1.0 optimum-onnx==0.1.0
          peft==0.21.2 pydantic==2.12.5 pydantic_core==2.41.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing_extensions==4.16.0)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d .whl "${PACKAGES[@]}" "$@"
du -sh .whl
