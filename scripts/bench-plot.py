#!/usr/bin/env python3
"""Draws the latency/throughput curve of scenario 3 as an SVG, from scripts/bench.sh's JSON.

    python3 scripts/bench-plot.py [DIR] [OUT]   # DIR: default target/bench
                                                # OUT: default docs/img/latency-curve.svg

One line per server (every latency-*.json in DIR): delivered messages/s on the x axis,
send -> deliver latency on the y axis (p50 solid, p99 dashed), both logarithmic. A step that
did not deliver everything it was offered by the end of its drain is drawn hollow: the server
was past saturation there. No dependency beyond Python 3.
"""
import glob
import json
import math
import os
import sys

src = sys.argv[1] if len(sys.argv) > 1 else "target/bench"
dst = sys.argv[2] if len(sys.argv) > 2 else "docs/img/latency-curve.svg"

LABELS = {
    "messenger": "reference-server (durable ack)",
    "messenger-relaxed": "reference-server (relaxed durability)",
    "messenger-before": "reference-server, before",
    "baseline": "baseline (tokio-tungstenite relay)",
    "socketio": "Socket.IO peer",
}
COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#d62728", "#8c564b"]

W, H = 900, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 300, 30, 50


def load():
    series = []
    for path in sorted(glob.glob(os.path.join(src, "latency-*.json"))):
        name = os.path.basename(path)[len("latency-"):-len(".json")]
        with open(path) as f:
            result = json.load(f)
        points = []
        for step in result["steps"]:
            rate = step.get("deliveries_per_sec") or 0
            delivery = step["delivery"]
            if rate <= 0 or delivery["p50_ms"] <= 0:
                continue
            points.append((rate, delivery["p50_ms"], delivery["p99_ms"], step["lost"] == 0))
        if points:
            series.append((LABELS.get(name, name), points))
    return series


def scale(lo, hi, a, b):
    lo, hi = math.log10(lo), math.log10(hi)
    return lambda v: a + (math.log10(v) - lo) / (hi - lo) * (b - a)


def decades(lo, hi):
    d = 10 ** math.floor(math.log10(lo))
    while d <= hi * 1.0001:
        for m in (1, 2, 5):
            if lo <= d * m <= hi:
                yield d * m
        d *= 10


def label(v):
    return f"{v / 1000:g}k" if v >= 1000 else f"{v:g}"


def main():
    series = load()
    if not series:
        sys.exit(f"no latency-*.json in {src}")
    xs = [p[0] for _, pts in series for p in pts]
    ys = [v for _, pts in series for p in pts for v in p[1:3]]
    x_lo, x_hi = 10 ** math.floor(math.log10(min(xs))), 10 ** math.ceil(math.log10(max(xs)))
    y_lo, y_hi = 10 ** math.floor(math.log10(min(ys))), 10 ** math.ceil(math.log10(max(ys)))
    fx = scale(x_lo, x_hi, LEFT, W - RIGHT)
    fy = scale(y_lo, y_hi, H - BOTTOM, TOP)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>']
    for v in decades(x_lo, x_hi):
        x = fx(v)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{label(v)}</text>')
    for v in decades(y_lo, y_hi):
        y = fy(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label(v)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" '
               f'fill="none" stroke="#444"/>')
    out.append(f'<text x="{(LEFT + W - RIGHT) / 2}" y="{H - 12}" text-anchor="middle">'
               f'delivered messages/s (log)</text>')
    out.append(f'<text transform="translate(18,{(TOP + H - BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">send → deliver, ms (log)</text>')
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        for col, dash in ((1, ""), (2, ' stroke-dasharray="5,4"')):
            path = " ".join(f"{fx(p[0]):.1f},{fy(p[col]):.1f}" for p in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}/>')
            for p in pts:
                fill = color if p[3] else "white"
                out.append(f'<circle cx="{fx(p[0]):.1f}" cy="{fy(p[col]):.1f}" r="3.5" '
                           f'fill="{fill}" stroke="{color}"/>')
        y = TOP + 14 + i * 34
        out.append(f'<line x1="{W - RIGHT + 14}" y1="{y}" x2="{W - RIGHT + 38}" y2="{y}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(f'<text x="{W - RIGHT + 44}" y="{y + 4}">{name}</text>')
    y = TOP + 14 + len(series) * 34
    out.append(f'<text x="{W - RIGHT + 14}" y="{y}">solid: p50, dashed: p99</text>')
    out.append(f'<text x="{W - RIGHT + 14}" y="{y + 16}">hollow: not all delivered</text>')
    out.append("</svg>")
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")
    print(dst)


main()
