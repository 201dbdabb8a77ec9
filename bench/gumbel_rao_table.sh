#!/usr/bin/env bash
# Paulus, Maddison & Krause (2021), Table 2, batch-size-200 columns ("B" is the batch size), binary and
# 8-ary: each estimator trains a discrete VAE on binarized MNIST for the paper's 50,000 iterations with a
# one-sample ELBO, then `dvae eval` scores the best-validation checkpoint with the IW bound, S = 5000.
#   bash bench/gumbel_rao_table.sh DATA_DIR OUT_DIR [LIMIT] [COLUMN:ESTIMATOR ...]
# LIMIT: test images scored (`dvae eval --limit`, a fixed spread subset; 10000 = the whole test set).
# Default jobs, in this order: the paper's rows (gs st st-gs gumbel-rao) for bin, then for cat8, then
# reinmax rloo vimco disarm relax for bin, then for cat8.
#
# Our choices where the paper's main text is silent (its Appendix D.2 was not at hand): Adam at a
# constant 1e-3 (the paper: SGD with momentum, hyperparameters by a 20-run random search per estimator),
# 784-512-256 ReLU encoder and mirror decoder, 240 latent dimensions (bin: 240 Bernoulli; cat8: 30 x 8),
# constant temperature (no annealing; gs, st-gs 0.65 and gumbel-rao 0.35 = the paper's average
# temperatures of the best ST-GS and GR-MC1000 models; reinmax 1.0, its lowest allowed), GR with
# K = $GR_MC, default 10 (the paper's rows are K = 10, 100, 1000; on one CPU thread K = 100 ran at about
# 1 step/s, 50,000 steps in ~14 h), k = 2 for rloo, vimco and disarm (their smallest); validation with
# S = 10 every 5000 steps picks the checkpoint scored.
#
# Resumable, one process at a time: first every run trains 500 steps (its steps/s probe, `--steps 500`),
# then, run by run, each resumes to 50,000 and is scored (constant lr and temperature, so the split
# changes nothing but an extra validation at step 500); an interrupted run resumes from its checkpoint;
# finished runs (RUN.train.json) and scores (RUN.eval-S5000-LLIMIT.json) are skipped. SIGTERM to this
# script is passed to the running `dvae` process, which checkpoints and exits; rerun the same command to
# continue. Threads: OMP_NUM_THREADS (default 1: on a shared machine, 2 threads were slower).
# `dvae` is $DVAE (default: dvae), the summary's Python $PYTHON (default: python3).
# STEPS, PROBE and SAMPLES override 50000, 500 and 5000 (a smoke test: STEPS=6 PROBE=3 SAMPLES=2).
set -uo pipefail
usage="usage: bench/gumbel_rao_table.sh DATA_DIR OUT_DIR [LIMIT] [COLUMN:ESTIMATOR ...]"
data=${1:?$usage}
out=${2:?$usage}
limit=${3:-10000}
shift $(( $# < 3 ? $# : 3 ))
steps=${STEPS:-50000}
probe=${PROBE:-500}
samples=${SAMPLES:-5000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
dvae=(${DVAE:-dvae})

declare -A latent=([bin]=240x2 [cat8]=30x8)
declare -A flags=(
  [gs]="--temperature 0.65" [st-gs]="--temperature 0.65" [st]=""
  [gumbel-rao]="--temperature 0.35 --mc ${GR_MC:-10}" [reinmax]="--temperature 1.0"
  [rloo]="--k 2" [vimco]="--k 2" [disarm]="--k 2" [relax]=""
)
published="gs st st-gs gumbel-rao"
others="reinmax rloo vimco disarm relax"
if [ $# -gt 0 ]; then
  jobs=("$@")
else
  jobs=()
  for set in "$published" "$others"; do
    for col in bin cat8; do
      for est in $set; do jobs+=("$col:$est"); done
    done
  done
fi

child=
trap '[ -n "$child" ] && kill -TERM "$child" 2>/dev/null' TERM INT
run_step() {  # run a dvae command in the background so that SIGTERM reaches it; keep its last line
  local dest=$1; shift
  "${dvae[@]}" "$@" > "$dest.log" 2>&1 &
  child=$!
  wait "$child"; local rc=$?
  if [ "$rc" -gt 128 ] && kill -0 "$child" 2>/dev/null; then wait "$child"; rc=$?; fi  # we got SIGTERM
  child=
  if [ "$rc" -ne 0 ]; then echo "stopped: ${dvae[*]} $* (exit $rc; see $dest.log)" >&2; exit "$rc"; fi
  tail -n 1 "$dest.log" > "$dest.tmp" && mv "$dest.tmp" "$dest"
}

probe() {  # the first 500 steps of run $1 (column $2, estimator $3), unless it has them
  local run=$1 col=$2 est=$3
  [ -f "$run.train.json" ] || [ -f "$run.probe.json" ] && return 0
  if [ -f "$run/last.safetensors" ]; then
    run_step "$run.probe.json" train --resume "$run"
  else
    # shellcheck disable=SC2086
    run_step "$run.probe.json" train --estimator "$est" --latent "${latent[$col]}" ${flags[$est]} \
      --dataset binarized_mnist --data-dir "$data" --batch-size 200 --lr 1e-3 --lr-schedule constant \
      --anneal-rate 0 --hidden 512,256 --steps "$probe" --eval-every 5000 --seed 0 --out "$run" \
      --no-progress
  fi
  echo "$col $est probe: $(grep -o '"steps_per_s": [0-9.]*' "$run.probe.json")"
}

mkdir -p "$out"
# Phase 1: the first 500 steps of every run (or of those in $PROBE_JOBS), for steps/s and the total time.
for job in ${PROBE_JOBS:-${jobs[@]}}; do probe "$out/${job%%:*}-${job#*:}" "${job%%:*}" "${job#*:}"; done
# Phase 2: in the jobs' order, train each run to 50,000 steps, then score it.
for job in "${jobs[@]}"; do
  col=${job%%:*} est=${job#*:}
  run="$out/$col-$est"
  probe "$run" "$col" "$est"
  [ -f "$run.train.json" ] || run_step "$run.train.json" train --resume "$run" --steps "$steps" --no-progress
  ev="$run.eval-S$samples-L$limit.json"
  [ -f "$ev" ] || run_step "$ev" eval "$run" --samples "$samples" --split test --limit "$limit" \
    --data-dir "$data"
  echo "$col $est done: $(cut -c1-120 "$ev")"
done
"${PYTHON:-python3}" "$(dirname "$0")/gr_table.py" "$out"
