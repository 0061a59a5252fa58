"""One lent-GPU window in one prepared command: data, CUDA tests, throughput table, then a banked study.

    python benchmarks/gpu_session.py prepare          # here, before a GPU session: fills .gpu/ (git-ignored)
    bash benchmarks/gpu_session.sh                    # on the GPU machine (device tool: carry [".gpu"])
    DRY_RUN=1 bash benchmarks/gpu_session.sh          # the whole script on CPU with tiny sizes (a few minutes)

A window is about ten minutes of one GPU, and nothing outlives it but what is packed into ``$OUT``. The run
(``run``) keeps to a budget (``--budget``, default 570 s, inside the device tool's 600 s) and goes through:

1. **data**: rebuild the in-house CIFAR-10 copy from its JPEG packs (``.gpu/cifar_jpeg``, by
   ``cifar_jpeg_to_npz.py``); the dry run packs and rebuilds a tiny synthetic set the same way;
2. **tests**: ``tests/test_graph_step.py`` (on CUDA: the graph engine trains like the eager one);
3. **bench**: ``train_throughput.py``: eager, graph and the official-style baseline side by side, ResNet-18
   students with WRN-34-10 and ResNet-18 teachers, batch 128, FLOPs and the share of the bf16 peak;
4. **study**: the headline pairs (ARD vs Fair-ARD on every seed, then RSLAD vs Fair-RSLAD) of the ``gpu``
   profile with this window's shortened schedule (``WINDOW_OVERRIDES``), on the first seeds no recorded window
   (``results/*/window.json``) has. The window trains its own teacher; a pair starts only when both runs
   are estimated to finish before the deadline (a half-trained run cannot travel to the next window);
5. **pack**: one archive ``$OUT/<window>.tgz`` (plus ``$OUT/summary.txt``) laid out like the repository:
   ``results/<window>/`` (configs, logs, per-class evaluations, ``window.json``; no weights) and
   ``benchmarks/results/<window>/`` (logs, benchmark JSON). ``tar xzf <window>.tgz`` in the checkout and
   commit; ``fairard.runs.load_recorded`` reads several such folders as replicates, each window named.

Every stage has a time limit cut from what is left; one that fails or runs out is logged, and the next runs.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GPU_DIR = REPO / ".gpu"                  # git-ignored; travels to the device with carry [".gpu"]
sys.path[:0] = [str(GPU_DIR / "site"), str(REPO)]  # this checkout's fairard (the device has no installed one)
PAIRS = ("ard", "rslad")                 # headline base methods, each run with its fair- version
# The window's study: the gpu profile on a schedule that leaves room for a teacher and a few pairs in
# ~5 minutes of an H200 with the graph engine. Same settings in every window, so windows are replicates.
WINDOW_OVERRIDES = {"teacher_epochs": 8, "student_epochs": 8, "aa_per_class": 20}
DRY_OVERRIDES = {"n_per_class": 13, "eval_per_class": 2, "aa_per_class": 1, "attacks": ["clean", "pgd20"],
                 "teacher": "resnet8", "teacher_method": "trades", "teacher_epochs": 1, "students": ["resnet8"],
                 "student_epochs": 1, "attack_steps": 2, "batch_size": 64, "device": "cpu", "engine": "eager"}
PACK_MARGIN_S = 25                       # kept free at the end for packing


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


# ---- here, before the session ---------------------------------------------------------------------------
def prepare(packs: Path, tool: Path) -> int:
    """Fill ``.gpu/`` with what the device lacks: the JPEG packs and their decoder, pyautoattack (pure Python;
    not in the device image) and the commit of this checkout (the device copy carries no usable ``.git``)."""
    import importlib.util

    shutil.rmtree(GPU_DIR, ignore_errors=True)  # a fresh copy (the packs are read-only where they come from)
    target = GPU_DIR / "cifar_jpeg"
    target.mkdir(parents=True)
    for split in ("train", "test"):
        shutil.copy2(packs / f"{split}_jpeg.npz", target / f"{split}_jpeg.npz")
    shutil.copy2(tool, GPU_DIR / "cifar_jpeg_to_npz.py")
    spec = importlib.util.find_spec("pyautoattack")
    site = GPU_DIR / "site"
    shutil.copytree(Path(spec.origin).parent, site / "pyautoattack", ignore=shutil.ignore_patterns("examples", "*.pyc"))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    (GPU_DIR / "commit").write_text(commit + ("-dirty" if dirty else "") + "\n")
    size = sum(f.stat().st_size for f in GPU_DIR.rglob("*") if f.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True).stdout.split("\0")
    size += sum((REPO / f).stat().st_size for f in tracked if f and (REPO / f).is_file())
    print(f"prepared {GPU_DIR} for commit {commit[:12]}{' (dirty: commit first)' if dirty else ''}; "
          f"tree + .gpu = {size / 2**20:.1f} MiB (the device tool's limit: 64 MiB)")
    return 0 if size < 64 * 2**20 else 1


# ---- on the device ----------------------------------------------------------------------------------------
class Session:
    def __init__(self, args):
        self.args, self.t0 = args, time.monotonic()
        self.deadline = self.t0 + args.budget
        import torch

        self.cuda = torch.cuda.is_available() and not args.dry_run
        kind = torch.cuda.get_device_name().split()[-1].lower() if self.cuda else "dryrun-cpu"
        self.window = args.window or f"{kind}-{dt.datetime.now(dt.timezone.utc):%Y-%m-%d-%H%M}"
        self.root = Path(args.work) / self.window          # what gets packed, laid out like the repository
        self.results = self.root / "results" / self.window
        self.bench = self.root / "benchmarks" / "results" / self.window
        for d in (self.results, self.bench):
            d.mkdir(parents=True, exist_ok=True)
        commit_file = GPU_DIR / "commit"
        if not os.environ.get("FAIRARD_COMMIT"):  # on the device: the commit `prepare` recorded; here: git's
            from fairard.utils import git_commit

            use_file = commit_file.exists() and not args.dry_run
            os.environ["FAIRARD_COMMIT"] = commit_file.read_text().strip() if use_file else git_commit()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAIRARD_RESULTS": str(self.results),
                    "PYTHONPATH": os.pathsep.join(p for p in (str(GPU_DIR / "site"), str(REPO),
                                                              os.environ.get("PYTHONPATH")) if p)}
        self.stages: dict[str, dict] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def shell(self, name: str, cmd: list[str], limit: float) -> bool:
        """Run one stage's command with ``limit`` seconds, its output teed to the session log and its own log."""
        limit = max(1.0, min(limit, self.left() - PACK_MARGIN_S))
        log(f"stage {name}: {' '.join(cmd)} (limit {limit:.0f} s)")
        start = time.monotonic()
        with open(self.bench / f"{name}.log", "w") as fh:
            try:
                proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True)
                for line in _lines_until(proc, start + limit):
                    fh.write(line)
                    sys.stdout.write(line)
                rc = proc.wait()
            except subprocess.TimeoutExpired:
                rc = "timeout"
        self.stages[name] = {"seconds": round(time.monotonic() - start, 1), "returncode": rc}
        log(f"stage {name}: {rc} after {self.stages[name]['seconds']} s")
        return rc == 0

    # -- the stages
    def data(self) -> bool:
        data = self.root / "data" if self.args.dry_run else Path(self.env.get("FAIRARD_DATA") or "/tmp/fairard-data")
        self.env["FAIRARD_DATA"] = str(data)
        if (data / "cifar10" / "test.npz").exists():
            self.stages["data"] = {"seconds": 0.0, "returncode": 0, "note": f"{data} already holds cifar10"}
            return True
        packs, tool = GPU_DIR / "cifar_jpeg", GPU_DIR / "cifar_jpeg_to_npz.py"
        if self.args.dry_run:
            packs = self.root / "dry-packs"
            write_tiny_packs(packs)
            tool = tool if tool.exists() else REPO.parent / "shared" / "tools" / "cifar_jpeg_to_npz.py"
        if not tool.exists():
            self.stages["data"] = {"returncode": "missing", "note": f"no {tool}: run `gpu_session.py prepare` first"}
            log(self.stages["data"]["note"])
            return False
        return self.shell("data", [sys.executable, str(tool), str(packs), str(data / "cifar10")], 120)

    def environment(self) -> None:
        import torch

        lines = [f"window {self.window}", f"commit {os.environ.get('FAIRARD_COMMIT', 'unknown')}",
                 f"torch {torch.__version__} cuda {torch.version.cuda} python {sys.version.split()[0]}"]
        if self.cuda:
            lines.append(f"device {torch.cuda.get_device_name()}")
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv"], capture_output=True, text=True)
            lines.append(smi.stdout.strip())
        (self.bench / "environment.txt").write_text("\n".join(lines) + "\n")
        log(" | ".join(lines))

    def tests(self) -> bool:
        select = ["-k", "engine"] if self.args.dry_run else []
        return self.shell("tests", [sys.executable, "-m", "pytest", "-q", "-rs", "-s", "-p", "no:cacheprovider",
                                    "tests/test_graph_step.py", *select], 150)

    def bench_table(self) -> bool:
        cmd = [sys.executable, "benchmarks/train_throughput.py", "--json", str(self.bench / "train_throughput.json")]
        if self.args.dry_run:
            cmd += ["--device", "cpu", "--student", "resnet8", "--teacher", "resnet8", "--n-per-class", "13",
                    "--repeats", "1", "--amp", "auto", "--engines", "eager,graph", "--workers", "0"]
        else:
            cmd += ["--device", "cuda", "--cudnn-benchmark", "--n-per-class", str(self.args.bench_per_class),
                    "--repeats", "2"]
        return self.shell("bench", cmd, 200)

    def study(self) -> bool:
        overrides = dict(DRY_OVERRIDES if self.args.dry_run else WINDOW_OVERRIDES)
        if self.stages.get("tests", {}).get("returncode", 0) != 0:  # graph engine unproven here: bank with eager
            overrides["engine"] = "eager"
            log("the tests stage failed: the study trains with the eager engine")
        cmd = [sys.executable, str(Path(__file__)), "study", "--results", str(self.results),
               "--deadline-s", str(max(0.0, self.left() - PACK_MARGIN_S)), "--window", self.window,
               "--overrides", json.dumps(overrides)]
        if self.args.seeds:
            cmd += ["--seeds", self.args.seeds]
        return self.shell("study", cmd, self.left())

    def pack(self) -> Path:
        summary = {"window": self.window, "commit": os.environ.get("FAIRARD_COMMIT", "unknown"),
                   "dry_run": self.args.dry_run, "budget_s": self.args.budget,
                   "seconds": round(time.monotonic() - self.t0, 1), "stages": self.stages}
        (self.bench / "session.json").write_text(json.dumps(summary, indent=1) + "\n")
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        archive = out / f"{self.window}.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(self.root / "results", arcname="results", filter=_no_weights)
            tar.add(self.root / "benchmarks", arcname="benchmarks", filter=_no_weights)
        text = _summary_text(summary, self.results)
        (out / "summary.txt").write_text(text)
        print(text, flush=True)
        log(f"packed {archive} ({archive.stat().st_size / 2**20:.1f} MiB): extract in the checkout with "
            f"`tar xzf {archive.name}`")
        return archive


def _lines_until(proc, deadline):
    """Yield the process's output lines; kill its whole session at the deadline (TimeoutExpired)."""
    import selectors
    import signal

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while True:
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise subprocess.TimeoutExpired(proc.args, 0)
        if sel.select(timeout=1.0):
            line = proc.stdout.readline()
            if not line:
                return
            yield line


def _no_weights(info: tarfile.TarInfo):
    return None if info.name.endswith((".pt", ".pth", ".tmp")) else info


def _summary_text(summary: dict, results: Path) -> str:
    lines = [f"window {summary['window']} · commit {summary['commit']} · {summary['seconds']} s"]
    lines += [f"  {name}: {s.get('returncode')} in {s.get('seconds', '-')} s {s.get('note', '')}"
              for name, s in summary["stages"].items()]
    study = results / "window.json"
    if study.exists():
        w = json.loads(study.read_text())
        lines.append(f"  study: teacher {w.get('teacher_seconds', '-')} s; done {w['done']}; skipped {w['skipped']}")
    return "\n".join(lines) + "\n"


def write_tiny_packs(folder: Path, n_train: int = 13, n_test: int = 2) -> None:
    """JPEG packs of a tiny synthetic CIFAR-10 stand-in, in the packs' format (``jpeg`` bytes concatenated,
    ``offsets``, ``y``), for the dry run of the data stage."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    patterns = rng.normal(0, 40, size=(10, 32, 32, 3))
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.repeat(np.arange(10), n)
        x = np.clip(128 + patterns[y] + rng.normal(0, 30, size=(len(y), 32, 32, 3)), 0, 255).astype(np.uint8)
        blobs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=75)
            blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
        np.savez(folder / f"{split}_jpeg.npz", jpeg=np.concatenate(blobs), offsets=offsets, y=y.astype(np.uint8))


# ---- the study (its own process, so that a crash still leaves the packing to the session) ---------------
def recorded_seeds(results_root: Path, overrides: dict) -> set[int]:
    """Seeds of the headline pairs that committed windows with the same settings already hold."""
    seeds = set()
    for f in results_root.glob("*/window.json"):
        w = json.loads(f.read_text())
        if w.get("overrides") == overrides:
            seeds.update(seed for _, seed in w.get("done", []))
    return seeds


def pair_fits(left_s: float, epochs: int, epoch_s: float, eval_s: float, margin: float = 1.1) -> bool:
    """Whether a Fair pair (two whole runs: training and evaluation) is expected to end within ``left_s``."""
    return 2 * (epochs * epoch_s + eval_s) * margin <= left_s


def study(results: Path, deadline_s: float, window: str, overrides: dict, seeds=None, n_seeds: int = 3) -> dict:
    from fairard import profiles, runs

    end = time.monotonic() + deadline_s
    os.environ["FAIRARD_RESULTS"] = str(results)
    import torch

    overrides = dict(overrides)
    if not torch.cuda.is_available():
        overrides["engine"] = "eager"
    if seeds is None:
        taken = recorded_seeds(REPO / "results", {k: v for k, v in overrides.items() if k != "engine"})
        seeds = [s for s in range(max(taken, default=-1) + n_seeds + 1) if s not in taken][:n_seeds]
    methods = [m for b in PAIRS for m in (b, f"fair-{b}")]
    profile_fields = {k: v for k, v in overrides.items() if k != "attacks"}
    setup = profiles.validate("gpu", methods=methods, attacks=overrides.get("attacks"), headline=list(PAIRS),
                              seeds=list(seeds), progress=False, overrides=profile_fields)
    record = {"window": window, "profile": "gpu", "overrides": {k: v for k, v in overrides.items() if k != "engine"},
              "engine": setup.engine, "seeds": list(seeds), "done": [], "skipped": [], "runs": []}

    def save():
        (results / "window.json").write_text(json.dumps(record, indent=1) + "\n")

    t = time.monotonic()
    teacher = runs.execute(runs.teacher_eval_run(setup), progress=False)  # trains the teacher first
    record["teacher_seconds"] = round(time.monotonic() - t, 1)
    log_lines = [json.loads(x) for x in (Path(runs.teacher_checkpoint(setup)).parent / "log.jsonl").read_text().splitlines()]
    epoch_s = 1.15 * log_lines[-1]["seconds"]  # a student epoch costs about a TRADES teacher epoch (the last: no capture)
    eval_s = sum(teacher["evaluation"]["seconds"].values()) + 5
    save()
    log(f"teacher trained and evaluated in {record['teacher_seconds']} s; estimates: {epoch_s:.1f} s/epoch, "
        f"{eval_s:.0f} s/evaluation; seeds {list(seeds)}")
    for base in PAIRS:
        for seed in seeds:
            left = end - time.monotonic()
            if not pair_fits(left, setup.student_epochs, epoch_s, eval_s):
                record["skipped"].append([base, seed])
                log(f"skip {base} / fair-{base} seed {seed}: ~{2 * (setup.student_epochs * epoch_s + eval_s):.0f} s "
                    f"needed, {left:.0f} s left")
                continue
            for method in (base, f"fair-{base}"):
                t = time.monotonic()
                r = runs.run(runs.student_config(setup, method, seed=seed), profile=setup, progress=False)
                seconds = time.monotonic() - t
                record["runs"].append({"method": method, "seed": seed, "seconds": round(seconds, 1),
                                       "train_seconds": round(r["train_seconds"], 1)})
                epoch_s = max(epoch_s * 0.8, r["train_seconds"] / setup.student_epochs)
                eval_s = max(eval_s * 0.8, r["eval_seconds"] + 5)
                log(f"{method} seed {seed}: {seconds:.0f} s")
            record["done"].append([base, seed])
            save()
    save()
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pp = sub.add_parser("prepare", help="here: fill .gpu/ for the device tool's carry")
    pp.add_argument("--packs", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    pp.add_argument("--tool", type=Path, default=REPO.parent / "shared" / "tools" / "cifar_jpeg_to_npz.py")
    pr = sub.add_parser("run", help="on the device: the whole window")
    pr.add_argument("--dry-run", action="store_true", default=bool(os.environ.get("DRY_RUN")))
    pr.add_argument("--budget", type=float, default=float(os.environ.get("BUDGET_S", 570)),
                    help="seconds for everything, packing included (default %(default)s)")
    pr.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    pr.add_argument("--work", default="/tmp/fairard-gpu")
    pr.add_argument("--window", default=None, help="window name (default: <gpu>-<UTC date-time>)")
    pr.add_argument("--seeds", default=os.environ.get("SEEDS"), help="student seeds (default: the next 3 unrecorded)")
    pr.add_argument("--stages", default="data,tests,bench,study", help="default: %(default)s (pack always runs)")
    pr.add_argument("--bench-per-class", type=int, default=300, help="images per class of a timed epoch")
    ps = sub.add_parser("study", help="the banked study alone (the run calls it)")
    ps.add_argument("--results", type=Path, required=True)
    ps.add_argument("--deadline-s", type=float, required=True)
    ps.add_argument("--window", required=True)
    ps.add_argument("--overrides", default=json.dumps(WINDOW_OVERRIDES))
    ps.add_argument("--seeds", default=None)
    args = p.parse_args(argv)
    if args.command == "prepare":
        return prepare(args.packs, args.tool)
    if args.command == "study":
        seeds = None if args.seeds is None else [int(s) for s in args.seeds.replace(",", " ").split()]
        study(args.results, args.deadline_s, args.window, json.loads(args.overrides), seeds)
        return 0
    session = Session(args)
    stages = args.stages.split(",")
    ok = True
    if "data" in stages:
        ok = session.data()
    session.environment()
    for name in ("tests", "bench", "study"):
        if name in stages and ok and session.left() > PACK_MARGIN_S:
            getattr(session, {"bench": "bench_table"}.get(name, name))()
    session.pack()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
