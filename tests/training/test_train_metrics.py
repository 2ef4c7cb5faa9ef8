"""Validation metrics (BLEU-4, CIDEr-D, CER, WER, exact match) against hand computations and the
reference libraries, and their place in the training loop: the eval record, best/ selection,
predictions.jsonl and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import warnings

import numpy as np
import pytest

import purevedec as pv
from purevedec.training import metrics as M

# The reference libraries (the test and eval extras) are imported by the tests that compare with
# them; everything else here runs without them.
LIBRARY_OF = {"bleu": "sacrebleu", "cer": "jiwer", "wer": "jiwer"}

CORPUS_P = ["A dog runs on the grass.", "a cat sitting on a mat", "", "two men, talking"]
CORPUS_R = [["a dog is running on the grass", "the dog runs on grass"], ["a cat sits on the mat"], ["a bird"],
            ["two men talking", "men", "two men standing here"]]


def random_corpus(seed, words=("a", "dog", "cat", "runs", "the", "on", "mat", "é", "big", "Grass.")):
    rng = random.Random(seed)
    sentence = lambda lo: " ".join(rng.choice(words) for _ in range(rng.randint(lo, 9)))  # noqa: E731
    preds = [sentence(0) for _ in range(12)]
    refs = [[sentence(1) for _ in range(rng.randint(1, 4))] for _ in range(12)]
    return preds, refs


# ---- BLEU ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["builtin", "library"])
def test_bleu_by_hand(backend):
    if backend == "library":
        pytest.importorskip(LIBRARY_OF["bleu"])
    bleu = lambda p, r: M.bleu(p, r, backend=backend)  # noqa: E731
    # 1..4-gram matches 5/6, 3/5, 2/4, 1/3 ("the" clipped to the reference's one); equal lengths: no penalty
    got = bleu(["The cat sat on the mat."], [["the cat sat on a mat"]])
    assert got == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, rel=1e-12)
    # two references: n-grams clip to the reference that has most; the closest length (3, not 7) sets the penalty
    # the 4-gram "a a a b" is in neither reference: unsmoothed BLEU is 0 whatever the other orders
    assert bleu(["a a a b"], [["a a b b c c c", "a a b"]]) == 0.0
    p, refs = "a a b c", [["x a a b c y z", "a a b c q"]]
    # every n-gram matches (1..4); hyp 4 words, closest reference 5 -> penalty exp(1 - 5/4)
    assert bleu([p], refs) == pytest.approx(math.exp(1 - 5 / 4), rel=1e-12)
    # equally close references (3 and 5 words for 4): the shorter counts, so no penalty
    assert bleu(["a b c d"], [["a b c d e", "a b c"]]) == pytest.approx(1.0, rel=1e-12)
    # clipping takes the largest count in any one reference, not the sum over references:
    # 1..4-grams matched 4/8, 3/7, 2/6, 1/5 (each n-gram once though both references have it)
    assert bleu(["a b c d a b c d"], [["a b c d e", "a b c d f"]]) == pytest.approx(
        (4 / 8 * 3 / 7 * 2 / 6 * 1 / 5) ** 0.25, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_bleu_builtin_equals_sacrebleu(seed):
    sacrebleu = pytest.importorskip("sacrebleu")
    preds, refs = random_corpus(seed)
    preds[0] = ""  # an empty prediction
    lib = M.bleu(preds, refs, backend="library")
    assert M.bleu(preds, refs, backend="builtin") == pytest.approx(lib, rel=1e-12, abs=1e-15)
    # and the library path is sacrebleu itself on the normalised words
    words = lambda s: " ".join(M.caption_words(s))  # noqa: E731
    streams = [[words(r[j]) if j < len(r) else None for r in refs] for j in range(4)]
    direct = sacrebleu.corpus_bleu([words(p) for p in preds], streams, smooth_method="none", tokenize="none", force=True)
    assert lib == pytest.approx(direct.score / 100, rel=1e-12)


def test_bleu_matches_sacrebleu_on_a_corpus_with_matches_at_every_order():
    pytest.importorskip("sacrebleu")
    preds = ["a dog runs on the grass", "a cat sits on a mat", "two men talking"]
    refs = [["a dog runs on the green grass", "the dog runs"], ["a cat sits on a mat"], ["two men talking here"]]
    got = M.bleu(preds, refs, backend="builtin")
    assert 0.5 < got < 1.0
    assert got == pytest.approx(M.bleu(preds, refs, backend="library"), rel=1e-12)


COCO_VALUES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "coco_scorers.json")


def test_bleu_and_cider_equal_the_coco_scorers_recorded_values():
    """COCO's own scorers (pycocoevalcap) on six fixed corpora, recorded by
    scripts/coco_scorer_values.py: every run compares with them, the package installed or not.
    COCO's BLEU adds 1e-15 / 1e-9 to each n-gram count, hence its tolerance."""
    with open(COCO_VALUES, encoding="utf-8") as f:
        recorded = json.load(f)
    assert recorded["scorer"].startswith("pycocoevalcap") and len(recorded["cases"]) == 6
    for case in recorded["cases"]:
        preds, refs = case["predictions"], case["references"]
        assert M.cider_d(preds, refs) == pytest.approx(case["cider_d"], rel=1e-12)
        assert M.bleu(preds, refs) == pytest.approx(case["bleu_4"], rel=1e-9)
        assert case["bleu_4"] > 0.1 and case["cider_d"] > 0.5  # every n-gram order matches somewhere


def test_bleu_and_cider_match_the_coco_caption_scorers():
    """pycocoevalcap itself (not in the test extra: it ships 100 MB of Java jars), on captions that
    need purevedec's normalisation, and on the recorded corpora (the recording is the scorer's)."""
    pytest.importorskip("pycocoevalcap")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "scripts"))
    try:
        import coco_scorer_values
    finally:
        sys.path.pop(0)
    with open(COCO_VALUES, encoding="utf-8") as f:
        for seed, case in zip(range(20, 26), json.load(f)["cases"], strict=True):
            assert coco_scorer_values.corpus(seed) == (case["predictions"], case["references"])
            live = coco_scorer_values.scores(case["predictions"], case["references"])
            assert live == pytest.approx({"cider_d": case["cider_d"], "bleu_4": case["bleu_4"]}, rel=1e-12)
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    for seed in range(4):
        preds, refs = random_corpus(seed + 10)
        preds[1] = ""
        words = lambda s: " ".join(M.caption_words(s))  # noqa: E731
        cider, bleu = CiderScorer(n=4, sigma=6.0), BleuScorer(n=4)
        for p, rs in zip(preds, refs):
            cider += (words(p), [words(r) for r in rs])
            bleu += (words(p), [words(r) for r in rs])
        assert M.cider_d(preds, refs) == pytest.approx(cider.compute_score()[0], rel=1e-12)
        # COCO's BLEU adds 1e-15 / 1e-9 to each precision instead of returning 0 for a zero one
        assert M.bleu(preds, refs) == pytest.approx(bleu.compute_score(option="closest")[0][3], abs=1e-6)


# ---- CIDEr-D ------------------------------------------------------------------------------------

def test_cider_d_by_hand_on_two_images():
    """N=2 images: idf = log 2 for an n-gram in one image's references (or none), 0 for "a" (in both)."""
    got = M.cider_d(["A cat.", "dog dog"], [["a cat"], ["a dog runs", "Dog"]])
    # image 1 == its reference: orders 1 and 2 have similarity 1 ("a" weighs 0), orders 3, 4 are empty
    image1 = 10 * (1 + 1 + 0 + 0) / 4
    # image 2, "dog dog" = {dog: 2L} (L = log 2), bigram "dog dog" in no reference
    # vs "a dog runs": order 1 min(2L, L) * L / (2L * sqrt(2) L) = 1/(2 sqrt 2); lengths 2 vs 3
    # vs "dog": order 1 min(2L, L) * L / (2L * L) = 1/2; lengths 2 vs 1
    penalty = math.exp(-1 / (2 * 6.0 ** 2))
    image2 = 10 * (1 / (2 * math.sqrt(2)) * penalty + 0.5 * penalty) / (4 * 2)
    assert got == pytest.approx((image1 + image2) / 2, rel=1e-12)


def test_cider_d_edge_cases():
    assert M.cider_d([""], [["a dog"]]) == 0.0  # empty prediction
    # one image: every reference n-gram has idf log 1 - log 1 = 0, so nothing scores
    assert M.cider_d(["a dog"], [["a dog"]]) == 0.0
    # unicode: NFC and NFD spellings are one word; punctuation and case are dropped
    nfd = "cafe\u0301"
    assert M.cider_d([f"Un {nfd}!", "x"], [["un café"], ["y"]]) == pytest.approx(M.cider_d(["un café", "x"], [["un café"], ["y"]]))
    assert M.cider_d([f"Un {nfd}!", "x"], [["un café"], ["y"]]) > 0


# ---- CER / WER ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["builtin", "library"])
def test_cer_wer_by_hand(backend):
    if backend == "library":
        pytest.importorskip(LIBRARY_OF["cer"])
    cer = lambda p, r: M.cer(p, r, backend=backend)  # noqa: E731
    wer = lambda p, r: M.wer(p, r, backend=backend)  # noqa: E731
    assert cer(["sitting"], [["kitten"]]) == pytest.approx(3 / 6)
    # corpus level: total edits / total reference length, not the mean of the two rates
    assert cer(["ab", "x"], [["ab"], ["abcd"]]) == pytest.approx((0 + 4) / (2 + 4))
    # the closest reference counts (1 edit of "abd", not 4 of "xyzw")
    assert cer(["abc"], [["xyzw", "abd"]]) == pytest.approx(1 / 3)
    assert cer([""], [["hello"]]) == 1.0  # empty prediction: every character deleted
    assert wer(["the  cat\tsat"], [["the cat sat down"]]) == pytest.approx(1 / 4)
    assert wer(["The cat"], [["the cat"]]) == pytest.approx(1 / 2)  # case counts when reading text
    # unicode: NFD and NFC "é" are one character; "ï" vs "i" is one substitution
    assert cer(["cafe\u0301"], [["café"]]) == 0.0
    assert cer(["naive"], [["naïve"]]) == pytest.approx(1 / 5)


@pytest.mark.parametrize("seed", range(4))
def test_cer_wer_builtin_equal_jiwer(seed):
    jiwer = pytest.importorskip("jiwer")
    preds, refs = random_corpus(seed + 20, words=("ab", "b", "ça", "naïve", "x", "日本", "c.", "A"))
    preds[2] = ""
    for metric in (M.cer, M.wer):
        assert metric(preds, refs, backend="builtin") == pytest.approx(metric(preds, refs, backend="library"), rel=1e-12)
    # one reference per image: exactly jiwer's corpus CER / WER
    single = [r[:1] for r in refs]
    assert M.cer(preds, single) == pytest.approx(jiwer.cer([r[0] for r in refs], [" ".join(p.split()) for p in preds]))
    assert M.wer(preds, single) == pytest.approx(jiwer.wer([r[0] for r in refs], [" ".join(p.split()) for p in preds]))


# ---- names, errors, fallback ---------------------------------------------------------------------

def test_exact_match_and_score():
    assert M.exact_match(["A  Dog", "cat"], [["a dog"], ["dog", "a cat"]]) == 0.5
    got = M.score(("exact", "bleu", "cider", "cer", "wer"), CORPUS_P, CORPUS_R)
    assert list(got) == ["exact", "bleu", "cider", "cer", "wer"]
    assert got["cider"] == pytest.approx(M.cider_d(CORPUS_P, CORPUS_R))
    assert M.parse_metrics("cider, BLEU") == ("exact", "bleu", "cider")


def test_bad_metric_input_is_refused():
    with pytest.raises(pv.ConfigError, match="unknown 'rouge'"):
        M.parse_metrics("bleu,rouge")
    with pytest.raises(pv.ConfigError, match="2 predictions but 1 reference"):
        M.bleu(["a", "b"], [["a"]])
    with pytest.raises(pv.ConfigError, match="image 1: references must be a non-empty list"):
        M.cider_d(["a", "b"], [["a"], []])
    with pytest.raises(pv.ConfigError, match="image 0: references must be"):
        M.cer(["a"], ["abc"])  # a string, not a list of strings
    with pytest.raises(pv.ConfigError, match="image 0: every reference is empty"):
        M.wer(["a"], [["  "]])
    with pytest.raises(pv.ConfigError, match="no predictions"):
        M.cer([], [])
    with pytest.raises(pv.ConfigError, match="backend"):
        M.bleu(["a"], [["a"]], backend="fast")


def test_missing_library_falls_back_with_one_warning(monkeypatch):
    pytest.importorskip("sacrebleu")
    want = M.bleu(CORPUS_P, CORPUS_R, backend="library")
    monkeypatch.setitem(sys.modules, "sacrebleu", None)  # import sacrebleu now raises ImportError
    monkeypatch.setattr(M, "_warned", set())
    with pytest.warns(UserWarning, match=r"sacrebleu is not installed.*purevedec\[eval\]"):
        assert M.bleu(CORPUS_P, CORPUS_R) == pytest.approx(want, rel=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.bleu(CORPUS_P, CORPUS_R)  # warned once only
    with pytest.raises(ImportError, match="sacrebleu"):
        M.bleu(CORPUS_P, CORPUS_R, backend="library")


# ---- the training loop ---------------------------------------------------------------------------

def _tiny_fit_inputs():
    from purevedec.training.data import Batcher, Dataset, Example
    config = pv.Config(
        encoder=pv.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                             image_size=8, patch_size=4),
        decoder=pv.GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                              eos_token_id=1),
        decoder_start_token_id=0, pad_token_id=1, eos_token_id=1)
    params = pv.init_params(config, __import__("jax").random.key(0))
    examples = [Example(f"im{i}.png", [f"t{3 + i} t{4 + i} t{5 + i}", f"t{10 + i}"]) for i in range(4)]
    train, val = Dataset(examples[:2]), Dataset(examples[2:])
    batcher = Batcher(encode=lambda s: [int(w[1:]) for w in s.split()],
                      load=lambda p: np.full((3, 8, 8), float(p[2]), np.float32), image_shape=(3, 8, 8),
                      eos_token_id=1, batch_size=2, max_length=6, buckets=(6,), threads=1)
    return params, train, val, batcher


def _scripted_decode(per_eval):
    """decode() that ignores the tokens and returns the scripted captions of the current evaluation."""
    calls = iter([text for texts in per_eval for text in texts])
    return lambda ids: next(calls)


@pytest.mark.parametrize("best", ["cider", "cer"])
def test_fit_scores_each_evaluation_and_keeps_the_best_by_metric(tmp_path, best):
    pytest.importorskip("optax")
    from purevedec.training import TrainConfig
    from purevedec.training.loop import RunConfig, fit
    params, train, val, batcher = _tiny_fit_inputs()
    script = [["t1 t2", "zz"], ["t5 t6 t7", "t6 t7 t8"], ["t5 t6", "t13"]]  # bad, both right, half right
    run = RunConfig(out_dir=str(tmp_path), epochs=3, progress=False, max_new_tokens=4, metrics=("exact", "bleu", "cider", "cer", "wer"),
                    best_metric=best)
    result = fit(params, train, val, batcher, TrainConfig(learning_rate=1e-3, total_steps=3), run,
                 decode=_scripted_decode(script))
    evals = [json.loads(x) for x in open(tmp_path / "metrics.jsonl") if '"eval"' in x]
    assert [e["step"] for e in evals] == [1, 2, 3]
    refs = [e.captions for e in val.examples]
    for record, texts in zip(evals, script):
        for name, key in (("bleu", "val_bleu"), ("cider", "val_cider"), ("cer", "val_cer"), ("wer", "val_wer"),
                          ("exact", "val_exact_match")):
            assert record[key] == pytest.approx(M.SCORERS[name](texts, refs), rel=1e-12), (name, record)
    assert evals[1]["val_exact_match"] == 1.0 and evals[1]["val_cer"] == 0.0 and evals[0]["val_exact_match"] == 0.0
    assert evals[0]["val_cider"] < evals[2]["val_cider"] < evals[1]["val_cider"]
    assert evals[0]["val_cer"] > evals[2]["val_cer"] > evals[1]["val_cer"]
    best_record = json.load(open(tmp_path / "best" / "best.json"))
    assert best_record["step"] == 2  # the right captions, whichever direction the metric goes
    assert result["val_cider"] == evals[-1]["val_cider"] and result["step"] == 3
    preds = [json.loads(x) for x in open(tmp_path / "checkpoint-3" / "predictions.jsonl")]
    assert [p["prediction"] for p in preds] == script[2] and [p["references"] for p in preds] == refs


def test_run_config_refuses_a_best_metric_that_is_not_computed():
    from purevedec.training.loop import RunConfig
    with pytest.raises(pv.ConfigError, match="best_metric='cider' is not computed"):
        RunConfig(out_dir="x", metrics=("exact", "cer"), best_metric="cider")
    with pytest.raises(pv.ConfigError, match="unknown 'meteor'"):
        RunConfig(out_dir="x", metrics=("meteor",))


def _events(folder):
    """Every (tag, step, value) in the TensorBoard event files under ``folder``, read back from the
    TFRecord framing (u64 length, u32 crc, data, u32 crc) with tensorboardX's Event protobuf."""
    from tensorboardX.proto.event_pb2 import Event
    found = []
    for name in sorted(os.listdir(folder)):
        data = open(os.path.join(folder, name), "rb").read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            found += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
        assert at == len(data)
    return found


def test_train_command_writes_metrics_and_tensorboard(tmp_path, capsys):
    pytest.importorskip("optax")
    pytest.importorskip("tensorboardX")
    from models import make_reference, save_captioning_checkpoint
    from purevedec.commands import main
    from test_train_data import make_folder

    model = save_captioning_checkpoint(make_reference(seed=2), tmp_path / "model")
    data = make_folder(tmp_path, n=4, extras=False)
    out = tmp_path / "run"
    args = ["train", model, data, "--out", str(out), "--batch-size", "2", "--validation-fraction", "0.5",
            "--no-progress", "--max-length", "8", "--metrics", "bleu,cider,cer,wer", "--best-metric", "cer",
            "--tensorboard", "--eval-every", "1"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    log = [json.loads(x) for x in open(out / "metrics.jsonl")]
    evals = [r for r in log if r["event"] == "eval"]
    assert len(evals) == 1 and {"val_loss", "val_exact_match", "val_bleu", "val_cider", "val_cer", "val_wer"} <= set(evals[0])
    assert result["val_cer"] == evals[0]["val_cer"]
    preds = [json.loads(x) for x in open(out / "checkpoint-1" / "predictions.jsonl")]
    texts, refs = [p["prediction"] for p in preds], [p["references"] for p in preds]
    assert evals[0]["val_cer"] == pytest.approx(M.cer(texts, refs, backend="builtin"))
    assert evals[0]["val_cider"] == pytest.approx(M.cider_d(texts, refs))

    events = _events(out / "tensorboard")
    train = [r for r in log if r["event"] == "train"]
    for key in ("loss", "learning_rate", "grad_norm", "images_per_s"):
        got = [(s, v) for t, s, v in events if t == f"train/{key}"]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6, abs=1e-12)) for r in train], key
    for key in ("val_loss", "val_bleu", "val_cider", "val_cer", "val_wer", "val_exact_match"):
        assert [(s, v) for t, s, v in events if t == f"eval/{key}"] == [(1, pytest.approx(evals[0][key], rel=1e-6))]


def test_tensorboard_without_the_extra_names_it(tmp_path, capsys, monkeypatch):
    from purevedec.commands import main
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    assert main(["train", str(tmp_path / "no-model"), str(tmp_path), "--out", str(tmp_path / "o"), "--tensorboard"]) == 2
    assert "purevedec[tensorboard]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
