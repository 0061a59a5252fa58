"""Runs: what a study computes, as data, and how one process computes it.

A ``Run`` is one unit of work: a teacher to train, a teacher to evaluate, or a student to train and
evaluate per class; ``needs`` holds the runs it reads (its teachers).  ``student_config`` /
``teacher_config`` build a ``TrainConfig`` from a profile; ``student_run`` / ``teacher_run`` /
``teacher_eval_run`` wrap them as runs.  Where a run's files live and what its key is are the store's
business (``fairard.store``): ``Run.output()`` is its finished file, ``Run.load()`` reads it back.

``execute(run)`` computes a run in this process, its dependencies first: each finished one is read
from the store, each pending one claimed (``fairard.store.Claim``), computed and released, and one that
another worker holds is waited for.  ``run(cfg)`` is ``execute`` for one student config.  Pools of
workers and SLURM are in ``fairard.executors``; each study (``fairard.studies``) turns its parameters
into a list of runs (``plan``) and reads them back (``collect``) as a ``Study``.
"""
from __future__ import annotations

import functools
import json
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch

from . import data as D
from .evaluate import EVAL_ATTACKS, EVALUATION_VERSION, check_attacks, evaluate, large_eps_accuracy, sanity_report
from .methods import METHODS, parse_method_name
from .models import build_model, load_checkpoint
from .graph_step import engine_for
from .profiles import BASE_METHODS, PROFILES, Profile, Setup, check_methods, dataset_label, dataset_note
from .store import (CHECKPOINTS_READ, REPO, Claim, claim_holder, clean_temp_files, content_hash, data_fingerprint,
                    file_sha256, load_result, portable_path, read_json, read_log, result_file, results_dir, run_dir,
                    run_key, train_key)
from .train import TrainConfig, train
from .utils import provenance, quarantine, resolve_device, write_json

POLL_S = 2.0  # how often a process waiting for another worker's run looks again
# A run that the trainer refuses by design (a difficulty measure the method does not record) is skipped by the
# labelled studies with its reason, not treated as a crash.
REFUSALS = ("ClassStats has no",)


_EPOCH_OPTIONS = {"iad": ("begin",), "cfa": ("begin",), "frl-rw": ("rate1_halving",), "frl-rmrw": ("rate1_halving",)}
# FRL's hot start (its init_checkpoint): a PGD-AT model of the student's architecture, trained like the profile's
# teacher (same epochs and data), cached like any teacher.
INIT_METHOD = "pgd_at"


def _scaled_schedule(method: str, epochs: int | None):
    """Milestones (and epoch-valued options) of ``method`` shrunk proportionally to ``epochs``."""
    base, _ = parse_method_name(method)
    official = METHODS[base].optim
    if epochs is None or epochs == official.epochs:
        return None, {}
    milestones = tuple(sorted({round(m * epochs / official.epochs) for m in official.milestones} - {0, epochs}))
    options = {}
    defaults = METHODS[base].option_defaults()
    for opt in _EPOCH_OPTIONS.get(base, ()):
        options[opt] = max(1, round(defaults[opt] * epochs / official.epochs))
    return milestones, options


def teacher_config(p: Profile, *, role: str = "teacher", seed: int = 0, arch: str | None = None) -> TrainConfig:
    """The (cached) teacher of profile ``p``; role 'nat_teacher' gives MTARD's natural teacher, role 'init'
    FRL's robust starting point for the student architecture ``arch``. The robust teacher follows the
    profile's ``teacher_recipe`` (TrainConfig fields) where it has one."""
    arch, method, epochs = {"teacher": (p.teacher, p.teacher_method, p.teacher_epochs),
                            "nat_teacher": (p.nat_teacher, "natural", p.nat_teacher_epochs),
                            "init": (arch, INIT_METHOD, p.teacher_epochs)}[role]
    milestones, _ = _scaled_schedule(method, epochs)
    kwargs = dict(method=method, student=arch, dataset=p.dataset, n_per_class=p.n_per_class, epochs=epochs,
                  milestones=milestones, attack_steps=p.attack_steps, batch_size=p.batch_size, seed=seed,
                  student_kwargs=dict(p.teacher_kwargs) if role == "teacher" else {}, device=p.device, monitor_n=0,
                  engine=engine_for(p.engine, method))
    if role == "teacher":  # the recipe's schedule gives way to an explicit teacher_epochs (scaled as above)
        drop = ("epochs", "milestones") if p.teacher_epochs is not None else ()
        kwargs.update({k: v for k, v in p.teacher_recipe.items() if k not in drop})
    return TrainConfig(**kwargs)


def teacher_checkpoint(p: Profile, *, role: str = "teacher", arch: str | None = None) -> str:
    """Path of the teacher's weights: the profile's checkpoint, or where its trained teacher is stored
    (trained by ``teacher_run``; nothing is trained here).  Role 'init': FRL's start for architecture ``arch``."""
    if role == "teacher" and p.teacher_checkpoint:
        return str(Path(p.teacher_checkpoint).expanduser().absolute())
    cfg = teacher_config(p, role=role, arch=arch)
    return str(results_dir() / "teachers" / f"{cfg.method}-{cfg.student}-{train_key(cfg)}" / "final.pt")


def student_config(p: Profile, method: str, *, student: str | None = None, seed: int = 0, **overrides) -> TrainConfig:
    """A distillation run of profile ``p``: its teacher(s), subset, shortened schedule; ``overrides``
    are TrainConfig fields (beta, difficulty, clamp, lr_schedule, method_options, ...)."""
    check_methods([method])
    base, _ = parse_method_name(method)
    milestones, options = _scaled_schedule(method, p.student_epochs)
    cls = METHODS[base]
    kwargs = dict(method=method, student=student or p.students[0], dataset=p.dataset, n_per_class=p.n_per_class,
                  epochs=p.student_epochs, milestones=milestones, attack_steps=p.attack_steps,
                  batch_size=p.batch_size, seed=seed, device=p.device, monitor_n=0,
                  method_options=options, engine=engine_for(p.engine, method))
    if cls.needs_teacher:
        kwargs.update(teacher=p.teacher, teacher_checkpoint=teacher_checkpoint(p), teacher_kwargs=dict(p.teacher_kwargs))
    if getattr(cls, "needs_nat_teacher", False) or base == "mtard":
        kwargs.update(nat_teacher=p.nat_teacher, nat_teacher_checkpoint=teacher_checkpoint(p, role="nat_teacher"))
    if base == "cfa":
        kwargs["val_per_class"] = max(1, (p.n_per_class or 5000) // 50)  # FAWA's validation split (2 %)
    if cls.needs_init_checkpoint:  # FRL: fine-tune the cached PGD-AT run of the same architecture
        kwargs["init_checkpoint"] = teacher_checkpoint(p, role="init", arch=kwargs["student"])
    if cls.needs_validation:  # FRL's script holds out 300 of 5,000 images per class (6 %)
        kwargs["val_per_class"] = max(1, (p.n_per_class or 5000) * 3 // 50)
    quirks = dict(p.method_overrides.get(method, {}))
    options = {**options, **quirks.pop("method_options", {})}
    method_options = {**options, **overrides.pop("method_options", {})}
    kwargs.update(quirks)
    kwargs.update(overrides)
    kwargs["method_options"] = method_options
    return TrainConfig(**kwargs)


def eval_settings(p: Profile, attacks=None) -> dict:
    """What an evaluation's numbers depend on besides the model: attacks, images per class, eps, seed and
    the evaluation code's version (``fairard.evaluate.EVALUATION_VERSION``)."""
    return {"attacks": list(check_attacks(attacks or p.attacks)), "eval_per_class": p.eval_per_class,
            "aa_per_class": p.aa_per_class, "eps": 8 / 255, "seed": 0, "version": EVALUATION_VERSION}


def _attack_images(settings: dict, attack: str):
    """Test images per class an attack runs on: AutoAttack may use its own smaller subset."""
    return settings["eval_per_class"] if EVAL_ATTACKS[attack].batched else (settings["aa_per_class"]
                                                                         or settings["eval_per_class"])


def evaluate_model(model, dataset: str, settings: dict, device, progress: bool = True, cache: Path | None = None) -> dict:
    """Per-class evaluation under every attack of ``settings``.

    AutoAttack runs on its own class-balanced subset when ``aa_per_class`` is below ``eval_per_class``
    (its per-class numbers then stand alone: the AA <= PGD <= clean check covers only the attacks run on
    the same images).  With ``cache`` (a folder), each attack's evaluation is stored there on its own
    (``evals/<attack>-<key>.json``) and reused: adding an attack to a study evaluates only that attack.
    ``model`` may be a zero-argument callable that builds the model; it is called only if something
    is missing from the cache."""
    names = D.CLASS_NAMES[dataset]
    attacks = list(settings["attacks"])
    n_eval = settings["eval_per_class"]
    files = {a: (cache / "evals" / f"{a}-{content_hash({'attack': a, 'per_class': _attack_images(settings, a), 'eps': settings['eps'], 'seed': settings['seed'], 'version': EVALUATION_VERSION})}.json"
                 if cache is not None else None) for a in attacks}
    eps1_file = (cache / "evals" / f"eps1-{content_hash({'per_class': n_eval, 'seed': settings['seed'], 'version': EVALUATION_VERSION})}.json"
                 if cache else None)
    done = {a: read_json(f, ("summary", "n", "seconds")) for a, f in files.items() if f is not None}
    done = {a: d for a, d in done.items() if d is not None}
    eps1 = read_json(eps1_file, ("eps1_pgd_accuracy",)) if eps1_file is not None else None
    missing = [a for a in attacks if a not in done]
    if missing or eps1 is None:
        model = model() if callable(model) and not isinstance(model, torch.nn.Module) else model
        groups: dict = {}
        for a in missing:
            groups.setdefault(_attack_images(settings, a), []).append(a)
        images = functools.lru_cache(maxsize=None)(lambda n: D.test_tensors(dataset, n, device))  # read once per subset
        for per_class, group in groups.items():
            x, y = images(per_class)
            r = evaluate(model, x, y, attacks=group, class_names=names, progress=progress, seed=settings["seed"],
                         check_large_eps=0)
            for a in group:
                done[a] = {"attack": a, "per_class_images": per_class, "n": r["n"], "summary": r["attacks"][a],
                           "seconds": r["seconds"][a]}
                if files[a] is not None:
                    write_json(files[a], done[a])
        if eps1 is None:  # the gradient-masking check: PGD at eps = 1 must leave ~0 accuracy
            x, y = images(n_eval)
            n = min(200, len(x))
            eps1 = {"eps1_pgd_accuracy": large_eps_accuracy(model, x[:n], y[:n], seed=settings["seed"]), "n": n}
            if eps1_file is not None:
                write_json(eps1_file, eps1)
    summaries = {a: done[a]["summary"] for a in attacks}
    same_images = {a: s for a, s in summaries.items() if _attack_images(settings, a) == n_eval}
    warnings = sanity_report(same_images)
    if eps1["eps1_pgd_accuracy"] > 0.05:
        warnings.append(f"PGD at eps=1 leaves {eps1['eps1_pgd_accuracy']:.1%} accuracy: gradients may be masked")
    main_n = next((done[a]["n"] for a in attacks if _attack_images(settings, a) == n_eval), done[attacks[0]]["n"])
    return {"eps": settings["eps"], "n": main_n, "class_names": list(names), "seed": settings["seed"],
            "attacks": summaries, "seconds": {a: done[a]["seconds"] for a in attacks},
            "images": {a: done[a]["n"] for a in attacks},
            "sanity": {"warnings": warnings, "eps1_pgd_accuracy": eps1["eps1_pgd_accuracy"]}}


# ---- runs as data ------------------------------------------------------------------------------------------
def as_profile(p: Profile) -> Profile:
    """The plain Profile of a Setup (what a run needs of it: sizes, attacks, teacher)."""
    return p if type(p) is Profile else Profile(**{f.name: getattr(p, f.name) for f in fields(Profile)})


@functools.lru_cache(maxsize=64)
def _readable(path: str, size: int, mtime_ns: int) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception as err:  # truncated/empty/garbage: torch raises RuntimeError, EOFError, pickle errors
        quarantine(path, f"{type(err).__name__}: {err}")
        return False


def readable_checkpoint(path) -> bool:
    """Whether a checkpoint loads (checked once per path, size and mtime); an unreadable one is moved aside."""
    st = Path(path).stat()
    return _readable(str(path), st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, eq=False)
class Run:
    """One unit of work of a study.  ``kind``: "teacher" (train ``config``), "teacher_eval" (evaluate the
    profile's teacher) or "student" (train ``config``, evaluate it); ``attacks``: the evaluation's (empty:
    the profile's); ``needs``: the runs whose checkpoints it reads."""
    kind: str
    profile: Profile
    config: TrainConfig | None = None
    attacks: tuple = ()
    needs: tuple = ()

    @property
    def name(self) -> str:
        if self.kind == "teacher":
            return f"teacher {self.config.method} {self.config.student}"
        if self.kind == "teacher_eval":
            return f"teacher evaluation {self.profile.teacher}"
        return f"{self.config.method} {self.config.student} seed {self.config.seed}"

    @property
    def settings(self) -> dict:
        return eval_settings(self.profile, self.attacks or None)

    @functools.cached_property
    def id(self) -> str:
        """A name for the run that is known before its teachers exist (the queue's file name); ``key()`` is
        its content key, known once they do."""
        ident = {"kind": self.kind, "data": data_fingerprint(self.profile.dataset)}
        if self.config is not None:
            ident["config"] = self.config.key()
        if self.kind != "teacher":
            ident["eval"] = self.settings
        if self.kind == "teacher_eval":
            ident["teacher"] = [portable_path(teacher_checkpoint(self.profile)), self.profile.teacher,
                                self.profile.teacher_kwargs]
        return content_hash(ident)

    def _teacher_key(self) -> str:
        p = self.profile
        return content_hash({"ckpt": file_sha256(teacher_checkpoint(p)), "arch": p.teacher, "kw": p.teacher_kwargs,
                             "data": data_fingerprint(p.dataset)})

    def key(self) -> str:
        """The content key (``fairard.store``); FileNotFoundError while a checkpoint it reads does not exist."""
        if self.kind == "teacher":
            return train_key(self.config)
        if self.kind == "student":
            return run_key(self.config, self.settings)
        return content_hash({"teacher": self._teacher_key(), "eval": self.settings})

    def folder(self) -> Path:
        if self.kind == "teacher":
            return results_dir() / "teachers" / f"{self.config.method}-{self.config.student}-{self.key()}"
        if self.kind == "student":
            return run_dir(self.config)
        return results_dir() / "teacher-evals" / f"{self.profile.teacher}-{self._teacher_key()}"

    def output(self) -> Path:
        """The file that exists once the run is finished."""
        if self.kind == "teacher":
            return self.folder() / "final.pt"
        if self.kind == "student":
            return result_file(self.config, self.settings)
        return self.folder() / f"result-{self.key()}.json"

    def done(self) -> bool:
        try:
            return self.output().exists()
        except FileNotFoundError:  # a teacher it reads is not there yet
            return False

    def load(self) -> dict | None:
        """The finished result, None when there is none (an unreadable file is reported and moved aside)."""
        try:
            out = self.output()
        except FileNotFoundError:
            return None
        if self.kind == "teacher":
            return {"kind": "teacher", "checkpoint": str(out)} if out.exists() and readable_checkpoint(out) else None
        return load_result(out)

    def failure(self) -> dict | None:
        """What the last attempt raised (``failed.json`` in its folder), if it failed."""
        try:
            return read_json(self.folder() / "failed.json", ("error",))
        except FileNotFoundError:
            return None

    def compute(self, *, progress: bool = True) -> dict:
        """Train and/or evaluate; the caller holds the claim and the needs are finished."""
        if self.kind == "teacher":
            train(self.config, self.folder(), progress=progress, recover=True)
            return {"kind": "teacher", "checkpoint": str(self.output()), "from_cache": False, "trained": True}
        if self.kind == "student":
            return _train_and_evaluate(self.config, self.profile, self.settings, self.output(), progress)
        return _evaluate_teacher(self.profile, self.settings, self.folder(), self.output(), progress)

    def on(self, device: str) -> Run:
        """The same run on another device (the device is not part of any key)."""
        return replace(self, profile=replace(self.profile, device=device),
                       config=None if self.config is None else replace(self.config, device=device),
                       needs=tuple(n.on(device) for n in self.needs))

    def to_json(self) -> dict:
        cfg = None if self.config is None else {
            **self.config.to_dict(), **{role: portable_path(getattr(self.config, role)) for role in CHECKPOINTS_READ}}
        return {"kind": self.kind, "name": self.name, "profile": self.profile.to_dict(), "config": cfg,
                "attacks": list(self.attacks), "needs": [n.to_json() for n in self.needs]}

    @classmethod
    def from_json(cls, d: dict) -> Run:
        def local(path):  # a path inside the store, written relative to it (the store may be mounted elsewhere)
            return str(results_dir() / path[len("$FAIRARD_RESULTS/"):]) if path and path.startswith("$FAIRARD_RESULTS/") else path

        profile = Profile(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["profile"].items()})
        cfg = d["config"] and TrainConfig(**{**d["config"], **{role: local(d["config"][role]) for role in CHECKPOINTS_READ}})
        return cls(d["kind"], profile, cfg, tuple(d["attacks"]), tuple(cls.from_json(n) for n in d["needs"]))


def teacher_run(p: Profile, role: str = "teacher", arch: str | None = None) -> Run | None:
    """Training the profile's teacher (``role`` "nat_teacher": MTARD's natural one; "init": FRL's robust
    starting point for architecture ``arch``); None when the profile names a teacher checkpoint."""
    if role == "teacher" and p.teacher_checkpoint:
        return None
    return Run("teacher", as_profile(p), teacher_config(p, role=role, arch=arch))


def teacher_eval_run(p: Profile, attacks=None) -> Run:
    """Evaluating the profile's teacher per class (after training it, if the profile does not name one)."""
    needs = tuple(t for t in (teacher_run(p),) if t is not None)
    return Run("teacher_eval", as_profile(p), None, tuple(attacks or ()), needs)


def student_run(p: Profile, cfg: TrainConfig, attacks=None) -> Run:
    """Training and evaluating ``cfg`` (built by ``student_config(p, ...)``) under the profile's (or
    ``attacks``) evaluation; the runs that train the checkpoints it reads from the store are its needs."""
    reads = {getattr(cfg, role) for role in CHECKPOINTS_READ} - {None}
    candidates = [teacher_run(p), teacher_run(p, "nat_teacher")] + ([teacher_run(p, "init", cfg.student)]
                                                                    if cfg.init_checkpoint else [])
    needs = {t.id: t for t in candidates if t is not None and str(t.output()) in reads}
    return Run("student", as_profile(p), cfg, tuple(attacks or ()), tuple(needs.values()))


def execute(run: Run, *, progress: bool = True, wait: bool = True, epoch_lines: bool = True) -> dict | None:
    """Compute ``run`` in this process, its needs first; returns its result (``from_cache`` True when it
    was finished already).  A run another worker holds is waited for (``wait``; else None is returned).
    ``epoch_lines``: a line per finished epoch on stderr (``EpochWatch``)."""
    for need in run.needs:
        if execute(need, progress=progress, wait=wait, epoch_lines=epoch_lines) is None:
            return None
    said = False
    while True:
        cached = run.load()
        if cached is not None:
            return {**cached, "from_cache": True}
        claim = Claim(run.folder())
        if claim.acquire():
            break
        if not wait:
            return None
        if not said:
            holder = claim_holder(run.folder()) or {}
            print(f"fairard: {run.name}: waiting for {holder.get('host')} pid {holder.get('pid')}, which runs it",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(POLL_S)
    with claim:
        cached = run.load()  # finished while this process waited for the claim
        if cached is not None:
            return {**cached, "from_cache": True}
        clean_temp_files(run.folder())
        (run.folder() / "failed.json").unlink(missing_ok=True)
        try:
            with EpochWatch(run, enabled=epoch_lines):
                return run.compute(progress=progress)
        except Exception as err:
            write_json(run.folder() / "failed.json", {"error": f"{type(err).__name__}: {err}",
                                                      "refused": any(r in str(err) for r in REFUSALS)})
            raise


class EpochWatch:
    """While a run trains, one line per finished epoch on stderr (epoch, images/s), read from the run's
    log in the store: the same view a pool's monitor has of its workers' runs."""

    def __init__(self, run: Run, every: float = 1.0, enabled: bool = True):
        self.run, self.every, self.enabled, self._stop = run, every, enabled, threading.Event()

    def __enter__(self):
        if self.enabled and self.run.config is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        seen = len(read_log_quietly(self.run.folder()))
        while not self._stop.wait(self.every):
            log = read_log_quietly(self.run.folder())
            for record in log[seen:]:
                print(f"  {self.run.name}: {epoch_line(record, self.run.config)}", file=sys.stderr, flush=True)
            seen = max(seen, len(log))

    def __exit__(self, *exc):
        self._stop.set()


def read_log_quietly(folder) -> list[dict]:
    """The epochs logged so far (an unfinished or torn log reads as what it has)."""
    try:
        lines = (Path(folder) / "log.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out


def epoch_line(record: dict, cfg: TrainConfig) -> str:
    epochs = cfg.epochs if cfg.epochs is not None else METHODS[parse_method_name(cfg.method)[0]].optim.epochs
    return (f"epoch {record.get('epoch', 0) + 1}/{epochs}, {record.get('images_per_s', 0):.0f} img/s, "
            f"{record.get('seconds', 0):.0f} s")


def _train_and_evaluate(cfg: TrainConfig, p: Profile, settings: dict, target: Path, progress: bool) -> dict:
    out = run_dir(cfg)
    needs_training = not (out / "final.pt").exists()
    built = {}
    device = resolve_device(cfg.device)

    def model():  # the trained student (weights read from final.pt when training is cached); built once
        if "model" not in built:
            if not needs_training:
                try:
                    arch = build_model(cfg.student, D.NUM_CLASSES[cfg.dataset], **cfg.student_kwargs)
                    built["model"] = load_checkpoint(arch, out / "final.pt").to(device).eval()
                except Exception as err:  # unreadable: rewritten from the checkpoint (train resumes, nothing redone)
                    quarantine(out / "final.pt", f"{type(err).__name__}: {err}")
            if "model" not in built:
                built["model"] = train(cfg, out, progress=progress, recover=True)
        return built["model"]

    if needs_training:
        model()
    evaluation = evaluate_model(model, cfg.dataset, settings, device, progress=progress, cache=out)
    log = read_log(out)
    result = {
        "kind": "run", "key": run_key(cfg, settings), "train_key": train_key(cfg), "method": cfg.method,
        "student": cfg.student, "seed": cfg.seed, "profile": p.name, "config": cfg.to_dict(),
        "eval_settings": settings, "evaluation": evaluation,
        "class_weights_history": [h.get("class_weights") for h in log],
        "kappa_history": [h.get("class_stats", {}).get("kappa") for h in log],
        "train_seconds": sum(h.get("seconds", 0.0) for h in log),  # all epochs, resumed runs included
        "eval_seconds": sum(evaluation["seconds"].values()),
        "provenance": provenance(device), "dataset_note": dataset_note(cfg.dataset),
    }
    write_json(target, result)
    return {**result, "from_cache": False, "trained": needs_training}


def _evaluate_teacher(p: Profile, settings: dict, folder: Path, target: Path, progress: bool) -> dict:
    ckpt = teacher_checkpoint(p)
    device = resolve_device(p.device)

    def model():
        return load_checkpoint(build_model(p.teacher, D.NUM_CLASSES[p.dataset], **p.teacher_kwargs), ckpt).to(device)

    evaluation = evaluate_model(model, p.dataset, settings, device, progress=progress, cache=folder)
    result = {"kind": "teacher", "method": f"teacher ({p.teacher_method})", "student": p.teacher, "seed": 0,
              "key": target.stem.removeprefix("result-"), "checkpoint": portable_path(ckpt),
              "checkpoint_sha256": file_sha256(ckpt), "profile": p.name, "eval_settings": settings,
              "evaluation": evaluation, "provenance": provenance(device), "dataset_note": dataset_note(p.dataset)}
    write_json(target, result)
    return {**result, "from_cache": False}


def run(cfg: TrainConfig, *, attacks=None, profile: Profile | None = None, progress: bool = True) -> dict:
    """Train (or resume, or reuse) ``cfg`` and evaluate it per class; returns the result dict.

    Its teachers are trained first if the store lacks them.  Training is cached by ``train_key``
    (``run_dir``), each attack's evaluation inside it, and the assembled result per evaluation settings
    (``result_file``).  The result carries ``from_cache`` (not stored): True when nothing was trained or
    evaluated."""
    p = profile or PROFILES["quick"]
    return execute(student_run(p, cfg, attacks), progress=progress)


def report_line(run: Run, r: dict | None) -> str:
    """What happened to a run, in one line: cached, trained + evaluated, or only evaluated."""
    if r is None:
        failure = run.failure() or {}
        return f"{run.name}: " + ("skipped (" if failure.get("refused") else "FAILED (") + failure.get("error", "?") + ")"
    if r["from_cache"]:
        state = "cached"
    elif run.kind == "teacher":
        state = "trained"
    elif run.kind == "teacher_eval":
        state = f"evaluated {sum(r['evaluation']['seconds'].values()):.0f} s"
    elif r.get("trained", True):
        state = f"trained {r['train_seconds']:.0f} s + eval {r['eval_seconds']:.0f} s"
    else:
        state = "training cached; only the missing attacks evaluated"
    return f"{run.name}: {state}"


def run_all(configs, *, profile: Profile, attacks=None, progress: bool = True) -> list[dict]:
    """``run`` for each config, with one line per run saying trained or cached."""
    results = []
    for cfg in configs:
        r = run(cfg, attacks=attacks, profile=profile, progress=progress)
        print(report_line(student_run(profile, cfg, attacks), r), flush=True)
        results.append(r)
    return results


def run_path(result: dict) -> Path:
    """Directory of a run result (experiments.run_dir's layout, rebuilt from the result)."""
    method = result.get("run_method", result["method"])
    key = result.get("train_key", result["key"])  # results written before the split cache keyed the folder by "key"
    return results_dir() / "runs" / f"{method}-{result['student']}-s{result['seed']}-{key}"


def run_history(result: dict) -> list[dict]:
    """The per-epoch training log of a run: class_stats, class_weights (used), next_class_weights, lr, ..."""
    folder = run_path(result)
    if not (folder / "log.jsonl").exists() and not (folder / "checkpoint.pt").exists():
        raise FileNotFoundError(f"no training log at {folder / 'log.jsonl'}; is FAIRARD_RESULTS ({results_dir()}) the "
                                f"cache that holds run {result['key']}?")
    return read_log(folder)


def load_student(result: dict, device="cpu") -> torch.nn.Module:
    """The trained student of a run (final weights), in eval mode."""
    cfg = result["config"]
    model = build_model(cfg["student"], D.NUM_CLASSES[cfg["dataset"]], **cfg.get("student_kwargs", {}))
    return load_checkpoint(model, run_path(result) / "final.pt", map_location=device).to(device).eval()


def load_teacher(p: Profile, device="cpu", progress: bool = True) -> torch.nn.Module:
    """The profile's (cached) robust teacher, in eval mode."""
    teacher = teacher_run(p)
    if teacher is not None:
        execute(teacher, progress=progress)
    path = teacher_checkpoint(p)
    model = build_model(p.teacher, D.NUM_CLASSES[p.dataset], **p.teacher_kwargs)
    return load_checkpoint(model, path, map_location=device).to(device).eval()


test_images = D.test_tensors  # the evaluation's class-balanced test slice


# ---- a study's runs, read back --------------------------------------------------------------------------
def study_runs(setup: Setup, grid) -> list[Run]:
    """The runs of a (profile, method, student, seed) grid: each profile's teacher evaluation (its teacher
    run as a need), then one student run per grid point."""
    teachers = {}
    for prof, *_ in list(grid) or [(setup,)]:
        teachers.setdefault(prof.teacher, teacher_eval_run(prof))
    return list(teachers.values()) + [student_run(prof, student_config(prof, m, student=st, seed=s))
                                      for prof, m, st, s in grid]


def missing_error(runs, study: str) -> ValueError:
    names = ", ".join(r.name for r in runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
    return ValueError(f"{len(runs)} run(s) of {study} are not in the store {results_dir()}: {names}; compute them "
                      f"first: `python -m fairard run {study} ...` (same options) or the notebook")


def collect_study(setup: Setup, runs, study: str, computed=(), seconds: float = 0.0, executed=()) -> Study:
    """A ``Study`` from the store: the teacher evaluations and student results of ``runs`` (as ``study_runs``
    lists them); ``executed``: ids of the runs computed just now (the rest is marked ``from_cache``)."""
    loaded = {r.id: r.load() for r in runs}
    missing = [r for r in runs if loaded[r.id] is None]
    if missing:
        raise missing_error(missing, study)
    mark = lambda r: {**loaded[r.id], "from_cache": r.id not in executed}  # noqa: E731
    teachers = {r.profile.teacher: mark(r) for r in runs if r.kind == "teacher_eval"}
    results = [mark(r) for r in runs if r.kind == "student"]
    return Study(setup, results, teachers, list(computed), seconds)


@dataclass
class Study:
    """What one study call produced: run results, the teacher evaluation(s), and the cache entries it
    wrote (``computed``; empty when everything came from the cache)."""
    setup: Setup
    results: list
    teachers: dict             # teacher architecture -> its evaluation
    computed: list
    seconds: float

    @property
    def teacher(self) -> dict:
        """The (first) teacher's evaluation."""
        return next(iter(self.teachers.values()))

    def summary(self) -> str:
        n = len(self.results) + len(self.teachers)
        what = "everything came from the cache" if not self.computed else f"{len(self.computed)} cache entries written"
        return f"{len(self.results)} runs + {len(self.teachers)} teacher(s) = {n} results; {what}; {self.seconds:.0f} s"

    def caption(self, attack: str | None = None, results=None) -> str:
        """Provenance line for a table or figure: profile, data, seeds, commit, torch, device, AA subset."""
        results = self.results if results is None else results
        everything = list(results) + list(self.teachers.values())
        commits = sorted({r["provenance"]["git_commit"][:12] + ("-dirty" if r["provenance"]["git_commit"]
                          .endswith("-dirty") else "") for r in everything})
        torch_v = sorted({r["provenance"]["versions"]["torch"] or "?" for r in everything})
        devices = sorted({r["provenance"]["device_name"] or r["provenance"]["device"] for r in everything})
        seeds = sorted({r["seed"] for r in results})
        s = self.setup
        parts = [f"profile {s.name}", dataset_label(self.teacher["dataset_note"]),
                 f"seeds {','.join(map(str, seeds))}", f"commit {', '.join(commits)}",
                 f"torch {', '.join(torch_v)}", f"device {', '.join(devices)}",
                 f"eval {s.eval_per_class or 'all'} img/class"]
        if "aa" in s.attacks or "aa10" in s.attacks:
            parts.append(f"AA on {s.aa_per_class or s.eval_per_class or 'all'} img/class")
        if attack:
            parts.insert(0, attack)
        return " · ".join(parts) + " · run keys in the provenance table"


def load_recorded(*folders) -> Study:
    """Results folders computed elsewhere (e.g. ``results/h100-2026-11-22``, from a lent GPU) read back as one
    ``Study``: their finished runs and teacher evaluations, nothing trained or evaluated.  A relative folder is
    looked up in the checkout first.  Unfinished runs (no ``result*.json``) are skipped.

    Several folders (several GPU windows, each with the teacher it trained) are several replicates: every
    result and teacher evaluation carries ``window`` (its folder's name), the teachers are listed as
    ``"<arch> (<window>)"`` when there is more than one window, and the windows must share their settings
    (student epochs, subset, evaluation), else a ValueError names the ones that differ."""
    if not folders:
        raise ValueError("load_recorded needs at least one results folder")
    results, teachers, settings = [], {}, {}
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_absolute() and (REPO / folder).exists():
            folder = REPO / folder
        window = folder.name
        found = [{**json.loads(f.read_text()), "from_cache": True, "window": window}
                 for f in sorted(folder.glob("runs/*/result*.json"))]
        evals = [{**json.loads(f.read_text()), "from_cache": True, "window": window}
                 for f in sorted(folder.glob("teacher-evals/*.json")) + sorted(folder.glob("teacher-evals/*/result*.json"))]
        if not found or not evals:
            raise ValueError(f"{folder} holds no finished run (runs/*/result*.json) with a teacher evaluation "
                             f"(teacher-evals/); give the folder that fairard.runs wrote")
        cfg = found[0]["config"]
        settings[window] = (found[0]["profile"], cfg["epochs"], cfg["n_per_class"], cfg["teacher"],
                            json.dumps(found[0]["eval_settings"], sort_keys=True))
        results += found
        for t in evals:
            teachers[t["student"] if len(folders) == 1 else f"{t['student']} ({window})"] = t
    if len(set(settings.values())) > 1:
        raise ValueError(f"the windows {sorted(settings)} were run with different settings (profile, student epochs, "
                         f"subset, teacher, evaluation): {settings}; read them one by one")
    first, cfg = results[0], results[0]["config"]
    eval_settings = first["eval_settings"]
    base = PROFILES[first["profile"]]
    methods = tuple(dict.fromkeys(r["method"] for r in results))
    values = {f.name: getattr(base, f.name) for f in fields(base)}
    windows = f", {len(folders)} windows" if len(folders) > 1 else ""
    values.update(name=f"{base.name}, {cfg['epochs']} student epochs{windows}", attacks=tuple(eval_settings["attacks"]),
                  eval_per_class=eval_settings["eval_per_class"], aa_per_class=eval_settings["aa_per_class"],
                  seeds=tuple(sorted({r["seed"] for r in results})), teacher=cfg["teacher"] or base.teacher,
                  students=tuple(dict.fromkeys(r["student"] for r in results)), n_per_class=cfg["n_per_class"],
                  student_epochs=cfg["epochs"])
    headline = tuple(m for m in BASE_METHODS if m in methods and f"fair-{m}" in methods)
    return Study(Setup(**values, methods=methods, headline=headline), results, teachers, [], 0.0)


