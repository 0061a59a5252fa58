"""The graph engine (fairard.graph_step): the static-buffer step trains bit-identically to the eager trainer.

On CPU the static step runs uncaptured ("static eager"): same static inputs, in-place statistics, bf16 teacher
cast once and autocast without its cache as under capture. On CUDA the step is captured and replayed; those
tests are skipped without a GPU and run in benchmarks/gpu_session.sh."""
import pytest
import torch

from conftest import write_synthetic_cifar
from fairard.graph_step import GRAPH_METHODS, WARMUP_STEPS, StaticStep, check_graph_engine
from fairard.train import TrainConfig, Trainer

METHODS = ["fair-ard", "fair-rslad", "trades"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run by benchmarks/gpu_session.sh)")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return write_synthetic_cifar(tmp_path_factory.mktemp("tiny-data"), n_train=8, n_test=2)  # 5 batches of 16


def _cfg(root, teacher, method, **kw):
    base = dict(method=method, student="resnet8", data_root=str(root), epochs=2, milestones=(1,), batch_size=16,
                attack_steps=2, monitor_n=0, device="cpu", amp="bf16")
    if method != "trades":
        base.update(teacher="resnet8", teacher_checkpoint=str(teacher))
    base.update(kw)
    return TrainConfig(**base)


def _train(cfg, out, capture=None):
    """A fitted Trainer; ``capture`` False/True swaps in the static step uncaptured/captured."""
    trainer = Trainer(cfg, out, progress=False)
    if capture is not None:
        trainer._step = StaticStep(trainer, capture=capture)
    cudnn = torch.backends.cudnn
    saved = cudnn.benchmark, cudnn.deterministic
    if trainer.device.type == "cuda":  # deterministic convolutions, so that a difference is the engine's
        cudnn.benchmark, cudnn.deterministic = False, True
    try:
        trainer.fit(resume=False)
    finally:
        cudnn.benchmark, cudnn.deterministic = saved
    return trainer


def _max_weight_diff(a: Trainer, b: Trainer) -> float:
    sa, sb = a.student.state_dict(), b.student.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)


def _same_training(a: Trainer, b: Trainer) -> None:
    sa, sb = a.student.state_dict(), b.student.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "weights differ"
    for ha, hb in zip(a.history, b.history, strict=True):
        assert ha["loss"] == hb["loss"]
        assert ha["class_weights"] == hb["class_weights"] and ha["next_class_weights"] == hb["next_class_weights"]
        if a.device.type == "cpu":
            assert ha["class_stats"] == hb["class_stats"]  # kappa, robust/clean accuracy, loss per class
        else:  # CUDA's index_add_ sums floats in any order: counts are exact, the loss sums to rounding
            for name, values in ha["class_stats"].items():
                exact = name != "adv_loss"
                assert hb["class_stats"][name] == (values if exact else pytest.approx(values, rel=1e-5)), name


@pytest.mark.parametrize("method,amp", [(m, "bf16") for m in METHODS] + [("fair-rslad", "off")])
def test_static_step_trains_bit_identically_to_eager(tiny_root, teacher_ckpt, tmp_path, method, amp):
    """bf16 (autocast on CPU, as on CUDA) and fp32; RSLAD and TRADES backpropagate through two student forwards,
    whose weight gradients autocast's cast cache sums in bf16: the static step must keep that cache too."""
    cfg = _cfg(tiny_root, teacher_ckpt, method, amp=amp)
    eager = _train(cfg, tmp_path / "eager")
    static = _train(cfg, tmp_path / "static", capture=False)
    _same_training(eager, static)
    assert static._step.eager_steps == 2 * len(static.train_loader)  # every batch went through the static step
    if method.startswith("fair-"):
        assert static.history[1]["class_weights"] != [1.0] * 10  # the second epoch used kappa weights
    if static.teacher is not None:  # the frozen teacher was cast to bf16 once (amp) and gave the same numbers
        dtypes = {p.dtype for p in static.teacher.parameters() if p.dim() > 1}
        assert dtypes == ({torch.bfloat16} if amp == "bf16" else {torch.float32})


def test_graph_engine_on_cpu_is_a_clear_error_before_any_work(tmp_path):
    cfg = TrainConfig(method="ard", teacher="resnet8", teacher_checkpoint=str(tmp_path / "missing.pt"),
                      data_root=str(tmp_path / "no-data"), device="cpu", engine="graph")
    with pytest.raises(ValueError, match="needs a CUDA device.*--engine eager"):
        Trainer(cfg, tmp_path / "run", progress=False)  # fails before the missing teacher or data are read


def test_graph_engine_refuses_methods_with_epoch_or_data_branches():
    gpu = torch.device("cuda")
    for method in ("iad", "fair-iad", "cfa", "kdiga", "fair-kdiga"):
        with pytest.raises(ValueError, match=f"does not support method '{method}'"):
            check_graph_engine(TrainConfig(method=method), gpu, 1)
    for method in GRAPH_METHODS:
        check_graph_engine(TrainConfig(method=f"fair-{method}"), gpu, 1)
    with pytest.raises(ValueError, match="one process"):
        check_graph_engine(TrainConfig(method="ard"), gpu, 2)


def test_engine_is_validated_and_not_part_of_the_run_key():
    with pytest.raises(ValueError, match="unknown engine 'jit'; valid: eager, graph"):
        TrainConfig(method="ard", engine="jit")
    assert TrainConfig(method="ard", engine="graph").key() == TrainConfig(method="ard").key()


@cuda
@pytest.mark.parametrize("method", METHODS)
def test_graph_trains_like_eager_on_cuda(tmp_path_factory, teacher_ckpt, tmp_path, method):
    """2 epochs with a learning-rate milestone between them, so the step is captured twice. Bit-identical when
    the eager path is deterministic run to run; otherwise within its own run-to-run spread (printed)."""
    root = write_synthetic_cifar(tmp_path_factory.mktemp("gpu-data"), n_train=64, n_test=8)  # 20 batches/epoch
    cfg = _cfg(root, teacher_ckpt, method, device="cuda", amp="auto", batch_size=32)
    eager = _train(cfg, tmp_path / "eager")
    again = _train(cfg, tmp_path / "again")
    graph = _train(cfg, tmp_path / "graph", capture=True)
    assert graph._step.captures == 2 and graph._step.eager_steps == WARMUP_STEPS
    noise, diff = _max_weight_diff(eager, again), _max_weight_diff(eager, graph)
    print(f"{method}: max |w_graph - w_eager| = {diff:.3g}; eager run to run {noise:.3g}")
    if noise == 0:
        _same_training(eager, graph)
    else:
        assert diff <= 4 * noise, f"graph differs from eager by {diff:.3g}, eager from itself by {noise:.3g}"


@cuda
def test_graph_engine_trains_through_fit_on_cuda(tiny_root, teacher_ckpt, tmp_path):
    trainer = Trainer(_cfg(tiny_root, teacher_ckpt, "fair-ard", device="cuda", amp="auto", engine="graph"),
                      tmp_path, progress=False)
    assert isinstance(trainer._step, StaticStep) and trainer._step.capture
    trainer.fit(resume=False)
    assert len(trainer.history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.history)
