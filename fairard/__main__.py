"""Command line: ``python -m fairard {evaluate,train,train-teacher,demo,study} ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import data as D
from .utils import provenance, resolve_device, write_json


def _floats(text: str) -> tuple:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _clamp(text: str):
    return None if text.lower() in ("none", "off") else _floats(text)


def _options(pairs) -> dict:
    """KEY=VALUE pairs; values parsed as int, float, bool or left as strings."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"error: option {pair!r} must look like KEY=VALUE (e.g. tau=30)")
        key, value = pair.split("=", 1)
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        else:
            value = {"true": True, "false": False}.get(value.lower(), value)
        out[key.strip()] = value
    return out


def load_test_images(dataset: str, root, n_per_class, device, seed=0):
    """``fairard.data.test_tensors`` with the data root first, as the commands pass it."""
    return D.test_tensors(dataset, n_per_class, device, seed, root)


def cmd_evaluate(args) -> int:
    from .evaluate import check_attacks, evaluate, format_table
    from .models import build_model, load_checkpoint

    attacks = check_attacks(args.attacks)
    build_model(args.arch, D.NUM_CLASSES[args.dataset])  # unknown arch: error listing the valid ones
    device = resolve_device(args.device)
    model = load_checkpoint(args.arch, args.checkpoint, num_classes=D.NUM_CLASSES[args.dataset]).to(device)
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
        attack_steps=args.attack_steps, method_options=_options(args.option),
        student_kwargs=_options(args.student_kw), teacher_kwargs=_options(getattr(args, "teacher_kw", None)),
        seed=args.seed, device=args.device, amp=args.amp, monitor_n=args.monitor_n)


def _run_training(cfg, out: Path, resume: bool) -> int:
    from .train import init_distributed, train

    init_distributed()
    if (out / "checkpoint.pt").exists() and not resume:
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or choose a new --out")
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

    device = resolve_device(args.device)
    out = Path(args.runs)
    common = dict(dataset="cifar10", data_root=args.data_root, n_per_class=args.n_per_class, seed=args.seed,
                  device=args.device, monitor_n=0, batch_size=128)
    teacher_cfg = TrainConfig(method="pgd_at", student="resnet20", epochs=args.teacher_epochs, milestones=(),
                              **common)
    teacher_dir = out / f"teacher-{teacher_cfg.key()}"
    teacher = train(teacher_cfg, teacher_dir)
    x, y = load_test_images("cifar10", args.data_root, args.eval_per_class, device, args.seed)
    names = D.CLASS_NAMES["cifar10"]
    results = {}
    results["teacher (resnet20, PGD-AT)"] = evaluate(teacher, x, y, attacks=("clean", "pgd20"), class_names=names,
                                                    progress=False, check_large_eps=0)
    for method in ("ard", "fair-ard"):
        cfg = TrainConfig(method=method, student="resnet8", teacher="resnet20",
                          teacher_checkpoint=str(teacher_dir / "final.pt"), epochs=args.student_epochs,
                          milestones=(), **common)
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

    module = importlib.import_module(f".studies.{args.name}", __package__)
    fields = dict(methods=args.methods, attacks=args.attacks, seeds=args.seeds, results_dir=args.results,
                  overrides=args.overrides, progress=not args.quiet)
    if args.name == "main_results":
        fields.update(other_seeds=args.other_seeds, headline=args.headline)
    setup = module.validate(args.profile, **{k: v for k, v in fields.items() if v is not None})
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
    p.add_argument("--n-per-class", type=int, default=None, help="class-balanced subset size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0)
    if not train:
        return
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.jsonl, final.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--epochs", type=int)
    p.add_argument("--milestones", type=_ints, help="comma-separated epochs where lr x0.1")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr-schedule", default="step", choices=["step", "official_single_decay"])
    p.add_argument("--beta", type=float, default=2.0, help="Fair-* weighting exponent")
    p.add_argument("--clamp", type=_clamp, default=(5 / 6, 5 / 2), help="LOW,HIGH or none")
    p.add_argument("--difficulty", default="kappa", choices=["kappa", "robust_acc", "adv_loss", "clean_acc"])
    p.add_argument("--attack-steps", type=int)
    p.add_argument("--val-per-class", type=int, default=0)
    p.add_argument("--init-checkpoint", help="start from these weights (FRL fine-tunes a robust model)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="method option, e.g. tau=30")
    p.add_argument("--student-kw", action="append", metavar="KEY=VALUE", help="model kwarg, e.g. width=32")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"])
    p.add_argument("--monitor-n", type=int, default=500)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fairard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("evaluate", help="per-class robustness of a checkpoint")
    _add_common(p, train=False)
    p.add_argument("--arch", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--attacks", default="clean,fgsm,pgd20,cw20,aa")
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--batch-size", type=int, default=256)
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
    p.add_argument("--eps", type=float, default=8 / 255)
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
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-per-class", type=int, default=500)
    p.add_argument("--eval-per-class", type=int, default=100)
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--student-epochs", type=int, default=4)
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


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
