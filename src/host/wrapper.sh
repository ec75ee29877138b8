#!/bin/sh
# sortie host wrapper: runs one `run` step per status directory and answers status probes.
# Protocol: docs/HOST_PROTOCOL.md. POSIX sh (dash, bash) + util-linux flock/setsid + coreutils.
# Must be run from a file (`sh FILE CMD ...`): the supervisor runs from a copy kept in the status dir.
set -eu

# Files that belong to one attempt; archived together when a new attempt starts.
ATTEMPT_FILES='attempt script wrapper.sh boot_id supervisor_pid supervisor.log pid started_at output.log outputs
heartbeat.json heartbeat.json.tmp error timed_out cancelled finished_at exit_code log_sent log-tail log-tail.tmp spot_notice'

launching=
die() { code=$1; shift; printf 'sortie-wrapper: %s\n' "$*" >&2; exit "$code"; }
usage() { die 64 "usage: wrapper.sh launch|run DIR ATTEMPT SCRIPT | status DIR | wait DIR [POLL] | cancel DIR [GRACE]"; }
now() { date +%s; }
is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; esac; }

# First line of a file, or nothing when it is absent (status values are single lines).
val() { v=; [ -f "$1" ] && { IFS= read -r v <"$1" || :; }; printf '%s' "$v"; }

# Readers may look at any time, so files they rely on are replaced atomically.
put() { printf '%s\n' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1"; }

boot_id() { val /proc/sys/kernel/random/boot_id; }

# A pid recorded before a reboot names some unrelated process now: compare boot ids first.
same_boot() { [ "$(val "$D/boot_id")" = "$(boot_id)" ]; }
alive() { is_uint "$1" && same_boot && kill -0 "$1" 2>/dev/null && live_stat "/proc/$1/stat"; }
group_alive() { is_uint "$1" && [ "$1" -gt 1 ] && same_boot && kill -0 "-$1" 2>/dev/null && group_has_live "$1"; }

# kill -0 also succeeds on zombies, which a PID 1 that does not reap (many containers) keeps for ever,
# so on Linux the state letter in /proc/PID/stat decides (field 3, counted after the "(comm)" field).
live_stat() {
	[ -r /proc/self/stat ] || return 0
	l=; read -r l 2>/dev/null <"$1" || return 1
	set -- ${l##*") "}
	[ "${1:-Z}" != Z ] && [ "$1" != X ]
}
group_has_live() {
	[ -r /proc/self/stat ] || return 0
	g=$1
	for f in /proc/[0-9]*/stat; do
		l=; read -r l 2>/dev/null <"$f" || continue
		set -- ${l##*") "}
		[ "${3:-}" != "$g" ] || [ "$1" = Z ] || [ "$1" = X ] || return 0
	done
	return 1
}

# TERM the whole process group, then KILL whatever is left after the grace period.
kill_group() {
	group_alive "$1" || return 0
	kill -TERM "-$1" 2>/dev/null || return 0
	end=$(($(now) + $2))
	while group_alive "$1" && [ "$(now)" -lt "$end" ]; do sleep 0.2; done
	kill -KILL "-$1" 2>/dev/null || :
}

# JSON string body: only printable ASCII survives (no control chars, no invalid UTF-8), then \ and " escaped.
json_str() { printf '%s' "$1" | LC_ALL=C tr -cd '\040-\176' | sed 's/\\/\\\\/g; s/"/\\"/g'; }
# Field of heartbeat.json, unescaped again (the writer escapes only \ and ").
hb_field() { [ -f "$D/heartbeat.json" ] && sed -En "s/.*\"$1\":\"(([^\"\\\\]|\\\\.)*)\".*/\\1/p" "$D/heartbeat.json" |
	sed 's/\\\(.\)/\1/g' || :; }

# Only the log's tail is scanned so a 20-hour log costs the same as a short one; the last progress seen is kept.
heartbeat() {
	logtail=$(tail -c 262144 "$D/output.log" 2>/dev/null | LC_ALL=C tr -d '\000' | tr '\r' '\n' || :)
	prog=$(printf '%s\n' "$logtail" | grep -aoE -- "${SORTIE_PROGRESS:-[0-9]+/[0-9]+}" 2>/dev/null | tail -n 1 || :)
	[ -n "$prog" ] || prog=$(hb_field progress)
	met=
	[ -z "${SORTIE_METRICS:-}" ] || met=$(printf '%s\n' "$logtail" | grep -aE -- "$SORTIE_METRICS" 2>/dev/null |
		tail -n 1 | cut -c 1-1000 || :)
	# The attempt's first progress and when it was seen: the rate (and ETA) of this attempt, not of the steps
	# an earlier attempt did before this one resumed.
	fprog=$(hb_field first_progress)
	fat=$(hb_field first_at)
	[ -n "$fprog" ] || [ -z "$prog" ] || { fprog=$prog; fat=$(now); }
	bytes=$(($(wc -c <"$D/output.log" 2>/dev/null || echo 0)))
	printf '{"attempt":%s,"ts":%s,"pid":%s,"progress":"%s","metrics":"%s","log_bytes":%s,"first_progress":"%s","first_at":"%s","ended":%s,"spot_notice":"%s"}\n' \
		"$A" "$(now)" "$(val "$D/pid" | grep -E '^[0-9]+$' || echo null)" "$(json_str "$prog")" \
		"$(json_str "$met")" "$bytes" "$(json_str "$fprog")" "$(json_str "$fat")" "${ended:-false}" \
		"$(json_str "$(val "$D/spot_notice")")" \
		>"$D/heartbeat.json.tmp" && mv -f "$D/heartbeat.json.tmp" "$D/heartbeat.json"
	# On AWS the heartbeat also goes to S3 (a presigned PUT: the host needs no credentials), so `plan status`
	# reads it without SSM. Best effort and in the background: a slow network never delays the step.
	[ -z "${SORTIE_HEARTBEAT_URL:-}" ] || ! command -v curl >/dev/null 2>&1 ||
		{ curl -fsS -m 10 -X PUT -H "Content-Type: application/json" --data-binary @"$D/heartbeat.json" "$SORTIE_HEARTBEAT_URL" >/dev/null 2>&1 || :; } &
	# And the log's new bytes, for `plan logs -f`: its last 64 KiB after a header naming where they end, sent only
	# when the log grew. The object is replaced, not appended to: the reader prints what it has not printed yet.
	[ -z "${SORTIE_LOG_URL:-}" ] || ! command -v curl >/dev/null 2>&1 || [ "$bytes" = "$(val "$D/log_sent")" ] ||
		log_tail "$bytes"
}

log_tail() {
	n=$1
	[ "$n" -le 65536 ] || n=65536
	{ printf 'sortie-log-tail end=%s\n' "$1"; tail -c +$(($1 - n + 1)) "$D/output.log" 2>/dev/null | head -c "$n"; } \
		>"$D/log-tail.tmp" && mv -f "$D/log-tail.tmp" "$D/log-tail" && put "$D/log_sent" "$1" || return 0
	{ curl -fsS -m 10 -X PUT -H "Content-Type: text/plain" --data-binary @"$D/log-tail" "$SORTIE_LOG_URL" >/dev/null 2>&1 || :; } &
}

state() {
	[ -f "$D/attempt" ] || { echo absent; return; }
	# Liveness is sampled BEFORE exit_code is looked at: the supervisor writes exit_code and only then exits,
	# so "nothing alive, no exit_code" seen in this order really is lost, never a race with a finishing attempt.
	live=
	if [ ! -f "$D/exit_code" ]; then
		if alive "$(val "$D/supervisor_pid")"; then live=supervisor
		elif group_alive "$(val "$D/pid")"; then live=group # supervisor gone, script still running
		elif [ -z "$launching" ] && [ -f "$D/.launch" ] && ! flock -n "$D/.launch" true; then live=launch; fi
	fi
	if [ -f "$D/exit_code" ]; then
		if [ -f "$D/timed_out" ]; then echo timed_out
		elif [ -f "$D/cancelled" ]; then echo cancelled
		elif [ "$(val "$D/exit_code")" = 0 ]; then echo succeeded
		else echo failed; fi
	elif [ -z "$live" ]; then echo lost
	elif [ -f "$D/pid" ]; then echo running
	else echo starting; fi
}

cmd_status() {
	st=$(state)
	printf 'state=%s\nattempt=%s\npid=%s\nexit_code=%s\nstarted_at=%s\nfinished_at=%s\n' "$st" \
		"$(val "$D/attempt")" "$(val "$D/pid")" "$(val "$D/exit_code")" "$(val "$D/started_at")" "$(val "$D/finished_at")"
	printf 'heartbeat_at=%s\nprogress=%s\nerror=%s\n' \
		"$([ -f "$D/heartbeat.json" ] && sed -n 's/.*"ts":\([0-9]*\).*/\1/p' "$D/heartbeat.json" || :)" \
		"$(hb_field progress)" "$([ -f "$D/error" ] && tr '\n' ' ' <"$D/error" | sed 's/ *$//' || :)"
	# The log's size now, read here: the stall check asks for it when the uploaded heartbeat stops moving.
	printf 'log_bytes=%s\n' "$([ -f "$D/output.log" ] && wc -c <"$D/output.log" | tr -d ' ' || :)"
	printf 'spot_notice=%s\n' "$(val "$D/spot_notice" | tr '\n' ' ' | sed 's/ *$//')"
}

# Move the current attempt's files to attempts/N (attempts/N.2, ... if a lost attempt N was restarted).
archive() {
	old=$(val "$D/attempt"); dest=$D/attempts/$old; k=2
	while [ -e "$dest" ]; do dest=$D/attempts/$old.$k; k=$((k + 1)); done
	mkdir -p "$dest"
	for f in $ATTEMPT_FILES; do [ ! -e "$D/$f" ] || mv -f "$D/$f" "$dest/"; done
}

# Reject bad input before anything is written, so the caller gets exit 64 and no half-made attempt.
check_launch_env() {
	[ -z "${SORTIE_LOCK:-}" ] || case $SORTIE_LOCK in *[!A-Za-z0-9._-]*) die 64 "invalid lock name: $SORTIE_LOCK" ;; esac
	for n in SORTIE_TIMEOUT SORTIE_KILL_GRACE SORTIE_HEARTBEAT_INTERVAL; do
		eval "v=\${$n:-0}"; is_uint "$v" || die 64 "$n must be a whole number of seconds: $v"
	done
	for n in SORTIE_PROGRESS SORTIE_METRICS; do
		eval "v=\${$n:-x}"; printf '' | { grep -E -- "$v" >/dev/null 2>&1; [ $? -lt 2 ]; } || die 64 "$n: bad regex: $v"
	done
	command -v flock >/dev/null && command -v setsid >/dev/null || die 69 "flock and setsid (util-linux) are required"
}

release_launch() { exec 9>&-; launching=; }

cmd_launch() {
	[ $# -eq 3 ] && is_uint "$2" || usage
	A=$2; [ -f "$3" ] && [ -r "$3" ] || die 64 "cannot read script: $3"
	[ -f "$0" ] && [ -r "$0" ] || die 64 "the wrapper must be run from a file, not: $0"
	check_launch_env
	mkdir -p "$1" && D=$(cd "$1" && pwd -P) || die 64 "cannot create status dir: $1"
	wd=${SORTIE_WORKDIR:-$D}; wd=$(cd "$wd" 2>/dev/null && pwd -P) || die 64 "no such workdir: $wd"
	lockfile=
	if [ -n "${SORTIE_LOCK:-}" ]; then
		ld=${SORTIE_LOCK_DIR:-$D/../../locks}; mkdir -p "$ld" && ld=$(cd "$ld" && pwd -P) || die 64 "bad lock dir: $ld"
		lockfile=$ld/$SORTIE_LOCK.lock
	fi
	exec 9>>"$D/.launch"; flock -w 30 9 || die 75 "another launch holds $D/.launch"
	launching=1 # state() must not take our own hold on .launch for a launch in progress
	cur=$(val "$D/attempt")
	if [ "$cur" = "$A" ]; then
		st=$(state)
		[ "$st" = lost ] && [ "${SORTIE_RESTART_LOST:-0}" = 1 ] || { release_launch; cmd_status; return 0; }
	elif [ -n "$cur" ]; then
		[ "$cur" -lt "$A" ] || { release_launch; cmd_status; die 65 "attempt $A is older than recorded attempt $cur"; }
		st=$(state)
		case $st in starting | running) release_launch; cmd_status
			die 75 "attempt $cur is still $st; cancel it before starting attempt $A" ;; esac
	fi
	# Copied before archiving: SCRIPT_FILE or $0 may well be files of the attempt being archived.
	cp "$3" "$D/.script.new" && cp "$0" "$D/.wrapper.new"
	[ -z "$cur" ] || archive
	mv -f "$D/.script.new" "$D/script" && mv -f "$D/.wrapper.new" "$D/wrapper.sh"
	boot_id >"$D/boot_id" && put "$D/attempt" "$A"
	# Same interpreter as ours (so tests under dash and bash test what they claim); own session; no fd of the caller.
	sh=$(readlink /proc/$$/exe 2>/dev/null || :); case $sh in */dash | */bash | */sh) ;; *) sh='sh' ;; esac
	setsid "$sh" "$D/wrapper.sh" _supervise "$D" "$A" "$wd" "$lockfile" </dev/null >>"$D/supervisor.log" 2>&1 \
		3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- &
	end=$(($(now) + 10))
	while [ ! -f "$D/pid" ] && [ ! -f "$D/exit_code" ] && [ "$(now)" -lt "$end" ]; do sleep 0.01; done
	release_launch
	cmd_status
}

# The detached supervisor. No `set -e` here: a failed heartbeat write must not orphan the step.
cmd_supervise() {
	set +e
	D=$1 A=$2 wd=$3 lockfile=$4
	put "$D/supervisor_pid" "$$"
	if [ -n "$lockfile" ]; then
		# fd 8 is inherited by the script and its children: the lock lives until the last of them is gone.
		touch "$lockfile" 2>/dev/null || finish 1 "cannot open lock file $lockfile"
		exec 8>>"$lockfile"
		if ! flock -n 8; then
			h=${lockfile%.lock}.holder
			finish 75 "lock $SORTIE_LOCK is held by pid $(sed -n 's/^pid=//p' "$h") (step dir $(sed -n \
				's/^step_dir=//p' "$h")) since $(sed -n 's/^since=//p' "$h")"
		fi
		printf 'pid=%s\nstep_dir=%s\nsince=%s\n' "$$" "$D" "$(now)" >"${lockfile%.lock}.holder"
	fi
	[ ! -f "$D/cancelled" ] || finish 143 "cancelled before start"
	: >>"$D/outputs"; : >>"$D/output.log"
	put "$D/started_at" "$(now)"
	set -- sh "$D/script"
	[ "$(head -c 2 "$D/script")" != '#!' ] || { chmod u+x "$D/script"; set -- "$D/script"; }
	# The step's own session: pid == pgid == sid, so one kill of the group reaches every process it started.
	SORTIE_OUTPUT=$D/outputs SORTIE_STEP_DIR=$D SORTIE_ATTEMPT=$A setsid -w sh -c \
		'printf "%s\n" "$$" >"$1.tmp" && mv -f "$1.tmp" "$1" && cd "$2" && shift 2 && exec "$@"' \
		sortie-step "$D/pid" "$wd" "$@" </dev/null >>"$D/output.log" 2>&1 &
	child=$!
	tick 8>&- &
	ticker=$!
	wait "$child" 2>/dev/null; rc=$? # (dash would log "Terminated")
	# A firing timeout finishes its TERM/KILL sequence; otherwise the ticker is only sleeping.
	if [ -f "$D/timed_out" ]; then wait "$ticker"; else kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null; fi
	[ ! -f "$D/timed_out" ] || rc=124
	exec 8>&- # release our hold on the lock before exit_code announces the end
	finish "$rc" ""
}

# exit_code is written last: its presence means the attempt is over. The heartbeat just before it says
# `"ended":true`: on AWS the orchestrator reads the uploaded heartbeat, and that tells it to ask SSM now.
finish() {
	[ -z "$2" ] || put "$D/error" "$2"
	put "$D/finished_at" "$(now)"
	ended=true
	heartbeat
	put "$D/exit_code" "$1"
	exit 0
}

# Heartbeat every interval and enforce the timeout, while the script's main process lives.
tick() {
	while [ ! -f "$D/pid" ] && kill -0 "$child" 2>/dev/null; do sleep 0.01; done # first heartbeat names the pid
	next=0 deadline=$(($(val "$D/started_at") + ${SORTIE_TIMEOUT:-0}))
	while kill -0 "$child" 2>/dev/null; do
		t=$(now)
		[ "$t" -lt "$next" ] || { heartbeat; next=$((t + ${SORTIE_HEARTBEAT_INTERVAL:-30})); }
		[ "${SORTIE_SPOT:-}" != 1 ] || [ "$t" -lt "${spot_next:-0}" ] || { spot_check; spot_next=$((t + ${SORTIE_SPOT_POLL:-5})); }
		if [ "${SORTIE_TIMEOUT:-0}" -gt 0 ] && [ "$t" -ge "$deadline" ] && [ ! -f "$D/timed_out" ]; then
			put "$D/timed_out" "$t"
			pg=$(val "$D/pid"); kill_group "${pg:-$child}" "${SORTIE_KILL_GRACE:-10}"
		fi
		sleep 1
	done
}

# The end is one file test away and is looked for four times a second (on AWS each second late is a paid
# second of an idle GPU); liveness costs a few processes, so with a whole-second interval it is checked once per
# interval. A fractional interval checks both at that pace.
# A spot host gets a two-minute interruption notice in its instance metadata (IMDSv2: a session token first).
# It is recorded once and uploaded with a heartbeat at once: the orchestrator ends the step and treats the host
# as gone, instead of learning it when the instance is already stopping.
spot_check() {
	[ ! -f "$D/spot_notice" ] || return 0
	command -v curl >/dev/null 2>&1 || return 0
	imds=${SORTIE_IMDS_URL:-http://169.254.169.254}
	tok=$(curl -fsS -m 2 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$imds/latest/api/token" 2>/dev/null) ||
		return 0
	act=$(curl -fsS -m 2 -H "X-aws-ec2-metadata-token: $tok" "$imds/latest/meta-data/spot/instance-action" 2>/dev/null) ||
		return 0 # 404 until a notice
	[ -n "$act" ] || return 0
	put "$D/spot_notice" "$act"
	heartbeat
}

cmd_wait() {
	[ $# -ge 1 ] && [ $# -le 2 ] || usage
	D=$1 every=${2:-1} n=0
	case $every in *.*) pause=$every k=1 ;; *) pause=0.25 k=$((every * 4)) ;; esac
	[ "$k" -gt 0 ] || k=1
	while :; do
		[ ! -f "$D/exit_code" ] || { cmd_status; exit "$(val "$D/exit_code")"; }
		[ ! -f "$D/spot_notice" ] || { cmd_status; exit 126; }
		if [ $((n % k)) -eq 0 ]; then case $(state) in lost | absent) cmd_status; exit 125 ;; esac; fi
		n=$((n + 1))
		sleep "$pause"
	done
}

cmd_cancel() {
	[ $# -ge 1 ] && [ $# -le 2 ] && is_uint "${2:-0}" || usage
	D=$1
	[ -f "$D/attempt" ] && [ ! -f "$D/exit_code" ] || { cmd_status; return 0; }
	[ -f "$D/cancelled" ] || put "$D/cancelled" "$(now)"
	end=$(($(now) + 10)) # a starting attempt gets its pid soon, or sees `cancelled` and does not start
	while [ "$(state)" = starting ] && [ "$(now)" -lt "$end" ]; do sleep 0.1; done
	kill_group "$(val "$D/pid")" "${2:-10}"
	end=$(($(now) + 5))
	while [ ! -f "$D/exit_code" ] && alive "$(val "$D/supervisor_pid")" && [ "$(now)" -lt "$end" ]; do sleep 0.1; done
	# No supervisor left to record the end (it was lost): record it here so the attempt is final.
	alive "$(val "$D/supervisor_pid")" || [ -f "$D/exit_code" ] || { put "$D/finished_at" "$(now)"; put "$D/exit_code" 143; }
	cmd_status
}

[ $# -ge 1 ] || usage
cmd=$1; shift
case $cmd in
launch) cmd_launch "$@" ;;
run) [ $# -eq 3 ] || usage; cmd_launch "$@" >/dev/null; cmd_wait "$1" ;;
status) [ $# -eq 1 ] || usage; D=$1; cmd_status ;;
wait) cmd_wait "$@" ;;
cancel) cmd_cancel "$@" ;;
_supervise) [ $# -eq 4 ] || usage; cmd_supervise "$@" ;;
*) usage ;;
esac
