"""A tokenizer turns text into token ids and back. Two are written here: the lecture's, one
token per character (gpt/chars.py), and a byte-level byte-pair encoding (gpt/bpe.py). Both
encode, decode, give each token's bytes, and describe themselves as JSON (to_json), which
checkpoints and the tokenized-corpus cache store; this module reads such a description back.
"""

from __future__ import annotations

import json

from .bpe import BPETokenizer
from .chars import CharTokenizer
from .errors import UserError

Tokenizer = CharTokenizer | BPETokenizer

FORMS = '{"type": "char", "chars": "..."} or {"type": "bpe", "merges": [[a, b], ...]}'


def tokenizer_from_json(text: str) -> Tokenizer:
    """The tokenizer that to_json described; a one-line UserError where text is no such
    description (or describes a vocabulary that cannot be: see each tokenizer's checks)."""
    try:
        description = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"tokenizer description is not valid JSON ({exc})") from None
    if not isinstance(description, dict):
        description = {}
    if description.get("type") == "char" and isinstance(description.get("chars"), str):
        return CharTokenizer(description["chars"])
    if description.get("type") == "bpe" and isinstance(description.get("merges"), list):
        return BPETokenizer(description["merges"])
    raise UserError(f"tokenizer description must be a JSON object {FORMS}")
