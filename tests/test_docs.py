"""The documentation: the API reference builds, every public name is documented, and the
README's quick start runs as written.

The README marks the Python blocks it promises to run with ``<!-- test: NAME -->`` on the line
before the fence; they run here on a tiny local checkpoint (the Hub id in them is replaced by
its folder) and their results are compared with transformers on the same inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import re
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from PIL import Image

import purevedec
from tests.conftest import make_reference, maxdiff, torch_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
HUB_ID = "nlpconnect/vit-gpt2-image-captioning"
PUBLIC_MODULES = ("purevedec", "purevedec.config", "purevedec.errors", "purevedec.model", "purevedec.params",
                  "purevedec.generation", "purevedec.checkpoints", "purevedec.captioning",
                  *(m for m in ("purevedec.sharding", "purevedec.training") if importlib.util.find_spec(m)))
PREPROCESSOR = {"image_processor_type": "ViTImageProcessor", "size": {"height": 16, "width": 16},
                "resample": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
# pdoc cannot resolve the string annotations of the __init__ that typing.NamedTuple generates
# (it is compiled in a namespace of its own, so under ``from __future__ import annotations``
# ``Optional``/``np`` are unknown there); the fields' types are rendered from the class body.
_PDOC_NAMEDTUPLE_INIT = re.compile(r"Error parsing type annotation .* for purevedec\.[\w.]+\.__init__\. Import of")


def readme_blocks() -> dict[str, str]:
    """{name: code} of the README's Python blocks marked ``<!-- test: name -->``."""
    text = open(README, encoding="utf-8").read()
    return dict(re.findall(r"<!-- test: (\w+) -->\n```python\n(.*?)\n```", text, flags=re.S))


# --- (a) the reference builds -------------------------------------------------------------------

def test_reference_builds_without_warnings(tmp_path):
    pdoc = pytest.importorskip("pdoc")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)   # from imported libraries
        warnings.filterwarnings("ignore", message=_PDOC_NAMEDTUPLE_INIT.pattern)
        pdoc.pdoc(*PUBLIC_MODULES, output_directory=tmp_path)
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    for module in PUBLIC_MODULES:
        assert module.replace(".", "/") + ".html" in pages, (module, sorted(pages))
    page = (tmp_path / "purevedec.html").read_text(encoding="utf-8")
    for name in ("forward", "generate_core", "Captioner", "GenerationResult"):
        assert f'id="{name}"' in page, name


# --- (b) every public name and field is documented ----------------------------------------------

def _fields(cls) -> list[str]:
    if hasattr(cls, "_fields"):
        return list(cls._fields)
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls)]
    return []


def test_every_public_name_has_a_docstring():
    pdoc = pytest.importorskip("pdoc")
    module = pdoc.doc.Module(purevedec)
    missing = [name for name in purevedec.__all__ if not (module.get(name) and module.get(name).docstring.strip())]
    assert not missing, f"public names without a docstring: {missing}"


def test_public_classes_document_their_fields():
    """A field is documented by its own docstring (pdoc shows it under the field) or by name in
    the class docstring (``field``)."""
    pdoc = pytest.importorskip("pdoc")
    module = pdoc.doc.Module(purevedec)
    classes = [n for n in purevedec.__all__ if inspect.isclass(getattr(purevedec, n)) and _fields(getattr(purevedec, n))]
    for expected in ("Output", "EncoderOutput", "GenerateOutput", "GenerationResult", "GenerationConfig",
                     "Captioner", "Caption", "Config", "ViTConfig", "GPT2Config", "ImageConfig"):
        assert expected in classes
    undocumented = []
    for name in classes:
        doc = module.get(name)
        for field in _fields(getattr(purevedec, name)):
            member = doc.members.get(field)
            own = member.docstring.strip() if member is not None else ""
            if own.startswith("Alias for field number"):  # namedtuple's placeholder
                own = ""
            if not own and f"``{field}``" not in doc.docstring:
                undocumented.append(f"{name}.{field}")
    assert not undocumented, f"fields without documentation: {undocumented}"


def test_shapes_are_documented_for_array_outputs():
    for cls in (purevedec.Output, purevedec.EncoderOutput, purevedec.GenerateOutput, purevedec.GenerationResult,
                purevedec.Score):
        source = inspect.getsource(cls)
        for field in cls._fields:
            doc = re.search(rf"    {field}: .*\n    \"\"\"(.*?)\"\"\"", source)
            assert doc and "[" in doc.group(1), f"{cls.__name__}.{field} documents no shape"


# --- (c) the README's quick start runs as written ------------------------------------------------

def _tokenizer(path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["a dog on the grass", "a cat on a red couch"] * 3, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                            unk_token="<|endoftext|>").save_pretrained(path)
    return tok.get_vocab_size()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny captioning checkpoint: model, tokenizer and preprocessor config in one folder."""
    path = tmp_path_factory.mktemp("ckpt")
    vocab = _tokenizer(path)
    model = make_reference(dec_kw={"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
                           init_scale=3.0)
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
    return model, str(path)


def _block_code(name: str, checkpoint_dir: str) -> str:
    """The README block ``name`` with its Hub id replaced by a local checkpoint folder."""
    code = readme_blocks()[name]
    assert HUB_ID in code, f"README block {name} no longer loads {HUB_ID}"
    return code.replace(f'"{HUB_ID}"', repr(checkpoint_dir))


def _run_block(name: str, checkpoint_dir: str, cwd) -> tuple[dict, str]:
    code = _block_code(name, checkpoint_dir)
    namespace, out, here = {"__name__": "__readme__"}, io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, f"README.md:{name}", "exec"), namespace)
    finally:
        os.chdir(here)
    return namespace, out.getvalue()


def test_readme_marks_its_quick_start_blocks():
    blocks = readme_blocks()
    assert {"quickstart", "research"} <= set(blocks)
    assert "pv.forward(params, pixels, ids)" in blocks["research"]   # the three-argument call, first
    text = open(README, encoding="utf-8").read()
    assert text.index("<!-- test: research -->") < text.index("pv.encode(")


def test_readme_quick_start_captions_as_transformers(checkpoint, tmp_path, shipped_settings_env):
    """The block runs as a user's script: its own process, compiled with the settings users get."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer
    model, path = checkpoint
    rs = np.random.RandomState(3)
    code = _block_code("quickstart", path)
    names = re.findall(r'"(\w+\.(?:jpg|png))"', code)
    assert len(names) >= 1
    for i, name in enumerate(names):
        Image.fromarray(rs.randint(0, 256, (20 + i, 30, 3), np.uint8)).convert("RGB").save(tmp_path / name)
    (tmp_path / "quickstart.py").write_text(code)
    child = subprocess.run([sys.executable, "quickstart.py"], cwd=tmp_path, env=shipped_settings_env,
                           capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
    captions = eval(child.stdout.strip(), {})   # the block prints a list of strings
    images = [Image.open(tmp_path / n).convert("RGB") for n in names]
    pixels = AutoImageProcessor.from_pretrained(path).preprocess(images, return_tensors="pt").pixel_values
    with torch.no_grad():
        ids = model.generate(pixel_values=pixels, num_beams=4)
    want = AutoTokenizer.from_pretrained(path).batch_decode(ids, skip_special_tokens=True)
    assert captions == want


def test_readme_research_block_matches_transformers(checkpoint, tmp_path):
    model, path = checkpoint
    ns, _ = _run_block("research", path, tmp_path)
    logits = np.asarray(ns["logits"])
    assert logits.shape == (2, 4, model.config.decoder.vocab_size) and logits.dtype == np.float32
    assert ns["params"]["config"] == ns["config"]
    ref = torch_forward(model, np.asarray(ns["pixels"]), np.asarray(ns["ids"])).logits
    assert maxdiff(logits, ref) < 1e-4


# --- (d) the README's fine-tuning walk-through runs as written -------------------------------------

def readme_shell_blocks() -> dict[str, list[str]]:
    """{name: command lines} of the README's command blocks marked ``<!-- test-shell: name -->``."""
    text = open(README, encoding="utf-8").read()
    found = re.findall(r"<!-- test-shell: (\w+) -->\n```\n(.*?)\n```", text, flags=re.S)
    return {name: [line for line in body.splitlines() if line.strip()] for name, body in found}


def test_readme_fine_tuning_walk_through_runs(tmp_path, capsys):
    pytest.importorskip("optax")
    import shlex
    from purevedec.commands import main
    commands = readme_shell_blocks()["finetune"]
    assert [c.split()[:2] for c in commands] == [["purevedec", "render-shapes"], ["purevedec", "train"],
                                                  ["purevedec", "caption"]]
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        for command in commands:
            capsys.readouterr()
            assert main([*shlex.split(command)[1:], *(["--no-progress"] if " train " in command else [])]) == 0, command
        printed = capsys.readouterr().out
    finally:
        os.chdir(here)
    image = shlex.split(commands[-1])[-1]
    assert printed.startswith(image + "\t") and len(printed.split("\t")[1].split()) >= 2  # a caption of words
    assert os.path.isfile(tmp_path / "runs" / "shapes" / "training.png")


def test_readme_scoring_block_matches_transformers_and_xla(checkpoint, tmp_path):
    """The research_more block: score against transformers' loss, the model's own log-probs of a
    sample against score's, the jvp against a central difference, count_params and flops."""
    import jax
    import torch
    model, path = checkpoint
    ns, _ = _run_block("research_more", path, tmp_path)
    ids, mask, pixels = np.asarray(ns["ids"]), np.asarray(ns["mask"]), np.asarray(ns["pixels"])
    labels = torch.tensor(np.where(mask[:, 1:] == 1, ids[:, 1:], -100), dtype=torch.long)
    with torch.no_grad():
        losses = [model(pixel_values=torch.tensor(pixels[i:i + 1]), labels=labels[i:i + 1]).loss.item()
                  for i in range(len(ids))]
    np.testing.assert_allclose(np.asarray(ns["mean"]), -np.array(losses), atol=1e-4)
    out, scored = ns["out"], ns["scored"]
    np.testing.assert_allclose(np.asarray(out.model_logprobs), np.asarray(scored.token_logprobs), atol=1e-5)
    assert np.max(np.abs(np.asarray(out.model_logprobs) - np.asarray(out.token_logprobs))) > 1e-3
    params, direction, forward = ns["params"], ns["direction"], ns["pv"].forward
    shifted = lambda eps: forward(jax.tree.map(lambda p, d: p + eps * d, params, direction), pixels, ids)  # noqa: E731
    central = (shifted(2e-3) - shifted(-2e-3)) / 4e-3
    assert maxdiff(ns["d_logits"], central) <= 1e-2 * float(np.max(np.abs(central)))
    assert ns["n_params"] == sum(p.numel() for n, p in model.named_parameters() if ".pooler." not in n)
    xla = jax.jit(forward).lower(params, pixels, ids).compile().cost_analysis()
    assert abs(ns["n_flops"] / (xla[0] if isinstance(xla, list) else xla)["flops"] - 1) < 0.02


def _until_eos(row, eos=0) -> np.ndarray:
    """A generate row without its padding: the start token, then up to and including the first EOS."""
    row = np.asarray(row)
    ends = np.flatnonzero(row[1:] == eos)
    return row[:2 + ends[0]] if len(ends) else row


def test_readme_long_outputs_block_gives_generates_tokens(checkpoint, tmp_path):
    ns, _ = _run_block("long_outputs", checkpoint[1], tmp_path)
    params, pixels = ns["params"], ns["pixels"]
    plain = purevedec.generate(params, pixels, max_new_tokens=20)
    np.testing.assert_array_equal(np.asarray(ns["grown"].sequences), np.asarray(plain.sequences))
    budgets = [3, 20, 8, 1, 12]
    for i, (out, drafted) in enumerate(zip(ns["outs"], ns["drafted"])):
        alone = purevedec.generate(params, pixels[i:i + 1], max_new_tokens=budgets[i]).sequences
        np.testing.assert_array_equal(out.sequence, _until_eos(np.asarray(alone)[0]))
        np.testing.assert_array_equal(drafted.sequence, _until_eos(np.asarray(plain.sequences)[i]))
    assert ns["first"].index == 0 and np.array_equal(ns["first"].sequence, ns["outs"][0].sequence)
    keys = jax.random.split(jax.random.key(0), 5)
    for i, out in enumerate(ns["sampled"]):
        alone = purevedec.generate(params, pixels[i:i + 1], do_sample=True, max_new_tokens=10, key=keys[i][None])
        np.testing.assert_array_equal(out.sequence, _until_eos(np.asarray(alone.sequences)[0]))


def test_readme_params_block_keeps_structures_and_saves_the_adapter_apart(checkpoint, tmp_path):
    """The research_params block: a dropout change beside the params leaves the adam state usable,
    init and load agree, the adapter gets gradients and is saved where transformers does not look."""
    import jax
    import torch
    from transformers import VisionEncoderDecoderModel
    model, path = checkpoint
    ns, _ = _run_block("research_params", path, tmp_path)
    params, pixels = ns["params"], np.asarray(ns["pixels"])
    assert ns["same"]
    assert jax.tree.structure(ns["opt_state"][0].mu) == jax.tree.structure(ns["fresh"])
    assert float(np.abs(np.asarray(ns["lora_grads"]["lora"]["b"])).max()) > 0
    loaded, _ = purevedec.load(tmp_path / "adapted")
    np.testing.assert_array_equal(np.asarray(loaded["extra"]["lora"]["a"]), np.asarray(params["extra"]["lora"]["a"]))
    ids = np.zeros((2, 3), np.int64)
    with torch.no_grad():
        theirs = VisionEncoderDecoderModel.from_pretrained(tmp_path / "adapted")(
            pixel_values=torch.tensor(pixels), decoder_input_ids=torch.tensor(ids)).logits
    assert maxdiff(purevedec.forward(loaded, pixels, ids.astype(np.int32)), theirs) < 1e-4


def test_readme_buckets_block_equals_unpadded_calls_and_compiles_once(checkpoint, tmp_path):
    """The research_buckets block: eight lengths in one bucket, the values of unpadded calls."""
    from purevedec import model as pv_model
    before = pv_model._forward_jit._cache_size()
    ns, _ = _run_block("research_buckets", checkpoint[1], tmp_path)
    # one program for the eight forward calls, one for score's (it passes forward a padding mask)
    assert pv_model._forward_jit._cache_size() - before == 2
    params, pixels = ns["params"], ns["pixels"]
    for ids, logits, loss, score in zip(ns["sweep"], ns["logits"], ns["losses"], ns["scores"]):
        np.testing.assert_allclose(logits, purevedec.forward(params, pixels, ids), atol=1e-5, rtol=0)
        np.testing.assert_allclose(loss, purevedec.loss(params, pixels, ids).loss, atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(score, purevedec.score(params, pixels, ids).logprob, atol=1e-5, rtol=1e-6)
