#!/usr/bin/env bash
# The CUDA check, in about five minutes on one H200: the CUDA-marked tests (every path on --device cuda),
# then the speed table of bench/gpu_speed.py (gs steps/s at batch 100 and 1000 in fp32, bf16 and fp16, DVAE#
# with PCD 1000 x 40, dvae eval with S = 5000 on the test set) and its precision table (fp32, bf16, fp16 at
# batch 1000, three seeds each: test bound and steps/s; its seed-0 runs give the batch-1000 speed rows).
# Run from the repository root:
#   bash bench/gpu_check.sh [DATA_DIR]
set -euo pipefail
data=${1:-../shared/data}
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -q -n 0 -m cuda tests  # one process: the CUDA tests share one GPU
python bench/gpu_speed.py --data-dir "$data"
