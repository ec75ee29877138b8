"""Integration tests of scripts/aws-test-endpoint: the real launcher as a subprocess, boto3 over HTTP.

Run: scripts/setup-test-env && .venv/bin/python -m pytest -q scripts/aws_test_endpoint/tests
Every wait is bounded; the suite takes well under a minute.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import boto3
import botocore.config
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parents[3]
LAUNCHER = REPO / "scripts" / "aws-test-endpoint"
REGION = "us-east-1"
AMI_PARAM = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
TERMINAL = {"Success", "Failed", "TimedOut", "Cancelled"}


# ------------------------------------------------------------------ fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Endpoint:
    def __init__(self, proc: subprocess.Popen, url: str, sandbox: Path):
        self.proc = proc
        self.url = url
        self.sandbox = sandbox

    def client(self, service: str, **config: object):
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}, **config),
        )

    def control(self, method: str, path: str, payload: object = None) -> object:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")


def _start(args: list[str]) -> tuple[subprocess.Popen, str]:
    """Start the launcher; return it and its first stdout line (bounded wait)."""
    proc = subprocess.Popen(
        [str(LAUNCHER), *args],
        stdout=subprocess.PIPE,
        stderr=None,  # the server log goes to pytest's stderr capture
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    line = b""
    while time.monotonic() < deadline and not line.endswith(b"\n"):
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                break
            line += chunk
        if proc.poll() is not None:
            break
    return proc, line.decode()


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise AssertionError("endpoint did not stop on SIGTERM") from None


@pytest.fixture(scope="session")
def endpoint(tmp_path_factory: pytest.TempPathFactory):
    sandbox = tmp_path_factory.mktemp("sandboxes")
    port = _free_port()
    proc, line = _start(["--port", str(port), "--sandbox", str(sandbox), "--seed-profile", "sortie-ssm"])
    try:
        assert line == f"listening on http://127.0.0.1:{port}\n", f"bad ready line {line!r}"
        yield Endpoint(proc, f"http://127.0.0.1:{port}", sandbox)
    finally:
        assert _stop(proc) == 0
    # nothing started for any sandbox survives the server
    assert _pids_with_env_prefix(f"SORTIE_HOST_ROOT={sandbox}/") == []


@pytest.fixture
def ec2(endpoint):
    return endpoint.client("ec2")


@pytest.fixture
def ssm(endpoint):
    return endpoint.client("ssm")


@pytest.fixture
def s3(endpoint):
    return endpoint.client("s3")


# ------------------------------------------------------------------ helpers


def _ami(ssm) -> str:
    return ssm.get_parameter(Name=AMI_PARAM)["Parameter"]["Value"]


def _launch(ec2, ssm, n: int = 1, **kw) -> list[str]:
    resp = ec2.run_instances(ImageId=_ami(ssm), MinCount=n, MaxCount=n, InstanceType="t3.micro", **kw)
    return [i["InstanceId"] for i in resp["Instances"]]


def _send(ssm, instance_ids: list[str], commands: list[str], **kw) -> str:
    params = {"commands": commands}
    params.update(kw.pop("params", {}))
    resp = ssm.send_command(
        DocumentName="AWS-RunShellScript", InstanceIds=instance_ids, Parameters=params, **kw
    )
    assert resp["Command"]["Status"] == "Pending"
    return resp["Command"]["CommandId"]


def _wait(ssm, command_id: str, instance_id: str, timeout: float = 15, until=TERMINAL) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        inv = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
        if inv["Status"] in until:
            return inv
        assert time.monotonic() < deadline, f"invocation still {inv['Status']} after {timeout}s"
        time.sleep(0.05)


def _is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3] != b"Z"


def _pids_with_env(entry: str) -> list[int]:
    return _scan(lambda e: e == entry.encode())


def _pids_with_env_prefix(prefix: str) -> list[int]:
    return _scan(lambda e: e.startswith(prefix.encode()))


def _scan(pred) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(pred(e) for e in env) and _is_alive(int(name)):
            out.append(int(name))
    return out


def _wait_dead(pids: list[int], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while any(_is_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive: {[p for p in pids if _is_alive(p)]}"
        time.sleep(0.05)


def _error(excinfo) -> tuple[str, int]:
    err = excinfo.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


# ------------------------------------------------------------------ tests


def test_int_ready_line_and_info(endpoint):
    info = endpoint.control("GET", "/_sortie/info")
    assert info["url"] == endpoint.url
    assert info["sandbox_root"] == str(endpoint.sandbox)
    assert info["moto_version"].startswith("5.")


def test_int_describe_instance_information_online(ec2, ssm):
    a, b, c = _launch(ec2, ssm, 3)
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [a, b, c]}])
    by_id = {i["InstanceId"]: i for i in info["InstanceInformationList"]}
    assert set(by_id) == {a, b, c}
    assert all(i["PingStatus"] == "Online" and i["PlatformType"] == "Linux" for i in by_id.values())
    assert all(i["ResourceType"] == "EC2Instance" and i["AgentVersion"] for i in by_id.values())
    legacy = ssm.describe_instance_information(
        InstanceInformationFilterList=[{"key": "InstanceIds", "valueSet": [a]}]
    )["InstanceInformationList"]
    assert [i["InstanceId"] for i in legacy] == [a]

    ec2.stop_instances(InstanceIds=[b])
    ec2.terminate_instances(InstanceIds=[c])
    info = ssm.describe_instance_information(Filters=[{"Key": "InstanceIds", "Values": [a, b, c]}])
    ping = {i["InstanceId"]: i["PingStatus"] for i in info["InstanceInformationList"]}
    assert ping == {a: "Online", b: "ConnectionLost"}


def test_int_send_command_runs_only_on_targeted_instance(endpoint, ec2, ssm):
    a, b = _launch(ec2, ssm, 2)
    cid = _send(ssm, [a], ['touch "$SORTIE_HOST_ROOT/ran"', 'echo "$AWS_SSM_INSTANCE_ID $PWD $HOME"'])
    inv = _wait(ssm, cid, a)
    assert inv["Status"] == "Success" and inv["StatusDetails"] == "Success" and inv["ResponseCode"] == 0
    sb = endpoint.sandbox / a
    assert inv["StandardOutputContent"] == f"{a} {sb} {sb}/root\n"
    assert (sb / "ran").exists()
    assert not (endpoint.sandbox / b / "ran").exists()
    invs = ssm.list_command_invocations(CommandId=cid)["CommandInvocations"]
    assert [i["InstanceId"] for i in invs] == [a]
    with pytest.raises(ClientError) as e:
        ssm.get_command_invocation(CommandId=cid, InstanceId=b)
    assert _error(e) == ("InvocationDoesNotExist", 400)
    with pytest.raises(ClientError) as e:
        ssm.get_command_invocation(CommandId=str(uuid.uuid4()), InstanceId=a)
    assert _error(e) == ("InvocationDoesNotExist", 400)


def test_int_unknown_or_stopped_instance_rejected(ec2, ssm):
    (a,) = _launch(ec2, ssm)
    with pytest.raises(ClientError) as e:
        _send(ssm, [a, "i-0123456789abcdef0"], ["true"])
    assert _error(e) == ("InvalidInstanceId", 400)
    ec2.stop_instances(InstanceIds=[a])
    with pytest.raises(ClientError) as e:
        _send(ssm, [a], ["true"])
    assert _error(e) == ("InvalidInstanceId", 400)


def test_int_exit_code_stdout_stderr_and_working_directory(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm)
    cid = _send(ssm, [a], ["echo out", "echo err >&2", "exit 3"])
    inv = _wait(ssm, cid, a)
    assert (inv["Status"], inv["StatusDetails"], inv["ResponseCode"]) == ("Failed", "Failed", 3)
    assert inv["StandardOutputContent"] == "out\n"
    assert inv["StandardErrorContent"] == "err\n\nfailed to run commands: exit status 3"
    assert inv["ExecutionStartDateTime"].endswith("Z") and inv["ExecutionEndDateTime"].endswith("Z")
    assert inv["ExecutionElapsedTime"].startswith("PT")
    assert inv["StandardOutputUrl"] == ""

    (endpoint.sandbox / a / "opt" / "work").mkdir(parents=True)
    cid = _send(ssm, [a], ["pwd", "env | sort"], params={"workingDirectory": ["/opt/work"]})
    inv = _wait(ssm, cid, a)
    assert inv["Status"] == "Success"
    lines = inv["StandardOutputContent"].splitlines()
    assert lines[0] == str(endpoint.sandbox / a / "opt" / "work")
    env = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
    assert env["SORTIE_HOST_ROOT"] == str(endpoint.sandbox / a)
    assert env["AWS_ENDPOINT_URL"] == endpoint.url
    assert env["AWS_DEFAULT_REGION"] == REGION and env["AWS_ACCESS_KEY_ID"] == "testing"

    cid = _send(ssm, [a], ["true"], params={"workingDirectory": ["/does/not/exist"]})
    inv = _wait(ssm, cid, a)
    assert (inv["Status"], inv["ResponseCode"]) == ("Failed", 1)


def test_int_s3_output_at_aws_key_layout(ec2, ssm, s3):
    (a,) = _launch(ec2, ssm)
    s3.create_bucket(Bucket="sortie-out")
    cid = _send(ssm, [a], ["echo hello"], OutputS3BucketName="sortie-out", OutputS3KeyPrefix="runs/r1")
    inv = _wait(ssm, cid, a)
    assert inv["Status"] == "Success"
    key = f"runs/r1/{cid}/{a}/awsrunShellScript/0.awsrunShellScript/stdout"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="sortie-out", Prefix=f"runs/r1/{cid}/").get("Contents", [])]
    assert keys == [key]  # stderr was empty: not uploaded, as AWS does
    assert s3.get_object(Bucket="sortie-out", Key=key)["Body"].read() == b"hello\n"
    assert inv["StandardOutputUrl"].endswith(f"/sortie-out/{key}")
    assert inv["StandardErrorUrl"].endswith(f"/sortie-out/{key[:-len('stdout')]}stderr")

    cid = _send(ssm, [a], ["echo oops >&2; exit 1"], OutputS3BucketName="sortie-out")
    _wait(ssm, cid, a)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="sortie-out", Prefix=cid).get("Contents", []))
    assert keys == [f"{cid}/{a}/awsrunShellScript/0.awsrunShellScript/stderr"]


def test_int_output_truncated_at_24000_and_8000(ec2, ssm, s3):
    (a,) = _launch(ec2, ssm)
    s3.create_bucket(Bucket="sortie-big")
    cid = _send(
        ssm, [a], ["head -c 30000 /dev/zero | tr '\\0' a", "head -c 9000 /dev/zero | tr '\\0' b >&2"],
        OutputS3BucketName="sortie-big",
    )
    inv = _wait(ssm, cid, a)
    assert inv["Status"] == "Success"
    out, err = inv["StandardOutputContent"], inv["StandardErrorContent"]
    assert len(out) == 24000 and out.endswith("--output truncated--") and out.startswith("a" * 23980)
    assert len(err) == 8000 and err.endswith("--output truncated--")
    key = f"{cid}/{a}/awsrunShellScript/0.awsrunShellScript/stdout"
    assert len(s3.get_object(Bucket="sortie-big", Key=key)["Body"].read()) == 30000

    cid = _send(ssm, [a], ["head -c 23999 /dev/zero | tr '\\0' c"])
    assert _wait(ssm, cid, a)["StandardOutputContent"] == "c" * 23999


def test_int_execution_timeout_kills_process_group(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm)
    pidfile = endpoint.sandbox / a / "child.pid"
    cid = _send(
        ssm, [a], ['sleep 120 & echo $! > "$SORTIE_HOST_ROOT/child.pid"', "echo started", "sleep 120"],
        params={"executionTimeout": ["5"]},
    )
    inv = _wait(ssm, cid, a, timeout=20)
    assert (inv["Status"], inv["StatusDetails"], inv["ResponseCode"]) == ("TimedOut", "ExecutionTimedOut", 137)
    assert inv["StandardOutputContent"] == "started\n"
    _wait_dead([int(pidfile.read_text())])
    cmd = ssm.list_commands(CommandId=cid)["Commands"][0]
    assert (cmd["Status"], cmd["StatusDetails"]) == ("TimedOut", "ExecutionTimedOut")


def test_int_cancel_command(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm)
    pidfile = endpoint.sandbox / a / "child.pid"
    cid = _send(ssm, [a], ['sleep 120 & echo $! > "$SORTIE_HOST_ROOT/child.pid"', "sleep 120"])
    _wait(ssm, cid, a, until={"InProgress"})
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ssm.cancel_command(CommandId=cid)
    inv = _wait(ssm, cid, a)
    assert (inv["Status"], inv["StatusDetails"], inv["ResponseCode"]) == ("Cancelled", "Cancelled", 137)
    _wait_dead([int(pidfile.read_text())])
    assert ssm.list_commands(CommandId=cid)["Commands"][0]["Status"] == "Cancelled"
    with pytest.raises(ClientError) as e:
        ssm.cancel_command(CommandId=str(uuid.uuid4()))
    assert _error(e) == ("InvalidCommandId", 400)


def test_int_daemon_does_not_block_invocation_and_terminate_kills_it(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm)
    env_entry = f"SORTIE_HOST_ROOT={endpoint.sandbox / a}"
    cid = _send(
        ssm, [a],
        [
            "setsid sh -c 'sleep 300' </dev/null >/dev/null 2>&1 &",
            "setsid sleep 301 &",  # keeps the invocation's stdout/stderr open: must not block either
            "echo launched",
        ],
    )
    inv = _wait(ssm, cid, a, timeout=10)
    assert (inv["Status"], inv["StandardOutputContent"]) == ("Success", "launched\n")
    deadline = time.monotonic() + 5
    while len(daemons := _pids_with_env(env_entry)) < 2:
        assert time.monotonic() < deadline, f"daemons not found: {daemons}"
        time.sleep(0.05)
    assert all(os.getpgid(p) != os.getpgid(0) for p in daemons)
    ec2.terminate_instances(InstanceIds=[a])
    _wait_dead(daemons)
    assert _pids_with_env(env_entry) == []


def test_int_stop_instance_kills_running_invocation(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm)
    cid = _send(ssm, [a], ["sleep 120"])
    _wait(ssm, cid, a, until={"InProgress"})
    ec2.stop_instances(InstanceIds=[a])
    inv = _wait(ssm, cid, a)
    assert inv["Status"] == "Failed"
    assert _pids_with_env(f"SORTIE_HOST_ROOT={endpoint.sandbox / a}") == []


def test_int_list_command_invocations_and_commands(ec2, ssm):
    a, b = _launch(ec2, ssm, 2)
    cid = _send(ssm, [a, b], ['echo "hi from $AWS_SSM_INSTANCE_ID"', 'test "$AWS_SSM_INSTANCE_ID" = ' + a])
    _wait(ssm, cid, a)
    _wait(ssm, cid, b)
    invs = ssm.list_command_invocations(CommandId=cid, Details=True)["CommandInvocations"]
    by_id = {i["InstanceId"]: i for i in invs}
    assert set(by_id) == {a, b}
    plug_a = by_id[a]["CommandPlugins"][0]
    assert (plug_a["Name"], plug_a["Status"], plug_a["ResponseCode"]) == ("aws:runShellScript", "Success", 0)
    assert plug_a["Output"] == f"hi from {a}\n"
    plug_b = by_id[b]["CommandPlugins"][0]
    assert (by_id[b]["Status"], plug_b["ResponseCode"]) == ("Failed", 1)
    assert ssm.list_command_invocations(CommandId=cid, InstanceId=b)["CommandInvocations"][0]["InstanceId"] == b
    assert ssm.list_command_invocations(CommandId=cid)["CommandInvocations"][0]["CommandPlugins"] == []
    cmd = ssm.list_commands(CommandId=cid)["Commands"][0]
    assert (cmd["Status"], cmd["TargetCount"], cmd["CompletedCount"], cmd["ErrorCount"]) == ("Failed", 2, 2, 1)
    assert any(c["CommandId"] == cid for c in ssm.list_commands(InstanceId=a)["Commands"])


def test_int_run_instances_fault_fires_once_then_clears(endpoint, ec2, ssm):
    endpoint.control("DELETE", "/_sortie/faults")
    fault = endpoint.control("POST", "/_sortie/faults", {
        "action": "RunInstances",
        "match": {"InstanceType": "g5.2xlarge", "AvailabilityZone": "us-east-1a"},
        "error": {"code": "InsufficientInstanceCapacity", "message": "no g5 for you", "status": 500},
        "times": 1,
    })
    assert endpoint.control("GET", "/_sortie/faults")[0]["id"] == fault["id"]
    ami = _ami(ssm)
    # another AZ or instance type does not match
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g5.2xlarge",
                      Placement={"AvailabilityZone": "us-east-1b"})
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                      Placement={"AvailabilityZone": "us-east-1a"})
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g5.2xlarge",
                          Placement={"AvailabilityZone": "us-east-1a"})
    assert _error(e) == ("InsufficientInstanceCapacity", 500)
    assert e.value.response["Error"]["Message"] == "no g5 for you"
    assert endpoint.control("GET", "/_sortie/faults") == []
    ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g5.2xlarge",
                      Placement={"AvailabilityZone": "us-east-1a"})

    # the AZ of a SubnetId counts; with neither Placement nor subnet any AZ matches
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    endpoint.control("POST", "/_sortie/faults", [
        {"action": "ec2:RunInstances", "match": {"InstanceType": "g5.2xlarge", "AvailabilityZone": "us-east-1a"},
         "error": {"code": "InsufficientInstanceCapacity", "status": 500}},
        {"action": "RunInstances", "match": {"InstanceType": "p4d.24xlarge", "AvailabilityZone": "us-east-1c"},
         "error": {"code": "Unsupported", "message": "nope"}},
    ])
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="g5.2xlarge", SubnetId=subnet)
    assert _error(e) == ("InsufficientInstanceCapacity", 500)
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="p4d.24xlarge")
    assert _error(e) == ("Unsupported", 400)
    assert endpoint.control("GET", "/_sortie/faults") == []


def test_int_fault_on_json_service_and_unlimited(endpoint, ec2, ssm):
    endpoint.control("POST", "/_sortie/faults", {
        "action": "ssm:GetCommandInvocation",
        "error": {"code": "ThrottlingException", "message": "Rate exceeded", "status": 400},
        "times": -1,
    })
    try:
        for _ in range(2):
            with pytest.raises(ClientError) as e:
                ssm.get_command_invocation(CommandId=str(uuid.uuid4()), InstanceId="i-1")
            assert _error(e) == ("ThrottlingException", 400)
        assert endpoint.control("GET", "/_sortie/faults")[0]["fired"] == 2
    finally:
        endpoint.control("DELETE", "/_sortie/faults")
    with pytest.raises(ClientError) as e:
        ssm.get_command_invocation(CommandId=str(uuid.uuid4()), InstanceId="i-1")
    assert _error(e) == ("InvocationDoesNotExist", 400)


def test_int_rate_fault_is_seeded_and_matches_a_service_glob(endpoint, ec2, ssm):
    endpoint.control("DELETE", "/_sortie/calls")

    def outcomes() -> list[bool]:
        endpoint.control("POST", "/_sortie/faults", {
            "action": "ec2:*", "rate": 0.3, "seed": 7, "times": -1,
            "error": {"code": "RequestLimitExceeded", "message": "Request limit exceeded.", "status": 503},
        })
        client = boto3.client(
            "ec2", endpoint_url=endpoint.url, region_name=REGION, aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        failed = []
        try:
            for _ in range(60):
                try:
                    client.describe_instances()
                    failed.append(False)
                except ClientError as e:
                    assert e.response["Error"]["Code"] == "RequestLimitExceeded"
                    assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 503
                    failed.append(True)
            ssm.describe_instance_information()  # another service: never faulted
        finally:
            endpoint.control("DELETE", "/_sortie/faults")
        return failed

    first = outcomes()
    assert 6 <= sum(first) <= 30, sum(first)
    assert outcomes() == first, "the same seed fails the same calls"
    faulted = endpoint.control("GET", "/_sortie/faulted")
    assert faulted == {"ec2:DescribeInstances": 2 * sum(first)}
    assert endpoint.control("GET", "/_sortie/calls")["ec2:DescribeInstances"] == 120


def test_int_call_counter(endpoint, ec2, ssm, s3):
    endpoint.control("DELETE", "/_sortie/calls")
    assert endpoint.control("GET", "/_sortie/calls") == {}
    ec2.describe_instances()
    ec2.describe_instances()
    ssm.describe_instance_information()
    s3.create_bucket(Bucket="sortie-count")
    s3.put_object(Bucket="sortie-count", Key="k", Body=b"x")
    assert endpoint.control("GET", "/_sortie/calls") == {
        "ec2:DescribeInstances": 2,
        "ssm:DescribeInstanceInformation": 1,
        "s3:CreateBucket": 1,
        "s3:PutObject": 1,
    }
    assert endpoint.control("GET", "/_sortie/calls?access_key=testing")["ec2:DescribeInstances"] == 2
    other = boto3.client(
        "ec2", endpoint_url=endpoint.url, region_name=REGION,
        aws_access_key_id="AKIAOTHERCALLER", aws_secret_access_key="x",
    )
    other.describe_instances()
    assert endpoint.control("GET", "/_sortie/calls?access_key=AKIAOTHERCALLER") == {"ec2:DescribeInstances": 1}
    assert endpoint.control("GET", "/_sortie/calls")["ec2:DescribeInstances"] == 3
    endpoint.control("DELETE", "/_sortie/calls")
    assert endpoint.control("GET", "/_sortie/calls") == {}


def test_int_imds_serves_a_spot_notice_to_its_instance_only_with_a_token(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm, 1)
    script = (
        'tok=$(curl -fsS -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$SORTIE_IMDS_URL/latest/api/token")\n'
        'curl -s -o /dev/null -w "%{http_code}\\n" "$SORTIE_IMDS_URL/latest/meta-data/spot/instance-action"\n'
        'curl -s -w "\\n%{http_code}\\n" -H "X-aws-ec2-metadata-token: $tok" '
        '"$SORTIE_IMDS_URL/latest/meta-data/spot/instance-action"\n'
    )
    before = _wait(ssm, _send(ssm, [a], [script]), a)
    assert before["StandardOutputContent"].split() == ["401", "404"], before
    req = urllib.request.Request(f"{endpoint.url}/_sortie/spot-notice/{a}", method="POST")
    with urllib.request.urlopen(req) as r:
        notice = json.load(r)
    assert notice["action"] == "terminate" and notice["time"].endswith("Z")
    after = _wait(ssm, _send(ssm, [a], [script]), a)
    lines = after["StandardOutputContent"].split("\n")
    assert lines[0] == "401" and json.loads(lines[1]) == notice and lines[2] == "200", after


def test_int_attach_at_a_device_in_use_is_refused_and_termination_frees_every_volume(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm, 1)
    az = ec2.describe_instances(InstanceIds=[a])["Reservations"][0]["Instances"][0]["Placement"]["AvailabilityZone"]
    first, second = (ec2.create_volume(Size=1, AvailabilityZone=az)["VolumeId"] for _ in range(2))
    ec2.attach_volume(VolumeId=first, InstanceId=a, Device="/dev/sdf")
    # AWS: the device "cannot be in use by another device" (AttachVolume); moto replaced the mapping.
    with pytest.raises(ClientError) as err:
        ec2.attach_volume(VolumeId=second, InstanceId=a, Device="/dev/sdf")
    assert err.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert "already in use" in err.value.response["Error"]["Message"]
    ec2.attach_volume(VolumeId=second, InstanceId=a, Device="/dev/sdg")
    ec2.terminate_instances(InstanceIds=[a])
    states = {v["VolumeId"]: v["State"] for v in ec2.describe_volumes(VolumeIds=[first, second])["Volumes"]}
    assert states == {first: "available", second: "available"}


def test_int_attach_volume_creates_by_id_link_and_detach_removes_it(endpoint, ec2, ssm):
    a, b = _launch(ec2, ssm, 2)
    az = ec2.describe_instances(InstanceIds=[a])["Reservations"][0]["Instances"][0]["Placement"]["AvailabilityZone"]
    vol = ec2.create_volume(Size=20, AvailabilityZone=az)["VolumeId"]
    ec2.attach_volume(VolumeId=vol, InstanceId=a, Device="/dev/sdf")
    link = endpoint.sandbox / a / "dev/disk/by-id" / ("nvme-Amazon_Elastic_Block_Store_" + vol.replace("-", ""))
    assert link.is_symlink()
    dev = link.resolve()
    assert dev.parent == (endpoint.sandbox / a / "dev").resolve() and dev.name.startswith("nvme")
    st = dev.stat()
    assert st.st_size == 20 * 1024**3 and st.st_blocks * 512 < 1024**2  # sparse
    # write through the link from a command, as the product's mount script would
    write = f'printf sortie-data | dd of="$SORTIE_HOST_ROOT/dev/disk/by-id/{link.name}" conv=notrunc 2>/dev/null'
    cid = _send(ssm, [a], [write])
    assert _wait(ssm, cid, a)["Status"] == "Success"

    ec2.detach_volume(VolumeId=vol)  # VolumeId only: valid in AWS
    assert not link.is_symlink() and not dev.exists()
    assert ec2.describe_volumes(VolumeIds=[vol])["Volumes"][0]["State"] == "available"

    ec2.attach_volume(VolumeId=vol, InstanceId=b, Device="/dev/sdg")
    link_b = endpoint.sandbox / b / "dev/disk/by-id" / link.name
    with open(link_b, "rb") as f:
        assert f.read(11) == b"sortie-data"  # a volume keeps its data across attachments
    ec2.detach_volume(VolumeId=vol, InstanceId=b)
    assert not link_b.is_symlink()


def test_int_instance_profile_seeded_and_creatable(endpoint, ec2, ssm):
    iam = endpoint.client("iam")
    assert iam.get_instance_profile(InstanceProfileName="sortie-ssm")["InstanceProfile"]["Roles"]
    attached = iam.list_attached_role_policies(RoleName="sortie-ssm")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]
    name = f"sortie-ssm-{uuid.uuid4().hex[:6]}"
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }))
    iam.create_instance_profile(InstanceProfileName=name)
    iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    (a,) = _launch(ec2, ssm, IamInstanceProfile={"Name": name})
    cid = _send(ssm, [a], ["true"])
    assert _wait(ssm, cid, a)["Status"] == "Success"


def test_int_invalid_parameters_rejected(ec2, ssm):
    (a,) = _launch(ec2, ssm)
    with pytest.raises(ClientError) as e:
        ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[a], Parameters={"cmds": ["true"]})
    assert _error(e) == ("InvalidParameters", 400)
    with pytest.raises(ClientError) as e:
        ssm.send_command(DocumentName="AWS-RunShellScript", InstanceIds=[a],
                         Parameters={"commands": ["true"], "executionTimeout": ["0"]})
    assert _error(e) == ("InvalidParameters", 400)


def test_int_command_over_64kb_with_its_document_is_refused(ec2, ssm):
    (a,) = _launch(ec2, ssm)
    # 64 KiB in all, AWS-RunShellScript's own content included: a 63 KiB command is over it.
    with pytest.raises(ClientError) as e:
        _send(ssm, [a], ["echo " + "x" * (63 * 1024)])
    assert _error(e) == ("MaxDocumentSizeExceeded", 400)
    # Each newline is two bytes in the request's JSON.
    with pytest.raises(ClientError) as e:
        _send(ssm, [a], [":" + "\n" * (32 * 1024)])
    assert _error(e) == ("MaxDocumentSizeExceeded", 400)
    cid = _send(ssm, [a], [": " + "x" * (60 * 1024)])
    assert _wait(ssm, cid, a)["Status"] == "Success"


def test_int_reset_kills_processes_and_clears_state(endpoint, ec2, ssm):
    (a,) = _launch(ec2, ssm)
    env_entry = f"SORTIE_HOST_ROOT={endpoint.sandbox / a}"
    cid = _send(ssm, [a], ["setsid sleep 300 </dev/null >/dev/null 2>&1 &", "true"])
    _wait(ssm, cid, a)
    deadline = time.monotonic() + 5
    while not (daemons := _pids_with_env(env_entry)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    endpoint.control("POST", "/_sortie/faults", {"action": "DescribeVolumes", "error": {"code": "X"}})
    endpoint.control("POST", "/moto-api/reset", {})
    _wait_dead(daemons)
    assert endpoint.control("GET", "/_sortie/faults") == []
    assert endpoint.control("GET", "/_sortie/calls") == {}
    assert ec2.describe_instances()["Reservations"] == []
    # the seeded profile is back after the reset
    assert endpoint.client("iam").get_instance_profile(InstanceProfileName="sortie-ssm")


def test_int_second_endpoint_port_zero_env_and_required_profile(tmp_path):
    """--port 0 picks a free port; --env reaches commands; with --require-instance-profile an
    instance without an IAM instance profile is not managed by SSM (as in AWS)."""
    proc, line = _start(["--port", "0", "--sandbox", str(tmp_path), "--require-instance-profile",
                         "--env", "SORTIE_TEST_FLAG=on", "--root-volume-deletion-delay", "7"])
    try:
        assert line.startswith("listening on http://127.0.0.1:") and line.endswith("\n")
        ep = Endpoint(proc, line.split()[-1], tmp_path)
        assert ep.control("GET", "/_sortie/delays") == {"ssm_registration": 0.0, "root_volume_deletion": 7.0}
        ec2, ssm, iam = ep.client("ec2"), ep.client("ssm"), ep.client("iam")
        iam.create_role(RoleName="p", AssumeRolePolicyDocument="{}")
        iam.create_instance_profile(InstanceProfileName="p")
        iam.add_role_to_instance_profile(InstanceProfileName="p", RoleName="p")
        (bare,) = _launch(ec2, ssm)
        with_profile = _launch(ec2, ssm, 2, IamInstanceProfile={"Name": "p"})
        listed = ssm.describe_instance_information()["InstanceInformationList"]
        assert sorted(i["InstanceId"] for i in listed) == sorted(with_profile)
        with pytest.raises(ClientError) as e:
            _send(ssm, [bare], ["true"])
        assert _error(e) == ("InvalidInstanceId", 400)
        cid = _send(ssm, with_profile, ['echo "$SORTIE_TEST_FLAG"', "sleep 120 &"])
        for iid in with_profile:
            assert _wait(ssm, cid, iid)["StandardOutputContent"] == "on\n"
        leftovers = _pids_with_env_prefix(f"SORTIE_HOST_ROOT={tmp_path}/")
        assert len(leftovers) == 2
    finally:
        assert _stop(proc) == 0
    _wait_dead(leftovers)  # the server killed them on its way out


def test_int_root_mapping_without_size_takes_the_amis_size(endpoint, ec2, ssm):
    # AWS merges a mapping for the AMI's root device with the AMI's own: Encrypted/VolumeType alone is valid.
    image = ec2.describe_images(ImageIds=[_ami(ssm)])["Images"][0]
    root = image["RootDeviceName"]
    (instance,) = _launch(
        ec2, ssm,
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": {"Encrypted": True, "VolumeType": "gp3"}}],
    )
    described = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
    volume_id = next(m["Ebs"]["VolumeId"] for m in described["BlockDeviceMappings"] if m["DeviceName"] == root)
    volume = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    snapshot = image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
    size = ec2.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]["VolumeSize"]
    assert volume["Size"] == size


def test_int_sixth_command_waits_for_one_of_the_agents_five_workers(endpoint, ec2, ssm):
    # amazon-ssm-agent runs at most Mds.CommandWorkersLimit (default 5) commands at once; the rest wait.
    (a,) = _launch(ec2, ssm)
    gate = endpoint.sandbox / a / "gate"
    hold = 'while [ ! -e "$SORTIE_HOST_ROOT/gate" ]; do sleep 0.05; done'
    five = [_send(ssm, [a], [hold]) for _ in range(5)]
    for cid in five:
        _wait(ssm, cid, a, until={"InProgress"})
    sixth = _send(ssm, [a], ["echo sixth"])
    time.sleep(1)
    assert ssm.get_command_invocation(CommandId=sixth, InstanceId=a)["Status"] == "Pending"
    # Cancelling a waiting command needs no worker.
    cancelled = _send(ssm, [a], ["echo never"])
    ssm.cancel_command(CommandId=cancelled)
    assert _wait(ssm, cancelled, a)["Status"] == "Cancelled"
    gate.write_text("")
    inv = _wait(ssm, sixth, a)
    assert (inv["Status"], inv["StandardOutputContent"]) == ("Success", "sixth\n")
    for cid in five:
        assert _wait(ssm, cid, a)["Status"] == "Success"


def test_int_ec2_vcpu_quotas_default_as_documented_and_take_an_approved_increase(endpoint):
    # EC2 User Guide, "On-Demand Instance quotas" / "Spot Instance quotas": 0 vCPUs but Standard (5).
    sq = endpoint.client("service-quotas")
    endpoint.control("DELETE", "/_sortie/quotas")
    g = sq.get_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]
    assert (g["QuotaName"], g["Value"], g["Unit"]) == ("Running On-Demand G and VT instances", 0.0, "None")
    standard = sq.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode="L-34B43A08")["Quota"]
    assert standard["Value"] == 5.0
    assert endpoint.control("POST", "/_sortie/quotas", {"ec2/L-DB2E81BA": 8}) == {"ec2/L-DB2E81BA": 8.0}
    assert sq.get_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]["Value"] == 8.0
    # The default stays the default; moto's own (VPC) quotas are untouched.
    assert sq.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]["Value"] == 0.0
    assert sq.get_service_quota(ServiceCode="vpc", QuotaCode="L-F678F1CE")["Quota"]["Value"] > 0
    with pytest.raises(ClientError) as e:
        sq.get_service_quota(ServiceCode="ec2", QuotaCode="L-NOSUCH")
    assert _error(e)[0] == "NoSuchResourceException"
    endpoint.control("DELETE", "/_sortie/quotas")
    assert sq.get_service_quota(ServiceCode="ec2", QuotaCode="L-DB2E81BA")["Quota"]["Value"] == 0.0


def _put_status(url: str) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"{}", method="PUT")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, ""
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_int_presigned_urls_expire_and_die_with_their_session(endpoint, s3):
    bucket = f"presign-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    # SigV4, as the Rust SDK signs (boto3 may presign with SigV2 in us-east-1).
    s3 = endpoint.client("s3", signature_version="s3v4")
    # X-Amz-Date has whole seconds, so a URL signed at t expires at floor(t) + ExpiresIn: with 1 it could be
    # dead before its first use. 2 leaves at least one second.
    short = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "a"}, ExpiresIn=2)
    assert _put_status(short)[0] == 200
    time.sleep(3.1)
    status, body = _put_status(short)
    assert status == 403 and "<Code>AccessDenied</Code>" in body and "Request has expired" in body, body

    # Temporary credentials: the URL is good for an hour, the session for two more seconds.
    session = boto3.client(
        "s3", endpoint_url=endpoint.url, region_name=REGION, aws_access_key_id="ASIATEST",
        aws_secret_access_key="testing", aws_session_token="session-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    req = urllib.request.Request(
        f"{endpoint.url}/_sortie/sessions", data=json.dumps({"token": "session-1", "expires_in": 2}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 201
    long = session.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "b"}, ExpiresIn=3600)
    assert "X-Amz-Security-Token=session-1" in long
    assert _put_status(long)[0] == 200
    time.sleep(2.5)
    status, body = _put_status(long)
    assert status == 400 and "<Code>ExpiredToken</Code>" in body, body


def _delays(endpoint, **delays: float) -> None:
    endpoint.control("POST", "/_sortie/delays", delays)


def test_int_ssm_registration_delay_hides_a_new_instance_from_ssm(endpoint, ec2, ssm):
    # AWS: a node is listed only once its agent registered, and SendCommand to an unregistered one is
    # InvalidInstanceId ("SSM Agent isn't registered with the SSM endpoint").
    with pytest.raises(urllib.error.HTTPError) as bad:
        _delays(endpoint, ssm_registration=-1)
    assert bad.value.code == 400
    _delays(endpoint, ssm_registration=2)
    try:
        (a,) = _launch(ec2, ssm)
        launched = time.monotonic()
        assert ec2.describe_instances(InstanceIds=[a])["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"
        listed = lambda: ssm.describe_instance_information(  # noqa: E731
            Filters=[{"Key": "InstanceIds", "Values": [a]}])["InstanceInformationList"]
        assert listed() == []
        with pytest.raises(ClientError) as e:
            _send(ssm, [a], ["true"])
        assert _error(e) == ("InvalidInstanceId", 400)
        while not listed():
            assert time.monotonic() - launched < 10, "never registered"
            time.sleep(0.1)
        assert time.monotonic() - launched >= 1.5
        assert listed()[0]["PingStatus"] == "Online"
        assert _wait(ssm, _send(ssm, [a], ["echo registered"]), a)["StandardOutputContent"] == "registered\n"
    finally:
        _delays(endpoint, ssm_registration=0)


def test_int_root_volume_stays_deleting_for_the_delay_after_termination(endpoint, ec2, ssm):
    # AWS deletes a DeleteOnTermination volume when its instance terminates, and a volume can stay `deleting`
    # for several minutes (DeleteVolume); a volume that is not DeleteOnTermination is only detached.
    _delays(endpoint, root_volume_deletion=2)
    try:
        (a,) = _launch(ec2, ssm)
        described = ec2.describe_instances(InstanceIds=[a])["Reservations"][0]["Instances"][0]
        root = described["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
        data = ec2.create_volume(Size=1, AvailabilityZone=described["Placement"]["AvailabilityZone"])["VolumeId"]
        ec2.attach_volume(VolumeId=data, InstanceId=a, Device="/dev/sdf")
        image = endpoint.sandbox / "_volumes" / f"{root}.img"
        assert image.exists()
        ec2.terminate_instances(InstanceIds=[a])
        terminated = time.monotonic()
        states = {v["VolumeId"]: v for v in ec2.describe_volumes(VolumeIds=[root, data])["Volumes"]}
        assert states[root]["State"] == "deleting" and states[root]["Attachments"] == []
        assert states[data]["State"] == "available"
        deleting = ec2.describe_volumes(Filters=[{"Name": "status", "Values": ["deleting"]}])["Volumes"]
        assert [v["VolumeId"] for v in deleting] == [root]
        ec2.delete_volume(VolumeId=root)  # already going: changes nothing
        assert ec2.describe_volumes(VolumeIds=[root])["Volumes"][0]["State"] == "deleting"
        while True:
            try:
                ec2.describe_volumes(VolumeIds=[root])
            except ClientError as e:
                assert e.response["Error"]["Code"] == "InvalidVolume.NotFound"
                break
            assert time.monotonic() - terminated < 10, "never deleted"
            time.sleep(0.1)
        assert time.monotonic() - terminated >= 1.5
        assert not image.exists()
        ec2.delete_volume(VolumeId=data)
    finally:
        _delays(endpoint, root_volume_deletion=0)
