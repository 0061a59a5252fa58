#!/usr/bin/env bash
# One lent-GPU window in one prepared command (benchmarks/gpu_session.py does the work; its docstring says what).
#   python benchmarks/gpu_session.py prepare     # here, first: fills the git-ignored .gpu/ (JPEG packs, decoder,
#                                                # pyautoattack, this checkout's commit)
#   bash benchmarks/gpu_session.sh               # on the device (tool `run`, carry [".gpu"], timeout_s 600):
#                                                # data, CUDA tests, throughput table, banked study -> $OUT/<window>.tgz
#   DRY_RUN=1 bash benchmarks/gpu_session.sh     # the same end to end on CPU with tiny sizes
# Extra arguments go to `gpu_session.py run` (e.g. --budget 540 --seeds 0,1,2 --stages data,bench).
set -u
cd "$(dirname "$0")/.."
exec "${PY:-python3}" benchmarks/gpu_session.py run "$@"
