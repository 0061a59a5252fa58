"""Shared helpers of the benchmark scripts: device-aware timing, a plain-text table, provenance.

Timing follows airbench: on CUDA a pair of ``torch.cuda.Event``s around the work plus a synchronize
before reading them; on CPU ``time.perf_counter``. Warm-up calls are run and discarded by the callers.
"""
from __future__ import annotations

import datetime
import os
import statistics
import time
from pathlib import Path

import torch

from fairard.utils import cpu_model, provenance


def available_devices(requested) -> list[torch.device]:
    """Requested device names that exist here ("cuda" is skipped, with a note, when absent)."""
    out = []
    for name in requested:
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            print(f"note: {name} requested but torch.cuda.is_available() is False; skipped")
            continue
        out.append(dev)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    """Seconds one ``fn()`` takes on ``device`` (CUDA: events, synchronised; CPU: wall clock)."""
    if device.type == "cuda":
        sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(seconds: list[float]) -> dict:
    """Median (the reported figure), min and max of the timed repeats."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "repeats": len(seconds), "all_s": seconds}


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]


def environment(devices) -> dict:
    """Where the numbers came from: fairard provenance plus CPU model/flags, CUDA device names, date."""
    env = provenance("cpu")
    env.update(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        cpu_model=cpu_model(), cpu_flags=cpu_flags(), cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        cuda=[torch.cuda.get_device_name(d) for d in devices if d.type == "cuda"],
    )
    return env


def print_environment(env: dict) -> None:
    v = env["versions"]
    print(f"# {env['date']}  torch {v['torch']}  torchvision {v['torchvision']}  python {env['python']}  "
          f"commit {env['git_commit']}")
    print(f"# CPU: {env['cpu_model']} ({env['cpu_count']} cores, torch threads {env['torch_threads']}, "
          f"flags {' '.join(env['cpu_flags']) or '-'})" + (f"  CUDA: {', '.join(env['cuda'])}" if env["cuda"] else ""))


def format_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Columns are (key, header, format spec); a missing value prints as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(["-" if r.get(k) is None else format(r[k], fmt) for k, _, fmt in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class OtherLoad:
    """CPU time that *other* processes used while a benchmark ran (a contention check).

    Busy jiffies of the whole machine (/proc/stat) minus this process's own CPU time and that of
    its reaped children (DataLoader workers). On a 2-core machine another busy process easily
    halves a figure, so the scripts print this next to their tables. Linux only; elsewhere None.
    """

    def __init__(self):
        self._start = self._read()

    @staticmethod
    def _read():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except (OSError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        t = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        return ((user + nice + system + irq + softirq) / hz, steal / hz,
                t.user + t.system + t.children_user + t.children_system, time.perf_counter())

    def report(self) -> dict | None:
        end = self._read()
        if self._start is None or end is None:
            return None
        busy, steal, own, wall = (b - a for a, b in zip(self._start, end))
        other = max(0.0, busy - own)
        return {"wall_s": wall, "own_cpu_s": own, "other_cpu_s": other, "steal_s": steal,
                "other_cores": other / wall if wall > 0 else 0.0,
                "loadavg_1min_end": os.getloadavg()[0]}

    def print_report(self) -> dict | None:
        r = self.report()
        if r is not None:
            flag = "  WARNING: the machine was shared, figures are pessimistic" if r["other_cores"] > 0.1 else ""
            print(f"\n# contention: other processes used {r['other_cpu_s']:.1f} CPU-s over {r['wall_s']:.0f} s wall "
                  f"({r['other_cores']:.2f} cores on average), steal {r['steal_s']:.1f} s{flag}")
        return r
