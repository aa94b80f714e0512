"""llmlab's special tokens: the names every tokenizer role is asked for by.

End-of-text goes between documents; padding is masked in the loss. They live in model/, not beside
the tokenizer in train/, because model/interop maps a Hugging Face tokenizer's declared tokens onto
them and model/ must not import train/; train/data/tokenizer.py re-exports them.
"""

from __future__ import annotations

EOT = "<|endoftext|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (EOT, PAD)
