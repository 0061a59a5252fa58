"""Command line: ``python -m fairard {evaluate,train,train-teacher,demo,export,plan,run,worker,study} ...``.

Every option is checked before any data is loaded or any model is built (``fairard.checks``): a bad value
ends in one line naming the option, the value and what is valid, with exit code 2. An error that is not the
user's (a bug) still shows its traceback.
"""
from __future__ import annotations

import argparse
import inspect
import json
import linecache
import os
import sys
from pathlib import Path

from . import checks
from . import data as D
from .checks import arg
from .utils import provenance, resolve_device, write_json

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the option, the value, what is valid) instead of the long usage block."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_test_images(dataset: str, root, n_per_class, device, seed=0, what: str = "--n-per-class"):
    """``fairard.data.test_tensors`` with the data root first, as the commands pass it."""
    return D.test_tensors(dataset, n_per_class, device, seed, root, what=what)


def cmd_evaluate(args) -> int:
    from .evaluate import check_attacks, evaluate, format_table
    from .models import load_checkpoint

    attacks = check_attacks(args.attacks, "--attacks")
    checks.check_model_kwargs(args.arch, D.NUM_CLASSES[args.dataset], {}, "--arch")  # unknown arch: lists the valid
    if args.out:
        checks.check_output_file(args.out, "--out")  # before the evaluation, which can take hours
    device = resolve_device(args.device)
    model = load_checkpoint(args.arch, args.checkpoint, num_classes=D.NUM_CLASSES[args.dataset]).to(device)
    checks.check_finite_model(model, f"checkpoint {args.checkpoint!r}")
    x, y = load_test_images(args.dataset, args.data_root, args.n_per_class, device, args.seed)
    result = evaluate(model, x, y, attacks=attacks, class_names=D.CLASS_NAMES[args.dataset], eps=args.eps,
                      batch_size=args.batch_size, seed=args.seed, progress=not args.quiet)
    result.update(kind="evaluation", arch=args.arch, checkpoint=str(args.checkpoint), dataset=args.dataset,
                  n_per_class=args.n_per_class, provenance=provenance(device))
    print(format_table(result))
    for warning in result["sanity"]["warnings"]:
        print("WARNING:", warning, file=sys.stderr)
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def cmd_export(args) -> int:
    from .export import cmd_export as export

    return export(args)


def _train_config(args, method: str, student: str):
    from .train import TrainConfig

    return TrainConfig(
        method=method, student=student, teacher=getattr(args, "teacher", None),
        teacher_checkpoint=getattr(args, "teacher_checkpoint", None),
        nat_teacher=getattr(args, "nat_teacher", None),
        nat_teacher_checkpoint=getattr(args, "nat_teacher_checkpoint", None),
        init_checkpoint=args.init_checkpoint, dataset=args.dataset, data_root=args.data_root, n_per_class=args.n_per_class,
        val_per_class=args.val_per_class, epochs=args.epochs, milestones=args.milestones, lr=args.lr,
        weight_decay=args.weight_decay, nesterov=args.nesterov, batch_size=args.batch_size,
        lr_schedule=args.lr_schedule, beta=args.beta, clamp=args.clamp, difficulty=args.difficulty,
        attack_steps=args.attack_steps, method_options=checks.check_options(args.option, "--option"),
        student_kwargs=checks.check_options(args.student_kw, "--student-kw"),
        teacher_kwargs=checks.check_options(getattr(args, "teacher_kw", None), "--teacher-kw"),
        seed=args.seed, device=args.device, amp=args.amp, monitor_n=args.monitor_n, engine=args.engine)


def _run_training(cfg, out: Path, resume: bool) -> int:
    from .train import init_distributed, train

    if (out / "checkpoint.pt").exists() and not resume:
        raise checks.InputError(f"--out {str(out)!r} already holds a run; pass --resume to continue it or choose a "
                                "new --out")
    checks.check_output_dir(out, "--out")
    init_distributed()
    train(cfg, out, resume=resume)
    print(f"finished: {out / 'final.pt'} (log: {out / 'log.jsonl'})")
    return 0


def cmd_train(args) -> int:
    from .methods import METHODS

    base = args.method[5:] if args.method.startswith("fair-") else args.method
    if base not in METHODS:
        valid = sorted(METHODS) + sorted(f"fair-{m}" for m in METHODS)
        raise SystemExit(f"error: unknown method {args.method!r}; valid: {', '.join(valid)}")
    return _run_training(_train_config(args, args.method, args.student), Path(args.out), args.resume)


def cmd_train_teacher(args) -> int:
    return _run_training(_train_config(args, args.method, args.arch), Path(args.out), args.resume)


def cmd_demo(args) -> int:
    """A small end-to-end run: PGD-AT teacher, ARD and Fair-ARD students, per-class evaluation."""
    from .evaluate import evaluate, format_table
    from .train import TrainConfig, train

    out = checks.check_output_dir(args.runs, "--runs")
    checks.check_output_file(args.out, "--out")
    device = resolve_device(args.device)
    common = dict(dataset="cifar10", data_root=args.data_root, n_per_class=args.n_per_class, seed=args.seed,
                  device=args.device, monitor_n=0, batch_size=128)
    teacher_cfg = TrainConfig(method="pgd_at", student="resnet20", epochs=args.teacher_epochs, milestones=(),
                              **common)
    teacher_dir = out / f"teacher-{teacher_cfg.key()}"
    student_cfgs = {method: TrainConfig(method=method, student="resnet8", teacher="resnet20",
                                        teacher_checkpoint=str(teacher_dir / "final.pt"), epochs=args.student_epochs,
                                        milestones=(), **common) for method in ("ard", "fair-ard")}
    # The test images first: a too large --eval-per-class is refused before the teacher trains.
    x, y = load_test_images("cifar10", args.data_root, args.eval_per_class, device, args.seed, "--eval-per-class")
    teacher = train(teacher_cfg, teacher_dir)
    names = D.CLASS_NAMES["cifar10"]
    results = {}
    results["teacher (resnet20, PGD-AT)"] = evaluate(teacher, x, y, attacks=("clean", "pgd20"), class_names=names,
                                                    progress=False, check_large_eps=0)
    for method, cfg in student_cfgs.items():
        student = train(cfg, out / f"{method}-{cfg.key()}")
        results[f"student (resnet8, {method})"] = evaluate(student, x, y, attacks=("clean", "pgd20"),
                                                          class_names=names, progress=False, check_large_eps=0)
    for title, res in results.items():
        print(f"\n== {title}: {args.eval_per_class} test images per class, in-house JPEG-derived CIFAR-10 ==")
        print(format_table(res))
    write_json(args.out, {"kind": "demo", "results": results, "provenance": provenance(device),
                          "settings": {k: v for k, v in vars(args).items() if k != "fn"}})
    print(f"\nwrote {args.out}")
    return 0


# ---- studies: plan, run, worker ----------------------------------------------------------------------------
def _value(text: str):
    """A study option from the command line: JSON when it reads as JSON (numbers, lists, null, true/false),
    else the string (the study's ``validate`` parses lists such as ard,fair-ard itself)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _study_parser(name: str) -> argparse.ArgumentParser:
    """Options of study ``name``: the keyword parameters of its ``validate`` (what its notebook takes)."""
    from .studies import study_module

    module = study_module(name)
    p = argparse.ArgumentParser(prog=f"python -m fairard {{plan,run}} {name}", add_help=False, allow_abbrev=False)
    for param in inspect.signature(module.validate).parameters.values():
        if param.name in ("progress", "results_dir"):
            continue
        default = param.default if not isinstance(param.default, tuple) else ",".join(map(str, param.default))
        p.add_argument("--" + param.name.replace("_", "-"), dest=param.name, type=_value, default=None,
                       help=f"default: {default}")
    return p


def _study_setup(args):
    """(module, validated parameters) of ``args.study`` with its options; an unknown option lists the valid ones."""
    from .store import results_dir
    from .studies import study_module

    if args.help or args.study is None:
        args.subparser.print_help()
        if args.study is None:
            raise SystemExit(0 if args.help else 2)
    module = study_module(args.study)
    parser = _study_parser(args.study)
    if args.help:
        print(f"\noptions of {args.study}:")
        parser.print_help()
        raise SystemExit(0)
    known, unknown = parser.parse_known_args(args.options)
    if unknown:
        valid = sorted(a.option_strings[0] for a in parser._actions)
        raise ValueError(f"unknown option(s) {unknown} for study {args.study}; valid: {', '.join(valid)}")
    store = getattr(args, "store", None)
    if store:
        checks.check_output_dir(store, "--store/--results")
    params = module.validate(**{k: v for k, v in vars(known).items() if v is not None},
                             results_dir=store, progress=not getattr(args, "quiet", True))
    checks.check_output_dir(results_dir(), "the results store ($FAIRARD_RESULTS or data/results)")
    return module, params


def _run_status(run) -> dict:
    from .store import claim_holder

    try:
        key, folder = run.key(), run.folder()
    except FileNotFoundError:  # a teacher it reads is not trained yet
        key = folder = None
    holder = claim_holder(folder) if folder is not None else None
    failure = run.failure() if folder is not None else None
    status = ("cached" if run.done() else "claimed" if holder and not holder["stale"]
              else "failed" if failure else "pending")
    entry = {"id": run.id, "kind": run.kind, "name": run.name, "status": status, "key": key,
             "needs": [n.id for n in run.needs]}
    if status == "claimed":
        entry["claimed_by"] = {k: holder.get(k) for k in ("host", "pid")} | {"heartbeat_age_s": round(holder["age"], 1)}
    if failure:
        entry["error"] = failure["error"]
    return entry


def cmd_plan(args) -> int:
    """Every run of a study (needs included) and its state in the store: cached, pending, claimed or failed."""
    from .executors import with_needs
    from .store import results_dir

    module, params = _study_setup(args)
    runs = [_run_status(r) for r in with_needs(module.plan(params))]
    counts = {s: sum(r["status"] == s for r in runs) for s in ("cached", "pending", "claimed", "failed")}
    if args.json:
        print(json.dumps({"study": args.study, "store": str(results_dir()), "counts": counts, "runs": runs}, indent=1))
        return 0
    for r in runs:
        extra = (f" by {r['claimed_by']['host']} pid {r['claimed_by']['pid']}" if r["status"] == "claimed"
                 else f": {r['error']}" if r["status"] == "failed" else "")
        print(f"{r['status']:>8}  {r['id'][:8]}  {r['kind']:<12} {r['name']:<32} "
              f"key {r['key'] or '(after its teacher)'}{extra}")
    print(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; store {results_dir()}")
    return 0


def cmd_run(args) -> int:
    """A notebook's study without Jupyter: its pending runs computed by an executor, then its summary."""
    from . import tables
    from .store import results_dir

    if args.claim_timeout is not None:
        os.environ["FAIRARD_CLAIM_TIMEOUT"] = str(args.claim_timeout)
    module, params = _study_setup(args)
    print(params.describe(), flush=True)
    slurm = {k: v for k, v in dict(tasks=args.tasks, partition=args.partition, time_min=args.time,
                                   gpus_per_task=args.gpus_per_task, jobs_per_gpu=args.jobs_per_gpu,
                                   cluster=args.cluster).items() if v is not None}
    study = module.study(params, executor=args.executor, jobs=args.jobs, gpus=args.gpus,
                         jobs_per_gpu=args.jobs_per_gpu, slurm=slurm)
    setup = getattr(params, "setup", params)
    results = study.results if hasattr(study, "results") else study["results"]
    attacks = list(setup.attacks)
    print("\n" + tables.markdown_table(tables.summarize_runs(results, attacks), attacks))
    if getattr(setup, "headline_pairs", ()) and hasattr(study, "computed"):
        print("\n" + tables.headline_markdown(tables.headline(results, setup.headline_pairs), setup))
    written = f", {len(study.computed)} cache entries written, {study.seconds:.0f} s" if hasattr(study, "computed") else ""
    print(f"\n{len(results)} runs{written}; results under {results_dir()}")
    return 0


def cmd_worker(args) -> int:
    """Claim and compute queued runs of the store until none is left (any machine that sees the store)."""
    from .executors import work

    if args.claim_timeout is not None:
        os.environ["FAIRARD_CLAIM_TIMEOUT"] = str(args.claim_timeout)
    if args.threads:
        torch_threads(args.threads)
    failed = work(args.store, device=args.device, progress=args.progress, quiet=args.quiet)
    return 1 if failed else 0


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _add_study(sub, name: str, fn, help: str):
    from .studies import STUDIES

    p = sub.add_parser(name, help=help, add_help=False, allow_abbrev=False,
                       description=help + ". Then the study's own options: its notebook's parameters (e.g. "
                       "--profile smoke --seeds 0,1 --methods ard,fair-ard); `--help` after STUDY lists them.")
    p.add_argument("study", metavar="STUDY", nargs="?", help=f"one of {', '.join(STUDIES)}")
    p.add_argument("-h", "--help", action="store_true", help="this help, and STUDY's options")
    p.add_argument("--store", "--results", dest="store", default=None,
                   help="the results store (default: $FAIRARD_RESULTS, else data/results)")
    p.set_defaults(fn=fn, subparser=p)
    return p


def _add_common(p, *, train: bool):
    p.add_argument("--dataset", default="cifar10", choices=sorted(D.NUM_CLASSES))
    p.add_argument("--data-root", default=None, help="data folder (default: $FAIRARD_DATA or data/)")
    p.add_argument("--n-per-class", type=arg(checks.check_int, 1, all_word=True), default=None,
                   help="images per class of a class-balanced subset (>= 1), or 'all' (the default)")
    p.add_argument("--device", type=arg(checks.check_device), default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=arg(checks.check_int, 0), default=0, help="an integer >= 0")
    if not train:
        return
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.jsonl, final.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=arg(checks.check_int, 1), help="an integer >= 1 (default: the method's)")
    p.add_argument("--milestones", type=arg(checks.check_milestones),
                   help="comma-separated increasing epochs (>= 1) where lr x0.1, or none")
    p.add_argument("--lr", type=arg(checks.check_float, 0, strict=True), help="a finite number > 0")
    p.add_argument("--weight-decay", type=arg(checks.check_float, 0), help="a finite number >= 0")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--batch-size", type=arg(checks.check_int, 1), help="an integer >= 1 (default: the method's)")
    p.add_argument("--lr-schedule", default="step", choices=["step", "official_single_decay"])
    p.add_argument("--beta", type=arg(checks.check_float, 0), default=2.0,
                   help="Fair-* weighting exponent, a finite number >= 0 (0: uniform weights)")
    p.add_argument("--clamp", type=arg(checks.check_clamp), default=(5 / 6, 5 / 2),
                   help="LOW,HIGH with 0 < LOW <= HIGH, or none")
    p.add_argument("--difficulty", default="kappa", choices=["kappa", "robust_acc", "adv_loss", "clean_acc"])
    p.add_argument("--attack-steps", type=arg(checks.check_int, 1),
                   help="training attack steps, an integer >= 1 (default: the method's)")
    p.add_argument("--val-per-class", type=arg(checks.check_int, 0), default=0,
                   help="held-out validation images per class (0: none)")
    p.add_argument("--init-checkpoint", help="start from these weights (FRL fine-tunes a robust model)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. tau=30")
    p.add_argument("--student-kw", action="append", metavar="KEY=VALUE", help="model kwarg, e.g. width=32")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--engine", default="eager", choices=["eager", "graph"],
                   help="graph (CUDA): the training step replayed from a CUDA graph; same weights as eager")
    p.add_argument("--monitor-n", type=arg(checks.check_int, 0), default=500,
                   help="test images for the per-epoch clean/PGD monitor (0: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fairard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evaluate", help="per-class robustness of a checkpoint")
    _add_common(p, train=False)
    p.add_argument("--arch", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attacks", default="clean,fgsm,pgd20,cw20,aa")
    p.add_argument("--eps", type=arg(checks.check_float, 0, strict=True, high=1), default=8 / 255,
                   help="L-inf radius in [0, 1] pixel units, 0 < eps <= 1 (default 8/255)")
    p.add_argument("--batch-size", type=arg(checks.check_int, 1), default=256)
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("export", help="a checkpoint as a RobustBench-style pair: state-dict .pt + JSON model card")
    _add_common(p, train=False)
    p.add_argument("--arch", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="path stem: writes STEM.pt and STEM.json")
    p.add_argument("--name", default=None, help="model name in the JSON (default: the architecture)")
    p.add_argument("--attacks", default="clean,aa", help="evaluated and recorded per class (clean and aa: the card)")
    p.add_argument("--eps", type=arg(checks.check_float, 0, strict=True, high=1), default=8 / 255,
                   help="L-inf radius in [0, 1] pixel units, 0 < eps <= 1 (default 8/255)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("train", help="distil a student (ard, fair-ard, rslad, ...)")
    _add_common(p, train=True)
    p.add_argument("--method", required=True)
    p.add_argument("--student", default="resnet18")
    p.add_argument("--teacher")
    p.add_argument("--teacher-checkpoint")
    p.add_argument("--teacher-kw", action="append", metavar="KEY=VALUE")
    p.add_argument("--nat-teacher")
    p.add_argument("--nat-teacher-checkpoint")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("train-teacher", help="train a teacher (natural, pgd_at, trades)")
    _add_common(p, train=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--method", required=True, choices=["natural", "pgd_at", "trades"])
    p.set_defaults(fn=cmd_train_teacher)

    p = sub.add_parser("demo", help="small end-to-end run on CIFAR-10 (teacher, ARD vs Fair-ARD, evaluation)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", type=arg(checks.check_device), default="auto")
    p.add_argument("--seed", type=arg(checks.check_int, 0), default=0)
    p.add_argument("--n-per-class", type=arg(checks.check_int, 1, all_word=True), default=500,
                   help="training images per class (>= 1) or 'all'")
    p.add_argument("--eval-per-class", type=arg(checks.check_int, 1, all_word=True), default=100,
                   help="test images per class (>= 1) or 'all'")
    p.add_argument("--teacher-epochs", type=arg(checks.check_int, 1), default=4)
    p.add_argument("--student-epochs", type=arg(checks.check_int, 1), default=4)
    p.add_argument("--runs", default="data/results/demo-runs")
    p.add_argument("--out", default="data/results/demo.json")
    p.set_defaults(fn=cmd_demo)

    for name, fn, text in (("plan", cmd_plan, "list a study's runs: cached, pending, claimed, failed"),
                           ("run", cmd_run, "compute a study's pending runs (local workers or SLURM) and print its summary"),
                           ("study", cmd_run, "the same as run (kept for old scripts)")):
        p = _add_study(sub, name, fn, text)
        if name == "plan":
            p.add_argument("--json", action="store_true", help="machine-readable: every run with id, key, status")
            continue
        p.add_argument("--executor", default="local", choices=["local", "slurm"])
        p.add_argument("--jobs", type=int, default=None, help="local CPU workers, the cores split between them (on a GPU machine: --jobs-per-gpu)")
        p.add_argument("--gpus", default=None, help="local GPU workers on these GPUs, e.g. 0,1 (default: all visible)")
        p.add_argument("--jobs-per-gpu", type=int, default=1, help="runs sharing one GPU (local and slurm)")
        p.add_argument("--tasks", type=int, default=None, help="slurm: tasks of the array job (default 1)")
        p.add_argument("--partition", default=None, help="slurm: partition")
        p.add_argument("--time", type=int, default=None, help="slurm: minutes per task (default 1440)")
        p.add_argument("--gpus-per-task", type=int, default=None, help="slurm: GPUs per task (default 1)")
        p.add_argument("--cluster", default=None, choices=["slurm", "local", "debug"],
                       help="submitit's cluster type (default: slurm when sbatch exists; local: this machine)")
        p.add_argument("--claim-timeout", type=float, default=None,
                       help="seconds without heartbeat before another worker takes a run over (default 120)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("worker", help="claim and compute queued runs of a store until none is left")
    p.add_argument("--store", default=None, help="the results store (default: $FAIRARD_RESULTS, else data/results)")
    p.add_argument("--device", default=None, help="device for every run (default: each run's own)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--claim-timeout", type=float, default=None)
    p.add_argument("--progress", action="store_true", help="tqdm bars")
    p.add_argument("--quiet", action="store_true", help="no line per run and per epoch")
    p.set_defaults(fn=cmd_worker)
    return parser


def _raised_on_purpose(err: BaseException) -> bool:
    """True for an error that fairard raised itself to report bad input (a ``raise`` statement in the package,
    or an ``InputError`` anywhere); False for one from inside a library or a failed operation (a bug): those
    keep their traceback."""
    if isinstance(err, checks.InputError):
        return True
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    package = str(Path(__file__).resolve().parent)
    return str(Path(filename).resolve()).startswith(package) and linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def main(argv=None) -> int:
    from .train import TrainingDiverged

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # plan/run/study: the rest are the study's options
    if extra and "study" not in vars(args):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.options = extra
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, TrainingDiverged) as err:
        if not _raised_on_purpose(err):
            raise
        print(f"error: {err}", file=sys.stderr)  # bad input: one clear line, no traceback
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
