#!/bin/sh
# Guest half of the network benchmark (tools/bench/bench_net.py). Lives at the root of the
# bench tools image (tools/guest/build-benchfs.sh), which the guest has mounted read-only;
# runs that image's iperf3 as the client of the host's iperf3 servers, one TCP stream per
# direction, and prints the totals of each job on one line.
#
# Usage: sh /mnt/bench_net.sh SERVER_IP RUNTIME_S
#   SERVER_IP  the host's end of the tap, where two one-off `iperf3 -s` wait: port 5201
#              for guest -> host (job g2h), port 5202 for host -> guest (job h2g, iperf3 -R)
#   RUNTIME_S  seconds of each job
# Prints, for each job in turn:
#   EMBER-NET-START job=NAME
#   EMBER-NET-RESULT job=NAME sum_sent.seconds=N sum_sent.bytes=N ...     (on success)
#       from iperf3's JSON report, as OBJECT.KEY=NUMBER: seconds, bytes, bits_per_second
#       (and the sender's retransmits) of `sum_sent` and `sum_received`, and host_total
#       and remote_total of `cpu_utilization_percent`
#   iperf3's whole output (its JSON report has an `error` key)             (on failure)
#   EMBER-NET-END job=NAME status=N      (iperf3's exit status; 143 if it was still running
#                                        RUNTIME_S + 60 s on and was stopped)
# and after both jobs eth0's counters (the guest driver's view: virtio_net counts a received
# packet it cannot assemble from the used buffers in rx_length_errors and rx_dropped):
#   EMBER-NET-ETH0 rx_packets=N rx_dropped=N rx_errors=N rx_length_errors=N tx_packets=N
#                  tx_dropped=N tx_errors=N          (one line)
# The jobs are independent: one that fails or stalls does not stop the other. The report
# itself (about 3 KB) stays in the guest's /tmp: every console byte costs VM exits.
set -u
here=$(cd "$(dirname "$0")" && pwd)
server=$1
runtime=$2

# The totals from an iperf3 JSON report, which cJSON prints one key a line.
totals() {
  awk '/"(sum_sent|sum_received|cpu_utilization_percent)":/ { o = $1; gsub(/[":]/, "", o); next }
       o && /}/ { o = "" }
       o { k = $1; v = $2; gsub(/[":]/, "", k); sub(/,$/, "", v) }
       o && k ~ /^(seconds|bytes|bits_per_second|retransmits|host_total|remote_total)$/ {
         printf " %s.%s=%s", o, k, v }' "$1"
}

job() {
  name=$1; shift
  echo "EMBER-NET-START job=$name"
  # Debian's iperf3 with its libraries from the image: the guest's root has no libc.
  timeout $((runtime + 60)) "$here/lib/ld-linux-x86-64.so.2" --library-path "$here/lib" \
    "$here/bin/iperf3" -c "$server" -t "$runtime" -i 0 -J --connect-timeout 10000 "$@" \
    >"/tmp/$name.json" 2>&1
  status=$?
  if [ "$status" = 0 ]; then
    echo "EMBER-NET-RESULT job=$name$(totals "/tmp/$name.json")"
  else
    cat "/tmp/$name.json"
  fi
  echo "EMBER-NET-END job=$name status=$status"
}

job g2h -p 5201
job h2g -p 5202 -R

stats=/sys/class/net/eth0/statistics
counters=""
for c in rx_packets rx_dropped rx_errors rx_length_errors tx_packets tx_dropped tx_errors; do
  counters="$counters $c=$(cat "$stats/$c")"
done
echo "EMBER-NET-ETH0$counters"
