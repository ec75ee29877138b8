#!/usr/bin/env bash
# Integration tests for the host protocol (docs/HOST_PROTOCOL.md): real processes, real files, no mocks.
# Every test runs once per implementation (IMPL): src/host/wrapper.sh under dash and under bash, and the native
# one, `plan host-wrapper` (PLAN_BIN, default $CARGO_TARGET_DIR/debug/plan); each in its own temp dir and
# process, bounded by `timeout`, in parallel. Last line: "N passed, N failed" (parsed by CI).
# Usage: tests/host/test_wrapper.sh [NAME_SUBSTRING]     (IMPLS="dash bash native" chooses implementations)
set -u

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WRAPPER=${WRAPPER:-$REPO/src/host/wrapper.sh}
PLAN_BIN=${PLAN_BIN:-${CARGO_TARGET_DIR:-$REPO/target}/debug/plan}
TEST_TIMEOUT=${TEST_TIMEOUT:-20} # seconds for one test, cleanup included
DEADLINE=80     # seconds for the whole file: a test started late gets only what is left
JOBS=${JOBS:-10}

# ---------------------------------------------------------------- helpers (run inside one test's process)

fail() { echo "    $*" >&2; exit 1; }
# The implementation under test: wrapper.sh under an interpreter, or the native `plan host-wrapper`.
if [ "${IMPL:-}" = native ]; then WCMD=("$PLAN_BIN" host-wrapper); else WCMD=("${IMPL:-sh}" "$WRAPPER"); fi
W() { "${WCMD[@]}" "$@"; }
native() { [ "${IMPL:-}" = native ]; }
# field DIR KEY: one value from `status`.
field() { W status "$1" | sed -n "s/^$2=//p"; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: expected '$2', got '$1'"; }
expect_file_has() { grep -qF -- "$2" "$1" 2>/dev/null || fail "$1 lacks '$2': $(cat "$1" 2>&1)"; }
# until SECONDS CMD...: poll CMD every 0.1 s; fail after SECONDS.
until_ok() {
	local end=$((SECONDS + $1)); shift
	until "$@"; do [ "$SECONDS" -lt "$end" ] || fail "timed out waiting for: $*"; sleep 0.1; done
}
state_is() { [ "$(field "$1" state)" = "$2" ]; }
# procstat PID N: field N of /proc/PID/stat counted after "(comm)": 1 state, 2 ppid, 3 pgrp, 4 session.
procstat() { local l; l=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; l=${l##*) }; cut -d ' ' -f "$2" <<<"$l"; }
# Zombies count as gone: a PID 1 that does not reap (containers) keeps orphans as zombies for ever.
gone() { local st; st=$(procstat "$1" 1) || return 0; [ "$st" = Z ]; }
# No process per /proc entry (three parallel implementations on two cores make that slow): bash builtins only.
group_gone() {
	local f l st
	for f in /proc/[0-9]*/stat; do
		read -r l 2>/dev/null <"$f" || continue
		read -ra st <<<"${l##*) }"
		[ "${st[2]:-}" != "$1" ] || [ "${st[0]:-}" = Z ] || return 1
	done
}
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
script() { cat >"$T/$1"; echo "$T/$1"; }
ms() { echo $(($(date +%s%N) / 1000000)); }

# Kill everything a test started: every step group and supervisor recorded under $T, and recorded bg jobs.
cleanup() {
	local f p
	while IFS= read -r f; do
		p=$(head -n 1 "$f" 2>/dev/null)
		[[ $p =~ ^[0-9]+$ ]] && [ "$p" -gt 1 ] || continue
		kill -KILL -- "-$p" 2>/dev/null
		kill -KILL "$p" 2>/dev/null
	done < <(find "$T" \( -name pid -o -name supervisor_pid -o -name '*.bgpid' \) -type f 2>/dev/null)
	rm -rf "$T"
}

# ---------------------------------------------------------------- tests

test_int_wrapper_success_with_outputs_and_exit_zero() {
	local s d=$T/run/steps/ok
	mkdir "$T/wd"
	s=$(script ok.sh <<-'EOF'
		echo "hello from the step"
		echo "answer=42" >>"$SORTIE_OUTPUT"
		echo "attempt=$SORTIE_ATTEMPT" >>"$SORTIE_OUTPUT"
		echo "step_dir=$SORTIE_STEP_DIR" >>"$SORTIE_OUTPUT"
		echo "cwd=$(pwd -P)" >>"$SORTIE_OUTPUT"
		echo "passed=$PASS_THROUGH" >>"$SORTIE_OUTPUT"
	EOF
	)
	PASS_THROUGH='a b' SORTIE_WORKDIR=$T/wd W run "$d" 1 "$s" >"$T/out" || fail "run exited $?"
	expect_file_has "$T/out" "state=succeeded"
	expect_eq "$(cat "$d/exit_code")" 0 "exit_code file"
	expect_file_has "$d/output.log" "hello from the step"
	expect_file_has "$d/outputs" "answer=42"
	expect_file_has "$d/outputs" "attempt=1"
	expect_file_has "$d/outputs" "step_dir=$(cd "$d" && pwd -P)"
	expect_file_has "$d/outputs" "cwd=$T/wd"
	expect_file_has "$d/outputs" "passed=a b"
	[[ $(field "$d" started_at) =~ ^[0-9]+$ && $(field "$d" finished_at) =~ ^[0-9]+$ ]] || fail "timestamps missing"
	# The default workdir is the status dir.
	s=$(script cwd.sh <<<'pwd -P >"$SORTIE_STEP_DIR/cwd"')
	W run "$T/d2" 1 "$s" >/dev/null || fail "second run failed"
	expect_eq "$(cat "$T/d2/cwd")" "$(cd "$T/d2" && pwd -P)" "default workdir"
}

test_int_wrapper_failure_exit_code_recorded() {
	local s d=$T/st rc=0
	s=$(script fail.sh <<<'echo failing >&2; exit 7')
	W run "$d" 1 "$s" >"$T/out" || rc=$?
	expect_eq "$rc" 7 "run exit code"
	expect_eq "$(field "$d" state)" failed "state"
	expect_eq "$(field "$d" exit_code)" 7 "exit_code"
	expect_file_has "$d/output.log" "failing"
	rc=0; W wait "$d" >/dev/null || rc=$?
	expect_eq "$rc" 7 "wait exit code"
}

test_int_wrapper_redelivered_finished_attempt_does_not_run_again() {
	local s d=$T/st rc=0
	s=$(script once.sh <<<"echo ran >>'$T/marker'; exit 3")
	W run "$d" 1 "$s" >/dev/null || rc=$?
	expect_eq "$rc" 3 "first run"
	rc=0; W run "$d" 1 "$s" >"$T/out" || rc=$?
	expect_eq "$rc" 3 "re-delivered run returns the recorded code"
	W launch "$d" 1 "$s" >"$T/out2" || fail "re-delivered launch exited $?"
	expect_file_has "$T/out2" "state=failed"
	expect_file_has "$T/out2" "exit_code=3"
	expect_eq "$(lines "$T/marker")" 1 "runs"
}

test_int_wrapper_relaunch_of_running_attempt_starts_no_second_copy() {
	local s d=$T/st p1 p2
	s=$(script long.sh <<<"echo ran >>'$T/marker'; sleep 30")
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	p1=$(field "$d" pid)
	W launch "$d" 1 "$s" >"$T/out" || fail "second launch exited $?"
	expect_file_has "$T/out" "state=running"
	p2=$(field "$d" pid)
	expect_eq "$p2" "$p1" "pid after re-launch"
	sleep 0.3
	expect_eq "$(lines "$T/marker")" 1 "copies started"
}

test_int_wrapper_concurrent_launches_run_once() {
	local s d=$T/st i rc
	s=$(script race.sh <<<"echo ran >>'$T/marker'; sleep 1")
	for i in 1 2 3 4; do W launch "$d" 1 "$s" >"$T/out$i" & done
	wait
	for i in 1 2 3 4; do expect_file_has "$T/out$i" "attempt=1"; done
	rc=0; W wait "$d" 0.2 >/dev/null || rc=$?
	expect_eq "$rc" 0 "wait"
	expect_eq "$(lines "$T/marker")" 1 "runs"
}

test_int_wrapper_new_attempt_archives_previous() {
	local s1 s2 d=$T/st rc=0
	s1=$(script one.sh <<<'echo first; echo k=one >>"$SORTIE_OUTPUT"; exit 1')
	s2=$(script two.sh <<<'echo second; echo k=two >>"$SORTIE_OUTPUT"')
	W run "$d" 1 "$s1" >/dev/null || rc=$?
	expect_eq "$rc" 1 "attempt 1"
	W run "$d" 2 "$s2" >/dev/null || fail "attempt 2 exited $?"
	expect_eq "$(field "$d" attempt)" 2 "attempt"
	expect_eq "$(field "$d" state)" succeeded "state"
	expect_eq "$(cat "$d/attempts/1/exit_code")" 1 "archived exit_code"
	expect_file_has "$d/attempts/1/output.log" first
	expect_file_has "$d/attempts/1/outputs" k=one
	expect_file_has "$d/attempts/1/script" "echo first"
	expect_file_has "$d/outputs" k=two
	! grep -q first "$d/output.log" || fail "old log leaked into attempt 2"
	# An older attempt number than the recorded one is refused (a late re-delivery must not run again).
	rc=0; W launch "$d" 1 "$s1" >/dev/null 2>&1 || rc=$?
	expect_eq "$rc" 65 "stale attempt"
	expect_eq "$(field "$d" attempt)" 2 "attempt after stale launch"
}

test_int_wrapper_new_attempt_refused_while_previous_runs() {
	local s d=$T/st rc=0
	s=$(script long.sh <<<'sleep 30')
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	W launch "$d" 2 "$s" >/dev/null 2>"$T/err" || rc=$?
	expect_eq "$rc" 75 "launch of attempt 2 while 1 runs"
	expect_file_has "$T/err" "still running"
	expect_eq "$(field "$d" attempt)" 1 "attempt"
	expect_eq "$(field "$d" state)" running "state"
}

test_int_wrapper_lock_contention_fails_75_naming_holder() {
	local s a=$T/run/steps/a b=$T/run/steps/b holder
	s=$(script train.sh <<<"echo ran >>\"\$SORTIE_STEP_DIR/marker\"; sleep 30")
	SORTIE_LOCK=train W launch "$a" 1 "$s" >/dev/null || fail "launch a"
	expect_eq "$(field "$a" state)" running "holder state"
	SORTIE_LOCK=train W launch "$b" 1 "$s" >"$T/out" || fail "launch b exited $?"
	expect_file_has "$T/out" "state=failed"
	expect_file_has "$T/out" "exit_code=75"
	holder=$(cat "$a/supervisor_pid")
	expect_file_has "$T/out" "error=lock train is held by pid $holder (step dir $(cd "$a" && pwd -P)) since "
	[ ! -e "$b/marker" ] || fail "the second trainer ran"
	expect_file_has "$T/run/locks/train.holder" "step_dir=$(cd "$a" && pwd -P)"
}

test_int_wrapper_lock_released_after_holder_ends() {
	local s1 s2 a=$T/run/steps/a b=$T/run/steps/b c=$T/run/steps/c
	# The holder exits at once but leaves a background child: the lock lasts until that child is gone too.
	s1=$(script holder.sh <<-EOF
		( i=0; while [ ! -f '$T/release' ] && [ \$i -lt 200 ]; do sleep 0.1; i=\$((i + 1)); done ) >/dev/null 2>&1 &
		echo \$! >'$T/child.bgpid'
	EOF
	)
	s2=$(script next.sh <<<'echo ran')
	SORTIE_LOCK=train W run "$a" 1 "$s1" >/dev/null || fail "holder run"
	SORTIE_LOCK=train W run "$b" 1 "$s2" >/dev/null
	expect_eq "$(field "$b" exit_code)" 75 "while the holder's child lives"
	touch "$T/release"
	until_ok 5 gone "$(cat "$T/child.bgpid")"
	SORTIE_LOCK=train W run "$c" 1 "$s2" >/dev/null || fail "run after release exited $?"
	expect_eq "$(field "$c" state)" succeeded "state after release"
}

test_int_wrapper_bad_lock_name_rejected() {
	local s rc=0
	s=$(script x.sh <<<'true')
	SORTIE_LOCK='../etc/x' W launch "$T/st" 1 "$s" 2>"$T/err" || rc=$?
	expect_eq "$rc" 64 "exit code"
	expect_file_has "$T/err" "invalid lock name"
	[ ! -e "$T/st/attempt" ] || fail "an attempt was recorded"
}

test_int_wrapper_timeout_kills_whole_group() {
	local s d=$T/st rc=0 pg
	# A grandchild that ignores TERM, in the background: only the KILL after the grace reaches it.
	s=$(script hang.sh <<-'EOF'
		sh -c 'trap "" TERM; while :; do sleep 1; done' &
		echo $! >"$SORTIE_STEP_DIR/grandchild.bgpid"
		sleep 60
	EOF
	)
	SORTIE_TIMEOUT=1 SORTIE_KILL_GRACE=1 W run "$d" 1 "$s" >"$T/out" || rc=$?
	expect_eq "$rc" 124 "run exit code"
	expect_file_has "$T/out" "state=timed_out"
	[ -f "$d/timed_out" ] || fail "no timed_out file"
	pg=$(field "$d" pid)
	gone "$(cat "$d/grandchild.bgpid")" || fail "grandchild survived the timeout"
	group_gone "$pg" || fail "process group $pg survived"
}

test_int_wrapper_cancel() {
	local s d=$T/st pg rc=0
	s=$(script long.sh <<<'echo started; sleep 30')
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	pg=$(field "$d" pid)
	W cancel "$d" 2 >"$T/out" || fail "cancel exited $?"
	expect_file_has "$T/out" "state=cancelled"
	expect_eq "$(field "$d" exit_code)" 143 "exit_code"
	[ -f "$d/cancelled" ] || fail "no cancelled file"
	group_gone "$pg" || fail "group survived cancel"
	W cancel "$d" >/dev/null || fail "second cancel exited $?"
	expect_eq "$(field "$d" state)" cancelled "state after second cancel"
	rc=0; W wait "$d" >/dev/null || rc=$?
	expect_eq "$rc" 143 "wait after cancel"
	W cancel "$T/absent" >"$T/out2" || fail "cancel of an absent step exited $?"
	expect_file_has "$T/out2" "state=absent"
}

test_int_wrapper_supervisor_kill9_is_lost() {
	local s d=$T/st pg sup rc=0
	s=$(script long.sh <<<"echo ran >>'$T/marker'; sleep 30")
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	pg=$(field "$d" pid); sup=$(cat "$d/supervisor_pid")
	kill -KILL "$sup"
	until_ok 3 gone "$sup"
	expect_eq "$(field "$d" state)" running "state while the script still lives"
	kill -KILL -- "-$pg"
	until_ok 3 group_gone "$pg"
	expect_eq "$(field "$d" state)" lost "state"
	rc=0; W wait "$d" >/dev/null || rc=$?
	expect_eq "$rc" 125 "wait on a lost attempt"
	W launch "$d" 1 "$s" >"$T/out" || fail "re-launch exited $?"
	expect_file_has "$T/out" "state=lost"
	expect_eq "$(lines "$T/marker")" 1 "runs without SORTIE_RESTART_LOST"
	SORTIE_RESTART_LOST=1 W launch "$d" 1 "$s" >"$T/out" || fail "restart exited $?"
	expect_file_has "$T/out" "state=running"
	expect_eq "$(lines "$T/marker")" 2 "runs after SORTIE_RESTART_LOST=1"
	[ -f "$d/attempts/1/pid" ] || fail "lost attempt not archived"
}

test_int_wrapper_cancel_of_lost_attempt_records_cancelled() {
	local s d=$T/st pg
	s=$(script long.sh <<<'sleep 30')
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	pg=$(field "$d" pid)
	kill -KILL "$(cat "$d/supervisor_pid")"; kill -KILL -- "-$pg"
	until_ok 3 state_is "$d" lost
	W cancel "$d" 1 >"$T/out" || fail "cancel exited $?"
	expect_file_has "$T/out" "state=cancelled"
	expect_eq "$(cat "$d/exit_code")" 143 "exit_code"
}

test_int_wrapper_launch_returns_promptly_through_pipe() {
	local s d=$T/st t0 out elapsed
	s=$(script long.sh <<<'sleep 30')
	t0=$(ms)
	out=$(W launch "$d" 1 "$s" 2>&1)
	elapsed=$(($(ms) - t0))
	[ "$elapsed" -lt 3000 ] || fail "launch took ${elapsed} ms"
	[[ $out == *state=running* ]] || fail "launch printed: $out"
	# The same through an explicit pipe, as a caller reading stdout until EOF would.
	t0=$(ms)
	W status "$d" | cat >/dev/null
	W launch "$T/st2" 1 "$s" | cat >"$T/out"
	elapsed=$(($(ms) - t0))
	[ "$elapsed" -lt 3000 ] || fail "piped launch took ${elapsed} ms"
	expect_file_has "$T/out" "state=running"
}

test_int_wrapper_detached_step_outlives_launching_shell() {
	local s d=$T/st rc=0
	s=$(script slow.sh <<<'sleep 2; echo finished >"$SORTIE_STEP_DIR/marker"')
	# The launching shell runs in its own group, which is then kill -9'd (as an orchestrator or SSM would be).
	setsid bash -c '"$@" >/dev/null; sleep 30' _ "${WCMD[@]}" launch "$d" 1 "$s" &
	echo $! >"$T/launcher.bgpid"; disown
	until_ok 5 test -f "$d/pid"
	kill -KILL -- "-$(cat "$T/launcher.bgpid")"
	sleep 0.5
	expect_eq "$(field "$d" state)" running "state after the launcher died"
	W wait "$d" 0.2 >/dev/null || rc=$?
	expect_eq "$rc" 0 "exit code"
	expect_file_has "$d/marker" finished
}

test_int_wrapper_heartbeat_json_carries_latest_progress() {
	local s d=$T/st
	command -v python3 >/dev/null || { echo "    python3 absent: skipped" >&2; return 0; }
	s=$(script hb.sh <<-'EOF'
		echo "step 5/100 loss=2.5"
		sleep 1.5
		echo "step 7/100"
		echo "loss=1.25 lr=3e-4"
		sleep 2
		echo "evaluating"
	EOF
	)
	SORTIE_HEARTBEAT_INTERVAL=1 SORTIE_METRICS=loss W launch "$d" 1 "$s" >/dev/null || fail "launch"
	until_ok 5 grep -q '"progress":"7/100"' "$d/heartbeat.json"
	python3 -m json.tool "$d/heartbeat.json" >/dev/null || fail "invalid JSON: $(cat "$d/heartbeat.json")"
	python3 - "$d/heartbeat.json" "$(field "$d" pid)" <<-'EOF' || fail "heartbeat fields: $(cat "$d/heartbeat.json")"
		import json, sys
		h = json.load(open(sys.argv[1]))
		assert h["attempt"] == 1 and h["pid"] == int(sys.argv[2]), h
		assert h["progress"] == "7/100" and h["metrics"] == "loss=1.25 lr=3e-4", h
		assert h["log_bytes"] > 0 and h["ts"] > 0, h
	EOF
	expect_eq "$(field "$d" progress)" "7/100" "status progress"
	W wait "$d" 0.2 >/dev/null || fail "wait"
	python3 -m json.tool "$d/heartbeat.json" >/dev/null || fail "final heartbeat invalid"
	expect_file_has "$d/heartbeat.json" '"progress":"7/100"'
	[[ $(field "$d" heartbeat_at) =~ ^[0-9]+$ ]] || fail "heartbeat_at missing"
}

# With a whole-second liveness interval, the end is still seen within a quarter second (one file test), so the
# SSM wait command (interval 5) never holds a finished step for seconds. The last heartbeat says `ended`.
test_int_wrapper_wait_sees_the_end_within_a_second_and_the_last_heartbeat_says_ended() {
	local s d=$T/st t0 t1 rc=0
	s=$(script quick.sh <<-'EOF'
		sleep 2
	EOF
	)
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	until_ok 5 test -s "$d/heartbeat.json"
	expect_file_has "$d/heartbeat.json" '"ended":false'
	W wait "$d" 5 >/dev/null || rc=$?
	expect_eq "$rc" 0 "exit code"
	# The attempt's last heartbeat says it ended (on AWS: the orchestrator asks SSM now).
	expect_file_has "$d/heartbeat.json" '"ended":true'
	t0=$(sed -n 1p "$d/finished_at")
	t1=$(date +%s)
	[ $((t1 - t0)) -le 1 ] || fail "wait returned $((t1 - t0)) s after the attempt finished"
	# And the step that is already over: wait returns at once.
	local a b; a=$(ms); W wait "$d" 5 >/dev/null; b=$(ms)
	[ $((b - a)) -lt 1000 ] || fail "wait on a finished step took $((b - a)) ms"
}

# A spot interruption notice in the instance metadata (IMDSv2: token first, then spot/instance-action, 404 until
# a notice) is recorded and uploaded at once, and `wait` ends with 126 while the step still runs.
test_int_wrapper_spot_notice_is_recorded_and_ends_the_wait() {
	local s d=$T/st port rc=0 a b
	command -v python3 >/dev/null && command -v curl >/dev/null || { echo "    python3/curl absent: skipped" >&2; return 0; }
	if native; then
		# Spot notices come from EC2's instance metadata: the native supervisor (local steps only) refuses to
		# be asked to watch for one rather than silently not watching.
		s=$(script long.sh <<<'sleep 30')
		SORTIE_SPOT=1 W launch "$d" 1 "$s" >/dev/null 2>"$T/err" || rc=$?
		expect_eq "$rc" 64 "native launch with SORTIE_SPOT=1"
		expect_file_has "$T/err" "SORTIE_SPOT"
		[ ! -e "$d/attempt" ] || fail "an attempt was recorded"
		return 0
	fi
	cat >"$T/imds.py" <<-'EOF'
		import http.server, os, sys
		notice = sys.argv[1]
		class H(http.server.BaseHTTPRequestHandler):
		    def log_message(self, *a): pass
		    def reply(self, code, body=b""):
		        self.send_response(code); self.send_header("Content-Length", str(len(body))); self.end_headers()
		        self.wfile.write(body)
		    def do_PUT(self):
		        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
		        self.reply(200, b"tok") if ok else self.reply(400)
		    def do_GET(self):
		        if self.headers.get("X-aws-ec2-metadata-token") != "tok": return self.reply(401)
		        if self.path != "/latest/meta-data/spot/instance-action" or not os.path.exists(notice): return self.reply(404)
		        self.reply(200, open(notice, "rb").read())
		s = http.server.HTTPServer(("127.0.0.1", 0), H)
		print(s.server_address[1], flush=True)
		s.serve_forever()
	EOF
	python3 "$T/imds.py" "$T/notice" >"$T/imds.port" &
	echo $! >"$T/imds.bgpid"
	until_ok 5 test -s "$T/imds.port"
	port=$(cat "$T/imds.port")
	s=$(script long.sh <<-'EOF'
		sleep 30
	EOF
	)
	SORTIE_SPOT=1 SORTIE_SPOT_POLL=1 SORTIE_IMDS_URL="http://127.0.0.1:$port" W launch "$d" 1 "$s" >/dev/null || fail "launch"
	sleep 2
	[ ! -f "$d/spot_notice" ] || fail "a notice before there is one"
	printf '{"action": "terminate", "time": "2026-12-03T20:00:00Z"}' >"$T/notice"
	until_ok 5 test -f "$d/spot_notice"
	until_ok 5 grep -qF '"spot_notice":"{\"action\": \"terminate\"' "$d/heartbeat.json"
	a=$(ms); W wait "$d" 5 >"$T/wait.out" || rc=$?; b=$(ms)
	expect_eq "$rc" 126 "wait on a reclaimed host"
	[ $((b - a)) -lt 1000 ] || fail "wait took $((b - a)) ms"
	expect_file_has "$T/wait.out" 'spot_notice={"action": "terminate", "time": "2026-12-03T20:00:00Z"}'
	expect_eq "$(field "$d" state)" running "the step itself still runs"
}

test_int_wrapper_heartbeat_escapes_quotes_and_backslashes() {
	local s d=$T/st
	command -v python3 >/dev/null || { echo "    python3 absent: skipped" >&2; return 0; }
	# Prints: tag="a\b"<TAB>z   and   m "q" \\ end
	s=$(script esc.sh <<-'EOF'
		printf 'tag="a\\b"\tz\n'
		printf 'm "q" \\\\ end\n'
	EOF
	)
	SORTIE_PROGRESS='tag=[^ ]+' SORTIE_METRICS='^m ' W run "$d" 1 "$s" >"$T/out" || fail "run exited $?: $(cat "$T/out" "$d/supervisor.log")"
	expect_file_has "$d/output.log" 'tag="a\b"'
	python3 -m json.tool "$d/heartbeat.json" >/dev/null || fail "invalid JSON: $(cat "$d/heartbeat.json")"
	python3 - "$d/heartbeat.json" <<-'EOF' || fail "heartbeat: $(cat "$d/heartbeat.json")"
		import json, sys
		h = json.load(open(sys.argv[1]))
		assert h["progress"] == 'tag="a\\b"z', h
		assert h["metrics"] == 'm "q" \\\\ end', h
	EOF
	expect_eq "$(field "$d" progress)" 'tag="a\b"z' "status progress (unescaped, tab stripped)"
}

test_int_wrapper_script_pid_is_its_session_id() {
	local s d=$T/st pid
	s=$(script long.sh <<<'sleep 30')
	W launch "$d" 1 "$s" >/dev/null || fail "launch"
	pid=$(field "$d" pid)
	# Fields 5 and 6 of /proc/PID/stat: process group and session.
	expect_eq "$(procstat "$pid" 4)" "$pid" "session id"
	expect_eq "$(procstat "$pid" 3)" "$pid" "process group id"
	[ "$(procstat "$(cat "$d/supervisor_pid")" 4)" != "$pid" ] || fail "supervisor in the step's session"
}

test_int_wrapper_shebang_script_runs_directly() {
	local s d=$T/st
	command -v python3 >/dev/null || { echo "    python3 absent: skipped" >&2; return 0; }
	s=$(script train.py <<-'EOF'
		#!/usr/bin/env python3
		import os
		with open(os.environ["SORTIE_OUTPUT"], "a") as f:
		    f.write("lang=python\n")
	EOF
	)
	W run "$d" 1 "$s" >/dev/null || fail "run exited $?"
	expect_file_has "$d/outputs" "lang=python"
}

test_int_wrapper_status_format_and_absent() {
	local rc=0
	W status "$T/nothing" >"$T/out" || fail "status exited $?"
	expect_eq "$(cut -d= -f1 "$T/out" | tr '\n' ' ')" \
		"state attempt pid exit_code started_at finished_at heartbeat_at progress error log_bytes spot_notice " "keys"
	expect_file_has "$T/out" "state=absent"
	W wait "$T/nothing" >/dev/null || rc=$?
	expect_eq "$rc" 125 "wait on an absent step"
}

test_int_wrapper_usage_errors_exit_64() {
	local s rc
	s=$(script x.sh <<<'true')
	for args in "frobnicate" "" "launch $T/st 1" "launch $T/st one $s" "launch $T/st 1 $T/missing.sh" \
		"status" "status a b" "wait" "cancel $T/st notanumber" "run $T/st"; do
		rc=0; W $args >/dev/null 2>"$T/err" || rc=$?
		expect_eq "$rc" 64 "exit code of '$args'"
		[ -s "$T/err" ] || fail "no message on stderr for '$args'"
	done
	rc=0; SORTIE_TIMEOUT=1h W launch "$T/st" 1 "$s" 2>/dev/null || rc=$?
	expect_eq "$rc" 64 "non-numeric SORTIE_TIMEOUT"
	rc=0; SORTIE_PROGRESS='(' W launch "$T/st" 1 "$s" 2>/dev/null || rc=$?
	expect_eq "$rc" 64 "bad SORTIE_PROGRESS regex"
}

# The two implementations share one protocol: what one launched, the other reads, re-launches, cancels and
# archives (wrapper.sh under sh for the native run; the native one for the dash and bash runs).
test_int_wrapper_the_other_implementation_reads_relaunches_and_cancels_it() {
	local s d=$T/st pg rc=0 other
	if native; then other=(sh "$WRAPPER"); else other=("$PLAN_BIN" host-wrapper); fi
	O() { "${other[@]}" "$@"; }
	s=$(script long.sh <<<"echo ran >>'$T/marker'; echo 'step 3/9'; sleep 30")
	SORTIE_HEARTBEAT_INTERVAL=1 W launch "$d" 1 "$s" >/dev/null || fail "launch"
	pg=$(field "$d" pid)
	until_ok 5 grep -q '"progress":"3/9"' "$d/heartbeat.json"
	O status "$d" >"$T/out" || fail "the other's status exited $?"
	expect_file_has "$T/out" "state=running"
	expect_file_has "$T/out" "pid=$pg"
	expect_file_has "$T/out" "progress=3/9"
	O launch "$d" 1 "$s" >"$T/out" || fail "the other's re-launch exited $?"
	expect_file_has "$T/out" "state=running"
	sleep 0.3
	expect_eq "$(lines "$T/marker")" 1 "copies started"
	O cancel "$d" 1 >"$T/out" || fail "the other's cancel exited $?"
	expect_file_has "$T/out" "state=cancelled"
	expect_eq "$(cat "$d/exit_code")" 143 "exit_code"
	group_gone "$pg" || fail "group survived the other's cancel"
	s=$(script two.sh <<<'echo k=two >>"$SORTIE_OUTPUT"')
	O launch "$d" 2 "$s" >/dev/null || fail "the other's attempt 2"
	W wait "$d" 0.2 >/dev/null || rc=$?
	expect_eq "$rc" 0 "wait on the other's attempt"
	expect_file_has "$d/outputs" k=two
	expect_file_has "$d/attempts/1/heartbeat.json" '"progress":"3/9"'
	expect_eq "$(cat "$d/attempts/1/exit_code")" 143 "archived exit_code"
}

# ---------------------------------------------------------------- driver

# One test in this process: own temp dir, everything it started killed on the way out.
run_one() {
	T=$(mktemp -d "${TMPDIR:-/tmp}/sortie-wrapper-test.XXXXXX")
	T=$(cd "$T" && pwd -P)
	trap cleanup EXIT
	trap 'exit 143' TERM INT HUP
	cd "$T" && "$1"
}

main() {
	local filter=${1:-} interps=() tests=() t i passed=0 failed=0 R rc budget
	for i in ${IMPLS:-dash bash native}; do
		if [ "$i" = native ]; then
			# Not skipped when missing: a suite that silently lost a third of its runs would still say "passed".
			[ -x "$PLAN_BIN" ] || echo "note: $PLAN_BIN is missing (cargo build, or set PLAN_BIN): native runs fail"
			interps+=("$i")
		elif command -v "$i" >/dev/null; then interps+=("$i"); else echo "note: $i not installed, skipped"; fi
	done
	for t in $(declare -F | awk '{print $3}' | grep '^test_int_wrapper_' | grep -F -- "$filter"); do tests+=("$t"); done
	R=$(mktemp -d)
	for t in "${tests[@]}"; do
		for i in "${interps[@]}"; do
			while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
			budget=$((DEADLINE - SECONDS)); [ "$budget" -le "$TEST_TIMEOUT" ] || budget=$TEST_TIMEOUT
			[ "$budget" -ge 1 ] || budget=1
			(IMPL=$i timeout -k 2 "$budget" bash "$SELF" --one "$t" >"$R/$t.$i.log" 2>&1
				echo $? >"$R/$t.$i.rc") &
		done
	done
	wait
	for t in "${tests[@]}"; do
		for i in "${interps[@]}"; do
			rc=$(cat "$R/$t.$i.rc" 2>/dev/null || echo missing)
			if [ "$rc" = 0 ]; then
				passed=$((passed + 1)); echo "ok   $t [$i]"
			else
				failed=$((failed + 1)); echo "FAIL $t [$i] (exit $rc)"; sed 's/^/    /' "$R/$t.$i.log"
			fi
		done
	done
	rm -rf "$R"
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ]
}

if [ "${1:-}" = --one ]; then
	run_one "$2"
else
	main "$@"
fi
