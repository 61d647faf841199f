"""Layers with parameters, in the style of torch.nn."""

from .layers import Dropout, Embedding, LayerNorm, Linear, ModuleList, Sequential
from .module import Module, Parameter

__all__ = [
    "Dropout", "Embedding", "LayerNorm", "Linear", "Module", "ModuleList", "Parameter", "Sequential",
]
