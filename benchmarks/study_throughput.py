"""Study throughput of one device: Fair-ARD runs trained 1, 2, 4, 8 at a time, side by side in one invocation.

A study is many independent runs; a batch-128 run leaves most of a GPU idle (launch-bound), so several
runs sharing one device (``python -m fairard run STUDY --jobs-per-gpu K``) can finish more runs per hour.
This measures it: for each concurrency K, K processes (as the local executor starts them) each build a
Fair-ARD Trainer (student, frozen teacher with random weights: throughput does not depend on them, data
on the device), wait at a barrier, then train ``--epochs`` epochs; the figure is run-epochs per hour,
K * epochs / (wall time from the barrier to the last process's end), and its ratio to K = 1.  Process
start-up and data loading are outside the timing.  On a CPU the cores are split between the K processes
(threads = cores // K), so little gain is expected there (on 2 cores, none): the figure that matters is
a GPU's (goal: >= 4x the one-at-a-time throughput on one H200 for batch-128 ResNet-18 Fair-ARD runs).

    FAIRARD_DATA=/work/shared/data .venv/bin/python benchmarks/study_throughput.py --quick
    FAIRARD_DATA=... .venv/bin/python benchmarks/study_throughput.py --device cuda --concurrency 1,2,4,8
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, format_table, print_environment  # noqa: E402

from fairard.models import build_model  # noqa: E402
from fairard.train import TrainConfig, Trainer  # noqa: E402
from fairard.utils import write_json  # noqa: E402


def _config(args, teacher: str, seed: int) -> TrainConfig:
    return TrainConfig(method="fair-ard", student=args.student, teacher=args.teacher, teacher_checkpoint=teacher,
                       data_root=args.data_root, n_per_class=args.n_per_class, epochs=args.epochs,
                       batch_size=args.batch_size, attack_steps=args.attack_steps, seed=seed, device=args.device,
                       monitor_n=0)


def _one_run(rank: int, args, teacher: str, threads: int, barrier, times) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(_config(args, teacher, seed=rank), out, progress=False)
        trainer.train_epoch(0)  # warm-up (cuDNN autotuning, allocator), not timed
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        barrier.wait()
        start = time.time()
        for epoch in range(args.epochs):
            trainer.train_epoch(epoch)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        times[rank] = (start, time.time())


def measure(args, concurrency: int, teacher: str) -> dict:
    """Run-epochs per hour with ``concurrency`` runs at once on the device."""
    ctx = mp.get_context("spawn")
    barrier, times = ctx.Barrier(concurrency), ctx.Manager().dict()
    threads = max(1, (os.cpu_count() or 1) // concurrency)
    procs = [ctx.Process(target=_one_run, args=(r, args, teacher, threads, barrier, times)) for r in range(concurrency)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"a run of the {concurrency}-run measurement failed (exit codes {[p.exitcode for p in procs]})")
    wall = max(end for _, end in times.values()) - min(start for start, _ in times.values())
    return {"concurrency": concurrency, "threads_per_run": threads, "wall_s": wall,
            "run_epochs_per_hour": concurrency * args.epochs / wall * 3600}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--concurrency", default="1,2,4,8", help="runs at once, comma-separated")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher", default="resnet18")
    p.add_argument("--n-per-class", type=int, default=1000, help="training images per class (an 'epoch')")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run (after one warm-up epoch)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--attack-steps", type=int, default=10)
    p.add_argument("--data-root", default=None)
    p.add_argument("--quick", action="store_true", help="resnet8 students, 20 images per class, 2-step attack, "
                                                        "concurrency 1,2: a check that it runs, not a measurement")
    p.add_argument("--json", dest="out", default=None, metavar="OUT", help="also write the results to this JSON file (atomically)")
    args = p.parse_args(argv)
    if args.quick:
        args.student, args.teacher, args.n_per_class, args.attack_steps, args.epochs = "resnet8", "resnet8", 20, 2, 1
        args.batch_size = min(args.batch_size, 50)
        args.concurrency = "1,2" if args.concurrency == "1,2,4,8" else args.concurrency
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        teacher = str(Path(tmp) / "teacher.pt")
        torch.save(build_model(args.teacher, 10).state_dict(), teacher)
        rows = [measure(args, k, teacher) for k in levels]
    for r in rows:
        r["speedup"] = r["run_epochs_per_hour"] / rows[0]["run_epochs_per_hour"]
    env = environment([torch.device(args.device)])
    print_environment(env)
    print(f"# Fair-ARD study throughput on {args.device}: {args.student} students, {args.teacher} teacher, "
          f"{args.n_per_class} img/class, batch {args.batch_size}, PGD-{args.attack_steps}, {args.epochs} timed "
          f"epoch(s) per run after one warm-up epoch")
    print(format_table(rows, [("concurrency", "runs at once", "d"), ("threads_per_run", "threads/run", "d"),
                              ("wall_s", "wall s", ".1f"), ("run_epochs_per_hour", "run-epochs/h", ".1f"),
                              ("speedup", "vs 1 at a time", ".2f")]))
    if args.out:
        write_json(args.out, {"kind": "study_throughput", "environment": env, "settings": vars(args), "rows": rows})
        print(f"\nwrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
