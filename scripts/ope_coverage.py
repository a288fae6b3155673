#!/usr/bin/env python3
"""How often `pointsman eval --log`'s 95% intervals cover the answer the full matrix gives
(issue 23's "OPE coverage over simulated logs").

For a log file with every catalog-priced model answered on every prompt (data/<file>), the truth
is `eval --log` on the full matrix itself, the catalog cut to the file's priced models (so the head
chooses only models the log can score) (every propensity 1: IPS, SNIPS and DR are then exact
and equal). Then, for each of `--runs` seeds, a log a deployment would have is drawn from it,
one model per prompt, by a logging policy:

- uniform:  a uniformly random priced model (propensity 1/M);
- skewed:   the model with the best mean score on the file with probability 0.5, otherwise a
            uniformly random one (propensity 0.5 + 0.5/M or 0.5/M): a router that explores;

and `eval --log` estimates the head's mean quality and cost per request from it. Printed per
file, policy and estimator: the share of runs whose 95% interval covers the truth, the mean
error (bias), the spread of the estimates against the mean reported standard error, and the
mean effective sample size.

Usage: .runtime/python/bin/python scripts/ope_coverage.py --bin target/release/pointsman \
           [--files alpaca_eval2,zeroeval] [--runs 40] [--head models/router] [--cost-weight 0.5]
Nothing is written into the checkout (a temporary folder, or --work).
"""
import argparse
import gzip
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import tomllib
from collections import Counter, defaultdict

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
Z95 = 1.959964


def priced_matrix(path, config):
    """The file's prompts answered by every priced model answered on at least 95% of them."""
    with open(config, "rb") as f:
        priced = {m["id"] for m in tomllib.load(f).get("models", [])}
    by_prompt = defaultdict(dict)
    with gzip.open(path, "rt") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r["model"] in priced:
                    by_prompt[r["prompt_id"]][r["model"]] = r
    seen = Counter(m for rows in by_prompt.values() for m in rows)
    models = sorted(m for m, n in seen.items() if n >= 0.95 * len(by_prompt))
    full = {p: {m: rows[m] for m in models} for p, rows in by_prompt.items() if all(m in rows for m in models)}
    return full, models


def restricted_config(config, models, path):
    """The config with its catalog cut to `models`, so the head chooses only among models the
    log can score (no `unlogged` choices: IPS and SNIPS can then be checked too)."""
    text = open(config).read()
    head, *blocks = re.split(r"(?m)^(?=\[\[models\]\]\s*$)", text)
    kept = [b for b in blocks if re.search(r'(?m)^id = "([^"]+)"', b).group(1) in models]
    head = head.replace('"../models/', f'"{ROOT}/models/').replace('"../var/decisions.db"', '"decisions.db"')
    with open(path, "w") as f:
        f.write(head + "".join(kept))


def write(path, lines):
    with open(path, "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")


def evaluate(args, config, log, out, cache):
    cmd = [args.bin, "--config", config, "eval", "--quiet", "--cost-weight", str(args.cost_weight), "--head", args.head, "--log", log, "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, XDG_CACHE_HOME=cache))
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr[-3000:]}")
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pointsman"))
    ap.add_argument("--config", default=os.path.join(ROOT, "config/pointsman.toml"))
    ap.add_argument("--head", default=os.path.join(ROOT, "models/router"))
    ap.add_argument("--files", default="alpaca_eval2,zeroeval")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--cost-weight", type=float, default=0.5)
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="pointsman-ope-")
    os.makedirs(work, exist_ok=True)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(work, "cache")
    print(f"head {args.head}, cost weight {args.cost_weight}, {args.runs} runs per policy (work folder {work})\n")
    print("| file | log | estimate | covered (95%) | bias | sd of estimates | mean reported SE | mean ESS |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.files.split(","):
        full, models = priced_matrix(os.path.join(ROOT, "data", name, "train.jsonl.gz"), args.config)
        m = len(models)
        prompts = sorted(full)
        mean_score = {mod: statistics.fmean(full[p][mod]["score"] for p in prompts) for mod in models}
        best = max(models, key=lambda mod: mean_score[mod])
        d = os.path.join(work, name)
        os.makedirs(d, exist_ok=True)
        config = os.path.join(d, "pointsman.toml")
        restricted_config(args.config, set(models), config)
        truth_log = os.path.join(d, "full.jsonl")
        write(truth_log, [dict(full[p][mod], propensity=1.0) for p in prompts for mod in models])
        truth_head = evaluate(args, config, truth_log, os.path.join(d, "full"), cache)["heads"][0]
        truth = {what: truth_head[what]["dr"]["value"] for what in ("quality", "cost")}
        print(
            f"<!-- {name}: {len(prompts)} prompts x {m} priced models; truth quality {truth['quality']:.4f}, "
            f"cost ${truth['cost']:.6f}/request; unlogged {truth_head['unlogged_share']} -->",
            file=sys.stderr,
        )
        for policy in ("uniform", "skewed"):
            rows = defaultdict(list)
            for run in range(args.runs):
                rng = random.Random(run * 7919 + 13)
                lines = []
                for p in prompts:
                    if policy == "uniform":
                        mod, prop = models[rng.randrange(m)], 1.0 / m
                    else:
                        mod = best if rng.random() < 0.5 else models[rng.randrange(m)]
                        prop = 0.5 / m + (0.5 if mod == best else 0.0)
                    lines.append(dict(full[p][mod], propensity=prop))
                log = os.path.join(d, f"{policy}-{run}.jsonl")
                write(log, lines)
                head = evaluate(args, config, log, os.path.join(d, f"{policy}-{run}"), cache)["heads"][0]
                os.remove(log)
                for what in ("quality", "cost"):
                    for est in ("ips", "snips", "dr"):
                        f = head[what][est]
                        rows[(what, est)].append((f["value"], f["standard_error"], head[what]["effective_sample_size"]))
            for (what, est), vals in rows.items():
                t = truth[what]
                covered = sum(abs(v - t) <= Z95 * se for v, se, _ in vals) / len(vals)
                bias = statistics.fmean(v for v, _, _ in vals) - t
                sd = statistics.stdev(v for v, _, _ in vals) if len(vals) > 1 else 0.0
                mse = statistics.fmean(se for _, se, _ in vals)
                ess = statistics.fmean(e for _, _, e in vals)
                fmt = (lambda x: f"{x:+.4f}") if what == "quality" else (lambda x: f"{x:+.2e}")
                print(f"| {name} | {policy} | {what} {est.upper()} | {covered:.0%} | {fmt(bias)} | {abs(float(fmt(sd))):.2g} | {mse:.2g} | {ess:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
