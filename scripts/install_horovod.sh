#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (PyTorch + Gloo, CPU) into the active Python environment.
# Horovod is served only as a source distribution; on torch 2.x it needs C++17 and a cmake
# that accepts its old cmake_minimum_required. Takes about 90 s on 2 cores.
set -euo pipefail
python_bin=${PYTHON:-$(command -v python || command -v python3)}
if "$python_bin" -c "import horovod.torch" >/dev/null 2>&1; then
  echo "Horovod is already installed"; exit 0
fi
"$python_bin" -m pip install -q cmake numpy cloudpickle psutil pyyaml packaging wheel setuptools
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python_bin" -m pip download -q --no-deps --no-binary :all: horovod==0.28.1 -d "$work"
tar -xzf "$work"/horovod-0.28.1.tar.gz -C "$work"
src="$work/horovod-0.28.1"
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' \
  "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
export CMAKE_POLICY_VERSION_MINIMUM=3.5 HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
  HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=GLOO \
  MAKEFLAGS=${MAKEFLAGS:--j2} PATH="$(dirname "$python_bin"):$PATH"
"$python_bin" -m pip install -q --no-build-isolation "$src"
"$python_bin" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else 'ok')"
