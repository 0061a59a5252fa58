"""Command line: ``python -m fairard {evaluate,train,train-teacher,demo,study} ...``.

Every option is checked before any data is loaded or any model is built (``fairard.checks``): a bad value
ends in one line naming the option, the value and what is valid, with exit code 2. An error that is not the
user's (a bug) still shows its traceback.
"""
from __future__ import annotations

import argparse
import linecache
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
        seed=args.seed, device=args.device, amp=args.amp, monitor_n=args.monitor_n)


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


STUDIES = ("main_results", "inheritance", "capacity_gap")


def cmd_study(args) -> int:
    """A notebook's study without Jupyter (e.g. on a GPU server): the same ``validate`` + study call,
    results cached under ``$FAIRARD_RESULTS``, summary tables printed."""
    import importlib

    from . import tables
    from .store import results_dir

    if args.results:
        checks.check_output_dir(args.results, "--results")
    module = importlib.import_module(f".studies.{args.name}", __package__)
    fields = dict(methods=args.methods, attacks=args.attacks, seeds=args.seeds, results_dir=args.results,
                  overrides=args.overrides, progress=not args.quiet)
    if args.name == "main_results":
        fields.update(other_seeds=args.other_seeds, headline=args.headline)
    setup = module.validate(args.profile, **{k: v for k, v in fields.items() if v is not None})
    checks.check_output_dir(results_dir(), "the results folder ($FAIRARD_RESULTS or data/results)")
    print(setup.describe(), flush=True)
    study = module.study(setup)
    attacks = list(setup.attacks)
    print("\n" + tables.markdown_table(tables.summarize_runs(study.results, attacks), attacks))
    if setup.headline_pairs:
        print("\n" + tables.headline_markdown(tables.headline(study.results, setup.headline_pairs), setup))
    print(f"\n{len(study.results)} runs, {len(study.computed)} cache entries written, {study.seconds:.0f} s; "
          f"results under {results_dir()}")
    return 0


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

    p = sub.add_parser("study", help="run a notebook's study headless (main_results, inheritance, capacity_gap)")
    p.add_argument("name", choices=STUDIES)
    p.add_argument("--profile", default="quick")
    p.add_argument("--methods", default=None, help="comma-separated, e.g. ard,fair-ard")
    p.add_argument("--headline", default=None, help="base methods compared with their fair- version, e.g. ard,rslad")
    p.add_argument("--attacks", default=None)
    p.add_argument("--seeds", default=None)
    p.add_argument("--other-seeds", default=None)
    p.add_argument("--overrides", default=None, help='profile fields as JSON, e.g. \'{"student_epochs": 10}\'')
    p.add_argument("--results", default=None, help="results folder (default: $FAIRARD_RESULTS or data/results)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_study)
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

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, TrainingDiverged) as err:
        if not _raised_on_purpose(err):
            raise
        print(f"error: {err}", file=sys.stderr)  # bad input: one clear line, no traceback
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
