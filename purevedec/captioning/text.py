"""The checkpoint's tokenizer, through the ``tokenizers`` library, decoding as transformers does.

transformers 5 tokenizers are a thin layer over a ``tokenizers.Tokenizer``: its ``decode``
with ``skip_special_tokens=True`` is the backend's decode, followed by a space clean-up that is
skipped for BPE models unless a config flag forces it. This file rebuilds the same backend from
``tokenizer.json`` (or GPT-2's and RoBERTa's ``vocab.json`` + ``merges.txt``, or XLM-R's
``sentencepiece.bpe.model`` through the optional ``sentencepiece`` package, or BERT's ``vocab.txt``
including BertJapaneseTokenizer's character-level vocabularies), registers the special and added
tokens that ``tokenizer_config.json`` / ``special_tokens_map.json`` declare, and applies the same
clean-up rule.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..checkpoints.jsonfile import read_json_object, read_side_file
from ..errors import TokenizerError
from . import rust_panics
from .protobuf_fields import proto_bytes

# The largest tokenizer.json, merges.txt or sentencepiece model read: real ones are a few MB
# (35 MB for the largest vocabularies); the tokenizers library parses them into several times
# their size, and aborts the process when an allocation fails, so the bound is checked first.
MAX_TOKENIZER_BYTES = 64 * 2 ** 20


@contextlib.contextmanager
def library_errors(what: str):
    """Failures inside the tokenizers (or sentencepiece) library as one TokenizerError starting
    with ``what``: its errors are plain Exceptions, and a Rust panic arrives as pyo3's
    PanicException, which derives from BaseException so that ``except Exception`` misses it.
    Rust's own report of the panic is kept off the CLI's stderr (see rust_panics)."""
    with rust_panics.captured() as report:
        try:
            yield
        except TokenizerError:
            raise
        except Exception as e:  # noqa: BLE001 - the libraries raise Exception itself for bad input
            raise TokenizerError(f"{what}: {str(e)[:300]}") from None
        except BaseException as e:
            if type(e).__name__ != "PanicException":
                raise
            report.panicked(str(e))
            raise TokenizerError(f"{what}: the tokenizers library failed ({str(e)[:300]})") from None


# tokenizer_config.json keys that name special tokens (a string, or a dict with "content").
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_SPECIAL_LISTS = ("additional_special_tokens", "extra_special_tokens")


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    d = read_json_object(path, TokenizerError)
    _check_token_config(d, path)
    return d


def _is_token(value: Any) -> bool:
    """A special token as a config may write it: a string, or an AddedToken dict with a string content."""
    return isinstance(value, str) or (isinstance(value, Mapping) and isinstance(value.get("content"), str))


def _check_token_config(d: Mapping, path: str) -> None:
    """The special-token keys of tokenizer_config.json / special_tokens_map.json have the types
    transformers writes, so that reading them cannot fail with a raw TypeError later."""
    for key in _SPECIAL_KEYS:
        if d.get(key) is not None and not _is_token(d[key]):
            raise TokenizerError(f"{path}: {key}={d[key]!r:.80} must be a token string or "
                                 '{"content": "..."}')
    for key in _SPECIAL_LISTS:
        value = d.get(key)
        items = value.values() if isinstance(value, Mapping) else value
        if value is not None and not (isinstance(items, (list, tuple, type({}.values())))
                                      and all(map(_is_token, items))):
            raise TokenizerError(f"{path}: {key}={value!r:.80} must be a list of token strings")
    added = d.get("added_tokens_decoder")
    if added is None:
        return
    if not isinstance(added, Mapping):
        raise TokenizerError(f"{path}: added_tokens_decoder={added!r:.80} must be a map of token id -> token")
    for tid, token in added.items():
        if not (isinstance(tid, str) and tid.isdigit() and len(tid) <= 10 and _is_token(token)
                and isinstance(token, Mapping)):
            raise TokenizerError(f"{path}: added_tokens_decoder entry {tid!r:.20}: {token!r:.80} must map an "
                                 'id to {"content": "...", ...}')


def _content(value: Any) -> str | None:
    """A special token as written in a config: a string, or an AddedToken dict."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_token_strings(config: Mapping) -> list[str]:
    """Every token the config calls special, in a stable order without repeats."""
    found = [_content(config.get(k)) for k in _SPECIAL_KEYS]
    for key in _SPECIAL_LISTS:
        extra = config.get(key) or []
        found += [_content(v) for v in (extra.values() if isinstance(extra, Mapping) else extra)]
    found += [_content(v) for v in (config.get("added_tokens_decoder") or {}).values()
              if isinstance(v, Mapping) and v.get("special")]
    return list(dict.fromkeys(t for t in found if t))


def _added_tokens(config: Mapping) -> list:
    """``added_tokens_decoder`` entries, in id order, with their matching options."""
    from tokenizers import AddedToken
    entries = config.get("added_tokens_decoder") or {}
    out = []
    for _, v in sorted(entries.items(), key=lambda kv: int(kv[0])):  # keys checked to be digits
        if isinstance(v, Mapping) and isinstance(v.get("content"), str):
            out.append(AddedToken(v["content"], single_word=bool(v.get("single_word", False)),
                                  lstrip=bool(v.get("lstrip", False)), rstrip=bool(v.get("rstrip", False)),
                                  normalized=bool(v.get("normalized", not v.get("special"))),
                                  special=bool(v.get("special", False))))
    return out


def _vocab(file: str) -> dict[str, int]:
    """vocab.json: token -> id, each id in [0, 2^32) as the tokenizers library takes it."""
    vocab = read_json_object(file, TokenizerError)
    bad = next(((t, i) for t, i in vocab.items() if type(i) is not int or not 0 <= i < 2 ** 32), None)
    if bad is not None:
        raise TokenizerError(f"{file}: token {bad[0]!r:.40} has id {bad[1]!r:.40}, not an int in [0, 2^32)")
    return vocab


def _merges(file: str) -> list[tuple[str, str]]:
    """merges.txt: one "A B" pair per line after an optional "#version" line, as the tokenizers
    library reads it (lines end with \\n or \\r\\n)."""
    data = read_side_file(file, TokenizerError, MAX_TOKENIZER_BYTES, "a merges file")
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise TokenizerError(f"cannot read {file} ({e})") from None
    if lines and lines[-1] == "":
        lines.pop()
    merges = []
    for number, line in enumerate(lines, 1):
        line = line[:-1] if line.endswith("\r") else line
        if line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{file} line {number} is not two tokens separated by one space")
        merges.append((parts[0], parts[1]))
    return merges


def _byte_level_bpe(vocab: str, merges: str, add_prefix_space: bool):
    """GPT-2's tokenizer from its two files: byte-level BPE with no subword affixes."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    tokens, pairs = _vocab(vocab), _merges(merges)
    with library_errors(f"cannot read {vocab} / {merges}"):
        model = BPE(tokens, pairs, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    return tok


WORDPIECE_FILE = "vocab.txt"
MAX_VOCAB_BYTES = 64 << 20  # bert-base's vocab.txt is 0.2 MB; the largest multilingual ones ~2 MB


def _read_vocab(file: str) -> dict[str, int]:
    """vocab.txt: one token a line, its id the line number (as transformers' load_vocab)."""
    if os.path.getsize(file) > MAX_VOCAB_BYTES:
        raise TokenizerError(f"{file} is over {MAX_VOCAB_BYTES >> 20} MB: not a WordPiece vocabulary")
    try:
        with open(file, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{file} is not UTF-8 text: {e}") from None
    return {token: i for i, token in reversed(list(enumerate(tokens)))}  # a repeated token keeps its first id


_BERT_SPECIALS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}


def _wordpiece(file: str, config: Mapping):
    """BERT's tokenizer from vocab.txt, as transformers builds BertTokenizer (normalizer, BERT
    pre-tokenizer, WordPiece, its decoder with clean-up), or BertJapaneseTokenizer with character
    subwords (manga-ocr): NFKC, BERT's basic split, then one token per character; decoding joins
    tokens with spaces and glues "##" pieces, without clean-up. Morphological word splitters
    (mecab, sudachi, jumanpp) and sentencepiece subwords need libraries of their own: refused."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    japanese = config.get("tokenizer_class") == "BertJapaneseTokenizer"
    words, subwords = config.get("word_tokenizer_type", "basic"), config.get("subword_tokenizer_type", "wordpiece")
    if japanese and (words != "basic" or subwords not in ("wordpiece", "character")):
        raise TokenizerError(f"{file}: BertJapaneseTokenizer with word_tokenizer_type={words!r:.40} and "
                             f"subword_tokenizer_type={subwords!r:.40} is not supported (only basic words with "
                             "wordpiece or character subwords)")
    vocab = _read_vocab(file)
    specials = {key: _content(config.get(key)) or default for key, default in _BERT_SPECIALS.items()}
    tok = Tokenizer(WordPiece(vocab, unk_token=specials["unk_token"]))
    # BertTokenizer's special tokens by default, when tokenizer_config.json names none
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials.values() if t in vocab])
    bert = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
                                      strip_accents=config.get("strip_accents"),
                                      lowercase=bool(config.get("do_lower_case", not japanese)))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if japanese and subwords == "character":
        tok.normalizer = normalizers.Sequence([bert, normalizers.NFKC()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(),
                                                     pre_tokenizers.Split(Regex("."), "isolated")])
    else:
        tok.normalizer = bert
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=not japanese)
    return tok


SENTENCEPIECE_FILE = "sentencepiece.bpe.model"
_METASPACE = "\u2581"  # sentencepiece's word-start mark


def _xlmr_sentencepiece(file: str, config: Mapping):
    """XLM-R's tokenizer from its sentencepiece model alone, as transformers 5 builds it from the
    same file (XLMRobertaConverter + XLMRobertaTokenizer): the fairseq ids <s> 0, <pad> 1, </s> 2,
    <unk> 3, then the model's pieces from its id 3 on (id + 1), <mask> last; a unigram model over
    them, the model's own normalization table, and Metaspace word marks."""
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError(f"{file}: this checkpoint's tokenizer is a sentencepiece model, which needs the "
                             "sentencepiece package: pip install 'purevedec[sentencepiece]'") from None
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import Unigram
    proto = read_side_file(file, TokenizerError, MAX_TOKENIZER_BYTES, "a sentencepiece model")
    with library_errors(f"{file} is not a readable sentencepiece model"):
        sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
        normalizer_spec = proto_bytes(proto, 3) or b""  # ModelProto.normalizer_spec
        charsmap = proto_bytes(normalizer_spec, 2)  # NormalizerSpec.precompiled_charsmap
    if sp.get_piece_size() <= 3:   # pieces 0..2 are replaced by the fairseq specials
        raise TokenizerError(f"{file} holds no tokens ({sp.get_piece_size()} pieces): an empty sentencepiece model")
    names = [_content(config.get(k)) or default for k, default in
             (("bos_token", "<s>"), ("pad_token", "<pad>"), ("eos_token", "</s>"), ("unk_token", "<unk>"),
              ("mask_token", "<mask>"))]
    vocab = [(t, 0.0) for t in names[:4]]
    vocab += [(sp.id_to_piece(i), sp.get_score(i)) for i in range(3, sp.get_piece_size())] + [(names[4], 0.0)]
    tok = Tokenizer(Unigram(vocab, unk_id=3, byte_fallback=False))
    if charsmap:
        tok.normalizer = normalizers.Precompiled(charsmap)
    scheme = "always" if config.get("add_prefix_space", True) else "never"
    words = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme=scheme)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), words])
    tok.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme=scheme)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    return tok


def _with_file_tokens(tok, path: str, config: Mapping):
    """``tok`` plus the tokens a slow tokenizer's checkpoint adds past its model (Donut's task and field
    tokens): ``added_tokens.json`` (text -> id) and ``added_tokens_decoder``, in id order, each at its id."""
    from tokenizers import AddedToken
    special = set(special_token_strings(config))
    by_id = {int(i): t for t, i in _read_json(os.path.join(path, "added_tokens.json")).items()
             if isinstance(t, str) and type(i) is int}
    by_id.update({int(i): v["content"] for i, v in (config.get("added_tokens_decoder") or {}).items()
                  if isinstance(v, Mapping) and isinstance(v.get("content"), str)})
    with library_errors(f"{path}: cannot add the tokens of added_tokens.json"):
        for token_id, text in sorted(by_id.items()):
            if tok.token_to_id(text) is not None:
                continue
            if token_id != tok.get_vocab_size(with_added_tokens=True):
                raise TokenizerError(f"{path}: added token {text!r:.60} has id {token_id}, but the next free id "
                                     f"is {tok.get_vocab_size(with_added_tokens=True)}")
            token = AddedToken(text, special=text in special, normalized=text not in special)
            (tok.add_special_tokens if token.special else tok.add_tokens)([token])
    return tok


def _backend(path: str, config: Mapping):
    from tokenizers import Tokenizer
    file = os.path.join(path, "tokenizer.json")
    if os.path.exists(file):
        data = read_side_file(file, TokenizerError, MAX_TOKENIZER_BYTES, "a tokenizer file")
        with library_errors(f"{file} is not a readable tokenizer"):
            return Tokenizer.from_str(data.decode("utf-8"))
    vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
    if os.path.exists(vocab) and os.path.exists(merges):
        tok = _byte_level_bpe(vocab, merges, bool(config.get("add_prefix_space", False)))
        with library_errors(f"{path}: cannot add the tokens of its tokenizer config's added_tokens_decoder"):
            for token in _added_tokens(config):  # one by one, so that ids follow added_tokens_decoder
                (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        return tok
    spm_file = os.path.join(path, SENTENCEPIECE_FILE)
    if os.path.exists(spm_file):
        return _with_file_tokens(_xlmr_sentencepiece(spm_file, config), path, config)
    wordpiece = os.path.join(path, WORDPIECE_FILE)
    if os.path.exists(wordpiece):
        return _wordpiece(wordpiece, config)
    raise TokenizerError(f"{path}: no tokenizer.json, nor vocab.json + merges.txt, nor {SENTENCEPIECE_FILE}, "
                         f"nor {WORDPIECE_FILE}")


@dataclass(frozen=True)
class TextTokenizer:
    """Token ids <-> text, as ``AutoTokenizer.from_pretrained(path)`` does it."""
    backend: Any
    """The ``tokenizers.Tokenizer`` doing the work."""
    cleanup: bool = False
    """Apply transformers' ``clean_up_tokenization`` when decoding (only where it applies)."""
    tokenizer_class: str = ""
    """The ``tokenizer_class`` its ``tokenizer_config.json`` names ("" if none): transformers attaches
    some output post-processing to the class (``read`` picks its Markdown clean-up by it)."""

    def __repr__(self) -> str:
        """One line: the model kind and the vocabulary size (the backend's own repr lists every token)."""
        return (f"TextTokenizer({type(self.backend.model).__name__}, {self.backend.get_vocab_size()} tokens, "
                f"cleanup={self.cleanup})")

    def encode(self, text: str) -> list[int]:
        """A decoder prompt's ids: ``tokenizer(text, add_special_tokens=False).input_ids``."""
        with library_errors(f"cannot encode {text[:40]!r}"):
            return self.backend.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """``encode``'s ids and, for each, the (start, end) characters of ``text`` it came from."""
        with library_errors(f"cannot encode {text[:40]!r}"):
            encoding = self.backend.encode(text, add_special_tokens=False)
            return encoding.ids, encoding.offsets

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = _checked_ids(ids)
        with library_errors("cannot decode token ids"):
            text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.cleanup else text

    def batch_decode(self, rows: Iterable[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def token_text(self, token_id: int) -> str:
        """One token as readable text (special tokens kept), for labels."""
        ids = _checked_ids([token_id])
        with library_errors(f"cannot decode token id {token_id}"):
            return self.backend.decode(ids, skip_special_tokens=False)

    @property
    def size(self) -> int:
        """How many token ids the tokenizer knows (its vocabulary and added tokens)."""
        return self.backend.get_vocab_size(with_added_tokens=True)


def _checked_ids(ids) -> list[int]:
    flat = [int(i) for i in np.asarray(ids).reshape(-1)]
    bad = next((i for i in flat if not 0 <= i < 2 ** 32), None)
    if bad is not None:  # the backend would raise a bare OverflowError (ids past the vocabulary it skips)
        raise TokenizerError(f"cannot decode token id {bad}: token ids are in [0, 2^32) (was a pad or "
                             "eos id of -1 used?)")
    return flat


def _clean_up(text: str) -> str:
    # transformers' clean_up_tokenization: drops the space before punctuation and contractions.
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def _wants_cleanup(config: Mapping, backend) -> bool:
    """transformers 5 skips the clean-up for BPE models (it corrupts their output) unless forced."""
    if not config.get("clean_up_tokenization_spaces", False):
        return False
    forced = config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
    return type(backend.model).__name__ != "BPE" or bool(forced)


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """The tokenizer of a local checkpoint directory."""
    path = os.fspath(path)
    config = {**_read_json(os.path.join(path, "special_tokens_map.json")),
              **_read_json(os.path.join(path, "tokenizer_config.json"))}
    backend = _backend(path, config)
    if backend.get_vocab_size(with_added_tokens=False) == 0:
        raise TokenizerError(f"{path}: the tokenizer model holds no tokens (every id would decode to '')")
    from tokenizers import AddedToken
    # Tokens the backend already holds as special keep their own matching options.
    with library_errors(f"{path}: cannot add the special tokens of its tokenizer config"):
        known = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t in special_token_strings(config) if t not in known])
    kind = config.get("tokenizer_class")
    return TextTokenizer(backend, _wants_cleanup(config, backend), kind if isinstance(kind, str) else "")
