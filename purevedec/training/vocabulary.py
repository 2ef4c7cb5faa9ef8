"""Words of the training captions that the tokenizer does not know.

A word-level tokenizer (the bundled ``purevedec:shapes`` model's) turns an unknown word into its
unknown token: fine-tuning on it would teach the model to write ``<unk>``. ``unknown_words``
finds them before training starts, so the command can say how many captions are affected.
Byte-level tokenizers (GPT-2's) have no unknown token and never report anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable


@dataclass
class UnknownWords:
    captions: int = 0                      # captions looked at
    affected: int = 0                      # captions with at least one unknown token
    words: Counter = field(default_factory=Counter)  # the unknown words, by how often they occur

    def summary(self, top: int = 8) -> str:
        share = self.affected / max(self.captions, 1)
        listed = ", ".join(f"{w!r} ({n})" for w, n in self.words.most_common(top))
        more = f" and {len(self.words) - top} more" if len(self.words) > top else ""
        return (f"{self.affected} of {self.captions} captions ({share:.1%}) contain words the tokenizer "
                f"does not know (they become its unknown token): {listed}{more}")


def unknown_token_id(backend) -> int | None:
    """The id of a ``tokenizers.Tokenizer``'s unknown token, or None when it has none."""
    token = getattr(backend.model, "unk_token", None)
    return backend.token_to_id(token) if isinstance(token, str) else None


def unknown_words(tokenizer, captions: Iterable[str]) -> UnknownWords:
    """Count the captions that ``tokenizer`` (a ``TextTokenizer``) maps to its unknown token, and
    the words it does so for."""
    found = UnknownWords()
    unk = unknown_token_id(tokenizer.backend)
    for caption in captions:
        found.captions += 1
        if unk is None:
            continue
        ids, offsets = tokenizer.encode_with_offsets(caption)   # a library failure is a TokenizerError
        spans = [caption[a:b] for i, (a, b) in zip(ids, offsets) if i == unk]
        if spans:
            found.affected += 1
            found.words.update(spans)
    return found
