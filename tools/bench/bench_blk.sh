#!/bin/sh
# Guest half of the block benchmark (tools/bench/bench_blk.py). Lives at the root of the
# bench tools image (tools/guest/build-benchfs.sh), which the guest has mounted read-only;
# runs fio from that image on the data drive and prints one parseable line per job.
#
# Usage: sh /mnt/bench_blk.sh DATA_BYTES RUNTIME_S
#   DATA_BYTES  size of the data drive: the one /dev/vd* of exactly this size that is not
#               the tools image's own drive is the drive measured (so the order in which a
#               VMM presents its drives does not matter)
#   RUNTIME_S   seconds of each fio job
# Prints:
#   EMBER-BLK-DEVICES data=/dev/vdX tools=/dev/vdY
#   EMBER-BLK-START job=NAME uptime_ms=N                 (before each job)
#   EMBER-BLK-RESULT job=NAME kib=N bw_kib=N iops=N runtime_ms=N uptime_ms=N
#   EMBER-BLK-ERROR ...                                  (and exit 1) on any failure
# Jobs, in this order, all O_DIRECT through libaio: seqwrite (1 MiB, queue depth 4),
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

# Debian's fio links librbd, whose libceph-common has a 130 MiB .bss: never touched, but
# the default overcommit heuristic refuses to map it in a 128 MiB guest.
echo 1 > /proc/sys/vm/overcommit_memory || fail "cannot set vm.overcommit_memory"

# Terse output version 3, one line per job: field 6/7/8/9 are the read side's KiB moved,
# bandwidth (KiB/s), IOPS and runtime (ms); fields 47/48/49/50 the same for writes.
job() {
  name=$1; side=$2; shift 2
  echo "EMBER-BLK-START job=$name uptime_ms=$(uptime_ms)"
  out=$("$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" "$here/bin/fio" \
        --name="$name" --filename="$data" --direct=1 --ioengine=libaio --thread \
        --time_based --runtime="$runtime" --clocksource=clock_gettime \
        --output-format=terse --terse-version=3 "$@" 2>&1) ||
    fail "job=$name fio: $(echo "$out" | tr '\n' ' ')"
  echo "$out" | awk -F';' -v job="$name" -v side="$side" -v up="$(uptime_ms)" '
    $1 == "3" { f = side == "read" ? 6 : 47
                printf "EMBER-BLK-RESULT job=%s kib=%d bw_kib=%d iops=%d runtime_ms=%d uptime_ms=%d\n",
                       job, $f, $(f + 1), $(f + 2), $(f + 3), up; found = 1 }
    END { if (!found) exit 1 }' || fail "job=$name unexpected fio output: $(echo "$out" | tr '\n' ' ')"
}

job seqwrite write --rw=write --bs=1M --iodepth=4
job seqread read --rw=read --bs=1M --iodepth=4
job randread read --rw=randread --bs=4k --iodepth=16
