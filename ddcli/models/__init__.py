"""Model registry: small, buffer-free networks that run under `torch.func`.

Every registered model is a plain `nn.Module` mapping `(B, in_channels, image_size, image_size)`
images to `(B, num_classes)` logits. None has buffers or in-place ops, so each runs
under `torch.func.functional_call`, `vmap` over stacked parameters, and double
backward (the meta-gradient).

Example:
    >>> import torch
    >>> from ddcli.models import create_model, init_weights
    >>> net = create_model("lenet", in_channels=1, num_classes=10, image_size=28)
    >>> net = init_weights(net, "xavier", generator=torch.Generator().manual_seed(0))
    >>> net(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 10])
"""

from __future__ import annotations

from ddcli.models._api import (
    ModelInfo,
    check_functional,
    create_model,
    list_models,
    model_info,
    register_model,
)
from ddcli.models._init import MODEL_INIT_SCHEMES, init_weights
from ddcli.models._user import label as model_label


def _import_models() -> None:
    # Every other module of this package registers models (@register_model) as it is
    # imported, so a new model is one file here (and its test): nothing lists them.
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_MODELS:
            importlib.import_module(f"{__name__}.{module.name}")


_NOT_MODELS = {"_api", "_init", "_user"}
_import_models()

__all__ = [
    "MODEL_INIT_SCHEMES",
    "ModelInfo",
    "check_functional",
    "create_model",
    "init_weights",
    "list_models",
    "model_info",
    "model_label",
    "register_model",
]
