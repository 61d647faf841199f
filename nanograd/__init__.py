"""nanograd: a small reverse-mode autograd engine over NumPy (or CuPy) arrays.

    from nanograd import Tensor, gradcheck, no_grad
    import nanograd.functional as F
"""

from . import functional, nn, optim
from .backend import manual_seed
from .function import Function, is_grad_enabled, no_grad, profile
from .gradcheck import gradcheck
from .tensor import Tensor

__all__ = [
    "Function", "Tensor", "functional", "gradcheck", "is_grad_enabled", "manual_seed", "nn",
    "no_grad", "optim", "profile",
]
