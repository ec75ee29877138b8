"""Fault injection and API call counting (the non-AWS control API under /_sortie/).

Every AWS request that reaches the endpoint is identified as ``<service>:<Operation>``
(``ec2:RunInstances``, ``ssm:GetCommandInvocation``, ``s3:PutObject`` ...): the service from the
SigV4 credential scope, the operation from the query ``Action``, the ``X-Amz-Target`` header, or
(REST services such as S3) botocore's HTTP routing rules. That name is counted, then checked
against the registered faults; a matching fault answers with an error in the service's own wire
shape instead of letting moto handle the request.
"""

from __future__ import annotations

import fnmatch
import io
import json
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

_CRED_RE = re.compile(r"Credential=([^/,\s]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request")
MAX_INTROSPECT_BODY = 8 * 1024 * 1024


# ------------------------------------------------------------------ request introspection


@dataclass
class RequestInfo:
    service: str
    operation: str
    region: str
    access_key: str
    protocol: str  # ec2 | query | json | rest-xml | rest-json
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.service}:{self.operation}"


_routers: dict[str, Any] = {}
_routers_lock = threading.Lock()


def _rest_operation(service: str, environ: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Find the operation of a REST request with botocore's routing rules (via moto)."""
    try:
        from moto.core.request import Request
        from moto.core.routing import get_service_router

        with _routers_lock:
            router = _routers.get(service)
            if router is None:
                router = _routers[service] = get_service_router(service)
        env = dict(environ)
        env["wsgi.input"] = io.BytesIO(b"")
        env["CONTENT_LENGTH"] = "0"
        op, uri_params = router.match(Request(env))
        return op.name, dict(uri_params or {})
    except Exception:
        return None, {}


def _read_body(environ: dict[str, Any]) -> bytes | None:
    """Read the request body and put it back so the wrapped app can read it again."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= 0 or length > MAX_INTROSPECT_BODY:
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _flatten_json(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out[key] = v
            if isinstance(v, (dict, list)):
                out.update(_flatten_json(v, key))
    elif isinstance(obj, list):
        for i, v in enumerate(obj, 1):
            key = f"{prefix}.{i}"
            out[key] = v
            if isinstance(v, (dict, list)):
                out.update(_flatten_json(v, key))
    return out


def introspect(environ: dict[str, Any]) -> RequestInfo | None:
    """Identify service, operation and parameters of an AWS request (None if not AWS-shaped)."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    query = environ.get("QUERY_STRING", "")
    m = _CRED_RE.search(auth)
    if not m:
        qs = parse_qs(query)
        cred = (qs.get("X-Amz-Credential") or [""])[0]
        parts = cred.split("/")
        if len(parts) != 5:
            return None
        access_key, _, region, service, _ = parts
    else:
        access_key, _, region, service = m.groups()
    service = service.lower()
    ctype = environ.get("CONTENT_TYPE", "") or ""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    method = environ.get("REQUEST_METHOD", "GET").upper()
    params: dict[str, Any] = {}
    operation = None
    protocol = "rest-json"

    form: dict[str, list[str]] = parse_qs(query) if query else {}
    if method == "POST" and ctype.startswith("application/x-www-form-urlencoded"):
        body = _read_body(environ)
        if body:
            form.update(parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True))
    if "Action" in form:
        operation = form["Action"][0]
        params = {k: v[0] for k, v in form.items() if k not in ("Action", "Version")}
        protocol = "ec2" if service == "ec2" else "query"
    elif target:
        operation = target.split(".")[-1]
        protocol = "json"
        body = _read_body(environ)
        if body:
            try:
                params = _flatten_json(json.loads(body))
            except ValueError:
                pass
    else:
        operation, params = _rest_operation(service, environ)
        protocol = "rest-xml" if service == "s3" else "rest-json"
    if not operation:
        operation = f"{method} {environ.get('PATH_INFO', '/')}" if service != "s3" else method
    return RequestInfo(service, operation, region, access_key, protocol, params)


# ------------------------------------------------------------------ call counter


class CallCounter:
    """Counts per operation, and per operation for each access key (so a test can tell the orchestrator's
    calls from the instance's and its own)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, name: str, access_key: str = "") -> None:
        with self._lock:
            key = (access_key, name)
            self._counts[key] = self._counts.get(key, 0) + 1

    def snapshot(self, access_key: str | None = None) -> dict[str, int]:
        totals: dict[str, int] = {}
        with self._lock:
            for (key, name), n in self._counts.items():
                if access_key is None or key == access_key:
                    totals[name] = totals.get(name, 0) + n
        return dict(sorted(totals.items()))

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


class RequestLog:
    """The distinct requests of each access key: operation plus its short parameters (values over 256
    characters, such as scripts and user data, are left out), for tests that check what a caller touched,
    e.g. every request sortie makes against the IAM policy it documents. Bounded per key."""

    LIMIT = 5000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, info: RequestInfo, query: str) -> None:
        params = {k: v for k, v in info.params.items() if isinstance(v, (str, int, float, bool)) and len(str(v)) <= 256}
        if info.service == "s3" and query:
            # REST routing gives only the path's parameters; ListObjectsV2's prefix is in the query string.
            for k, v in parse_qs(query).items():
                if k in ("prefix", "list-type") and v:
                    params[k] = v[0]
        entry = {"name": info.name, "params": dict(sorted(params.items()))}
        ident = json.dumps(entry, sort_keys=True)
        with self._lock:
            seen = self._seen.setdefault(info.access_key, {})
            if ident not in seen and len(seen) < self.LIMIT:
                seen[ident] = entry

    def snapshot(self, access_key: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._seen.get(access_key, {}).values())

    def reset(self) -> None:
        with self._lock:
            self._seen.clear()


# ------------------------------------------------------------------ faults


class FaultSpecError(ValueError):
    pass


@dataclass
class Fault:
    id: str
    action: str  # "RunInstances" or "ec2:RunInstances"
    match: dict[str, Any]
    code: str
    message: str
    status: int
    times: int  # remaining; -1 = unlimited
    fired: int = 0
    after: bool = False  # let the request through, then answer with the error (a lost response)
    rate: float = 1.0  # the share of matching requests that fail, drawn from a generator seeded with `seed`
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "action": self.action,
            "match": self.match,
            "error": {"code": self.code, "message": self.message, "status": self.status},
            "times": self.times,
            "fired": self.fired,
            "after": self.after,
            "rate": self.rate,
            "seed": self.seed,
        }

    @classmethod
    def from_json(cls, spec: Any) -> Fault:
        if not isinstance(spec, dict):
            raise FaultSpecError("a fault is a JSON object")
        action = spec.get("action")
        if not isinstance(action, str) or not action:
            raise FaultSpecError("'action' (e.g. \"RunInstances\" or \"ec2:RunInstances\") is required")
        match = spec.get("match") or {}
        if not isinstance(match, dict):
            raise FaultSpecError("'match' must be an object")
        for k, v in match.items():
            if not (isinstance(v, (str, int, float, bool)) or (
                isinstance(v, list) and all(isinstance(x, (str, int, float, bool)) for x in v)
            )):
                raise FaultSpecError(f"match value for {k!r} must be a scalar or a list of scalars")
        err = spec.get("error")
        if not isinstance(err, dict) or not isinstance(err.get("code"), str) or not err["code"]:
            raise FaultSpecError("'error': {\"code\": ..., \"message\": ..., \"status\": ...} is required")
        status = err.get("status", 400)
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise FaultSpecError("'error.status' must be an HTTP error status (400-599)")
        times = spec.get("times", 1)
        if not isinstance(times, int) or isinstance(times, bool) or (times < 1 and times != -1):
            raise FaultSpecError("'times' must be a positive integer, or -1 for unlimited")
        after = spec.get("after", False)
        if not isinstance(after, bool):
            raise FaultSpecError("'after' must be true or false")
        rate = spec.get("rate", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise FaultSpecError("'rate' must be a number in (0, 1]")
        seed = spec.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise FaultSpecError("'seed' must be an integer")
        return cls(
            rate=float(rate),
            seed=seed,
            rng=random.Random(seed),
            after=after,
            id=uuid.uuid4().hex[:12],
            action=action,
            match=match,
            code=err["code"],
            message=str(err.get("message") or f"Injected fault: {err['code']}"),
            status=status,
            times=times,
        )

    def matches(self, info: RequestInfo, params: dict[str, Any]) -> bool:
        name = f"{info.service}:{info.operation}".lower()
        if "*" in self.action:
            # A glob over `service:Operation` (`*`, `s3:*`), or over the operation alone.
            subject = name if ":" in self.action else info.operation.lower()
            if not fnmatch.fnmatchcase(subject, self.action.lower()):
                return False
        elif ":" in self.action:
            if self.action.lower() != name:
                return False
        elif self.action != info.operation:
            return False
        for key, want in self.match.items():
            have = params.get(key)
            if have is None and key == "AvailabilityZone" and info.operation == "RunInstances":
                continue  # neither Placement nor subnet given: AWS picks the AZ, any AZ matches
            wants = want if isinstance(want, list) else [want]
            # A wanted string with `*` is a glob (`"*/heartbeat.json"`); anything else must be equal.
            if have is None or not any(
                fnmatch.fnmatchcase(str(have), w) if isinstance(w, str) and "*" in w else str(have) == str(w)
                for w in wants
            ):
                return False
        return True


class FaultRegistry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, spec: Any) -> Fault:
        fault = Fault.from_json(spec)
        with self._lock:
            self._faults.append(fault)
        return fault

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.to_json() for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            before = len(self._faults)
            self._faults = [f for f in self._faults if f.id != fault_id]
            return len(self._faults) != before

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._faults)

    def take(self, info: RequestInfo) -> Fault | None:
        """Return (and consume one use of) the first fault matching this request."""
        params = dict(info.params)
        if info.operation == "RunInstances":
            params.setdefault("AvailabilityZone", _run_instances_az(info))
            params = {k: v for k, v in params.items() if v is not None}
        with self._lock:
            for fault in self._faults:
                if fault.matches(info, params):
                    # Seeded per fault: the same requests in the same order fail the same way in every run.
                    if fault.rate < 1 and fault.rng.random() >= fault.rate:
                        continue
                    fault.fired += 1
                    if fault.times > 0:
                        fault.times -= 1
                        if fault.times == 0:
                            self._faults.remove(fault)
                    return fault
        return None


def _run_instances_az(info: RequestInfo) -> str | None:
    p = info.params
    az = p.get("Placement.AvailabilityZone")
    if az:
        return az
    subnet_id = p.get("SubnetId") or p.get("NetworkInterface.1.SubnetId")
    if not subnet_id:
        return None
    try:
        from moto.ec2.models import ec2_backends
        from moto.iam.models import get_account_id_from

        account = get_account_id_from(info.access_key)
        return ec2_backends[account][info.region].get_subnet(subnet_id).availability_zone
    except Exception:
        return None


# ------------------------------------------------------------------ error responses


def error_response(
    info: RequestInfo, code: str, message: str, status: int, method: str
) -> tuple[int, list[tuple[str, str]], bytes]:
    """An error in the wire shape of the request's protocol (what the AWS SDKs parse)."""
    request_id = str(uuid.uuid4())
    fault_type = "Sender" if status < 500 else "Receiver"
    if info.protocol == "ec2":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Response><Errors><Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"</Error></Errors><RequestID>{request_id}</RequestID></Response>"
        )
        headers = [("Content-Type", "text/xml;charset=UTF-8")]
    elif info.protocol == "query":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<ErrorResponse><Error><Type>{fault_type}</Type><Code>{escape(code)}</Code>"
            f"<Message>{escape(message)}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        headers = [("Content-Type", "text/xml")]
    elif info.protocol == "rest-xml":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>"
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
    else:
        body = json.dumps({"__type": code, "message": message})
        ctype = "application/x-amz-json-1.1" if info.protocol == "json" else "application/json"
        headers = [("Content-Type", ctype), ("X-Amzn-ErrorType", code)]
    headers.append(("x-amzn-RequestId", request_id))
    data = b"" if method == "HEAD" else body.encode()
    headers.append(("Content-Length", str(len(data))))
    return status, headers, data

