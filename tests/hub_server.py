"""A Hugging Face hub on 127.0.0.1 for tests: the model API and file downloads that
``huggingface_hub.snapshot_download`` uses, serving one or more model repositories from
local folders. Point ``HF_ENDPOINT`` at its URL.

Answers:
  GET  /api/models/<repo>/revision/<rev>   {"id", "sha", "siblings": [{"rfilename"}]}
  GET  /api/models/<repo>                  the same, for the default revision
  GET  /api/models/<repo>/tree/<rev>       [{"type": "file", "path", "size", "oid"}]
  HEAD /<repo>/resolve/<rev>/<file>        X-Repo-Commit, ETag, Content-Length
  GET  /<repo>/resolve/<rev>/<file>        the file's bytes
Anything else is a 404 with the hub's ``X-Error-Code: EntryNotFound`` or
``RepoNotFound``. Every request is recorded in ``HubServer.requests``.

Example::

  with HubServer({"sentence-transformers/all-MiniLM-L6-v2": model_dir}) as hub:
    os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
from pathlib import Path
import threading
import urllib.parse


class HubServer:
  """Serves ``repos`` ({repo id: local folder}) as hub model repositories."""

  def __init__(self, repos: dict[str, str | os.PathLike]):
    self.repos = {name: Path(folder) for name, folder in repos.items()}
    # One fixed commit per repository, as the hub names a revision by a 40-hex sha.
    self.commits = {name: hashlib.sha1(name.encode()).hexdigest() for name in self.repos}
    self.requests: list[str] = []
    handler = type("Handler", (_Handler,), {"hub": self})
    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

  def __enter__(self) -> "HubServer":
    threading.Thread(target=self._server.serve_forever, daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    self._server.shutdown()
    self._server.server_close()

  def files(self, repo: str) -> list[str]:
    root = self.repos[repo]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


class _Handler(http.server.BaseHTTPRequestHandler):
  hub: HubServer

  def log_message(self, *args) -> None:  # quiet
    pass

  def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
            head: bool = False) -> None:
    self.send_response(status)
    for k, v in (headers or {}).items():
      self.send_header(k, str(v))
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    if not head:
      self.wfile.write(body)

  def _route(self, head: bool) -> None:
    self.hub.requests.append(f"{self.command} {self.path}")
    path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
    for repo in self.hub.repos:
      commit = self.hub.commits[repo]
      if path in (f"/api/models/{repo}", *(f"/api/models/{repo}/revision/{rev}"
                                          for rev in ("main", commit))):
        info = {"id": repo, "modelId": repo, "sha": commit, "private": False,
                "siblings": [{"rfilename": f} for f in self.hub.files(repo)]}
        return self._send(200, json.dumps(info).encode(),
                          {"Content-Type": "application/json"}, head)
      for rev in ("main", commit):
        if path.rstrip("/") == f"/api/models/{repo}/tree/{rev}":  # ?recursive=true
          tree = [{"type": "file", "path": f, "size": (self.hub.repos[repo] / f).stat().st_size,
                   "oid": hashlib.sha1((self.hub.repos[repo] / f).read_bytes()).hexdigest()}
                  for f in self.hub.files(repo)]
          return self._send(200, json.dumps(tree).encode(),
                            {"Content-Type": "application/json"}, head)
        prefix = f"/{repo}/resolve/{rev}/"
        if path.startswith(prefix):
          file = self.hub.repos[repo] / path[len(prefix):]
          if not file.is_file():
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
          data = file.read_bytes()
          etag = hashlib.sha256(data).hexdigest()
          return self._send(200, data, {"X-Repo-Commit": commit, "ETag": f'"{etag}"',
                                        "Content-Type": "application/octet-stream"}, head)
    self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

  def do_GET(self) -> None:  # noqa: N802
    self._route(head=False)

  def do_HEAD(self) -> None:  # noqa: N802
    self._route(head=True)
