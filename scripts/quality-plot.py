#!/usr/bin/env python3
"""Perplexity against whole-model bits/weight: lowbit's precisions beside llama.cpp's types.

Writes one PNG per model (perplexity on a log scale against bits/weight; lowbit's points joined
per family, e.g. all `-g32-asym` widths; llama.cpp's points labelled by type; the F32 perplexity
as a horizontal line) and prints a markdown table per model.

Usage:
  scripts/quality-plot.py [--peer FIXTURE.json ...] [--out DIR] [--chunks N] [--model NAME] LOWBIT...

  LOWBIT   files written by `lowbit perplexity --output FILE.jsonl` (one JSON object per line:
           test "perplexity", config.model / precision / bits_per_weight / ctx, perplexity,
           perplexity_stderr, chunks), or the object `lowbit perplexity --json` prints
           ({"file", "runs": [...]}, which names no model: --model says which one).
  --peer   llama.cpp rows (default: tests/fixtures/llamacpp_imatrix_perplexity.json, made by
           scripts/peer-imatrix.sh; tests/fixtures/llamacpp_perplexity.json, from
           scripts/peer-reference.sh, works too and is taken as SmolLM2).
  --model  the model of LOWBIT rows that name none: a fixture key (smollm2, gemma3) or the
           GGUF's general.name.
  --chunks only rows of this many chunks are compared (default 20); --ctx likewise (512).
  --out    folder for the PNGs (default: bench/results/DATE-DEVICE/quality-plot).
  --ymax-factor  the y axis stops at this multiple of the F32 perplexity (default 10); points
           above it are drawn on the top edge as triangles with their value.

Models are matched by the GGUF's general.name (what lowbit records as config.model and the
fixture as model_name) or the fixture's short key.

matplotlib: the system python has none and no root is needed: when it cannot be imported the
script creates a virtual environment at ~/.cache/lowbit-plot-venv (python3 -m venv; pip install
matplotlib, from PyPI) on first use and re-runs itself with that environment's python.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys

VENV = os.path.expanduser("~/.cache/lowbit-plot-venv")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_matplotlib():
    """Imports matplotlib, re-running this script under the private venv when it is missing."""
    try:
        import matplotlib  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(VENV, "bin", "python")
    # (the venv's python is a link to this same interpreter: sys.prefix tells them apart)
    if os.path.realpath(sys.prefix) == os.path.realpath(VENV) or os.environ.get("LOWBIT_PLOT_VENV"):
        sys.exit(f"matplotlib is still missing in {VENV}: remove that folder and run again")
    if not os.path.exists(py):
        print(f"creating {VENV} with matplotlib (once)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib"], check=True)
    env = dict(os.environ, LOWBIT_PLOT_VENV="1")
    os.execve(py, [py, os.path.abspath(__file__)] + sys.argv[1:], env)


def norm(s):
    return re.sub(r"[^a-z0-9]", "", (s or "").lower())


def read_lowbit(path, default_model):
    """Rows of one lowbit results file: dicts with model, config, bits_per_weight, ppl, err,
    chunks, ctx, date."""
    rows = []
    with open(path) as f:
        text = f.read()
    objs = []
    try:
        objs = [json.loads(text)]                      # `--json` summary (one object)
    except json.JSONDecodeError:
        for n, line in enumerate(text.splitlines(), 1):  # JSON lines
            if line.strip():
                try:
                    objs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not JSON: {e}")
    for o in objs:
        if "runs" in o:                                # `lowbit perplexity --json`
            for r in o["runs"]:
                res = r["result"]
                rows.append(dict(model=default_model, config=r["precision"], bits_per_weight=r["bits_per_weight"],
                                 ppl=res["perplexity"], err=res["perplexity_stderr"], chunks=res["chunks"],
                                 ctx=res["ctx"], date="", source=path))
        elif o.get("test") == "perplexity":          # `lowbit perplexity --output FILE.jsonl`
            c = o.get("config", {})
            rows.append(dict(model=c.get("model") or default_model, config=c["precision"],
                             bits_per_weight=c["bits_per_weight"], ppl=o["perplexity"], err=o["perplexity_stderr"],
                             chunks=o["chunks"], ctx=c.get("ctx"), date=o.get("date", ""), source=path))
    if not rows:
        sys.exit(f"{path}: no perplexity rows")
    return rows


def read_peer(path):
    """llama.cpp rows of a fixture, with model key and general.name."""
    with open(path) as f:
        data = json.load(f)
    rows = []
    for r in data:
        # scripts/peer-reference.sh's fixture predates the model fields: it is SmolLM2 only
        key = r.get("model") if "model_name" in r else "smollm2"
        name = r.get("model_name") or "Smollm2 135M 8k Lc100K Mix1 Ep2"
        rows.append(dict(model=key, model_name=name, config=r["type"], bits_per_weight=r["bits_per_weight"],
                         ppl=r["ppl"], err=r["ppl_err"], chunks=r["chunks"], ctx=r["ctx"],
                         imatrix="imatrix" in r, source=path))
    return rows


def family(config):
    """lowbit's series: a precision without its leading width (int4-g32-asym -> g32-asym) and,
    for mixed-width allocations, without the target (int2-g32-sym+gptq+alloc3.6 ->
    g32-sym+gptq+alloc: one series over its targets)."""
    m = re.match(r"^int\d+(.*)$", config)
    fam = m.group(1).lstrip("-") or "default" if m else config
    return re.sub(r"\+alloc[\d.]+", "+alloc", fam)


def point_label(config):
    """A point's label: its allocation target (alloc5.3) or its width (int4)."""
    a = re.search(r"\+(alloc[\d.]+)", config)
    if a:
        return a.group(1)
    m = re.match(r"^(int\d+)", config)
    return m.group(1) if m else config


def place_labels(ax, pending):
    """Annotates each (x, y, text, color) at the first of a few offsets whose box overlaps no
    label placed before and no marker, with a leader line when it had to move away."""
    ax.get_xlim()                                      # settle autoscaling before transforming
    to_px = ax.transData.transform
    w_char, h = 5.2, 11.0                              # fontsize 7 at the figure's dpi, roughly
    markers = [to_px((x, y)) for x, y, _, _ in pending]
    placed = []

    frame = ax.get_window_extent()

    def free(box):
        x0, y0, x1, y1 = box
        if x0 < frame.x0 or x1 > frame.x1 or y0 < frame.y0 or y1 > frame.y1:
            return False
        for bx0, by0, bx1, by1 in placed:
            if x0 < bx1 and bx0 < x1 and y0 < by1 and by0 < y1:
                return False
        return all(not (x0 - 4 < mx < x1 + 4 and y0 - 4 < my < y1 + 4) for mx, my in markers)

    offsets = [(5, 3), (5, -13), (-5, 3), (-5, -13)] + \
              [(dx, dy) for k in range(1, 8) for dy in (3 + 13 * k, -13 - 13 * k) for dx in (8, -8)]
    scale = ax.figure.dpi / 72.0
    for x, y, text, color in sorted(pending, key=lambda p: (p[0], p[1])):
        px, py = to_px((x, y))
        w = w_char * len(text) * scale / 1.67
        for dx, dy in offsets:
            ox, oy = dx * scale, dy * scale
            x0 = px + ox if dx > 0 else px + ox - w
            box = (x0, py + oy, x0 + w, py + oy + h * scale / 1.67)
            if free(box):
                break
        placed.append(box)
        far = abs(dy) > 13
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, color=color,
                    ha="left" if dx > 0 else "right",
                    arrowprops=dict(arrowstyle="-", color=color, lw=0.5, alpha=0.6) if far else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lowbit", nargs="*")
    ap.add_argument("--peer", action="append")
    ap.add_argument("--out")
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--model")
    ap.add_argument("--ymax-factor", type=float, default=10.0)
    a = ap.parse_args()
    ensure_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peer_files = a.peer or [os.path.join(ROOT, "tests/fixtures/llamacpp_imatrix_perplexity.json")]
    peer, seen = [], set()
    for r in (r for p in peer_files for r in read_peer(p)):
        # the same F32 model from two fixtures is one baseline: the first file's row counts
        k = (r["model"], r["config"], r["imatrix"] and r["config"] != "F32", r["chunks"], r["ctx"])
        if k not in seen:
            seen.add(k)
            peer.append(r)
    names = {}                                         # normalized name or key -> model key
    display = {}
    for r in peer:
        names[norm(r["model"])] = names[norm(r["model_name"])] = r["model"]
        display[r["model"]] = r["model_name"]

    def key_of(model):
        if model is None:
            return None
        k = names.get(norm(model))
        if k is None:                                  # a model llama.cpp has no rows for
            k = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
            names[norm(model)] = k
            display[k] = model
        return k

    lowbit = []
    for p in a.lowbit:
        for r in read_lowbit(p, a.model):
            if r["model"] is None:
                sys.exit(f"{p}: rows name no model: say which with --model")
            r["model"] = key_of(r["model"])
            lowbit.append(r)
    # a results file appended to twice holds a precision twice: the latest row counts
    latest = {}
    for r in lowbit:
        k = (r["model"], r["config"], r["chunks"], r["ctx"])
        if k not in latest or r["date"] >= latest[k]["date"]:
            latest[k] = r
    lowbit = list(latest.values())

    def comparable(rows, what):
        keep = [r for r in rows if r["chunks"] == a.chunks and r["ctx"] == a.ctx]
        if len(keep) < len(rows):
            print(f"note: {len(rows) - len(keep)} {what} row(s) not of {a.chunks} chunks x {a.ctx} left out",
                  file=sys.stderr)
        return keep
    lowbit, peer = comparable(lowbit, "lowbit"), comparable(peer, "llama.cpp")

    arch = platform.machine().replace("x86_64", "x86")
    out = a.out or os.path.join(ROOT, "bench/results",
                                f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}-{os.cpu_count()}core-{arch}",
                                "quality-plot")
    os.makedirs(out, exist_ok=True)

    for model in sorted({r["model"] for r in lowbit + peer}):
        lb = sorted((r for r in lowbit if r["model"] == model), key=lambda r: -r["bits_per_weight"])
        pc = sorted((r for r in peer if r["model"] == model), key=lambda r: -r["bits_per_weight"])
        lb_f32 = next((r for r in lb if r["bits_per_weight"] >= 31.99), None)
        pc_f32 = next((r for r in pc if r["config"] == "F32"), None)
        base = (pc_f32 or lb_f32 or {}).get("ppl")

        # ---- markdown table
        print(f"\n## {display.get(model, model)}\n")
        print(f"{a.chunks} chunks x {a.ctx} tokens. vs F32: against the engine's own F32 / fp32 row "
              f"(the llama.cpp F32 one, marked *, when the engine has none).\n")
        print("| engine | precision / type | bits/weight | perplexity | ± | vs F32 |")
        print("|---|---|---:|---:|---:|---:|")
        for eng, rows, own in (("lowbit", lb, lb_f32), ("llama.cpp", pc, pc_f32)):
            for r in rows:
                ref, star = (own["ppl"], "") if own else (base, "*")
                rel = f"{(r['ppl'] / ref - 1) * 100:+.2f}%{star}" if ref else "-"
                name = r["config"] + (" (imatrix)" if r.get("imatrix") and r["config"] != "F32" else "")
                print(f"| {eng} | {name} | {r['bits_per_weight']:.3f} | {r['ppl']:.4f} | {r['err']:.4f} | {rel} |")

        # ---- plot (F32 / fp32 rows are the horizontal line, not points)
        fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
        ax.set_yscale("log")
        pts = [r for r in lb + pc if r["bits_per_weight"] < 31.99]
        if not pts:
            plt.close(fig)
            continue
        ylo = min([r["ppl"] for r in pts] + ([base] if base else [])) * 0.9
        yhi = max(r["ppl"] for r in pts) * 1.15
        if base:
            yhi = min(yhi, base * a.ymax_factor)
        cap = yhi / 1.04

        def plot_series(rows, style, color, label, annotate):
            xs = [r["bits_per_weight"] for r in rows]
            ys = [min(r["ppl"], cap) for r in rows]
            ax.plot(xs, ys, style, color=color, label=label, markersize=6, linewidth=1.2)
            # points on the same spot (two types that came out identical) share one label
            labels = {}
            for r, x, y in zip(rows, xs, ys):
                labels.setdefault((x, y), []).append(annotate(r) if annotate else "")
            done = set()
            for r, x, y in zip(rows, xs, ys):
                if (x, y) in done:
                    continue
                done.add((x, y))
                text = "=".join(labels[(x, y)])
                if r["ppl"] > cap:                     # off the axis: on the top edge, with its value
                    ax.plot([x], [y], "^", color=color, markersize=9)
                    text = f"{text} {r['ppl']:.0f}".strip()
                if text:
                    pending.append((x, y, text, color))

        pending = []                                   # labels, placed once the axes are final
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fams = {}
        for r in lb:
            if r["bits_per_weight"] < 31.99:
                fams.setdefault(family(r["config"]), []).append(r)
        for i, (fam, rows) in enumerate(sorted(fams.items())):
            rows.sort(key=lambda r: r["bits_per_weight"])
            plot_series(rows, "o-", colors[(i + 1) % len(colors)], f"lowbit {fam}",
                        lambda r: point_label(r["config"]))
        # llama.cpp's plain quants (scripts/peer-reference.sh) and its imatrix ones apart
        for imat, style, color, label in ((True, "s", "black", "llama.cpp, imatrix"),
                                          (False, "D", "dimgrey", "llama.cpp, no imatrix")):
            pq = [r for r in pc if r["config"] != "F32" and bool(r.get("imatrix")) == imat]
            if pq:
                plot_series(pq, style, color, label, lambda r: r["config"])
        if base:
            src = "llama.cpp" if pc_f32 else "lowbit"
            ax.axhline(base, color="grey", linestyle="--", linewidth=1)
            ax.annotate(f"F32 {base:.2f} ({src})", (ax.get_xlim()[0], base), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color="grey")
        ax.set_ylim(ylo, yhi)
        from matplotlib.ticker import LogLocator, ScalarFormatter
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 1.5, 2, 3, 4, 5, 7)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(plt.NullFormatter())
        place_labels(ax, pending)
        ax.set_xlabel("bits per weight, whole model (tensor bytes x 8 / parameters)")
        ax.set_ylabel(f"perplexity (log scale), {a.chunks} x {a.ctx} tokens")
        ax.set_title(f"{display.get(model, model)}: perplexity vs bits/weight")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        png = os.path.join(out, f"{model}.png")
        fig.savefig(png)
        plt.close(fig)
        print(f"\nwrote {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
