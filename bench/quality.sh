#!/usr/bin/env bash
# Quality of the toolkit's defaults: GS (and ST-GS) with 20x10 categorical latents on binarized
# MNIST, three seeds each, scored with the importance-weighted bound, S = 5000, on the test set.
#   bash bench/quality.sh ../shared/data runs/quality [gs st-gs]
set -euo pipefail
data=${1:?usage: bench/quality.sh DATA_DIR OUT_DIR [MODEL ...]}
out=${2:?usage: bench/quality.sh DATA_DIR OUT_DIR [MODEL ...]}
shift 2
models=${*:-gs}
mkdir -p "$out"
for model in $models; do
  for seed in 0 1 2; do
    run="$out/$model-s$seed"
    if [ ! -f "$run.train.json" ]; then  # an interrupted run continues from its last checkpoint
      if [ -f "$run/last.safetensors" ]; then
        dvae train --resume "$run" --no-progress | tail -n 1 > "$run.train.tmp"
      else
        dvae train --model "$model" --latent 20x10 --dataset binarized_mnist --data-dir "$data" \
          --seed "$seed" --out "$run" --no-progress | tail -n 1 > "$run.train.tmp"
      fi
      mv "$run.train.tmp" "$run.train.json"
    fi
    if [ ! -f "$run.eval.json" ]; then
      dvae eval "$run" --samples 5000 --split test --data-dir "$data" | tail -n 1 > "$run.eval.tmp"
      mv "$run.eval.tmp" "$run.eval.json"
    fi
  done
done
python bench/summarize.py "$out"
