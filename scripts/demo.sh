#!/bin/bash
# make demo: boot the test guest with 1 GiB of memfd RAM, watch its heartbeat,
# stop and resume it over QMP, quit cleanly.
set -euo pipefail
BUILD=${1:-build}
dir=$(mktemp -d /tmp/cprvm-demo.XXXXXX)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
serial=$dir/serial.log
qmp=$dir/qmp.sock
ctl() { "$BUILD/cprctl" --qmp "$qmp" "$@"; }
hb_count() { grep -c '^HB ' "$serial" || true; }
last_hb() { grep '^HB ' "$serial" | tail -n 1; }

echo "== cprvm --kernel $BUILD/guest/guest.elf --memory 1G --cmdline 'heartbeat=200000' --serial file:... --qmp ..."
start=$(date +%s%N)
"$BUILD/cprvm" --kernel "$BUILD/guest/guest.elf" --memory 1G --cmdline "heartbeat=200000" \
	--serial "file:$serial" --qmp "$qmp" &
pid=$!
for _ in $(seq 200); do grep -q '^HB ' "$serial" 2>/dev/null && break; sleep 0.01; done
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
echo "   after 1 s: $(last_hb)  -- the sequence continues without a gap"
grep '^HB ' "$serial" | awk '{ if (NR > 1 && $2 != prev + 1) { print "   GAP: " prev " -> " $2; bad = 1 } prev = $2 } END { if (!bad) print "   sequence checked: no gap, no repeat" }'
echo "== cprctl quit"; ctl quit
wait $pid && echo "   cprvm exited with status 0"
