"""Model registry: small, buffer-free networks that run under `torch.func`.

Every model is a plain `nn.Module` mapping `(B, in_channels, image_size, image_size)`
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

from ddcli.models._api import check_functional, create_model, list_models, register_model
from ddcli.models._init import MODEL_INIT_SCHEMES, init_weights

# Imported for their @register_model side effect.
from ddcli.models import _alexcifarnet, _convnet, _lenet, _mlp  # noqa: E402,F401  isort: skip

__all__ = [
    "MODEL_INIT_SCHEMES",
    "check_functional",
    "create_model",
    "init_weights",
    "list_models",
    "register_model",
]
