#!/usr/bin/env bash
# Train both default models at once on one lent GPU (the device tool's `run`):
#
#   run(command="bash scripts/device_train.sh", carry=[".data/device"], timeout_s=600)
#
# .data/device comes from scripts/prepare_device_data.py (about 58 MiB). Both trainings
# share the GPU for MINUTES minutes each (default 8.4, inside the 10-minute command limit)
# and leave at most 8 files under $OUT: lm/ (4 shards), embed/ (2 shards) and two logs.
# Then, here: python scripts/export_models.py --lm-run <files_at>/lm --embed-run <files_at>/embed
set -u
MINUTES=${MINUTES:-8.4}
OUT=${OUT:-runs/device}
export PYTHONPATH=$PWD/.data/device/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=true
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
echo "package snapshot $(cat .data/device/src/COMMIT)"
mkdir -p "$OUT/lm" "$OUT/embed"
python3 scripts/train_lm.py --bundle .data/device --out "$OUT/lm" --minutes "$MINUTES" \
    --memory-fraction 0.5 > "$OUT/lm.log" 2>&1 &
LM=$!
python3 scripts/distill_embedder.py --bundle .data/device --out "$OUT/embed" \
    --minutes "$MINUTES" --memory-fraction 0.4 > "$OUT/embed.log" 2>&1 &
EMBED=$!
(sleep 240; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader) &
wait $LM $EMBED
for log in "$OUT/lm.log" "$OUT/embed.log"; do
    grep -v '^\s' "$log" | grep -v '"step"' | tail -n 12 | cut -c1-400
    grep '"step"' "$log" | tail -n 3 | cut -c1-600
done
ls -la "$OUT"/*
