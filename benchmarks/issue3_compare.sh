#!/usr/bin/env bash
# The two method comparisons of benchmarks/seco.md and benchmarks/rsbyol.md, with eossl's own
# commands only (3 seeds, the same wall-clock budget per run, same backbone, same recipes):
#  1. SeCo vs MoCo-TP vs MoCo v2 pretrained on the real Landsat series (red, NIR, SWIR1 +
#     Fmask), probed on the Sentinel-2 scene's OSM patches through B04/B08/B11 stand-ins,
#     beside MoCo v2 pretrained on the S2 scene itself.
#  2. RS-BYOL with MS+SAR views vs MS-only views, pretrained on the 24 BigEarthNet v2 S2/S1
#     pairs, probed on the scene (linear + kNN) and band by band (the paper's per-band table).
# The full benchmark (`eossl benchmark --out $BENCH`, 2-minute budget, seeds 0-2) already holds
# seco, moco-tp, moco (S2 scene) and rsbyol (MS+SAR) runs; this script adds the two arms it
# lacks with the same recipe and budget (moco on Landsat, RS-BYOL MS-only), then probes every
# arm in one command each, so all rows share one probe protocol.
# The budget of each added run: BUDGET (wall clock, default 120s as in the benchmark), or with
# MATCH_STEPS=1 the step count its counterpart reached in the benchmark (moco-landsat: moco-tp's
# seed, whose step costs exactly as much; rsbyol-ms: rsbyol's seed), for a machine that is busy.
# Usage: BENCH=runs/benchmark-full OUT=runs/issue3 [BUDGET=120s] [MATCH_STEPS=1] \
#        benchmarks/issue3_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
E=${EOSSL:-.venv/bin/eossl}
BENCH=${BENCH:-runs/benchmark-full}
OUT=${OUT:-runs/issue3}
BUDGET=${BUDGET:-120s}
mkdir -p "$OUT"
for m in seco moco-tp moco rsbyol; do
  [ -f "$BENCH/runs/$m/seed0/checkpoints/last.ckpt" ] || {
    echo "$BENCH has no $m runs: run 'eossl benchmark --out $BENCH' first" >&2; exit 2; }
done

budget() {  # METHOD SEED: the pretrain options of the budget
  if [ "${MATCH_STEPS:-0}" = 1 ]; then
    steps=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['runs'][sys.argv[2]]['steps'])" \
            "$BENCH/status.json" "$1/seed$2")
    echo "--max-steps $steps --max-time 60m"
  else
    echo "--max-time $BUDGET"
  fi
}
pretrain() {  # NAME CONFIG SEED COUNTERPART [extra args]: skipped when the run finished earlier
  local run="$OUT/$1-s$3"
  if [ ! -f "$run/summary.json" ]; then
    rm -rf "$run"
    # shellcheck disable=SC2046
    $E pretrain --config "$2" $(budget "$4" "$3") --seed "$3" --out "$run" --no-progress "${@:5}"
  fi
}
landsat=() rsbyol=()
for S in 0 1 2; do
  pretrain moco-landsat moco-cpu "$S" moco-tp --data landsat
  pretrain rsbyol-ms rsbyol-ms-only-cpu "$S" rsbyol
  landsat+=(--checkpoint "seco-s$S=$BENCH/runs/seco/seed$S/checkpoints/last.ckpt"
            --checkpoint "moco-tp-s$S=$BENCH/runs/moco-tp/seed$S/checkpoints/last.ckpt"
            --checkpoint "moco-landsat-s$S=$OUT/moco-landsat-s$S/checkpoints/last.ckpt"
            --checkpoint "moco-s2-s$S=$BENCH/runs/moco/seed$S/checkpoints/last.ckpt")
  rsbyol+=(--checkpoint "rsbyol-sar-s$S=$BENCH/runs/rsbyol/seed$S/checkpoints/last.ckpt"
           --checkpoint "rsbyol-ms-s$S=$OUT/rsbyol-ms-s$S/checkpoints/last.ckpt")
done
[ -f "$OUT/landsat-probe/results.json" ] || \
  $E probe "${landsat[@]}" --fractions 0.1,1 --seeds 0 --out "$OUT/landsat-probe"
[ -f "$OUT/rsbyol-probe/results.json" ] || \
  $E probe "${rsbyol[@]}" --fractions 0.1,1 --seeds 0 --out "$OUT/rsbyol-probe"
[ -f "$OUT/rsbyol-perband/perband.json" ] || \
  $E probe --per-band "${rsbyol[@]}" --seeds 0 --out "$OUT/rsbyol-perband"
echo "done: $OUT"
