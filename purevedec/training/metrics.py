"""Scores for generated text against references: corpus BLEU-4 and CIDEr-D for captions, CER and
WER for text reading, exact match for both.

Each metric takes ``predictions`` (one string per image) and ``references`` (a non-empty list of
strings per image) and returns one corpus-level number, on the scale the usual tools print:

- ``bleu``: corpus BLEU-4 in [0, 1] (COCO's ``Bleu_4`` scale; papers print it x100). Clipped n-gram
  counts (each n-gram counted at most as often as in the reference that has it most), summed over
  the corpus; brevity penalty from the reference length closest to each prediction (ties: the
  shorter); geometric mean of the 1..4-gram precisions, no smoothing (0 when an order has no
  match). sacrebleu's ``corpus_bleu(smooth_method="none", tokenize="none")`` / 100.
- ``cider``: CIDEr-D, COCO's ``CIDEr`` (papers print it x100): see ``cider_d``.
- ``cer`` / ``wer``: edit distance (insertions + deletions + substitutions) over characters /
  words, totalled over the corpus and divided by the total reference length. Of several
  references, an image counts the one needing the fewest edits (the first listed on a tie).
  jiwer's ``cer`` / ``wer`` when there is one reference.
- ``exact``: the share of images whose prediction equals one of its references after lowercasing
  and collapsing spaces.

Normalisation, the same for predictions and references: Unicode NFC first. BLEU and CIDEr then
lowercase, turn every punctuation character into a space and split on whitespace (close to the
COCO tokenizer, which drops punctuation); CER and WER keep case and punctuation (they matter when
reading text) and only collapse runs of whitespace. BLEU and CIDEr count whitespace-separated
words, so score text without spaces (Chinese, Japanese) with CER.

Libraries (the ``eval`` extra): BLEU uses sacrebleu and CER/WER use jiwer when they are installed;
without them the same numbers come from the small implementations here (tests check they agree),
after one warning. ``backend="builtin"`` / ``"library"`` forces one. CIDEr-D is implemented here:
its reference package (pycocoevalcap) ships Java jars for its other metrics.
"""

from __future__ import annotations

import importlib
import math
import unicodedata
import warnings
from collections import Counter
from typing import Sequence

from ..errors import ConfigError

METRICS = ("exact", "bleu", "cider", "cer", "wer")
"""The metric names, in the order they are scored and logged."""
HIGHER_IS_BETTER = {"loss": False, "exact": True, "bleu": True, "cider": True, "cer": False, "wer": False}
"""Which way each metric (and the validation loss) improves: picks the best checkpoint."""
_LIBRARY = {"bleu": "sacrebleu", "cer": "jiwer", "wer": "jiwer"}
_warned: set = set()


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"bleu,cider"`` -> ``("exact", "bleu", "cider")``: exact match is always scored."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"metrics: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    return tuple(n for n in METRICS if n == "exact" or n in names)


def caption_words(text: str) -> list[str]:
    """BLEU/CIDEr tokens: NFC, lowercase, punctuation removed, split on whitespace."""
    text = unicodedata.normalize("NFC", text).lower()
    return "".join(" " if unicodedata.category(c).startswith("P") else c for c in text).split()


def reading_text(text: str) -> str:
    """CER/WER text: NFC, whitespace runs collapsed to one space, ends stripped; case kept."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _check(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if not predictions:
        raise ConfigError("metrics: no predictions to score")
    if len(predictions) != len(references):
        raise ConfigError(f"metrics: {len(predictions)} predictions but {len(references)} reference lists")
    for i, refs in enumerate(references):
        if isinstance(refs, str) or not refs:
            raise ConfigError(f"metrics: image {i}: references must be a non-empty list of strings, got {refs!r:.60}")


def _library(metric: str, backend: str):
    """The library module for ``metric``, or None to use the builtin implementation."""
    if backend not in ("auto", "library", "builtin"):
        raise ConfigError(f"metrics: backend={backend!r}; choose auto, library or builtin")
    name = _LIBRARY.get(metric)
    if backend == "builtin" or name is None:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        if backend == "library":
            raise ImportError(f"{metric} with backend='library' needs {name}: pip install 'purevedec[eval]'") from None
        if name not in _warned:
            _warned.add(name)
            warnings.warn(f"{name} is not installed (pip install 'purevedec[eval]'): {metric} is computed by "
                          "purevedec's own implementation, which gives the same numbers", stacklevel=3)
        return None


# ---- BLEU ---------------------------------------------------------------------------------------

def _ngrams(words: Sequence[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], *, backend: str = "auto") -> float:
    """Corpus BLEU-4 in [0, 1] (see the module notes)."""
    _check(predictions, references)
    hyps = [caption_words(p) for p in predictions]
    refs = [[caption_words(r) for r in rs] for rs in references]
    lib = _library("bleu", backend)
    if lib is not None:
        streams = [[" ".join(rs[j]) if j < len(rs) else None for rs in refs] for j in range(max(map(len, refs)))]
        return lib.corpus_bleu([" ".join(h) for h in hyps], streams, smooth_method="none", tokenize="none",
                               force=True).score / 100.0
    matched, guessed, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for hyp, rs in zip(hyps, refs):
        hyp_len += len(hyp)
        ref_len += min((len(r) for r in rs), key=lambda n: (abs(n - len(hyp)), n))
        for n in range(1, 5):
            most = Counter()
            for r in rs:
                most |= _ngrams(r, n)  # the largest count of each n-gram in any one reference
            counts = _ngrams(hyp, n)
            guessed[n - 1] += sum(counts.values())
            matched[n - 1] += sum(min(c, most[g]) for g, c in counts.items())
    if min(matched) == 0:
        return 0.0
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1.0 - ref_len / hyp_len)
    return brevity * math.exp(sum(math.log(m / g) for m, g in zip(matched, guessed)) / 4)


# ---- CIDEr-D ------------------------------------------------------------------------------------

def _tfidf(words: Sequence[str], idf, max_n: int) -> list[dict]:
    """One {n-gram: count * idf} vector per order n = 1..max_n."""
    return [{g: c * idf(g) for g, c in _ngrams(words, n).items()} for n in range(1, max_n + 1)]


def _norm(vec: dict) -> float:
    return math.sqrt(sum(v * v for v in vec.values()))


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], *, sigma: float = 6.0,
            max_n: int = 4) -> float:
    """CIDEr-D (Vedantam et al. 2015, as the COCO caption evaluation computes it).

    Document frequency df(g): the number of images whose references contain the n-gram g; with N
    images, idf(g) = log N - log max(1, df(g)), taken over the references of the scored corpus.
    Each sentence is a vector per order n of count(g) * idf(g). For a prediction h and a reference r
    the order-n similarity is sum_g min(h_g, r_g) * r_g / (|h| |r|) (the min clips repeated n-grams;
    0 when either vector is zero), times the length penalty exp(-(len h - len r)^2 / (2 sigma^2))
    in words. An image's score is 10 x the mean over orders 1..max_n of the similarity averaged over
    its references; the corpus score is the mean over images.
    """
    _check(predictions, references)
    hyps = [caption_words(p) for p in predictions]
    refs = [[caption_words(r) for r in rs] for rs in references]
    df = Counter()
    for rs in refs:
        df.update({g for r in rs for n in range(1, max_n + 1) for g in _ngrams(r, n)})
    log_n = math.log(len(refs))

    def idf(g):
        return log_n - math.log(max(1, df[g]))

    total = 0.0
    for hyp, rs in zip(hyps, refs):
        h_vecs = _tfidf(hyp, idf, max_n)
        image = 0.0
        for r in rs:
            penalty = math.exp(-((len(hyp) - len(r)) ** 2) / (2 * sigma ** 2))
            for h, ref in zip(h_vecs, _tfidf(r, idf, max_n)):
                denom = _norm(h) * _norm(ref)
                if denom > 0:
                    image += penalty * sum(min(v, ref.get(g, 0.0)) * ref.get(g, 0.0) for g, v in h.items()) / denom
        total += 10.0 * image / (max_n * len(rs))
    return total / len(refs)


# ---- CER / WER ----------------------------------------------------------------------------------

def _edits(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning a into b."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        diag, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diag + (x != y))
    return row[-1]


def _error_rate(unit: str, predictions, references, backend: str) -> float:
    _check(predictions, references)
    lib = _library(unit, backend)
    split = list if unit == "cer" else str.split
    edits = length = 0
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        pred = reading_text(pred)
        refs = [r for r in map(reading_text, refs) if r]
        if not refs:
            raise ConfigError(f"metrics: image {i}: every reference is empty")
        if lib is not None:
            measure = lib.process_characters if unit == "cer" else lib.process_words
            counts = [measure(r, pred) for r in refs]
            counts = [c.substitutions + c.deletions + c.insertions for c in counts]
        else:
            counts = [_edits(split(r), split(pred)) for r in refs]
        best = counts.index(min(counts))
        edits, length = edits + counts[best], length + len(split(refs[best]))
    return edits / length


def cer(predictions: Sequence[str], references: Sequence[Sequence[str]], *, backend: str = "auto") -> float:
    """Character error rate: total character edits / total reference characters (spaces count)."""
    return _error_rate("cer", predictions, references, backend)


def wer(predictions: Sequence[str], references: Sequence[Sequence[str]], *, backend: str = "auto") -> float:
    """Word error rate: total word edits / total reference words."""
    return _error_rate("wer", predictions, references, backend)


# ---- exact match and the dispatcher --------------------------------------------------------------

def exact_normal(text: str) -> str:
    """Exact match's normalisation: lowercase, whitespace runs collapsed."""
    return " ".join(text.lower().split())


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """The share of images whose prediction equals a reference after lowercasing and collapsing spaces."""
    _check(predictions, references)
    hits = sum(exact_normal(p) in {exact_normal(r) for r in rs} for p, rs in zip(predictions, references))
    return hits / len(predictions)


SCORERS = {"exact": exact_match, "bleu": bleu, "cider": cider_d, "cer": cer, "wer": wer}
"""Each metric name's function ``(predictions, references) -> float``."""


def score(names: Sequence[str], predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """``{name: corpus score}`` for each metric in ``names`` (see ``METRICS``)."""
    unknown = [n for n in names if n not in SCORERS]
    if unknown:
        raise ConfigError(f"metrics: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    return {n: float(SCORERS[n](predictions, references)) for n in names}
