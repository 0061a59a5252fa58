"""fairard.models: registry, architectures (shapes, key names, sizes), normalisation and checkpoint loading."""
import argparse
import os

import pytest
import torch

from fairard.models import CheckpointError, build_model, list_models, load_checkpoint
from fairard.models import _registry

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def n_params(model, skip_prefix=None):
    return sum(p.numel() for n, p in model.named_parameters() if not (skip_prefix and n.startswith(skip_prefix)))


def on_meta(name, **kw):
    """Build without allocating or initialising weights: enough for key names, shapes and parameter counts."""
    with torch.device("meta"):
        return build_model(name, **kw)


def trades_wrn_keys(depth, widen):
    """State-dict keys of the TRADES WideResNet, written out from its structure (not from our code)."""
    n = (depth - 4) // 6
    c = [16, 16 * widen, 32 * widen, 64 * widen]
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{s}" for s in BN}
    for block, cin, cout in (("block1", c[0], c[1]), ("sub_block1", c[0], c[1]),
                             ("block2", c[1], c[2]), ("block3", c[2], c[3])):
        for i in range(n):
            p = f"{block}.layer.{i}."
            keys |= {p + "conv1.weight", p + "conv2.weight"} | {f"{p}bn{j}.{s}" for j in (1, 2) for s in BN}
            if i == 0 and cin != cout:  # TRADES creates convShortcut only when the width changes
                keys.add(p + "convShortcut.weight")
    return keys


# ---------------------------------------------------------------- registry

def test_registry_lists_the_spec_names():
    expected = {"resnet18", "resnet34", "preact_resnet18", "mobilenet_v2", "wrn-16-4", "wrn-28-10", "wrn-34-10",
                "wrn-70-16"} | {f"resnet{d}" for d in (8, 14, 20, 32, 44, 56, 110)}
    assert expected <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        build_model("resnet19")
    msg = str(err.value)
    assert "'resnet19'" in msg and "resnet18" in msg and "wrn-34-10" in msg and "wrn-<depth>-<width>" in msg


def test_wrn_name_parsed_generically():
    model = on_meta("wrn-10-1")  # not registered by name
    assert "wrn-10-1" not in list_models()
    assert set(model.state_dict()) == trades_wrn_keys(10, 1)
    assert model.fc.in_features == 64
    with pytest.raises(ValueError, match="6n \\+ 4"):
        build_model("wrn-30-10")


def test_none_kwargs_are_dropped_and_real_kwargs_apply():
    assert n_params(on_meta("resnet20", width=None, mean=None, std=None)) == n_params(on_meta("resnet20"))
    assert on_meta("resnet20", width=32).conv1.weight.shape == (32, 3, 3, 3)
    with pytest.raises(TypeError):
        build_model("resnet18", width=32)  # an option the family does not have is not silently ignored


def test_register_model_decorator(monkeypatch):
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))

    @_registry.register_model
    def tiny_net(num_classes=10):
        return torch.nn.Linear(3, num_classes)

    assert "tiny_net" in list_models()
    assert build_model("tiny_net", num_classes=7).out_features == 7


# ---------------------------------------------------------------- architectures

@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name, num_classes):
    # Models above 100M parameters (wrn-70-16) would take ~10 s per pass on CPU: check them on the meta device,
    # which runs the same forward/backward code for shapes and autograd wiring without arithmetic.
    device = "meta" if n_params(on_meta(name)) > 100e6 else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = build_model(name, num_classes=num_classes).train()
        x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        if pname.startswith("sub_block1."):  # TRADES' unused copy of block1: frozen, never gets a gradient
            assert not p.requires_grad and p.grad is None
        else:
            assert p.requires_grad and p.grad is not None, pname
    if device == "cpu":
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_wrn_state_dict_keys_match_trades():
    for depth, widen in ((34, 10), (16, 1), (16, 2)):
        assert set(on_meta(f"wrn-{depth}-{widen}").state_dict()) == trades_wrn_keys(depth, widen)
    keys = set(on_meta("wrn-34-10").state_dict())
    assert {"block1.layer.0.convShortcut.weight", "sub_block1.layer.0.bn1.weight", "fc.weight", "fc.bias",
            "bn1.running_mean", "block3.layer.4.conv2.weight"} <= keys
    assert "block1.layer.1.convShortcut.weight" not in keys and "conv1.bias" not in keys
    assert "block1.layer.0.convShortcut.weight" not in set(on_meta("wrn-16-1").state_dict())  # 16 -> 16: identity


@pytest.mark.parametrize("name, present, absent", [
    ("resnet18", {"conv1.weight", "bn1.running_var", "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.weight",
                  "layer4.1.bn2.bias", "linear.weight"}, {"layer1.0.shortcut.0.weight", "fc.weight"}),
    ("preact_resnet18", {"layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "bn.weight", "linear.bias"},
     {"layer2.0.shortcut.1.weight", "bn1.weight"}),
    ("mobilenet_v2", {"layers.0.conv1.weight", "layers.0.shortcut.0.weight", "layers.16.bn3.weight", "conv2.weight",
                      "bn2.weight", "linear.weight"}, {"layers.17.conv1.weight"}),
    ("resnet20", {"layer1.2.conv2.weight", "layer3.0.bn1.weight", "linear.weight"},
     {"layer1.3.conv1.weight", "layer2.0.shortcut.0.weight"}),  # option A: parameter-free shortcuts
])
def test_key_names(name, present, absent):
    keys = set(on_meta(name).state_dict())
    assert present <= keys and not absent & keys


def test_parameter_counts():
    assert round(n_params(on_meta("resnet18")) / 1e6, 2) == 11.17
    assert round(n_params(on_meta("resnet20")) / 1e6, 2) == 0.27
    assert round(n_params(on_meta("resnet56")) / 1e6, 2) == 0.85
    assert 2.2e6 <= n_params(on_meta("mobilenet_v2")) <= 2.3e6
    wrn = on_meta("wrn-34-10")
    assert round(n_params(wrn, skip_prefix="sub_block1.") / 1e6, 2) == 46.16  # the size quoted for WRN-34-10
    assert round(n_params(wrn) / 1e6, 2) == 48.26  # ... plus TRADES' unused sub_block1
    assert on_meta("resnet20", num_classes=100).linear.weight.shape == (100, 64)


def test_cifar_resnet_downsamples_with_zero_padding():
    model = build_model("resnet20").eval()
    shortcut = model.layer2[0].shortcut
    x = torch.randn(2, 16, 32, 32)
    y = shortcut(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()
    with torch.no_grad():
        assert model.forward_features(torch.rand(2, 3, 32, 32)).shape == (2, 64, 8, 8)


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "mobilenet_v2", "wrn-16-4", "resnet20"])
def test_channels_last_and_bf16_autocast(name):
    torch.manual_seed(0)
    model = build_model(name, mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out_cl = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, atol=1e-4, rtol=1e-4)

    model.train()
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_cl)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10) and torch.isfinite(out).all()
    out.float().sum().backward()
    assert x_cl.grad is not None and torch.isfinite(x_cl.grad).all() and x_cl.grad.abs().sum() > 0


def test_timm_style_features_head_and_reset_classifier():
    model = build_model("resnet20").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 64)
        torch.testing.assert_close(model.forward_head(feats), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)


# ---------------------------------------------------------------- normalisation

def test_normalisation_buffers_are_not_persistent_and_applied_first():
    torch.manual_seed(0)
    plain = build_model("resnet20").eval()
    normed = build_model("resnet20", mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    assert set(normed.state_dict()) == set(plain.state_dict())
    assert not any("mean" in k and "running" not in k for k in normed.state_dict())
    normed.load_state_dict(plain.state_dict(), strict=True)
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(normed(x), plain((x - mean) / std))
        assert not torch.allclose(normed(x), plain(x))
    with pytest.raises(ValueError, match="both mean and std"):
        build_model("resnet20", mean=CIFAR_MEAN)


# ---------------------------------------------------------------- checkpoints

def _randomised(name, **kw):
    """A model whose BN statistics are not at their defaults, so a silent non-load would be caught."""
    torch.manual_seed(1)
    model = build_model(name, **kw)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3},
    lambda sd: {"model": {"_orig_mod.module." + k: v for k, v in sd.items()}, "optimizer": {}},
    lambda sd: {"model." + k: v for k, v in sd.items()},   # RobustBench's saved state dicts
    lambda sd: sd,
])
def test_load_checkpoint_strips_prefixes_and_wrappers(tmp_path, wrap):
    src = _randomised("resnet20")
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(src.state_dict()), path)
    model = load_checkpoint("resnet20", path)
    assert not model.training
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), src.eval()(x))


def test_load_checkpoint_into_given_model_with_normalisation(tmp_path):
    src = _randomised("wrn-16-1")
    torch.save(src.state_dict(), tmp_path / "w.pt")
    target = build_model("wrn-16-1", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert load_checkpoint(target, tmp_path / "w.pt") is target
    assert torch.equal(target.block2.layer[0].convShortcut.weight, src.block2.layer[0].convShortcut.weight)


def test_load_checkpoint_filter_fn(tmp_path):
    src = _randomised("resnet8")
    torch.save({"backbone." + k: v for k, v in src.state_dict().items()}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_checkpoint("resnet8", tmp_path / "b.pt")
    model = load_checkpoint("resnet8", tmp_path / "b.pt",
                            filter_fn=lambda sd: {k.removeprefix("backbone."): v for k, v in sd.items()})
    assert torch.equal(model.linear.weight, src.linear.weight)


def test_mismatched_checkpoint_names_file_arch_and_keys(tmp_path):
    path = tmp_path / "resnet20_weights.pt"
    torch.save({"state_dict": _randomised("resnet20").state_dict()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("resnet32", path)
    msg = str(err.value)
    assert str(path) in msg and "'resnet32'" in msg
    assert "missing keys (72)" in msg and "layer1.3.conv1.weight" in msg and "more)" in msg  # long list truncated
    assert "unexpected keys" not in msg

    with pytest.raises(CheckpointError) as err:
        load_checkpoint("resnet20", path, num_classes=100)
    assert "linear.weight (10, 64) in file vs (100, 64) in model" in str(err.value)
    assert "num_classes" in str(err.value)


def _write_corrupt(path, kind):
    if kind == "random_bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "text":
        path.write_text("epoch,acc\n1,0.5\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated_zip":
        torch.save(build_model("resnet8").state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])
    elif kind == "disallowed_global":
        torch.save({"state_dict": build_model("resnet8").state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    elif kind == "pickled_callable":  # torch 2.6+ words this "unsupported GLOBAL posix.system ... is blocked"
        torch.save({"state_dict": build_model("resnet8").state_dict(), "hook": os.system}, path)
    elif kind == "not_a_state_dict":
        torch.save([1, 2, 3], path)


@pytest.mark.parametrize("kind, reason", [
    ("random_bytes", "not a PyTorch checkpoint"),
    ("text", "not a PyTorch checkpoint"),
    ("empty", "empty"),
    ("truncated_zip", "damaged or truncated"),
    ("disallowed_global", "argparse.Namespace"),
    ("pickled_callable", r"pickles a callable or class \(posix.system\)"),
    ("not_a_state_dict", "holds no state dict"),
])
def test_corrupt_checkpoint_raises_clear_error(tmp_path, kind, reason):
    path = tmp_path / f"{kind}.pt"
    _write_corrupt(path, kind)
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint("resnet8", path)
    assert str(path) in str(err.value)


def test_missing_checkpoint_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint("resnet8", path)


# ---------------------------------------------------------------- CPU fast paths (bit-identical ReLU, BN folding)
def test_bf16_relu_equals_torch_relu_forward_and_backward():
    from fairard.models import _common
    torch.manual_seed(0)
    x = torch.randn(4, 16, 8, 8).contiguous(memory_format=torch.channels_last).to(torch.bfloat16)
    x[0, 0, 0, :4] = torch.tensor([0.0, -0.0, float("inf"), -float("inf")])
    grad = torch.randn(4, 16, 8, 8).to(torch.bfloat16)  # NCHW: a different memory format than x
    outs, grads = [], []
    for fn in (torch.nn.functional.relu, _common.relu):
        xi = x.clone().requires_grad_(True)
        out = fn(xi)
        (g,) = torch.autograd.grad(out, xi, grad)
        outs.append(out)
        grads.append(g)
    assert torch.equal(outs[0], outs[1])  # equal values (a -0.0 comes out as +0.0)
    assert torch.equal(grads[0], grads[1])
    nans = torch.tensor([float("nan"), -float("nan"), 1.0]).to(torch.bfloat16)  # x86's default NaN is negative
    assert _common.relu(nans).isnan().tolist() == [True, True, False]  # a diverged run is not hidden
    assert grads[1].is_contiguous(memory_format=torch.channels_last)  # the mask's format, not the gradient's
    # global average pooling hands back an expanded (stride-0) gradient: same values as torch's
    xi = x.clone().requires_grad_(True)
    (g_pool,) = torch.autograd.grad(_common.relu(xi).mean((2, 3)).sum(), xi)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(torch.relu(xr).mean((2, 3)).sum(), xr)
    assert torch.equal(g_pool, g_ref)


def test_bf16_relu_supports_double_backprop():
    """KDIGA differentiates an input gradient (create_graph=True): the fast path must stay differentiable."""
    from fairard.models import _common
    torch.manual_seed(0)
    w = torch.randn(6, 6, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(5, 6, dtype=torch.bfloat16, requires_grad=True)
    results = []
    for fn in (torch.relu, _common.relu):
        (gx,) = torch.autograd.grad(fn(x @ w).float().sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad(gx.float().pow(2).sum(), w)
        results.append(gw)
    assert results[0].abs().sum() > 0
    assert torch.equal(results[0], results[1])


@pytest.mark.parametrize("name", ["resnet20", "resnet18", "mobilenet_v2"])
def test_folded_batchnorm_equals_eval_mode_and_is_scoped(name):
    from fairard.models import folded_batchnorm
    torch.manual_seed(0)
    model = build_model(name)
    model.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            model(torch.rand(16, 3, 32, 32) * 2)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with folded_batchnorm(model):
            folded = model(x)
            assert not torch.equal(folded, ref)  # another computation ...
        after = model(x)
    torch.testing.assert_close(folded, ref, atol=1e-4, rtol=1e-4)  # ... of the same function
    assert torch.equal(after, ref)  # folding ends with the block
    # a train-mode BN (batch statistics) is never folded
    model.train()
    with torch.no_grad():
        plain = model(x)
        with folded_batchnorm(model):
            in_block = model(x)
    assert torch.equal(plain, in_block)


def test_folded_weights_are_computed_once_per_toggle_and_follow_new_weights():
    """The trainer enters folded_batchnorm once per attack: the fold is reused across the attack's steps
    and made anew at the next entry, after the optimiser has changed the weights."""
    from fairard.models import folded_batchnorm
    torch.manual_seed(0)
    model = build_model("resnet8").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        with folded_batchnorm(model):
            model(x)
            first = model.bn1.folded
            model(x)
            assert model.bn1.folded is first  # one fold for every step of an attack
        assert model.bn1.folded is None
        model.conv1.weight.mul_(2)  # an optimiser step between two attacks
        model.bn1.running_mean.add_(0.5)
        ref = model(x)
        with folded_batchnorm(model):
            folded = model(x)
    torch.testing.assert_close(folded, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["preact_resnet18", "wrn-16-2"])
def test_folding_leaves_pre_activation_batchnorm_alone(name):
    from fairard.models import folded_batchnorm
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with folded_batchnorm(model):
            assert torch.equal(model(x), ref)


def test_bf16_relu_leaves_a_bf16_train_mode_pgd_bit_identical(monkeypatch):
    """What the fast ReLU must not change: the iterates and kappa of a training attack."""
    from fairard.attacks import pgd
    from fairard.models import cifar_resnet
    torch.manual_seed(0)
    model = build_model("resnet8").to(memory_format=torch.channels_last).train()
    x = torch.rand(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    runs = []
    for fast in (True, False):
        if not fast:
            monkeypatch.setattr(cifar_resnet, "relu", torch.nn.functional.relu)
        model.load_state_dict(state)  # the same BN running statistics for both attacks
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(pgd(model, x, y, steps=3, return_kappa=True, generator=torch.Generator().manual_seed(1)))
    (x_fast, k_fast), (x_ref, k_ref) = runs
    assert torch.equal(x_fast, x_ref) and torch.equal(k_fast, k_ref)
    assert (x_fast != x).any()


# One model of every family (resnet, preact_resnet, mobilenet_v2, wide_resnet, cifar_resnet) at Tiny-ImageNet's
# 64x64 and 200 classes: global pooling, no hard-coded 4x4, and a PGD that lowers the accuracy it attacks.
@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "mobilenet_v2", "wrn-16-1", "resnet8"])
def test_64x64_inputs_forward_backward_and_pgd(name):
    from fairard.attacks import pgd

    torch.manual_seed(0)
    model = build_model(name, num_classes=200).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 200) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for n, p in model.named_parameters() if not n.startswith("sub_block1."))
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)   # the model's own predictions: clean accuracy 1 by construction
    x_adv = pgd(model, x, y, eps=8 / 255, step_size=8 / 255, steps=1, random_start=None)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        loss_clean = torch.nn.functional.cross_entropy(model(x), y)
        loss_adv = torch.nn.functional.cross_entropy(model(x_adv), y)
    assert loss_adv > loss_clean
