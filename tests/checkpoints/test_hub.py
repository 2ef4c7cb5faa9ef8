"""Hub repo ids: the local cache layout huggingface_hub writes, offline, and what gets fetched."""

from __future__ import annotations

import os
import shutil

import huggingface_hub
import pytest
from huggingface_hub import constants

import purevedec as pv
from purevedec.checkpoints import hub

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


def test_unreachable_hub_falls_back_on_cache(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint: True)  # the request itself fails
    def no_network(*a, **k):
        raise ConnectionError("no route to host")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", no_network)
    cache = _fake_cache(tmp_path, tiny[1])
    params, config = pv.load("org/tiny", cache_dir=cache)
    pv.check_params(params, config)
    with pytest.raises(pv.CheckpointError, match="cannot be reached"):
        pv.load("org/absent", cache_dir=cache)


def test_online_downloads_only_one_format(tiny, tmp_path, monkeypatch):
    """nlpconnect/vit-gpt2-image-captioning's layout: .bin only, plus tokenizer files."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda endpoint: True)  # this machine has no network
    files = ["config.json", "pytorch_model.bin", "tf_model.h5", "vocab.json", "merges.txt", "preprocessor_config.json"]
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, *a, **k: files)
    seen = {}
    def fake_download(repo_id, **kw):
        seen.update(kw)
        return tiny[1]
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    pv.load("nlpconnect/vit-gpt2-image-captioning")
    patterns = seen["allow_patterns"]
    assert "pytorch_model.bin" in patterns and "vocab.json" in patterns and "config.json" in patterns
    assert not any("safetensors" in p or "msgpack" in p or "h5" in p for p in patterns)


def test_an_unreachable_hub_is_known_before_any_request(tiny, tmp_path, monkeypatch):
    """Offline without HF_HUB_OFFLINE: a connection probe answers in seconds; huggingface_hub,
    whose requests retry for ~30 s, is never asked."""
    import socket
    import time
    with socket.socket() as s:  # a local port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    assert hub.hub_reachable(f"http://127.0.0.1:{port}", timeout=2.0) is False
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")

    def never(*a, **k):
        raise AssertionError("the Hub was asked although it cannot be reached")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", never)
    cache = _fake_cache(tmp_path, tiny[1])
    start = time.monotonic()
    params, config = pv.load("org/tiny", cache_dir=cache)
    with pytest.raises(pv.CheckpointError, match=r"cannot be reached \(no connection to http://127.0.0.1"):
        pv.load("org/absent", cache_dir=cache)
    assert time.monotonic() - start < 20
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub.hub_reachable(f"http://127.0.0.1:{port}") is True  # only the proxy knows
