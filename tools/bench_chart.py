#!/usr/bin/env python3
"""Collects criterion medians into a JSON file and draws them as one SVG.

No dependencies beyond the standard library (the SVG is written by hand), so
that anyone can regenerate docs/benchmarks.svg from docs/benchmarks.json:

    # after `cargo bench --bench calls` and `cargo bench --bench updates`
    python3 tools/bench_chart.py collect --criterion target/criterion --run run1
    python3 tools/bench_chart.py render            # docs/benchmarks.svg + a markdown table

`collect` reads every `<group>/<bench>/new/estimates.json` under the
criterion directory and stores the median (ns) under the run's name.
`render` draws the calls (ns per call), the updates (log scale), and the
regimes of `benches/regimes.rs` (ns per call against the number of distinct
sites, and against the switching period M) of the last run, and prints a
markdown table of every run with the ratios the targets are stated in, then
one table per regime (last run).
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


# benches/regimes.rs: group/variant/parameter.
SITES_VARIANTS = [
    ("direct", "direct", "#7a7a7a"),
    ("static", "static call", "#2b7bb9"),
    ("fn_ptr", "fn pointer", "#d98c2b"),
    ("dyn_trait", "dyn Trait", "#8e44ad"),
    ("enum_match", "enum match", "#27ae60"),
    ("retpoline", "retpoline", "#c0392b"),
]
SWITCH_VARIANTS = [
    ("direct", "direct", "#7a7a7a"),
    ("static", "static call + update", "#2b7bb9"),
    ("pointer", "AtomicPtr stored", "#d98c2b"),
    ("polymorphic", "polymorphic site", "#c0392b"),
]


def series(run, group, variants):
    """{variant: [(param, ns)]} for group/variant/param keys of a run."""
    out = {}
    for v, _, _ in variants:
        pts = []
        prefix = f"{group}/{v}/"
        for k, ns in run.items():
            if k.startswith(prefix) and k[len(prefix):].isdigit():
                pts.append((int(k[len(prefix):]), ns))
        if pts:
            out[v] = sorted(pts)
    return out


def regime_markdown(run, group, variants, head):
    s = series(run, group, variants)
    if not s:
        return ""
    params = sorted({p for pts in s.values() for p, _ in pts})
    base = dict(s.get("direct", []))
    out = [f"| {head} | " + " | ".join(label for v, label, _ in variants if v in s) + " |"]
    out.append("|---|" + "---|" * len([v for v, _, _ in variants if v in s]))
    for p in params:
        cells = []
        for v, _, _ in variants:
            if v not in s:
                continue
            ns = dict(s[v]).get(p)
            cell = fmt_ns(ns)
            if ns is not None and base.get(p):
                cell += f" ({ns / base[p]:.2f}×)"
            cells.append(cell)
        out.append(f"| {p:,} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def lines(y0, title, run, group, variants, xlabel, log_y, width=900, height=260, left=70, right=190):
    """A line chart of ns per call against a log-scale parameter."""
    s = series(run, group, variants)
    if not s:
        return [], 0
    els = [f'<text x="10" y="{y0 + 16}" font-size="15" font-weight="bold">{esc(title)}</text>']
    top, bottom = y0 + 30, y0 + 30 + height
    xs = sorted({p for pts in s.values() for p, _ in pts})
    ys = [ns for pts in s.values() for _, ns in pts]
    lx0, lx1 = math.log10(xs[0]), math.log10(xs[-1])
    if log_y:
        ly0, ly1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    else:
        ly0, ly1 = 0.0, max(ys) * 1.05
    plot_w = width - left - right

    def px(p):
        return left + (math.log10(p) - lx0) / ((lx1 - lx0) or 1) * plot_w

    def py(ns):
        v = math.log10(ns) if log_y else ns
        return bottom - (v - ly0) / ((ly1 - ly0) or 1) * height

    els.append(f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="#999"/>')
    els.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#999"/>')
    for p in xs:
        els.append(f'<text x="{px(p):.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">{p:,}</text>')
    els.append(f'<text x="{left + plot_w / 2}" y="{bottom + 28}" font-size="11" text-anchor="middle">{esc(xlabel)}</text>')
    ticks = [10**e for e in range(int(ly0), int(ly1) + 1)] if log_y else [ly1 * i / 4 for i in range(5)]
    for t in ticks:
        y = py(t) if (not log_y or t > 0) else bottom
        els.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>')
        els.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{fmt_ns(t)}</text>')
    for i, (v, label, color) in enumerate(variants):
        if v not in s:
            continue
        pts = " ".join(f"{px(p):.1f},{py(ns):.1f}" for p, ns in s[v])
        els.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for p, ns in s[v]:
            els.append(f'<circle cx="{px(p):.1f}" cy="{py(ns):.1f}" r="3" fill="{color}"/>')
        ly = top + 10 + i * 18
        els.append(f'<rect x="{left + plot_w + 20}" y="{ly - 9}" width="12" height="12" fill="{color}"/>')
        els.append(f'<text x="{left + plot_w + 38}" y="{ly + 1}" font-size="12">{esc(label)}</text>')
    if log_y:
        els.append(f'<text x="{left + plot_w + 20}" y="{bottom}" font-size="10" fill="#666">log scales</text>')
    return els, height + 60


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
    if not args.run:
        # Cases the last run did not measure come from the latest run that did.
        merged = {}
        for r in data.values():
            merged.update(r)
        run = {**merged, **run}
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
    els2, h2 = bars(40 + h1 + 20, "Cost of updating (median)", upd_items, fmt_ns, log=True) if upd_items else ([], 0)
    y = 40 + h1 + 20 + h2 + 20
    els3, h3 = lines(
        y, "N distinct call sites in a fixed sequence: ns per call", run, "sites", SITES_VARIANTS,
        "distinct call sites (each with its own target)", log_y=True)
    y += h3 + (20 if h3 else 0)
    els4, h4 = lines(
        y, "One hot site whose target switches every M calls: ns per call (update included)", run, "switch",
        SWITCH_VARIANTS, "M (calls between two switches)", log_y=True)
    height = y + h4 + 56
    els2 = els2 + els3 + els4
    note = run.get("_note", "")
    head = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{height}" font-family="sans-serif">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-size="17" font-weight="bold">static_call benchmarks ({esc(run_name)}; cases it lacks from earlier runs)</text>',
        f'<text x="10" y="{height - 14}" font-size="11" fill="#444">{esc(note)}</text>',
        f'<text x="10" y="{height - 32}" font-size="11" fill="#444">'
        "grey: floor · blue: static_call · orange: alternatives · red: retpoline / unpredictable</text>",
    ]
    os.makedirs(os.path.dirname(args.svg) or ".", exist_ok=True)
    with open(args.svg, "w") as f:
        f.write("\n".join(head + els + els2 + ["</svg>"]) + "\n")
    print(f"wrote {args.svg} from run {run_name!r}", file=sys.stderr)
    print(markdown(data))
    for group, variants, head in (("sites", SITES_VARIANTS, "sites"), ("switch", SWITCH_VARIANTS, "M")):
        t = regime_markdown(run, group, variants, head)
        if t:
            print(f"\n{group} ({run_name}):\n\n{t}")


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
