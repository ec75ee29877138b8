#!/bin/sh
# One scheduled step of retraining, for cron, a systemd timer or a CI schedule:
#   advance.sh PLAN KEY [ARGS...]      ARGS go to `plan status` and `plan apply` (e.g. --var bucket=...)
# If the plan's latest run is unfinished, it is advanced (whatever key it has): a run is never left behind.
# Otherwise the run named KEY is applied: started once, or reported (exit 0) when it has already succeeded,
# so the same KEY (a date, a commit) never trains twice however often this runs.
# Each apply advances for at most $WAIT (default 15m) and then leaves its steps running on their hosts.
# Exit: 0 done or nothing to do, 4 still going (the next start continues), else `plan apply`'s code.
set -u
[ $# -ge 2 ] || { echo "usage: advance.sh PLAN KEY [ARGS...]" >&2; exit 2; }
plan_file=$1
key=$2
shift 2
wait=${WAIT:-15m}
# `plan status` fails when the plan has no run yet: then there is nothing to advance.
if status=$(plan status "$plan_file" "$@" --output json 2>/dev/null); then
	case $(printf '%s' "$status" | head -c 4096 | tr -d ' \n') in
	*'"status":"running"'*)
		echo "advance.sh: the latest run of $plan_file is unfinished: advancing it" >&2
		exec plan apply "$plan_file" "$@" --wait "$wait"
		;;
	esac
fi
exec plan apply "$plan_file" "$@" --run-key "$key" --wait "$wait"
