#!/usr/bin/env python3
"""Prints the markdown tables of docs/benchmarks.md from the JSON results of scripts/bench.sh.

    python3 scripts/bench-tables.py [DIR]      # DIR: default target/bench
"""
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
TARGETS = [("messenger", "reference-server"), ("messenger-relaxed", "reference-server, --durability relaxed"),
           ("messenger-before", "reference-server, before (BENCH_BEFORE)"), ("baseline", "baseline"), ("socketio", "Socket.IO peer")]


def load(name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def idle():
    print("| server | connections | server RssAnon per connection | server RSS per connection | connect rate |")
    print("|---|---|---|---|---|")
    for name, label in TARGETS + [("messenger-reuseport", "reference-server × processes, SO_REUSEPORT")]:
        r = load("idle-" + name)
        if not r:
            continue
        m = r["memory"]
        print(f"| {label} | {r['connected']:,} | {m['server_user_bytes_per_connection']:,.0f} B "
              f"| {m['server_rss_bytes_per_connection']:,.0f} B | {r['connect']['sessions_per_sec']:,.0f}/s |")


def handshake():
    print("| server | sessions | connect: sessions/s | p50 / p99 ms | all reconnect at once: sessions/s | p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, label in TARGETS:
        r = load("handshake-" + name)
        if not r:
            continue
        c, rc = r["connect"], r.get("reconnect", {})
        print(f"| {label} | {r['connected']:,} | {c['sessions_per_sec']:,.0f} | {c['latency']['p50_ms']:.1f} / {c['latency']['p99_ms']:.1f} "
              f"| {rc.get('sessions_per_sec', 0):,.0f} | {rc['latency']['p50_ms']:.1f} / {rc['latency']['p99_ms']:.1f} |")


def steps(prefix):
    for name, label in TARGETS:
        r = load(prefix + name)
        if not r:
            continue
        print(f"\n{label} ({r['connections']:,} connections; `{' '.join(r['command'].split()[1:])}`):\n")
        print("| offered msg/s | delivered | not delivered by the end | deliveries/s | p50 ms | p99 ms | p99.9 ms | ack p50 / p99 ms | server CPU s | deliveries per server CPU s |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for s in r["steps"]:
            d, a = s["delivery"], s["ack"]
            ack = f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f}" if s["acked"] else "—"
            per_cpu = s.get("deliveries_per_server_cpu_sec")
            print(f"| {s['offered_messages_per_sec']:,.0f} | {s['delivered']:,} | {s['lost']:,} | {s.get('deliveries_per_sec', 0):,.0f} "
                  f"| {d['p50_ms']:.1f} | {d['p99_ms']:.1f} | {d['p999_ms']:.1f} | {ack} "
                  f"| {s.get('server_cpu_secs', 0):.2f} | {per_cpu and f'{per_cpu:,.0f}' or '—'} |")


for title, fn in [("idle", idle), ("handshake", handshake)]:
    print(f"\n### {title}\n")
    fn()
print("\n### latency")
steps("latency-")
print("\n### fanout, one group of 10,000")
steps("fanout-big-")
print("\n### fanout, 100 groups of 100")
steps("fanout-small-")
