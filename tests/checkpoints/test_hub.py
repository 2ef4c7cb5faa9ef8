"""Hub repo ids: the local cache layout huggingface_hub writes, offline, and what gets fetched
from a Hub served on this machine (tests/hub_server.py) through huggingface_hub's own client."""

from __future__ import annotations

import json
import os
import shutil

import huggingface_hub
import jax
import numpy as np
import pytest
from huggingface_hub import constants

import purevedec as pv
from formats_util import old_state_dict, write_bin
from hub_server import HubServer, use_hub
from models import make_reference
from purevedec.checkpoints import hub as hub_module

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_cache(tmp_path, src, files=("config.json", "model.safetensors")) -> str:
    """models--org--tiny/{refs/main, snapshots/<commit>/...} as huggingface_hub lays it out."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in files:
        shutil.copy(os.path.join(src, f), snap / f)
    return str(cache)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_load_from_offline_cache(tiny, tmp_path, offline):
    cache = _fake_cache(tmp_path, tiny[1])
    params, config = pv.load("org/tiny", cache_dir=cache)
    pv.check_params(params, config)
    params2, _ = pv.load("org/tiny", cache_dir=cache, revision=COMMIT)
    assert params2["decoder"]["wte"].shape == params["decoder"]["wte"].shape


def test_repo_missing_from_offline_cache(tmp_path, offline):
    with pytest.raises(pv.CheckpointError, match=r"org/other is not in the local Hub cache .*offline \(HF_HUB_OFFLINE=1\)"):
        pv.load("org/other", cache_dir=str(tmp_path))


def test_cached_snapshot_without_weights(tiny, tmp_path, offline):
    cache = _fake_cache(tmp_path, tiny[1], files=("config.json",))
    with pytest.raises(pv.CheckpointError, match=r"lacks a weights file \(model.safetensors or pytorch_model.bin or "
                                                 r"flax_model.msgpack\), and the machine is offline"):
        pv.load("org/tiny", cache_dir=cache)


def test_an_unreachable_hub_is_known_before_any_request(tiny, tmp_path, monkeypatch):
    """Offline without HF_HUB_OFFLINE: a connection probe answers in seconds, and huggingface_hub,
    whose requests retry for ~30 s, is never asked: each load tries to connect once (the probe)."""
    import socket
    with socket.socket() as s:  # a local port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    use_hub(monkeypatch, f"http://127.0.0.1:{port}", str(tmp_path / "unused"))
    assert hub_module.hub_reachable(f"http://127.0.0.1:{port}", timeout=2.0) is False
    attempts = []
    connect = socket.socket.connect

    def counted(sock, address):
        if address[1] == port:
            attempts.append(address)
        return connect(sock, address)
    monkeypatch.setattr(socket.socket, "connect", counted)
    cache = _fake_cache(tmp_path, tiny[1])
    params, config = pv.load("org/tiny", cache_dir=cache)
    with pytest.raises(pv.CheckpointError, match=r"cannot be reached \(no connection to http://127.0.0.1"):
        pv.load("org/absent", cache_dir=cache)
    assert len(attempts) == 2
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_module.hub_reachable(f"http://127.0.0.1:{port}") is True  # only the proxy knows


# --- Downloads, through huggingface_hub's own client, from a Hub served on this machine ---

CAPTIONER = "nlpconnect/vit-gpt2-image-captioning"
# What a captioner needs of that repo: its config files, the one weights format the package
# reads first, and the tokenizer and preprocessor files (written out here, not taken from hub.py).
CAPTIONER_NEEDS = {"config.json", "generation_config.json", "pytorch_model.bin", "vocab.json", "merges.txt",
                   "tokenizer_config.json", "special_tokens_map.json", "preprocessor_config.json"}
WORDPIECE_VOCAB = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\ncat\n##s\n"


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Repos as the Hub holds them. The captioner is laid out like nlpconnect's: PyTorch weights
    beside TF and Flax ones (junk here: they must never be fetched), GPT-2 tokenizer files, a
    preprocessor config and repo clutter. The other two carry the tokenizer files of BERT
    decoders (vocab.txt alone, as manga-ocr) and XLM-R ones (a sentencepiece model)."""
    src = tmp_path_factory.mktemp("src")
    model = make_reference()
    model.save_pretrained(src)
    write_bin(old_state_dict(model, src), src)
    read = lambda name: (src / name).read_bytes()  # noqa: E731
    configs = {"config.json": read("config.json"), "generation_config.json": read("generation_config.json")}
    captioner = {**configs, "pytorch_model.bin": read("pytorch_model.bin"),
                 "tf_model.h5": b"\x89HDF\r\n\x1a\n never read", "flax_model.msgpack": b"\x80 never read",
                 "vocab.json": json.dumps({"the": 0, "cat": 1}).encode(), "merges.txt": b"#version: 0.2\n",
                 "tokenizer_config.json": b'{"model_max_length": 1024}',
                 "special_tokens_map.json": b'{"eos_token": "the"}',
                 "preprocessor_config.json": b'{"image_processor_type": "ViTImageProcessor"}',
                 "README.md": b"# a captioner\n", ".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}
    weights = {**configs, "model.safetensors": read("model.safetensors")}
    return {CAPTIONER: captioner,
            "org/wordpiece": {**weights, "vocab.txt": WORDPIECE_VOCAB.encode(), "README.md": b"x"},
            "org/sentencepiece": {**weights, "sentencepiece.bpe.model": b"\x0a\x05never read", "README.md": b"x"}}


@pytest.fixture
def hub(repos, tmp_path, monkeypatch):
    """A Hub server holding ``repos``, huggingface_hub online against it, its cache in tmp_path."""
    with HubServer(repos) as server:
        use_hub(monkeypatch, server.url, str(tmp_path / "hub-cache"))
        yield server


def _file_requests(hub) -> list:
    return [r for r in hub.requests if "/resolve/" in r.path or r.path.startswith("/cdn/")]


def _assert_same_params(got, expected) -> None:
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(expected)
    assert got_tree == want_tree and got["config"] == expected["config"]
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(path)


def test_download_fetches_one_weights_format_and_the_side_files(hub, repos, tmp_path):
    params, _ = pv.load(CAPTIONER)
    assert hub.downloaded() == CAPTIONER_NEEDS
    disk = tmp_path / "disk"
    disk.mkdir()
    for name, data in repos[CAPTIONER].items():
        (disk / name).write_bytes(data)
    _assert_same_params(params, pv.load(str(disk))[0])


def test_a_second_load_is_served_from_the_cache(hub):
    first, _ = pv.load(CAPTIONER)
    hub.clear()
    second, _ = pv.load(CAPTIONER)
    assert [r.path for r in hub.requests if r.path.startswith("/api/models/")]  # the Hub was asked...
    assert _file_requests(hub) == []  # ...but no file was fetched again
    _assert_same_params(second, first)


def test_a_downloaded_snapshot_loads_offline(hub, monkeypatch):
    """huggingface_hub caches the repo's whole file list beside the snapshot; offline, the files
    the package chose not to fetch (tf_model.h5) must not make the snapshot look incomplete."""
    online, _ = pv.load(CAPTIONER)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.clear()
    offline, _ = pv.load(CAPTIONER)
    assert hub.requests == []
    _assert_same_params(offline, online)
    if not hasattr(huggingface_hub, "get_cached_repo_tree"):
        return  # older huggingface_hub keeps no file list to find the gap by
    os.remove(os.path.join(hub_module.snapshot_dir(CAPTIONER), "vocab.json"))  # an interrupted download
    with pytest.raises(pv.CheckpointError, match=r"incomplete: 1 file\(s\) are missing \(vocab.json\), "
                                                 r"and the machine is offline"):
        pv.load(CAPTIONER)


@pytest.mark.parametrize("repo, tokenizer_file", [("org/wordpiece", "vocab.txt"),
                                                  ("org/sentencepiece", "sentencepiece.bpe.model")])
def test_every_kind_of_tokenizer_file_is_fetched(hub, repo, tokenizer_file):
    """A BERT or XLM-R decoder's checkpoint holds no tokenizer.json: its vocab.txt or
    sentencepiece model is the tokenizer, and captioning it needs that file."""
    folder = hub_module.snapshot_dir(repo)
    assert hub.downloaded() == {"config.json", "generation_config.json", "model.safetensors", tokenizer_file}
    if tokenizer_file == "vocab.txt":
        from purevedec.captioning.text import load_tokenizer
        assert load_tokenizer(folder).decode([5, 6, 7]) == "the cats"


def test_a_fine_tuned_checkpoint_carries_the_tokenizer_files_over(tmp_path):
    """What a download fetches beside the weights, fine-tuning copies into its checkpoints, once."""
    from purevedec.training.checkpoint_dir import side_files
    for name in ("config.json", "vocab.txt", "sentencepiece.bpe.model", "tokenizer_config.json", "notes.txt"):
        (tmp_path / name).write_text("x")
    assert sorted(os.path.basename(f) for f in side_files(str(tmp_path))) == [
        "sentencepiece.bpe.model", "tokenizer_config.json", "vocab.txt"]


def test_a_repo_the_hub_does_not_know(hub):
    with pytest.raises(pv.CheckpointError, match="org/absent is neither a local directory nor a Hub repo"):
        pv.load("org/absent")
    with pytest.raises(pv.CheckpointError, match=f"the Hub repo {CAPTIONER} has no revision 'v9'"):
        pv.load(CAPTIONER, revision="v9")
    assert hub.downloaded() == set()


@pytest.mark.parametrize("status, why", [(500, r"the Hub answered HTTP 500"),
                                         (0, r"the Hub cannot be reached \(RemoteProtocolError\)")])
def test_a_failing_hub_sends_loads_to_the_cache_at_once(hub, status, why):
    """A Hub answering 500, or a connection closed unanswered: the cached snapshot is used after
    one request (huggingface_hub retries its tree listing five times, ~25 s, on either)."""
    online, _ = pv.load(CAPTIONER)
    hub.fail(status)
    hub.clear()
    cached, _ = pv.load(CAPTIONER)
    _assert_same_params(cached, online)
    assert len(hub.requests) == 1, hub.requests
    with pytest.raises(pv.CheckpointError, match=r"org/absent is not in the local Hub cache .* and " + why):
        pv.load("org/absent")


@pytest.mark.parametrize("status, pattern", [(401, "/resolve/.*/config.json$"), (403, "^/cdn/")])
def test_a_failed_download_is_a_checkpoint_error(hub, status, pattern):
    """The listing succeeds, then a file cannot be fetched (the Hub refuses it, as for a gated
    repo, or the CDN an expired link): the package's error naming the repo, and a later load
    completes. (A 5xx there is retried by huggingface_hub for ~25 s before the same error.)"""
    hub.fail(status, pattern)
    with pytest.raises(pv.CheckpointError, match=f"downloading {CAPTIONER} from the Hub failed: "):
        pv.load(CAPTIONER)
    hub.fail(None)
    pv.load(CAPTIONER)
    assert hub.downloaded() == CAPTIONER_NEEDS
