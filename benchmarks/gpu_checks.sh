#!/usr/bin/env bash
# GPU checks in one go: the CUDA agreement tests, then the GPU benchmarks.
#
#   benchmarks/gpu_checks.sh OUT_DIR
#
# Runs from the repository root with the machine's own python3 (torch with CUDA, PyG); the
# package is taken from src/ (no install needed). Writes to OUT_DIR:
#   gpu_tests.log               pytest on tests/test_cuda.py and the CUDA tests of test_symmetry
#   bench_zoo_h200.json         zoo training, vectorised vs one model at a time
#   bench_embed_h200_bf16.json  embedding throughput, eager bf16
#   bench_embed_h200_bf16_compile.json  the same, torch.compile
# Each step has its own time limit, so one failure does not stop the others.
set -u
OUT=${1:?usage: benchmarks/gpu_checks.sh OUT_DIR}
mkdir -p "$OUT"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, torch_geometric; print('torch', torch.__version__, 'pyg', torch_geometric.__version__)"

timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    "tests/test_symmetry.py::test_transforms_on_cuda" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15

timeout 150 python3 benchmarks/bench_zoo.py --device cuda --models 8192 32768 --epochs 3 \
    --reference-models 1 --cases digits:cnn2d-c8-d3-relu digits:mlp-w32-d2-relu \
    --out "$OUT/bench_zoo_h200.json"

timeout 60 python3 benchmarks/bench_embed.py --device cuda --dtype bf16 --batch-size 65536 \
    --only 35n --skip-end-to-end --out "$OUT/bench_embed_h200_bf16.json"

timeout 120 python3 benchmarks/bench_embed.py --device cuda --dtype bf16 --batch-size 65536 \
    --only 35n --skip-end-to-end --compile --out "$OUT/bench_embed_h200_bf16_compile.json"
