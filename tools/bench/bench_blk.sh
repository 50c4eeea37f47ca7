#!/bin/sh
# Guest half of the block benchmark (tools/bench/bench_blk.py). Lives at the root of the
# bench tools image (tools/guest/build-benchfs.sh), which the guest has mounted read-only;
# runs blkbench from that image on the data drive and prints one parseable line per job.
#
# Usage: sh /mnt/bench_blk.sh DATA_BYTES RUNTIME_S
#   DATA_BYTES  size of the data drive: the one /dev/vd* of exactly this size that is not
#               the tools image's own drive is the drive measured (so the order in which a
#               VMM presents its drives does not matter)
#   RUNTIME_S   seconds of each job
# Prints:
#   EMBER-BLK-DEVICES data=/dev/vdX tools=/dev/vdY
#   EMBER-BLK-START job=NAME uptime_ms=N                         (before each job)
#   EMBER-BLK-RESULT job=NAME bytes=N ios=N usecs=N uptime_ms=N  (after it)
#   EMBER-BLK-ERROR ...                                          (and exit 1) on any failure
# Jobs, in this order, all O_DIRECT with native AIO: seqwrite (1 MiB, queue depth 4),
# seqread (1 MiB, depth 4), randread (4 KiB, depth 16). Writing first leaves the drive
# fully written before it is read.
set -u
here=$(cd "$(dirname "$0")" && pwd)
size=$1
runtime=$2

uptime_ms() { awk '{printf "%d", $1 * 1000}' /proc/uptime; }
fail() { echo "EMBER-BLK-ERROR $*"; exit 1; }

tools=$(awk -v d="$here" '$2 == d {print $1}' /proc/mounts)
data=""
for s in /sys/block/vd*; do
  [ -e "$s/size" ] || continue
  dev=/dev/${s##*/}
  [ "$dev" = "$tools" ] && continue
  [ $(( $(cat "$s/size") * 512 )) = "$size" ] && data=$dev
done
[ -n "$data" ] || fail "no data drive of $size bytes among: $(ls /sys/block | tr '\n' ' ')(tools: $tools)"
echo "EMBER-BLK-DEVICES data=$data tools=$tools"

job() {
  name=$1; shift
  echo "EMBER-BLK-START job=$name uptime_ms=$(uptime_ms)"
  out=$("$here/bin/blkbench" "$@" "$runtime" "$data" 2>&1) ||
    fail "job=$name $(echo "$out" | tr '\n' ' ')"
  echo "EMBER-BLK-RESULT job=$name $out uptime_ms=$(uptime_ms)"
}

job seqwrite write 1048576 4
job seqread read 1048576 4
job randread randread 4096 16
