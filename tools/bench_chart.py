#!/usr/bin/env python3
"""Collects criterion medians into a JSON file and draws them as one SVG.

No dependencies beyond the standard library (the SVG is written by hand), so
that anyone can regenerate docs/benchmarks.svg from docs/benchmarks.json:

    # after `cargo bench --bench calls` and `cargo bench --bench updates`
    python3 tools/bench_chart.py collect --criterion target/criterion --run run1
    python3 tools/bench_chart.py render            # docs/benchmarks.svg + a markdown table

`collect` reads every `<group>/<bench>/new/estimates.json` under the
criterion directory and stores the median (ns) under the run's name.
`render` draws the calls (ns per call) and the updates (log scale) of the
last run, and prints a markdown table of every run with the ratios the
targets are stated in.
"""
import argparse
import glob
import json
import math
import os
import sys

DATA = "docs/benchmarks.json"
SVG = "docs/benchmarks.svg"

CALLS = [
    ("call/direct", "plain #[inline(never)] call"),
    ("call/patched", "patched site"),
    ("call/trampoline", "call to trampoline (jmp target)"),
    ("call/trampoline_far", "site on trampoline, target > 2 GiB"),
    ("call/out_of_line", "out_of_line key"),
    ("call/atomic_ptr", "AtomicPtr fn pointer"),
    ("call/dyn_trait", "dyn Trait"),
    ("call/enum_match", "enum match"),
    ("call/retpoline", "fn pointer via retpoline"),
    ("call/pad_none", "asm call, no padding"),
    ("call/pad_cs", "asm call, cs prefixes (as sites)"),
    ("call/pad_nop", "asm call, nop padding"),
    ("call/pad_cs_unaligned", "asm call, 3 cs prefixes, unaligned"),
    ("call64/direct", "64 targets: plain calls"),
    ("call64/patched", "64 keys: patched sites"),
    ("call64/atomic_ptr", "64 fn pointers, 64 sites"),
    ("call64/retpoline", "64 fn pointers via retpoline"),
    ("call64/atomic_ptr_one_site_random", "1 site, 64 targets at random"),
]


def updates_for(writer):
    g = f"update_{writer}"
    return [
        (f"{g}/membarrier", "one membarrier SYNC_CORE"),
        (f"{g}/sites_1", "update, 1 site"),
        (f"{g}/sites_128", "update, 128 sites"),
        (f"{g}/sites_4096", "update, 4,096 sites"),
        (f"{g}/batch_64_keys", "batch of 64 keys"),
        (f"slow_path_{writer}/trapped_call", "a call that lands on the int3"),
    ]


OTHER = [
    ("init_default/all_sites", "init, 4,289 sites (fresh process) [default]"),
    ("init_mprotect/all_sites", "init, 4,289 sites (fresh process) [mprotect]"),
]


def collect(args):
    data = {}
    if os.path.exists(args.out):
        with open(args.out) as f:
            data = json.load(f)
    run = data.setdefault(args.run, {})
    for path in sorted(glob.glob(os.path.join(args.criterion, "**", "new", "estimates.json"), recursive=True)):
        rel = os.path.relpath(os.path.dirname(os.path.dirname(path)), args.criterion)
        with open(path) as f:
            est = json.load(f)
        run[rel.replace(os.sep, "/")] = est["median"]["point_estimate"]
    if args.note:
        run["_note"] = args.note
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{len(run)} medians in run {args.run!r} -> {args.out}")


def fmt_ns(ns):
    if ns is None:
        return "–"
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.1f} µs"
    return f"{ns:.2f} ns"


def markdown(data):
    out = []
    runs = [r for r in data]
    out.append("| case | " + " | ".join(runs) + " |")
    out.append("|---|" + "---|" * len(runs))

    def row(key, label, base=None):
        cells = []
        for r in runs:
            v = data[r].get(key)
            b = data[r].get(base) if base else None
            cell = fmt_ns(v)
            if v is not None and b:
                cell += f" ({v / b:.2f}×)"
            cells.append(cell)
        if any(c != "–" for c in cells):
            out.append(f"| {label} | " + " | ".join(cells) + " |")

    for key, label in CALLS:
        base = "call64/direct" if key.startswith("call64/") else "call/direct"
        row(key, label, base)
    for writer in ("procmem", "mprotect"):
        for key, label in updates_for(writer):
            base = f"update_{writer}/membarrier" if key.endswith(("/sites_1", "/membarrier")) else None
            row(key, f"{label} [{writer}]", base)
    for key, label in OTHER:
        row(key, label)
    return "\n".join(out)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def bars(y0, title, items, unit_fmt, log, width=900, label_w=350, bar_h=18, gap=6):
    """Horizontal bars; returns (svg elements, height used)."""
    els = [f'<text x="10" y="{y0 + 16}" font-size="15" font-weight="bold">{esc(title)}</text>']
    y = y0 + 28
    vals = [v for _, v, _ in items]
    vmax = max(vals)
    vmin = min(vals)
    plot_w = width - label_w - 110
    lo = math.log10(vmin) - 0.3 if log else 0.0
    hi = math.log10(vmax) if log else vmax

    def scale(v):
        if log:
            return max(2.0, (math.log10(v) - lo) / (hi - lo) * plot_w)
        return max(2.0, v / hi * plot_w)

    for label, v, color in items:
        w = scale(v)
        els.append(f'<text x="{label_w - 8}" y="{y + bar_h - 5}" font-size="12" text-anchor="end">{esc(label)}</text>')
        els.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        els.append(f'<text x="{label_w + w + 6:.1f}" y="{y + bar_h - 5}" font-size="12">{esc(unit_fmt(v))}</text>')
        y += bar_h + gap
    if log:
        els.append(f'<text x="{label_w}" y="{y + 10}" font-size="10" fill="#666">log scale</text>')
        y += 14
    return els, y - y0


def render(args):
    with open(args.data) as f:
        data = json.load(f)
    run_name = args.run or list(data)[-1]
    run = data[run_name]
    palette = {"ours": "#2b7bb9", "floor": "#7a7a7a", "other": "#d98c2b", "bad": "#c0392b"}

    def color(key):
        if key.endswith("/direct") or key.endswith("/membarrier") or key.endswith("pad_none"):
            return palette["floor"]
        if "retpoline" in key or "random" in key:
            return palette["bad"]
        if any(k in key for k in ("patched", "trampoline", "out_of_line", "update_", "batch", "init", "slow")):
            return palette["ours"]
        return palette["other"]

    call_items = [(label, run[k], color(k)) for k, label in CALLS if k in run and not k.startswith("call/pad")]
    upd_items = []
    for writer in ("procmem", "mprotect"):
        for k, label in updates_for(writer):
            if k in run:
                upd_items.append((f"{label} [{writer}]", run[k], color(k)))
    for k, label in OTHER:
        if k in run:
            upd_items.append((label, run[k], color(k)))

    els, h1 = bars(40, "Cost of one call (ns, median; dependent loop)", call_items, fmt_ns, log=False)
    els2, h2 = bars(40 + h1 + 20, "Cost of updating (median)", upd_items, fmt_ns, log=True)
    height = 40 + h1 + 20 + h2 + 56
    note = run.get("_note", "")
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{height}" font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="17" font-weight="bold">static_call benchmarks ({esc(run_name)})</text>',
        f'<text x="10" y="{height - 14}" font-size="11" fill="#444">{esc(note)}</text>',
        f'<text x="10" y="{height - 32}" font-size="11" fill="#444">'
        "grey: floor · blue: static_call · orange: alternatives · red: retpoline / unpredictable</text>",
    ]
    os.makedirs(os.path.dirname(args.svg) or ".", exist_ok=True)
    with open(args.svg, "w") as f:
        f.write("\n".join(head + els + els2 + ["</svg>"]) + "\n")
    print(f"wrote {args.svg} from run {run_name!r}", file=sys.stderr)
    print(markdown(data))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--criterion", default="target/criterion")
    c.add_argument("--run", required=True)
    c.add_argument("--out", default=DATA)
    c.add_argument("--note", default="")
    r = sub.add_parser("render")
    r.add_argument("--data", default=DATA)
    r.add_argument("--svg", default=SVG)
    r.add_argument("--run", default=None, help="the run to draw (default: the last)")
    a = p.parse_args()
    collect(a) if a.cmd == "collect" else render(a)


if __name__ == "__main__":
    main()
