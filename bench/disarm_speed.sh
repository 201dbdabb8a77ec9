#!/usr/bin/env bash
# Training steps/s of each estimator in the DisARM setting (presets dong2020-linear, dong2020-nonlinear; the
# flags of bench/disarm_setting.sh), STEPS (default 300) steps each, one run at a time; OMP_NUM_THREADS
# as set by the caller. Prints "model estimator steps/s hours-for-1e6-steps".
#   OMP_NUM_THREADS=1 bash bench/disarm_speed.sh DATA_DIR [STEPS]
set -euo pipefail
data=${1:?usage: bench/disarm_speed.sh DATA_DIR [STEPS]}
steps=${2:-300}
dvae=${DVAE:-dvae}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf 'estimator_options:\n  temperature: 0.1\n  cv_hidden: [137]\n' > "$tmp/relax-options.yaml"
declare -A extra=(
  [disarm]="--k 2 --kl sampled" [arm]="--k 2 --kl sampled" [rloo]="--k 2 --kl sampled"
  [reinforce]="--kl sampled" [relax]="--kl sampled --config $tmp/relax-options.yaml"
)
for model in linear nonlinear; do
  for est in disarm arm rloo reinforce relax gs st-gs reinmax; do
    # shellcheck disable=SC2086
    rate=$($dvae train --preset "dong2020-$model" --estimator "$est" ${extra[$est]:-} --data-dir "$data" \
      --steps "$steps" --val-samples 1 --out "$tmp/$model-$est" --no-progress | tail -n 1 \
      | python -c "import json, sys; print(json.load(sys.stdin)['steps_per_s'])")
    python -c "print('$model', '$est', $rate, round(1e6 / $rate / 3600, 1))"
  done
done
