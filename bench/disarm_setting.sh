#!/usr/bin/env bash
# The DisARM paper's single-stochastic-layer setting (Dong, Mnih & Tucker 2020; presets dong2020-linear and
# dong2020-nonlinear: 200 binary latents, learned Bernoulli prior, batch 50, Adam 1e-4, centred input) on the
# fixed binarization of MNIST, one seed, every estimator for STEPS steps (the paper: 1e6), then bounds of the
# last checkpoint: test with S = 100 (the paper's; all 10,000 images), the training set's 1-sample ELBO (the
# paper's training metric; all 50,000), and test with S = 1000 (on $LIMIT1000 images spread over the test
# set, default 2000, to fit a CPU budget; LIMIT1000= scores all).
# The score-function estimators evaluate the paper's f, the one-sample ELBO with its KL sampled (--kl
# sampled); the relaxations take the analytic KL (their only option here). k: the paper's one antithetic pair
# (arm, disarm: 2 evaluations of f), 2 samples for rloo, 1 for the others. RELAX: its control network of 137
# units and λ from 0.1, as in the paper's code (estimator options from a config file written into OUT_DIR).
# Resumable: a run stopped (SIGTERM) continues from its checkpoint; a finished run is skipped, as is an
# existing eval file; a larger STEPS later extends the same runs (`dvae train --resume RUN --steps STEPS`)
# and scores them again (eval files are named by step).
#   bash bench/disarm_setting.sh DATA_DIR OUT_DIR STEPS [MODEL ...] [-- ESTIMATOR ...]
#   MODEL: linear, nonlinear (default both); ESTIMATOR default: disarm arm rloo reinforce relax gs st-gs reinmax
set -euo pipefail
usage="usage: bench/disarm_setting.sh DATA_DIR OUT_DIR STEPS [MODEL ...] [-- ESTIMATOR ...]"
data=${1:?$usage}
out=${2:?$usage}
steps=${3:?$usage}
shift 3
models=() estimators=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do models+=("$1"); shift; done
[ $# -gt 0 ] && shift
estimators=("$@")
[ ${#models[@]} -gt 0 ] || models=(linear nonlinear)
[ ${#estimators[@]} -gt 0 ] || estimators=(disarm arm rloo reinforce relax gs st-gs reinmax)
dvae=${DVAE:-dvae}  # e.g. DVAE="python -m discrete_vae.cli"
mkdir -p "$out"
printf 'estimator_options:\n  temperature: 0.1\n  cv_hidden: [137]\n' > "$out/relax-options.yaml"
declare -A extra=(
  [disarm]="--k 2 --kl sampled" [arm]="--k 2 --kl sampled" [rloo]="--k 2 --kl sampled"
  [reinforce]="--kl sampled" [relax]="--kl sampled --config $out/relax-options.yaml"
)

score() {  # score RUN SPLIT S [LIMIT]: the last checkpoint's bound, once per step count
  local ev="$1.eval-$2-S$3-$steps.json"
  if [ ! -f "$ev" ]; then
    $dvae eval "$1" --checkpoint last --split "$2" --samples "$3" ${4:+--limit "$4"} --data-dir "$data" \
      --no-progress | tail -n 1 > "$ev.tmp"
    mv "$ev.tmp" "$ev"
  fi
}

# pass 1, in priority order (estimators first): train, the paper's S = 100 test bound, the training ELBO
for est in "${estimators[@]}"; do
  for model in "${models[@]}"; do
    run="$out/$model-$est"
    done_file="$run.train-$steps.json"
    if [ ! -f "$done_file" ]; then
      if [ -f "$run/last.safetensors" ]; then  # interrupted, or shorter: continue to STEPS
        $dvae train --resume "$run" --steps "$steps" --no-progress | tail -n 1 > "$run.train.tmp"
      else
        # shellcheck disable=SC2086
        $dvae train --preset "dong2020-$model" --estimator "$est" ${extra[$est]:-} --data-dir "$data" \
          --steps "$steps" --seed 0 --out "$run" --no-progress | tail -n 1 > "$run.train.tmp"
      fi
      mv "$run.train.tmp" "$done_file"  # only a finished training leaves its .json
    fi
    score "$run" test 100
    score "$run" train 1
  done
done
# pass 2: S = 1000 on LIMIT1000 test images spread over the test set (default 2000; "" = all 10,000)
for est in "${estimators[@]}"; do
  for model in "${models[@]}"; do
    score "$out/$model-$est" test 1000 "${LIMIT1000-2000}"
  done
done
python bench/summarize_disarm.py "$out" "$steps"
