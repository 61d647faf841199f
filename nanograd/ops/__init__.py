"""Every differentiable op, one Function subclass each, grouped by kind."""

from .attention import ScaledDotProductAttention, SelfAttention
from .elementwise import Add, Div, Exp, Log, Mul, Neg, Pow, Relu, Sqrt, Sub, Tanh, Where
from .matmul import MatMul
from .movement import Concat, GetItem, Permute, Reshape, Stack
from .nn import (
    CrossEntropy,
    Dropout,
    Embedding,
    EmbeddingCrossEntropy,
    Gelu,
    LayerNorm,
    LogSoftmax,
    Softmax,
)
from .reduce import Max, Sum

__all__ = [
    "Add", "Concat", "CrossEntropy", "Div", "Dropout", "Embedding", "EmbeddingCrossEntropy", "Exp", "Gelu", "GetItem",
    "LayerNorm", "Log", "LogSoftmax", "MatMul", "Max", "Mul", "Neg", "Permute", "Pow", "Relu",
    "Reshape", "ScaledDotProductAttention", "SelfAttention", "Softmax", "Sqrt", "Stack", "Sub", "Sum", "Tanh",
    "Where",
]
