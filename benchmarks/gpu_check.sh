#!/usr/bin/env bash
# GPU check (issue 17): the fusion-loss training step vs plain SFT at ~1B parameters, seq 2048, bf16 (step time,
# peak memory ratio, MFU of both), and one DeepSpeed ZeRO-2 step of fusepipe's real training loop
# (src/fusepipe/train/loop.py) on a tiny model. benchmarks/gpu_check.py does the work; see its docstring.
#
#   bash benchmarks/gpu_check.sh [--json FILE] [--batch 4] [--steps 10]   # on one GPU: ~3 min on an H100, <= 8 min
#   bash benchmarks/gpu_check.sh --smoke                                  # CPU, toy size, seconds (CI runs this)
#
# The device image has PyTorch, transformers, accelerate, numba, pyarrow, tokenizers, safetensors, pyyaml, click,
# rich, ninja, psutil, py-cpuinfo, msgpack and einops (Python 3.12), but no pydantic (fusepipe.config) and no
# DeepSpeed (fusepipe.train.loop). They travel as wheels in .whl/ (gitignored), made once here, in the repo root:
#
#   echo /.whl/ >> .git/info/exclude   # (already in .gitignore)
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
#       typing-extensions==4.16.0 hjson==3.1.0
#   DS_BUILD_OPS=0 pip wheel --no-deps --no-build-isolation -w .whl deepspeed==0.19.8   # PyPI has only its sdist;
#                                                        # with no ops prebuilt the wheel is pure Python (py3-none-any)
#
# (7 wheels, ~5 MB: DeepSpeed's other needs, ninja, psutil, py-cpuinfo, msgpack, einops, packaging, tqdm, numpy,
# are in the image.) Then, with the device tool: run(command="bash benchmarks/gpu_check.sh --json $OUT/gpu_check.json",
# carry=[".whl"], timeout_s=540). Nothing is downloaded there: the Llama is built from a config, the data is random.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
smoke=0
for arg in "$@"; do [ "$arg" = "--smoke" ] && smoke=1; done
if [ "$smoke" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site \
    .whl/*.whl
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
