#!/usr/bin/env python3
"""Learning curve: gap closed by cross-validation against the number of training prompts.

For each size N, a seeded random subset of N prompts of one routing log (every model's outcome
on those prompts) is cross-validated with `pointsman train --cv 5` (the default `--method auto`);
its report gives the router's pooled gap closed and the tuned kNN's (k, b chosen by
cross-validation on each fold's training prompts). Writes <out>/learning_curve.json and
<out>/learning_curve.svg (no plotting library needed).

    python3 scripts/learning_curve.py --data data/mmlu_pro/train.jsonl.gz \
        --sizes 250,500,1000,2000,4000,9629 --seeds 1,2 --out docs/learning_curve

Each subset is cross-validated with 5 folds, so a size-N point trains on 4N/5 prompts.
"""
import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile


def subset(lines_by_prompt, ids, n, seed, path):
    order = sorted(ids, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())[:n]
    with gzip.open(path, "wt") as f:
        for p in order:
            for line in lines_by_prompt[p]:
                f.write(line)


def svg(points, title):
    """A log-x line plot of router and tuned kNN gap closed (means over seeds)."""
    import math

    w, h, l, r, t, b = 640, 360, 60, 20, 40, 50
    xs = [p["prompts"] for p in points]
    ys = [v for p in points for v in (p["router"], p["tuned_knn"])]
    x0, x1 = math.log(min(xs)), math.log(max(xs))
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.1
    fx = lambda x: l + (math.log(x) - x0) / max(x1 - x0, 1e-9) * (w - l - r)
    fy = lambda y: h - b - (y - y0) / max(y1 - y0, 1e-9) * (h - t - b)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="{w/2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{l}" y1="{h-b}" x2="{w-r}" y2="{h-b}" stroke="black"/>',
           f'<line x1="{l}" y1="{t}" x2="{l}" y2="{h-b}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-10}" text-anchor="middle">logged prompts (5-fold CV: 4/5 of them train each fold)</text>',
           f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle">gap closed (%)</text>']
    for x in xs:
        out.append(f'<text x="{fx(x):.1f}" y="{h-b+15}" text-anchor="middle">{x}</text>')
    step = 2.0 if y1 - y0 > 6 else 1.0
    y = math.ceil(y0 / step) * step
    while y <= y1:
        out.append(f'<text x="{l-5}" y="{fy(y)+4:.1f}" text-anchor="end">{y:g}</text>')
        out.append(f'<line x1="{l}" y1="{fy(y):.1f}" x2="{w-r}" y2="{fy(y):.1f}" stroke="#ddd"/>')
        y += step
    for key, colour, label in (("router", "#1f77b4", "router (train --method auto)"), ("tuned_knn", "#ff7f0e", "tuned kNN")):
        pts = " ".join(f"{fx(p['prompts']):.1f},{fy(p[key]):.1f}" for p in points)
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in points:
            out.append(f'<circle cx="{fx(p["prompts"]):.1f}" cy="{fy(p[key]):.1f}" r="3" fill="{colour}"/>')
        yl = t + 15 + (0 if key == "router" else 16)
        out.append(f'<rect x="{l+10}" y="{yl-9}" width="12" height="3" fill="{colour}"/><text x="{l+28}" y="{yl}">{label}</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--out", required=True)
    ap.add_argument("--bin", default="target/release/pointsman")
    ap.add_argument("--config", default=None)
    a = ap.parse_args()
    lines_by_prompt = {}
    with gzip.open(a.data, "rt") as f:
        for line in f:
            lines_by_prompt.setdefault(json.loads(line)["prompt_id"], []).append(line)
    ids = sorted(lines_by_prompt)
    os.makedirs(a.out, exist_ok=True)
    points = []
    for n in [int(s) for s in a.sizes.split(",")]:
        n = min(n, len(ids))
        runs = []
        for seed in [int(s) for s in a.seeds.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "train.jsonl.gz")
                subset(lines_by_prompt, ids, n, seed, path)
                cmd = [a.bin] + (["--config", a.config] if a.config else []) + [
                    "train", "--data", path, "--cv", "5", "--seed", str(seed), "--quiet", "--out", os.path.join(tmp, "cv")]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                report = json.load(open(os.path.join(tmp, "cv", "report.json")))[0]
                knn = report.get("tuned_knn") or {}
                runs.append({"seed": seed, "router": 100 * report["router_gap_closed"], "tuned_knn": 100 * knn.get("gap_closed", float("nan")),
                             "prompts_scored": report["prompts"]})
                print(f"{n} prompts, seed {seed}: router {runs[-1]['router']:.1f}%, tuned kNN {runs[-1]['tuned_knn']:.1f}%", file=sys.stderr)
        points.append({"prompts": n, "router": sum(r["router"] for r in runs) / len(runs),
                       "tuned_knn": sum(r["tuned_knn"] for r in runs) / len(runs), "runs": runs})
    json.dump({"data": a.data, "points": points}, open(os.path.join(a.out, "learning_curve.json"), "w"), indent=1)
    name = os.path.basename(os.path.dirname(a.data)) or a.data
    open(os.path.join(a.out, "learning_curve.svg"), "w").write(svg(points, f"{name}: gap closed by 5-fold CV against logged prompts"))
    print(json.dumps([(p["prompts"], round(p["router"], 1), round(p["tuned_knn"], 1)) for p in points]))


if __name__ == "__main__":
    main()
