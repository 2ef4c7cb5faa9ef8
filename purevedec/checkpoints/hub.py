"""Hub repo id -> local snapshot directory, downloading only what loading needs.

Online, the repo's file list (its model info) decides the weights format (see
``formats.FORMATS``) and only that format is fetched, with the config, generation config,
preprocessor and tokenizer files. Offline (``HF_HUB_OFFLINE=1``, which huggingface_hub reads
itself), when the Hub cannot be reached (a connection probe of a few seconds, before
huggingface_hub's own retries) or when it answers with an error, the snapshot already in the
local cache is used, and a clear error says what is missing from it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from urllib.parse import urlsplit

from ..errors import CheckpointError
from .formats import FORMATS, pick_format

# Everything besides weights that a captioning checkpoint may carry and the package may read.
# The tokenizer files are those captioning/text.py reads: tokenizer.json, GPT-2's vocab.json +
# merges.txt, XLM-R's sentencepiece.bpe.model, BERT's vocab.txt (manga-ocr has nothing else).
SIDE_FILES = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
              "tokenizer_config.json", "vocab.json", "merges.txt", "sentencepiece.bpe.model", "vocab.txt",
              "special_tokens_map.json", "added_tokens.json"]


# A Hub repo id: "name" or "owner/name", letters, digits, '-', '_', '.' (huggingface_hub's rule).
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` can be a Hub repo id (a path such as ``./ckpt``, ``/data/x`` or ``a/b/c``
    cannot: such names fail at once instead of retrying the Hub)."""
    return bool(_REPO_ID.match(name)) and ".." not in name and "--" not in name and not name.endswith(".")


def _where(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def _patterns(files) -> list[str] | None:
    """What to fetch of a repo holding ``files``: the side files and one weights format (None
    when it holds no format the package reads)."""
    fmt = pick_format(files)
    return None if fmt is None else SIDE_FILES + [fmt.single, fmt.index, fmt.shards]


def _cached_patterns(repo_id: str, revision: str | None, cache_dir: str | None) -> list[str]:
    """The patterns the online path fetched this snapshot with, from the repo's file list that
    huggingface_hub (2.x) caches beside it: asked offline for no pattern, it would require every
    file of that list, the weights formats deliberately left out included. Without a cached list
    (older huggingface_hub, a cache written by hand) nothing is checked beyond config.json."""
    try:
        from huggingface_hub import get_cached_repo_tree
        files = [f.path for f in get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_dir)]
    except Exception:  # noqa: BLE001 - ImportError, no cached list: fall back on the weakest request
        return ["config.json"]
    return _patterns(files) or ["config.json"]


def _cached(repo_id: str, revision: str | None, cache_dir: str | None, why: str) -> str:
    """The cached snapshot folder, checked to hold a config and one weights format."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    cache = cache_dir or constants.HF_HUB_CACHE
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                   allow_patterns=_cached_patterns(repo_id, revision, cache_dir))
    except LocalEntryNotFoundError as e:
        if getattr(e, "snapshot_path", None):  # IncompleteSnapshotError: its first sentence names the gaps
            raise CheckpointError(f"{str(e).split('. ')[0]}, and {why}") from None
        raise CheckpointError(f"{_where(repo_id, revision)} is not in the local Hub cache ({cache}) and {why}; "
                              "download it once while online, or pass a local directory") from None
    files = os.listdir(folder)
    missing = [] if "config.json" in files else ["config.json"]
    if pick_format(files) is None:
        missing.append("a weights file (" + " or ".join(f.single for f in FORMATS) + ")")
    if missing:
        raise CheckpointError(f"the cached snapshot of {_where(repo_id, revision)} ({folder}) lacks "
                              f"{' and '.join(missing)}, and {why}")
    return folder


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds (name
    lookup included). Offline, huggingface_hub retries each request for ~30 s before giving up;
    this answers in at most ``timeout``. Behind a proxy (a ``*_PROXY`` variable) the answer is
    True: only the proxy knows."""
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlsplit(endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return True
    result: list[bool] = []

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)
    worker = threading.Thread(target=probe, daemon=True)  # name lookups ignore the socket's timeout
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def _no_answer(error: Exception) -> str:
    """Why the Hub's answer is unusable, for the error message: its HTTP status, or the failure."""
    from huggingface_hub import constants
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status is not None:
        return f"the Hub answered HTTP {status} ({constants.ENDPOINT})"
    return f"the Hub cannot be reached ({type(error).__name__})"


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def snapshot_dir(repo_id: str, *, revision: str | None = None, cache_dir: str | None = None) -> str:
    """A local directory holding ``repo_id``'s config and one weights format."""
    if not looks_like_repo_id(repo_id):  # before importing huggingface_hub (~1 s): a typo fails at once
        raise CheckpointError(f"{repo_id!r:.200} is not a directory, and cannot be a Hub repo id ('name' or "
                              "'owner/name'): check the path")
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
    if constants.HF_HUB_OFFLINE:
        return _cached(repo_id, revision, cache_dir, "the machine is offline (HF_HUB_OFFLINE=1)")
    if not hub_reachable(constants.ENDPOINT):
        return _cached(repo_id, revision, cache_dir, f"the Hub cannot be reached (no connection to "
                                                     f"{constants.ENDPOINT} within 3 s)")
    # The model info lists the files in one request that huggingface_hub does not retry: a Hub
    # answering 5xx sends the caller to the cache at once (the tree listing retried for ~25 s).
    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except RevisionNotFoundError:
        raise CheckpointError(f"the Hub repo {repo_id} has no revision {revision!r}") from None
    except (RepositoryNotFoundError, HFValidationError) as e:
        raise CheckpointError(f"{repo_id} is neither a local directory nor a Hub repo "
                              f"({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 - no connection, proxy, timeout, 5xx...: fall back on the cache
        return _cached(repo_id, revision, cache_dir, _no_answer(e))
    files = [s.rfilename for s in info.siblings or ()]
    patterns = _patterns(files)
    if patterns is None:
        raise CheckpointError(f"{_where(repo_id, revision)} has no weights in a supported format "
                              f"({', '.join(f.single for f in FORMATS)}); files: {sorted(files)[:20]}")
    try:
        return snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns)
    except Exception as e:  # noqa: BLE001 - huggingface_hub's and httpx's errors, all one kind here
        raise CheckpointError(f"downloading {_where(repo_id, revision)} from the Hub failed: "
                              f"{_first_line(e)}") from None
