#!/bin/bash
# make demo: boot the test guest with 1 GiB of memfd RAM, watch its heartbeat,
# stop and resume it over QMP, then live-update the VMM under it twice
# (cpr-exec: same PID; cpr-transfer: a new process) and check that the guest's
# heartbeat sequence never broke. Quit cleanly.
# It stops at the first step that fails, with what failed, and prints no
# figure for a VM that did not run.
set -euo pipefail
BUILD=${1:-build}
dir=$(mktemp -d /tmp/cprvm-demo.XXXXXX)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$dir"' EXIT
trap 'echo "demo: failed: $BASH_COMMAND" >&2' ERR
die() { echo "demo: $*" >&2; exit 1; }
serial=$dir/serial.log
qmp=$dir/qmp.sock
args=(--kernel "$BUILD/guest/guest.elf" --memory 1G --cmdline "heartbeat=200000 verify=64"
      --serial "file:$serial" --qmp "$qmp")
ctl() { "$BUILD/cprctl" --qmp "$qmp" "$@"; }
hb_count() { grep -c '^HB ' "$serial" || true; }
last_hb() { grep '^HB ' "$serial" | tail -n 1; }
wait_qmp() {
	for _ in $(seq 3000); do ctl status >/dev/null 2>&1 && return; sleep 0.01; done
	die "cprvm's QMP socket did not answer within 30 s"
}
migrate_result() {
	for _ in $(seq 3000); do
		out=$(ctl --json migrate-status 2>/dev/null || true)
		case "$out" in
		*'"completed"'*) echo "$out"; return;;
		*'"failed"'*) die "the update failed: $out";;
		esac
		sleep 0.01
	done
	die "the update did not complete within 30 s"
}

echo "== cprvm ${args[*]}"
start=$(date +%s%N)
"$BUILD/cprvm" "${args[@]}" & pids+=($!)
for _ in $(seq 3000); do
	grep -q '^HB ' "$serial" 2>/dev/null && break
	kill -0 "${pids[0]}" 2>/dev/null || { wait "${pids[0]}" || true; die "cprvm exited before the guest ran"; }
	sleep 0.01
done
grep -q '^HB ' "$serial" 2>/dev/null || die "no heartbeat from the guest within 30 s"
echo "   first heartbeat after $(( ($(date +%s%N) - start) / 1000000 )) ms (process start included)"
echo "== the guest's console for 2 seconds:"
tail -n +1 -f "$serial" & tailpid=$!
sleep 2
kill $tailpid; wait $tailpid 2>/dev/null || true
echo "== cprctl status: $(ctl status)"
echo "== cprctl stop"; ctl stop
n=$(hb_count); sleep 1
echo "   heartbeats during 1 s of pause: $(( $(hb_count) - n ))   status: $(ctl status)"
echo "== cprctl cont (last line before: $(last_hb))"; ctl cont
sleep 1

pid=${pids[0]}
echo "== live update, cpr-exec: cprvm replaces itself under the running guest (pid $pid)"
ctl raw migrate-set-parameters '{"mode": "cpr-exec"}' >/dev/null
ctl raw migrate '{"uri": "memfd:"}' >/dev/null
wait_qmp
echo "   $(migrate_result)"
echo "   still pid $(pgrep -f "^$BUILD/cprvm .*$qmp" | head -n 1), status: $(ctl status)"
sleep 1

echo "== live update, cpr-transfer: a new cprvm process receives the guest"
"$BUILD/cprvm" "${args[@]}" --incoming "unix:$dir/incoming.sock" & pids+=($!)
for _ in $(seq 500); do [ -S "$dir/incoming.sock" ] && break; sleep 0.01; done
ctl raw migrate-set-parameters '{"mode": "cpr-transfer"}' >/dev/null
ctl raw migrate "{\"uri\": \"unix:$dir/incoming.sock\"}" >/dev/null
wait "$pid" || die "the old process (pid $pid) exited with status $?"
echo "   the old process (pid $pid) exited with status 0"
wait_qmp
echo "   $(migrate_result)"
echo "   new pid ${pids[1]}, status: $(ctl status)"
sleep 1
echo "   now: $(last_hb)"
grep '^HB ' "$serial" | awk '{ if (NR > 1 && $2 != prev + 1) { print "   GAP: " prev " -> " $2; bad = 1 } prev = $2 } END { if (bad) exit 1; print "   heartbeat sequence checked across stop/cont and both updates: no gap, no repeat" }' ||
	die "the guest's heartbeat sequence broke"
! grep -qE '^(BAD|FAIL|PANIC)' "$serial" || die "the guest reported errors: $(grep -E '^(BAD|FAIL|PANIC)' "$serial" | head -n 1)"
grep -q '^OK ' "$serial" || die "the guest's verify pass never completed"
echo "   the guest's verify pass found no bad page: $(grep '^OK ' "$serial" | tail -n 1)"
echo "== cprctl quit"; ctl quit
wait "${pids[1]}" || die "cprvm exited with status $?"
echo "   cprvm exited with status 0"
