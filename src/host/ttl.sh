#!/bin/sh
# sortie host TTL watcher: runs ACTION once the deadline in FILE (epoch seconds) has passed.
# usage: ttl.sh FILE ACTION [ARG...]
# On EC2, ACTION is `shutdown -h now`, which terminates the instance (shutdown behaviour `terminate`); on the
# local target it cancels the host's steps. `plan extend` replaces FILE atomically with a later deadline, so the
# deadline is re-read at every poll. A missing or unreadable deadline counts as passed: a dev environment must not
# run on for ever because a file was lost.
set -eu
[ $# -ge 2 ] || { echo "usage: ttl.sh FILE ACTION [ARG...]" >&2; exit 64; }
file=$1
shift
poll=${SORTIE_TTL_POLL:-60}
while :; do
	deadline=
	[ -f "$file" ] && { IFS= read -r deadline <"$file" || :; }
	case $deadline in '' | *[!0-9]*) deadline=0 ;; esac
	left=$((deadline - $(date +%s)))
	if [ "$left" -le 0 ]; then
		echo "sortie-ttl: the deadline $deadline has passed: $*" >&2
		exec "$@"
	fi
	[ "$left" -le "$poll" ] || left=$poll
	sleep "$left"
done
