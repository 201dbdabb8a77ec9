#!/usr/bin/env bash
# A DVAE-family model on binarized MNIST with the original's structure and training setup (`--struct`:
# Adam 3e-3 with the piecewise decay over STEPS, L2 1e-4, KL warm-up over 30 %, batch 100, centred input),
# the RBM sampler given by CHAINS and SWEEPS (PCD), then the test NLL: log Z by AIS (1000 β's, 1024 chains)
# and the importance-weighted bound with S = 4000 hard samples on the first LIMIT test images, from the
# best-validation checkpoint. Finished steps are skipped, so the script can be rerun after an interruption
# (an unfinished run continues with --resume); a step that fails stops the script.
#   bash bench/dvae_mnist.sh DATA_DIR OUT_DIR MODEL STRUCT K STEPS [CHAINS] [SWEEPS] [LIMIT] [SEED]
set -euo pipefail
usage="usage: bench/dvae_mnist.sh DATA_DIR OUT_DIR MODEL STRUCT K STEPS [CHAINS] [SWEEPS] [LIMIT] [SEED]"
data=${1:?$usage}; out=${2:?$usage}; model=${3:?$usage}; struct=${4:?$usage}; k=${5:?$usage}
steps=${6:?$usage}; chains=${7:-1000}; sweeps=${8:-40}; limit=${9:-10000}; seed=${10:-0}
run="$out/$model-$struct-k$k-c$chains-s$sweeps-n$steps-seed$seed"
mkdir -p "$out"
if [ ! -f "$run.train.json" ]; then
  if [ -f "$run/last.safetensors" ]; then
    dvae train --resume "$run" --no-progress | tail -n 1 > "$run.train.tmp"
  else
    dvae train --model "$model" --struct "$struct" --k "$k" --steps "$steps" --chains "$chains" \
      --sweeps "$sweeps" --dataset binarized_mnist --data-dir "$data" --eval-every $(( steps / 10 )) \
      --checkpoint-every 2000 --seed "$seed" --out "$run" --no-progress | tail -n 1 > "$run.train.tmp"
  fi
  mv "$run.train.tmp" "$run.train.json"
fi
if [ ! -f "$run.eval.json" ]; then
  dvae eval "$run" --samples 4000 --split test --limit "$limit" --data-dir "$data" \
    | tail -n 1 > "$run.eval.tmp"
  mv "$run.eval.tmp" "$run.eval.json"
fi
cat "$run.eval.json"
