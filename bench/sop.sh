#!/usr/bin/env bash
# Structured output prediction on binarized MNIST (Maddison et al. 2017, sec. 5; Potapczynski et al.
# 2020): the lower half of each image from its upper half with 392V-240H-240H-392V (double_linear),
# trained with m = 1 and m = 50 relaxed samples for gs, igr-i and igr-planar at temperature 1.0
# (Adam 1e-3, decoupled weight decay 1e-3, batch 100), the best-validation model scored on the
# test set with L^SP_100 (100 hard binary samples). One JSON line per run: model, m, nll.
#   bash bench/sop.sh DATA_DIR OUT_DIR [STEPS]
set -euo pipefail
data=${1:?usage: bench/sop.sh DATA_DIR OUT_DIR [STEPS]}
out=${2:?usage: bench/sop.sh DATA_DIR OUT_DIR [STEPS]}
steps=${3:-50000}
eval_every=$(( steps < 5000 ? steps : 5000 ))
mkdir -p "$out"
for m in 1 50; do
  for model in gs igr-i igr-planar; do
    run="$out/$model-m$m"
    if [ ! -f "$run.train.json" ]; then  # an interrupted run continues from its last checkpoint
      if [ -f "$run/last.safetensors" ]; then
        dvae sop train --resume "$run" | tail -n 1 > "$run.train.tmp"
      else
        dvae sop train --model "$model" --arch double_linear --k "$m" --temperature 1.0 \
          --dataset binarized_mnist --data-dir "$data" --steps "$steps" --eval-every "$eval_every" \
          --seed 0 --out "$run" | tail -n 1 > "$run.train.tmp"
      fi
      mv "$run.train.tmp" "$run.train.json"
    fi
    if [ ! -f "$run.eval.json" ]; then
      dvae sop eval "$run" --samples 100 --split test --data-dir "$data" | tail -n 1 > "$run.eval.tmp"
      mv "$run.eval.tmp" "$run.eval.json"
    fi
    python -c 'import json, sys; e = json.load(open(sys.argv[1]))
print(json.dumps({"model": sys.argv[2], "m": int(sys.argv[3]), "nll": e["nll"],
                  "relaxed_nll": e["relaxed_nll"], "step": e["step"], "run_dir": sys.argv[4]}))' \
      "$run.eval.json" "$model" "$m" "$run"
  done
done
