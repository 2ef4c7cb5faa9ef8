"""A Hugging Face Hub on 127.0.0.1: just enough of its HTTP API for huggingface_hub's real client
(``HfApi.model_info``, ``list_repo_files``, ``snapshot_download``, ``hf_hub_download``), so that
the download paths are tested against what the client sends and expects, not a stand-in.

Model repos live in memory, ``{repo_id: {path: bytes}}``, each at one commit (``COMMIT``):

  GET  /api/models/{repo}[/revision/{rev}]       model info: id, sha, siblings
  GET  /api/models/{repo}/tree/{rev}             the file list (path, size, git oid, lfs)
  HEAD /{repo}/resolve/{rev}/{path}              metadata: X-Repo-Commit, ETag, Content-Length
  GET  /{repo}/resolve/{rev}/{path}              the bytes

Weight files are LFS files, as on the Hub: ``resolve`` answers 302 to a "CDN" (this server under
the name ``localhost``, another origin, so the client reads X-Linked-Etag / X-Linked-Size from
the redirect itself and fetches the bytes there). Errors carry the Hub's X-Error-Code
(RepoNotFound, RevisionNotFound, EntryNotFound), which the client turns into its own exceptions.
``fail(status, pattern)`` makes requests whose path matches answer ``status`` (a Hub outage), or
hang up without an answer (status 0, a proxy or load balancer dropping the connection).
Every request is logged in ``requests`` as ``Request(method, path, file)``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

COMMIT = "4c1e0a9b7d2f3e5a6b8c9d0e1f2a3b4c5d6e7f80"
LFS_SUFFIXES = (".bin", ".h5", ".msgpack", ".safetensors", ".model")


class Request(NamedTuple):
    method: str
    path: str
    file: str | None  # the repo file whose bytes or metadata were served, if any


def git_blob_id(data: bytes) -> str:
    """The id git gives a file's content: the Hub's ETag for files outside LFS."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubServer:
    """The server and its repos; a context manager that starts and stops it."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[Request] = []
        self._failure: tuple[int, re.Pattern] | None = None
        self._lfs = {hashlib.sha256(data).hexdigest(): (repo, path) for repo, files in repos.items()
                     for path, data in files.items() if path.endswith(LFS_SUFFIXES)}
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.hub = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "HubServer":
        # a short poll: shutdown() waits for the loop's next look at its flag
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail(self, status: int | None, pattern: str = "") -> None:
        """Answer ``status`` to every request whose path matches ``pattern`` (0: close the
        connection unanswered; None: heal)."""
        self._failure = None if status is None else (status, re.compile(pattern))

    def downloaded(self) -> set[str]:
        """The repo files whose bytes were sent (GET on resolve or on the CDN)."""
        return {r.file for r in self.requests if r.method == "GET" and r.file is not None}

    def clear(self) -> None:
        self.requests.clear()


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def _tree_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
    if _is_lfs(path):  # the git blob is then a pointer file; the content is known by its sha256
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


# Routes, tried in this order (a repo id is one or two segments; the lazy match stops at the route's word).
_TREE = re.compile(r"/api/models/(?P<repo>.+?)/tree/(?P<rev>[^/]+)(?:/.*)?")
_INFO = re.compile(r"/api/models/(?P<repo>.+?)(?:/revision/(?P<rev>[^/]+))?")
_RESOLVE = re.compile(r"/(?P<repo>.+?)/resolve/(?P<rev>[^/]+)/(?P<file>.+)")
_CDN = re.compile(r"/cdn/(?P<sha>[0-9a-f]{64})")


class _Handler(BaseHTTPRequestHandler):
    server_version = "HubServer/1"

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        self._route(body=True)

    def do_HEAD(self) -> None:
        self._route(body=False)

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def _route(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self._body, self._file, self._path, self._logged = body, None, path, False
        failure = self.hub._failure
        if failure and failure[1].search(path):
            self._log()
            if failure[0] == 0:
                self.close_connection = True
                return None
            return self._send(failure[0], json.dumps({"error": "Internal Error"}).encode())
        for route, serve in ((_TREE, self._tree), (_INFO, self._info), (_RESOLVE, self._resolve), (_CDN, self._cdn)):
            match = route.fullmatch(path)
            if match:
                serve(**match.groupdict())
                break
        else:
            self._send(404, b"Not Found")
        self._log()

    def _log(self) -> None:
        """Records the request once, before its response is sent: a client that has read the
        whole response may look at the log at once (logged after the send, the last file of a
        download was sometimes missing from it under load)."""
        if not self._logged:
            self._logged = True
            self.hub.requests.append(Request(self.command, self._path, self._file))

    def _send(self, status: int, data: bytes = b"", headers: dict | None = None,
              error_code: str | None = None) -> None:
        self._log()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", error_code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self._body:
            self.wfile.write(data)

    def _json(self, value) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _files(self, repo: str, rev: str | None) -> dict[str, bytes] | None:
        """The repo's files at ``rev``, or None once a Hub error has been sent."""
        if repo not in self.hub.repos:
            self._send(404, b'{"error":"Repository not found"}', error_code="RepoNotFound")
            return None
        if rev not in (None, "main", COMMIT):
            self._send(404, b'{"error":"Invalid rev id"}', error_code="RevisionNotFound")
            return None
        return self.hub.repos[repo]

    def _info(self, repo: str, rev: str | None) -> None:
        files = self._files(repo, rev)
        if files is not None:
            self._json({"_id": git_blob_id(repo.encode())[:24], "id": repo, "modelId": repo, "sha": COMMIT,
                        "private": False, "siblings": [{"rfilename": f} for f in sorted(files)]})

    def _tree(self, repo: str, rev: str) -> None:
        files = self._files(repo, rev)
        if files is not None:
            self._json([_tree_entry(p, files[p]) for p in sorted(files)])

    def _resolve(self, repo: str, rev: str, file: str) -> None:
        files = self._files(repo, rev)
        if files is None:
            return
        if file not in files:
            return self._send(404, b"Entry not found", {"X-Repo-Commit": COMMIT}, error_code="EntryNotFound")
        data = files[file]
        self._file = file
        if not _is_lfs(file):
            return self._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_id(data)}"'})
        sha = hashlib.sha256(data).hexdigest()
        self._file = None  # the bytes come from the CDN
        self._send(302, b"", {"X-Repo-Commit": COMMIT, "ETag": f'"{git_blob_id(data)}"',
                              "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)),
                              "Location": f"http://localhost:{self.hub.port}/cdn/{sha}"})

    def _cdn(self, sha: str) -> None:
        if sha not in self.hub._lfs:
            return self._send(404, b"NoSuchKey")
        repo, self._file = self.hub._lfs[sha]
        data = self.hub.repos[repo][self._file]
        self._send(200, data, {"ETag": f'"{sha}"', "Content-Type": "application/octet-stream"})


def use_hub(monkeypatch, url: str, cache_dir: str) -> None:
    """huggingface_hub online against ``url`` for one test, its default cache in ``cache_dir``.
    The resolve template is derived from HF_ENDPOINT once at import, so it is set here too;
    proxies are dropped so that the loopback address is reached directly."""
    from huggingface_hub import constants
    for proxy in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
