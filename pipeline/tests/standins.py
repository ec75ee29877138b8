"""Stand-ins at the AWS/HF boundaries, served by stdlib http.server on 127.0.0.1. Each copies a documented shape.

- ImdsServer: EC2 instance metadata, IMDSv2. "PUT /latest/api/token" with X-aws-ec2-metadata-token-ttl-seconds
  returns a token; a GET without a valid X-aws-ec2-metadata-token gets 401; "/latest/meta-data/spot/instance-action"
  is 404 until an interruption is scheduled, then 200 {"action": "terminate", "time": "..."}
  (EC2 User Guide: "Use IMDSv2", "Spot Instance interruption notices").
- HubServer: the Hugging Face Hub. "GET /api/models/{repo}/revision/{rev}?blobs=true" answers model info whose
  "siblings" are [{"rfilename", "size", "blobId", "lfs": {"sha256", "size", "pointerSize"}}] ("lfs" only for LFS
  files; huggingface_hub's ModelInfo/RepoSibling); "GET /{repo}/resolve/{rev}/{file}" serves the file and honours
  "Range: bytes=N-" with 206 + Content-Range; both need "Authorization: Bearer <token>" for a gated repo (else 401).
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server:
    def __init__(self, handler):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.owner = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def send(self, code: int, body: bytes = b"", headers: dict | None = None):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ImdsHandler(_Quiet):
    def do_PUT(self):
        owner = self.server.owner
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self.send(400)
        token = uuid.uuid4().hex
        owner.tokens.add(token)
        self.send(200, token.encode())

    def do_GET(self):
        owner = self.server.owner
        if self.headers.get("X-aws-ec2-metadata-token") not in owner.tokens:
            return self.send(401)
        if self.path != "/latest/meta-data/spot/instance-action":
            return self.send(404)
        owner.polls += 1
        if owner.notice is None:
            return self.send(404)
        self.send(200, json.dumps(owner.notice).encode(), {"Content-Type": "text/plain"})


class ImdsServer(_Server):
    def __init__(self, notice: dict | None = None):
        self.tokens: set[str] = set()
        self.notice = notice
        self.polls = 0
        super().__init__(_ImdsHandler)


class _HubHandler(_Quiet):
    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.server.owner.token}"

    def do_GET(self):
        owner = self.server.owner
        owner.requests.append((self.path, self.headers.get("Range")))
        if not self._authorized():
            return self.send(401, b'{"error":"Access to model is restricted."}')
        prefix = f"/api/models/{owner.repo}/revision/{owner.revision}"
        if self.path.split("?")[0] == prefix:
            siblings = []
            for name, data in sorted(owner.files.items()):
                sib = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
                if name.endswith(".safetensors"):
                    sib["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                  "pointerSize": 135}
                siblings.append(sib)
            body = {"id": owner.repo, "sha": owner.revision, "siblings": siblings}
            return self.send(200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        resolve = f"/{owner.repo}/resolve/{owner.revision}/"
        if self.path.startswith(resolve):
            name = self.path[len(resolve):]
            data = owner.files.get(name)
            if data is None:
                return self.send(404)
            if owner.cut_after and name in owner.cut_after:  # drop the connection mid-file once
                limit = owner.cut_after.pop(name)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:limit])
                self.wfile.flush()
                self.close_connection = True
                return
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[len("bytes="):-1])
                part = data[start:]
                return self.send(206, part, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
            return self.send(200, data)
        self.send(404)


class HubServer(_Server):
    def __init__(self, repo: str, revision: str, files: dict[str, bytes], token: str):
        self.repo, self.revision, self.files, self.token = repo, revision, files, token
        self.requests: list[tuple[str, str | None]] = []
        self.cut_after: dict[str, int] = {}
        super().__init__(_HubHandler)
