#!/bin/bash
cd /work/main
target/release/lowbit generate --backend cpu -t 1 --kv-sliding 1024 -n 20000 --temperature 0 --json --prompt "The history of the city begins in the year" > /tmp/slide/out.json 2> /tmp/slide/err.log &
pid=$!
echo "seconds,rss_kb" > /tmp/slide/rss.csv
s=0
while kill -0 $pid 2>/dev/null; do
  r=$(awk '/VmRSS/{print $2}' /proc/$pid/status 2>/dev/null); echo "$s,$r" >> /tmp/slide/rss.csv; sleep 10; s=$((s+10))
done
wait $pid; echo "exit $?" >> /tmp/slide/rss.csv
