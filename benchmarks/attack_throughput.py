"""PGD-10 throughput (images/s) of ``fairard.attacks.pgd`` per model, device and precision.

One PGD-10 call = 10 x (forward + backward to the input) on a batch; the model is in eval mode and
the input is random [0,1] pixels (throughput does not depend on content). Modes:

  fp32      plain fp32, NCHW
  fp32-cl   fp32, channels_last model and input
  bf16      torch.autocast(bfloat16), NCHW
  bf16-cl   torch.autocast(bfloat16) + channels_last (what fairard trains with)

Per (model, device, mode): ``--warmup`` calls are discarded (oneDNN / cuDNN pick and cache their
kernels on the first calls of a shape), then ``--repeats`` timed calls, the modes of a model taken
round-robin so that a shared machine's load hits them alike; img/s = batch / median seconds.
CUDA is timed with events and a synchronize; CPU with perf_counter.

    .venv/bin/python benchmarks/attack_throughput.py --quick
    .venv/bin/python benchmarks/attack_throughput.py --models resnet20,resnet18 --devices cpu
    .venv/bin/python benchmarks/attack_throughput.py --devices cuda --json runs/bench/attack.json
"""
from __future__ import annotations

import argparse
import contextlib

import torch

from _common import (OtherLoad, available_devices, environment, format_table, print_environment, summary,
                     time_call)
from fairard.attacks import pgd
from fairard.models import build_model
from fairard.utils import write_json

MODES = {  # name -> (autocast bf16, channels_last)
    "fp32": (False, False),
    "fp32-cl": (False, True),
    "bf16": (True, False),
    "bf16-cl": (True, True),
}
DEFAULT_MODELS = ("resnet20", "resnet18", "wrn-34-10")
# --quick: (batch, warmup, repeats) per model on CPU; WRN-34-10 is ~50x ResNet-20's work per image.
QUICK_CPU = {"wrn-34-10": (8, 1, 1)}
QUICK_DEFAULT = (32, 1, 3)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv, default=list(DEFAULT_MODELS),
                   help="comma-separated fairard model names (default: %(default)s)")
    p.add_argument("--devices", type=_csv, default=None,
                   help="comma-separated, e.g. cpu,cuda (default: cpu, plus cuda when available)")
    p.add_argument("--modes", type=_csv, default=["fp32", "bf16-cl"],
                   help=f"comma-separated among {', '.join(MODES)} (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 128 on CPU, 512 on CUDA (--quick: 32, wrn 8)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls, median reported (default 5; --quick 3, wrn 1)")
    p.add_argument("--warmup", type=int, default=None, help="discarded calls before timing (default 2; --quick 1)")
    p.add_argument("--steps", type=int, default=10, help="PGD steps per call (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="small batches and few repeats (~1-2 min on a 2-core CPU)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="set torch.backends.cudnn.benchmark=True (fairard itself leaves it off)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file (atomically)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {unknown}; valid: {', '.join(MODES)}")
    for name in args.models:
        build_model(name)  # an unknown name raises here, listing the valid ones
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def plan(args, model: str, device: torch.device) -> tuple[int, int, int]:
    """(batch, warmup, repeats) for one model on one device; explicit flags win."""
    if args.quick and device.type == "cpu":
        batch, warmup, repeats = QUICK_CPU.get(model, QUICK_DEFAULT)
    elif args.quick:
        batch, warmup, repeats = 128, 1, 3
    else:
        batch, warmup, repeats = (512 if device.type == "cuda" else 128), 2, 5
    return (args.batch_size or batch, args.warmup if args.warmup is not None else warmup,
            args.repeats or repeats)


def setup(name: str, device: torch.device, mode: str, batch: int, steps: int):
    """A zero-argument PGD call for one (model, mode); models and inputs are built identically per mode."""
    bf16, channels_last = MODES[mode]
    torch.manual_seed(0)
    model = build_model(name).to(device).eval()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((batch, 3, 32, 32), generator=g, device=device)
    y = torch.randint(0, 10, (batch,), generator=g, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    precision = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16
                 else contextlib.nullcontext())

    def attack():
        with precision:
            pgd(model, x, y, steps=steps, generator=g)

    return attack


def bench_model(name: str, device: torch.device, modes, batch: int, warmup: int, repeats: int, steps: int) -> list[dict]:
    """Warm every mode up, then time the modes round-robin (repeat r of every mode, then r + 1), so
    that a load change on a shared machine hits all modes alike and the ratios stay fair."""
    calls = {mode: setup(name, device, mode, batch, steps) for mode in modes}
    for mode in modes:
        for _ in range(warmup):
            time_call(calls[mode], device)
    seconds = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            seconds[mode].append(time_call(calls[mode], device))
    rows = []
    for mode in modes:
        stats = summary(seconds[mode])
        rows.append({"model": name, "device": str(device), "mode": mode, "batch": batch, "steps": steps,
                     "warmup": warmup, **stats, "img_per_s": batch / stats["median_s"],
                     "best_img_per_s": batch / stats["min_s"]})
    return rows


def speedups(rows: list[dict]) -> list[dict]:
    """img/s of every non-fp32 mode over fp32, per (model, device)."""
    base = {(r["model"], r["device"]): r["img_per_s"] for r in rows if r["mode"] == "fp32"}
    out = []
    for r in rows:
        key = (r["model"], r["device"])
        if r["mode"] != "fp32" and key in base:
            out.append({"model": r["model"], "device": r["device"], "ratio": f"{r['mode']}/fp32",
                        "speedup": r["img_per_s"] / base[key]})
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    devices = available_devices(args.devices)
    env = environment(devices)
    print_environment(env)
    load = OtherLoad()
    rows = []
    for device in devices:
        for name in args.models:
            batch, warmup, repeats = plan(args, name, device)
            for row in bench_model(name, device, args.modes, batch, warmup, repeats, args.steps):
                rows.append(row)
                print(f"  {name:>10s} {str(device):>6s} {row['mode']:>8s} batch {batch:4d}: {row['img_per_s']:9.2f} img/s "
                      f"(median of {repeats}, min {row['min_s']:.3f}s max {row['max_s']:.3f}s)", flush=True)
    print(f"\nPGD-{args.steps} throughput (forward+backward per step, eval mode)")
    print(format_table(rows, [("model", "model", "s"), ("device", "device", "s"), ("mode", "mode", "s"),
                              ("batch", "batch", "d"), ("img_per_s", "img/s", ".2f"),
                              ("best_img_per_s", "best img/s", ".2f"),
                              ("median_s", "s/call", ".3f"), ("repeats", "repeats", "d")]))
    ratios = speedups(rows)
    if ratios:
        print("\nSpeed-up over fp32 (same model, device, batch)")
        print(format_table(ratios, [("model", "model", "s"), ("device", "device", "s"), ("ratio", "ratio", "s"),
                                    ("speedup", "speed-up", ".2f")]))
    contention = load.print_report()
    if args.json:
        write_json(args.json, {"kind": "attack_throughput", "args": vars(args), "environment": env,
                               "contention": contention, "results": rows, "speedups": ratios})
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
