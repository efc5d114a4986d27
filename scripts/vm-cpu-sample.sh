#!/usr/bin/env bash
# Runs the cross-host TCP bench and samples /proc/stat and top once a second
# beside it: where the CPU goes during overlay and host-to-host rounds. For
# the guest: weft-harness vm --env WEFT_BIN_DIR=$WEFT_BIN_DIR -- bash scripts/vm-cpu-sample.sh
$WEFT_BIN_DIR/weft-harness bench --overlay-only --throughput-only --seconds 5 --rounds 2 > /tmp/bench.out 2>&1 &
pid=$!
prev=""
while kill -0 $pid 2>/dev/null; do
  cur=$(head -1 /proc/stat)
  if [ -n "$prev" ]; then
    echo "$(date +%s) $prev" | awk -v cur="$cur" '{split(cur,c," "); u=c[2]-$3; n=c[3]-$4; s=c[4]-$5; i=c[5]-$6; w=c[6]-$7; irq=c[7]-$8; sirq=c[8]-$9; t=u+n+s+i+w+irq+sirq; printf "cpu t=%s user=%d%% sys=%d%% softirq=%d%% idle=%d%%\n", $1, 100*u/t, 100*s/t, 100*sirq/t, 100*i/t}'
  fi
  prev="$cur"
  top -b -n1 -w 120 | sed -n 8,11p | awk '{print "   top", $9, $12}'
  sleep 1
done
cat /tmp/bench.out
