"""WSGI assembly: moto's app behind a middleware that serves /_sortie/, counts calls,
injects faults and extends /moto-api/reset."""

from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from typing import Any
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import BaseWSGIServer, make_server

from . import presign, quotas, runtime
from .faults import FaultSpecError, error_response, introspect
from .sandbox import log

StartResponse = Callable[..., Any]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _json(start_response: StartResponse, status: int, payload: Any) -> list[bytes]:
    body = json.dumps(payload, indent=1).encode() + b"\n"
    start_response(
        f"{status} {_reason(status)}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    return [body]


def _read_json(environ: dict[str, Any]) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    if not raw.strip():
        return None
    return json.loads(raw)


_S3_WRITE_LOCK = threading.Lock()


class SortieMiddleware:
    def __init__(self, app: Callable[..., Iterable[bytes]], info: dict[str, Any]):
        self.app = app
        self.info = info

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or ""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        rt = runtime.get()
        if path == "/_sortie" or path.startswith("/_sortie/"):
            return self.control(environ, start_response, path.rstrip("/"), method)
        if path.rstrip("/") == "/moto-api/reset" and method == "POST":
            rt.reset()
            quotas.reset()
            result = list(self.app(environ, start_response))
            seed_profile(rt.seed_profile)
            return result
        if path.startswith("/moto-api") or path == "/favicon.ico":
            return self.app(environ, start_response)
        info = introspect(environ)
        if info is not None:
            rt.calls.add(info.name, info.access_key)
            rt.requests.add(info, environ.get("QUERY_STRING", "") or "")
            refused = presign.refusal(environ, rt.sessions) if info.service == "s3" else None
            if refused is not None:
                status, headers, body = error_response(info, refused[1], refused[2], refused[0], method)
                start_response(f"{status} {_reason(status)}", headers)
                return [body]
            if rt.faults:
                fault = rt.faults.take(info)
                if fault is not None:
                    rt.faulted.add(info.name, info.access_key)
                    log(f"fault {fault.id}: {info.name} -> {fault.status} {fault.code}")
                    if fault.after:
                        # The request takes effect; only its answer is lost.
                        with _S3_WRITE_LOCK:
                            list(self.app(environ, lambda *_args, **_kw: None))
                    status, headers, body = error_response(info, fault.code, fault.message, fault.status, method)
                    start_response(f"{status} {_reason(status)}", headers)
                    return [body]
        if info is not None and info.name.startswith("s3:") and method in ("PUT", "POST", "DELETE"):
            # moto checks If-Match / If-None-Match and then writes without a lock; S3 makes the check and the
            # write one atomic step. Serialize S3 writes so conditional writes behave as on AWS.
            with _S3_WRITE_LOCK:
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)

    def control(self, environ: dict[str, Any], start_response: StartResponse, path: str, method: str) -> list[bytes]:
        rt = runtime.get()
        if path in ("/_sortie", "/_sortie/info"):
            return _json(start_response, 200, self.info)
        if path == "/_sortie/calls":
            if method == "GET":
                # ?access_key=K: only the calls signed with that key.
                key = parse_qs(environ.get("QUERY_STRING", "")).get("access_key", [None])[0]
                return _json(start_response, 200, rt.calls.snapshot(key))
            if method == "DELETE":
                rt.calls.reset()
                rt.faulted.reset()
                rt.requests.reset()
                return _json(start_response, 200, {})
            return _json(start_response, 405, {"error": "GET or DELETE"})
        if path == "/_sortie/faulted":
            # The calls a fault answered (they are counted in /_sortie/calls too): calls minus these took effect.
            key = parse_qs(environ.get("QUERY_STRING", "")).get("access_key", [None])[0]
            return _json(start_response, 200, rt.faulted.snapshot(key))
        if path == "/_sortie/requests":
            key = parse_qs(environ.get("QUERY_STRING", "")).get("access_key", [""])[0]
            if method == "GET" and key:
                return _json(start_response, 200, rt.requests.snapshot(key))
            return _json(start_response, 400, {"error": "GET /_sortie/requests?access_key=KEY"})
        if path == "/_sortie/faults":
            if method == "GET":
                return _json(start_response, 200, rt.faults.list())
            if method == "DELETE":
                rt.faults.clear()
                return _json(start_response, 200, [])
            if method == "POST":
                try:
                    spec = _read_json(environ)
                    specs = spec if isinstance(spec, list) else [spec]
                    added = [rt.faults.add(s).to_json() for s in specs]
                except (ValueError, FaultSpecError) as e:
                    return _json(start_response, 400, {"error": str(e)})
                return _json(start_response, 201, added if isinstance(spec, list) else added[0])
            return _json(start_response, 405, {"error": "GET, POST or DELETE"})
        if path.startswith("/_sortie/faults/"):
            if method != "DELETE":
                return _json(start_response, 405, {"error": "DELETE"})
            fault_id = path.rsplit("/", 1)[-1]
            if rt.faults.remove(fault_id):
                return _json(start_response, 200, {"deleted": fault_id})
            return _json(start_response, 404, {"error": f"no fault {fault_id}"})
        if path == "/_sortie/quotas":
            if method == "GET":
                return _json(start_response, 200, quotas.applied())
            if method == "POST":
                try:
                    spec = _read_json(environ)
                    if not isinstance(spec, dict):
                        raise ValueError('give {"ec2/<quota code>": <vCPUs>, ...}')
                    return _json(start_response, 200, quotas.set_applied(spec))
                except ValueError as e:
                    return _json(start_response, 400, {"error": str(e)})
            if method == "DELETE":
                quotas.reset()
                return _json(start_response, 200, {})
            return _json(start_response, 405, {"error": "GET, POST or DELETE"})
        if path == "/_sortie/sessions":
            if method != "POST":
                return _json(start_response, 405, {"error": "POST"})
            try:
                spec = _read_json(environ)
                rt.sessions[str(spec["token"])] = time.time() + float(spec["expires_in"])
            except (ValueError, KeyError, TypeError) as e:
                return _json(start_response, 400, {"error": f"POST {{\"token\", \"expires_in\"}}: {e}"})
            return _json(start_response, 201, {"token": spec["token"]})
        if path == "/_sortie/delays":
            if method == "GET":
                return _json(start_response, 200, rt.delays)
            if method == "POST":
                try:
                    return _json(start_response, 200, rt.set_delays(_read_json(environ)))
                except ValueError as e:
                    return _json(start_response, 400, {"error": str(e)})
            return _json(start_response, 405, {"error": "GET or POST"})
        if path.startswith("/_sortie/imds/"):
            return self.imds(environ, start_response, path, method)
        if path.startswith("/_sortie/spot-notice/"):
            instance_id = path.rsplit("/", 1)[-1]
            if method == "POST":
                # The notice AWS gives two minutes ahead ("Spot Instance interruption notices", EC2 User Guide).
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
                rt.spot_notices[instance_id] = json.dumps({"action": "terminate", "time": when})
                return _json(start_response, 201, json.loads(rt.spot_notices[instance_id]))
            return _json(start_response, 405, {"error": "POST"})
        if path.startswith("/_sortie/sandbox/"):
            instance_id = path.rsplit("/", 1)[-1]
            try:
                return _json(start_response, 200, {"path": str(rt.sandboxes.path(instance_id))})
            except ValueError as e:
                return _json(start_response, 400, {"error": str(e)})
        return _json(start_response, 404, {"error": f"unknown control path {path}"})


    def imds(self, environ: dict[str, Any], start_response: StartResponse, path: str, method: str) -> list[bytes]:
        """An instance's metadata service, as much of it as the host wrapper reads: IMDSv2 only (a PUT for a
        session token, then GETs carrying it; a GET without one is 401), and spot/instance-action, which is 404
        until the instance gets an interruption notice ("Instance metadata" and "Spot Instance interruption
        notices", EC2 User Guide)."""
        rest = path[len("/_sortie/imds/"):]
        instance_id, _, item = rest.partition("/")
        token = f"imds-token-{instance_id}"
        if item == "latest/api/token":
            if method != "PUT" or not environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN_TTL_SECONDS"):
                return _text(start_response, 400, "")
            return _text(start_response, 200, token)
        if environ.get("HTTP_X_AWS_EC2_METADATA_TOKEN") != token:
            return _text(start_response, 401, "")
        if item == "latest/meta-data/spot/instance-action" and instance_id in runtime.get().spot_notices:
            return _text(start_response, 200, runtime.get().spot_notices[instance_id])
        return _text(start_response, 404, "")


def _text(start_response: StartResponse, status: int, body: str) -> list[bytes]:
    data = body.encode()
    start_response(f"{status} {_reason(status)}", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


def seed_profile(name: str | None) -> None:
    """Create IAM role + instance profile NAME (with AmazonSSMManagedInstanceCore attached)
    in moto's default account, as --seed-profile asks."""
    if not name:
        return
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends

    iam = iam_backends[DEFAULT_ACCOUNT_ID]["aws"]
    trust = json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    })
    try:
        iam.get_role(name)
    except Exception:
        iam.create_role(name, trust, "/", None, "sortie test endpoint seed", [], None)
    try:
        iam.attach_role_policy(_aws_managed_policy(iam, "AmazonSSMManagedInstanceCore"), name)
    except Exception as e:
        log(f"seed profile {name}: could not attach AmazonSSMManagedInstanceCore ({e})")
    try:
        iam.get_instance_profile(name)
    except Exception:
        iam.create_instance_profile(name, "/", [name])
    log(f"seeded IAM instance profile {name}")


def _aws_managed_policy(iam: Any, name: str) -> str:
    """The ARN of AWS managed policy NAME, registered in moto's backend from the copy of AWS's document moto
    ships: moto loads its AWS managed policies only with MOTO_IAM_LOAD_MANAGED_POLICIES=true (all ~1,300 of
    them), and without it attach_role_policy failed, so the seeded role had no policy."""
    arn = f"arn:aws:iam::aws:policy/{name}"
    if arn not in iam.managed_policies:
        from moto.iam.aws_managed_policies import aws_managed_policies_data
        from moto.iam.models import AWSManagedPolicy

        data = json.loads(aws_managed_policies_data)[name]
        iam.managed_policies[arn] = AWSManagedPolicy.from_data(name, iam.account_id, iam.region_name, data)
    return arn


def build_server(host: str, port: int, info: dict[str, Any]) -> BaseWSGIServer:
    app = SortieMiddleware(DomainDispatcherApplication(create_backend_app), info)
    return make_server(host, port, app, threaded=True, request_handler=MotoRequestHandler)
