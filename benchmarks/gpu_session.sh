#!/usr/bin/env bash
# What one lent-GPU session runs (see benchmarks/README.md, "A GPU session"): rebuild the in-house data
# from its JPEG packs, time the CUDA benchmarks, then run the shortened paper-scale study in the
# background and pack its results (result.json, logs; never checkpoints) into $OUT after each wait.
#   gpu_session.sh bench            # setup + attack/training throughput JSONs into $OUT
#   gpu_session.sh study            # start the study in the background (setsid), returns at once
#   gpu_session.sh wait SECONDS     # wait for the study (or SECONDS), then pack what exists into $OUT
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/.gpu/site:$PWD" FAIRARD_DATA=/tmp/fairard-data FAIRARD_RESULTS=/tmp/fairard-results
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" "$FAIRARD_RESULTS"
PY=${PY:-python3}
STUDY_LOG=/tmp/fairard-study.log

setup() {
  [ -f "$FAIRARD_DATA/cifar10/test.npz" ] || $PY .gpu/cifar_jpeg/cifar_jpeg_to_npz.py .gpu/cifar_jpeg "$FAIRARD_DATA/cifar10"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import torch, pyautoattack; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
}

case "${1:-}" in
  bench)
    setup
    $PY benchmarks/attack_throughput.py --devices cuda --cudnn-benchmark --json "$OUT/attack_cuda.json" 2>&1 | tee "$OUT/attack_cuda.log"
    $PY benchmarks/train_throughput.py --device cuda --cudnn-benchmark --n-per-class "${BENCH_N:-1000}" --repeats 2 \
        --json "$OUT/train_cuda.json" 2>&1 | tee "$OUT/train_cuda.log" ;;
  study)
    setup
    # The largest paper-faithful run one 30-minute lease holds: full CIFAR-10 (train and test), ResNet-18
    # students with the official batch, attack, optimiser and loss settings, every schedule shortened
    # proportionally (milestones scaled); a ResNet-18 TRADES teacher trained here (no internet for the
    # WRN-34-10 TRADES checkpoint). AutoAttack (standard) on 50 test images per class.
    setsid nohup $PY -m fairard study main_results --profile paper --quiet \
        --methods ard,fair-ard,rslad,fair-rslad --headline ard,rslad --seeds 0 \
        --overrides "${STUDY_OVERRIDES:-{\"teacher\": \"resnet18\", \"teacher_epochs\": 12, \"students\": [\"resnet18\"], \"student_epochs\": 8, \"aa_per_class\": 50}}" \
        >"$STUDY_LOG" 2>&1 < /dev/null &
    sleep 20; cat "$STUDY_LOG" ;;
  wait)
    end=$((SECONDS + ${2:-500}))
    while [ $SECONDS -lt $end ] && pgrep -f "fairard study" >/dev/null; do sleep 10; done
    tail -n 40 "$STUDY_LOG"; cp "$STUDY_LOG" "$OUT/study.log"
    for f in "$FAIRARD_RESULTS"/teachers/*/log.jsonl "$FAIRARD_RESULTS"/runs/*/log.jsonl; do
      [ -f "$f" ] && echo "$f: $(wc -l < "$f") epochs; last: $(tail -c 300 "$f")"; done
    tar czf "$OUT/results.tgz" -C "$FAIRARD_RESULTS" --exclude='*.pt' . && ls -la "$OUT" ;;
  *) echo "usage: $0 bench | study | wait SECONDS" >&2; exit 2 ;;
esac
