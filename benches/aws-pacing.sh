#!/usr/bin/env bash
# The AWS API calls and the latency of one run step, with production pacing, on the test endpoint (whose
# instances are ready at once, so what is measured is sortie's own overhead).
#
#   benches/aws-pacing.sh PLAN_BINARY [SECONDS...]      (default: 0 3 60)
#
# For each SECONDS: one `plan apply` of an instance, a step of `sleep SECONDS`, and teardown, counted by the
# endpoint (/_sortie/calls). Prints per run:
#   wall          the whole apply
#   to_first_cmd  from the instance step's start (its RunInstances) to the step's script running on the host
#   seen_late     from the step's script ending on the host to sortie's step_finished event
#   idle_gpu      from the step's script ending to TerminateInstances (EC2's state transition reason: whole
#                 seconds, so ±1 s)
#   calls         every API call of the apply, and the SSM calls of the step
# and the step's marginal calls: this apply's calls less those of the 0-second apply, i.e. what SECONDS of a
# running step cost.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SORTIE_VENV:-$repo/.venv}"
plan_bin=$1
shift
secs_list=("$@")
[[ ${#secs_list[@]} -gt 0 ]] || secs_list=(0 3 60)

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$repo/scripts/aws-test-endpoint" --port "$port" --sandbox "$dir/sandbox" --seed-profile sortie-ssm \
    --require-instance-profile >"$dir/endpoint.log" 2>&1 &
ep=$!
trap 'kill $ep 2>/dev/null; wait $ep 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 300); do grep -q '^listening on' "$dir/endpoint.log" && break; sleep 0.1; done
url="http://127.0.0.1:$port"
export AWS_ENDPOINT_URL=$url AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
    AWS_DEFAULT_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true AWS_CONFIG_FILE=/dev/null \
    AWS_SHARED_CREDENTIALS_FILE=/dev/null SORTIE_YES=1
unset SORTIE_POLL_INTERVAL
curl -fsS -X PUT "$url/bench-state" >/dev/null

baseline=
for secs in "${secs_list[@]}"; do
    work=$dir/run-$secs
    mkdir -p "$work"
    cat >"$work/p.yaml" <<EOF
plan: pacing
target: { provider: aws, region: us-east-1 }
state: s3://bench-state/runs
defaults: { timeout: 2h }
steps:
  host:
    kind: instance
    instance_types: [g5.xlarge]
    image: ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64
    profile: sortie-ssm
  work:
    kind: run
    on: host
    heartbeat: { stale_after: 20m }
    run: |
      date +%s%N > "\$SORTIE_HOST_ROOT/started_ns"
      # A line a minute: a step that prints nothing for stale_after is a stall.
      end=\$((\$(date +%s) + $secs))
      while [ "\$(date +%s)" -lt "\$end" ]; do
        echo tick; left=\$((end - \$(date +%s))); [ "\$left" -le 60 ] || left=60; sleep "\$left"
      done
      date +%s%N > "\$SORTIE_HOST_ROOT/ended_ns"
  teardown: { kind: teardown, needs: [work] }
EOF
    curl -fsS -X DELETE "$url/_sortie/calls" >/dev/null
    t0=$(date +%s%N)
    (cd "$work" && "$plan_bin" apply p.yaml --new --output json >events.jsonl 2>stderr.log) ||
        { echo "apply of $secs s failed:" >&2; cat "$work/stderr.log" >&2; exit 1; }
    t1=$(date +%s%N)
    curl -fsS "$url/_sortie/calls" >"$work/calls.json"
    sandbox=$(dirname "$(find "$dir/sandbox" -name ended_ns -newer "$work/p.yaml" | head -n 1)")
    line=$("$venv/bin/python" - "$work" "$sandbox" "$secs" "$t0" "$t1" "$baseline" "$url" <<'EOF'
import json, sys, datetime, re
import boto3
work, sandbox, secs, t0, t1, baseline, url = sys.argv[1:8]
events = [json.loads(l) for l in open(f"{work}/events.jsonl") if l.startswith("{")]
def ns(ts):
    d = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return int(d.timestamp() * 1e9)
def ev(kind, step):
    return next(ns(e["ts"]) for e in events if e["event"] == kind and e.get("step") == step)
started = int(open(f"{sandbox}/started_ns").read())
ended = int(open(f"{sandbox}/ended_ns").read())
calls = json.load(open(f"{work}/calls.json"))
total = sum(calls.values())
ssm = {k: v for k, v in calls.items() if k.startswith("ssm:")}
step = ssm.get("ssm:GetCommandInvocation", 0) + ssm.get("ssm:SendCommand", 0)
margin = "" if not baseline else f"  marginal {total - int(baseline)}"
instance = next(e["value"] for e in events if e["event"] == "step_output" and e.get("key") == "instance_id")
ec2 = boto3.client("ec2", endpoint_url=url, region_name="us-east-1")
reason = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["StateTransitionReason"]
stamp = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", reason).group(1)
terminated = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc).timestamp()
idle = terminated - ended / 1e9
print(f"{secs:>5}s  wall {(int(t1) - int(t0)) / 1e9:7.2f}s  to_first_cmd {(started - ev('step_started', 'host')) / 1e9:5.2f}s"
      f"  seen_late {(ev('step_finished', 'work') - ended) / 1e9:5.2f}s  idle_gpu {idle:4.0f}s  calls {total:4d}"
      f"  (SendCommand+GetCommandInvocation {step}, s3 GetObject {calls.get('s3:GetObject', 0)}"
      f" PutObject {calls.get('s3:PutObject', 0)} all {sum(v for k, v in calls.items() if k.startswith('s3:'))},"
      f" ec2 {sum(v for k, v in calls.items() if k.startswith('ec2:'))}){margin}|{total}")
EOF
)
    echo "${line%|*}"
    [[ -n $baseline ]] || baseline=${line##*|}
done
