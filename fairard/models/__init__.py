"""CIFAR model zoo behind a timm-style registry.

    model = build_model("wrn-34-10", num_classes=10)          # any "wrn-<depth>-<width>" works
    model = load_checkpoint("resnet18", "student.pt")         # strict, weights_only, eval mode
    list_models()  # resnet18 resnet34 preact_resnet18 mobilenet_v2 wrn-* resnet8..resnet110

Every model takes [0,1] NCHW inputs; ``mean=``/``std=`` add in-model normalisation as non-persistent buffers
(default: none, as in TRADES and the official Fair-ARD code), so checkpoints load either way.
Families (one file each, importing a family registers its models): ``resnet`` (ResNet-18/34, CIFAR stem),
``preact_resnet``, ``mobilenet_v2`` (CIFAR variant), ``wide_resnet`` (TRADES keys), ``cifar_resnet`` (He et al.).
"""
from ._checkpoint import CheckpointError, clean_state_dict, load_checkpoint, read_checkpoint
from ._common import Normalize, folded_batchnorm, set_batchnorm_folding
from ._registry import build_model, list_models, register_model, register_model_pattern
from . import cifar_resnet, mobilenet_v2, preact_resnet, resnet, wide_resnet  # noqa: F401,E402  (registration)

__all__ = ["build_model", "list_models", "register_model", "register_model_pattern", "load_checkpoint",
           "read_checkpoint", "clean_state_dict", "CheckpointError", "Normalize",
           "folded_batchnorm", "set_batchnorm_folding"]
