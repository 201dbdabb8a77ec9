#!/usr/bin/env bash
# GS, ExpGS and the IGR relaxations side by side on binarized MNIST: 20 variables x 10 classes, the
# nonlinear (784-512-256) architecture, the same step budget, three seeds, each method at the
# IGR repository's cross-validated constant temperature (GS 1.0, ExpGS 1.0 with prior temperature
# 0.5, IGR-I 1.0, IGR-SB 0.15, IGR-Planar 0.85). Scored with the importance-weighted bound of the
# discrete model (S = 5000) on LIMIT test images spread over the test set (`dvae eval --limit`).
#   bash bench/igr_compare.sh DATA_DIR OUT_DIR [STEPS] [LIMIT] [MODEL ...]
set -euo pipefail
data=${1:?usage: bench/igr_compare.sh DATA_DIR OUT_DIR [STEPS] [LIMIT] [MODEL ...]}
out=${2:?usage: bench/igr_compare.sh DATA_DIR OUT_DIR [STEPS] [LIMIT] [MODEL ...]}
steps=${3:-10000}
limit=${4:-10000}
shift $(( $# < 4 ? $# : 4 ))
models=${*:-gs expgs igr-i igr-sb igr-planar}
declare -A tau=([gs]=1.0 [expgs]=1.0 [igr-i]=1.0 [igr-sb]=0.15 [igr-sb-finite]=0.15 [igr-planar]=0.85)
mkdir -p "$out"
for seed in 0 1 2; do
  for model in $models; do
    run="$out/$model-s$seed"
    if [ ! -f "$run.train.json" ]; then
      dvae train --model "$model" --latent 20x10 --dataset binarized_mnist --data-dir "$data" \
        --temperature "${tau[$model]}" --anneal-rate 0 --steps "$steps" --eval-every "$steps" \
        --seed "$seed" --out "$run" --no-progress | tail -n 1 > "$run.train.tmp"
      mv "$run.train.tmp" "$run.train.json"  # only a finished step leaves its .json
    fi
    if [ ! -f "$run.eval.json" ]; then
      dvae eval "$run" --samples 5000 --split test --limit "$limit" --data-dir "$data" \
        | tail -n 1 > "$run.eval.tmp"
      mv "$run.eval.tmp" "$run.eval.json"
    fi
  done
done
python bench/summarize.py "$out"
