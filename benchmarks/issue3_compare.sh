#!/usr/bin/env bash
# The two method comparisons of benchmarks/seco.md and benchmarks/rsbyol.md, with eossl's own
# commands only (3 seeds, the same wall-clock budget per run, same backbone):
#  1. SeCo vs MoCo-TP vs MoCo v2, all pretrained on the real Landsat series (red, NIR, SWIR1 +
#     Fmask), probed on the Sentinel-2 scene's OSM patches through B04/B08/B11 stand-ins.
#  2. RS-BYOL with MS+SAR views vs MS-only views, pretrained on the 24 BigEarthNet v2 S2/S1
#     pairs, probed on the scene (linear + kNN) and band by band (the paper's per-band table).
# Usage: benchmarks/issue3_compare.sh [OUT=runs/issue3] [BUDGET=90s]
set -euo pipefail
cd "$(dirname "$0")/.."
E=${EOSSL:-.venv/bin/eossl}
OUT=${OUT:-runs/issue3}
BUDGET=${BUDGET:-90s}
mkdir -p "$OUT"

# 1. one benchmark folder: resumable, per-seed records, its own report
if [ -f "$OUT/seco-landsat/plan.json" ]; then resume=(--resume); else resume=(); fi
$E benchmark --methods seco,moco-tp,moco --data landsat --seeds 3 --budget "$BUDGET" \
    --evaluations probe --out "$OUT/seco-landsat" --no-progress "${resume[@]}"

# 2. RS-BYOL: the two recipes differ only in model.ms_only
ckpts=()
for S in 0 1 2; do
  for V in sar ms; do
    cfg=configs/rsbyol-cpu.yaml
    [ "$V" = ms ] && cfg=configs/rsbyol-ms-only-cpu.yaml
    run="$OUT/rsbyol-$V-s$S"
    if [ ! -f "$run/summary.json" ]; then
      rm -rf "$run"
      $E pretrain --config "$cfg" --max-time "$BUDGET" --seed "$S" --out "$run" --no-progress
    fi
    ckpts+=(--checkpoint "rsbyol-$V-s$S=$run/checkpoints/last.ckpt")
  done
done
[ -f "$OUT/rsbyol-probe/results.json" ] || \
  $E probe "${ckpts[@]}" --fractions 0.1,1 --seeds 0 --out "$OUT/rsbyol-probe"
[ -f "$OUT/rsbyol-perband/perband.json" ] || \
  $E probe --per-band "${ckpts[@]}" --seeds 0 --out "$OUT/rsbyol-perband"
echo "done: $OUT"
