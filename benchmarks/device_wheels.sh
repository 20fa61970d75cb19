#!/usr/bin/env bash
# Fetch, on a machine with the package registry, the wheels the GPU machine's image lacks (Python 3.12, x86-64;
# its image holds torch, numpy, scipy, pandas, pyarrow, pluggy, seaborn, click, tqdm, safetensors, filelock,
# pytest, pytest-benchmark, hypothesis), into .whl/ at the repository root, ignored by git through
# .git/info/exclude. benchmarks/device_check.sh installs them there. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
# pydantic and its own needs, itables, and a setuptools new enough for this pyproject (license string, ext-modules)
for req in "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
           "itables==2.9.1" "setuptools==84.2.1"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d .whl "$req"
done
ls -la .whl
