#!/usr/bin/env bash
# Wheels of what detkit needs and a bare GPU image may lack (albumentations and its dependencies,
# pycocotools), for Python 3.12 on x86-64 Linux, into .whl/ (git-ignored, about 8 MiB), to carry
# to a machine that cannot reach a package index. docs/first_gpu.md says when and how.
# PY_VERSION picks another Python (default 3.12); the versions are those the test suite ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64
           manylinux1_x86_64)
WHEELS=(albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5
        annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
        stringzilla==5.3.2 simsimd==6.5.16 pycocotools==2.0.11)
mkdir -p .whl
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
    --implementation cp "${PLATFORMS[@]/#/--platform=}" -d .whl "${WHEELS[@]}"
du -sh .whl
