#!/usr/bin/env python3
"""The "How good" table of issue 23: what `pointsman train` (defaults) learns from logs a
deployment would have, scored on held-out prompts as `eval` scores routing.

From data/mmlu_pro's prompts and its catalog-priced models (full matrix), for each fold seed and
each of 5 folds, the fold's prompts are the test set (full matrix) and the other prompts make
the logs, by the issue's policies:

- full:     every priced model on every training prompt;
- rule:     for each task tag, the model with the best mean of score minus half its normalised
            output length (its mean output tokens over the largest model mean, within the tag)
            on the first 1,000 training prompts (in the seed's shuffled order: the file is
            grouped by task); one model per prompt, no
            propensity (a deterministic router);
- eps10:    `rule`, except that 10% of prompts go to a uniformly random model; propensity
            logged (0.9 + 0.1/M for the rule's model, 0.1/M for another);
- uniform1: one uniformly random model per prompt, propensity 1/M.

Each log is trained on with `pointsman train` defaults and scored with
`pointsman eval --all-prompts --head <head>` on the fold's prompts (gap closed). For `full`, the
tuned kNN (k and b chosen by CV on the full training matrix) is scored beside it
(`--knn-memory`). Prints the mean over folds per seed, and the mean over seeds.

Usage: .runtime/python/bin/python scripts/how_good.py --bin target/release/pointsman \
           [--seeds 1,2] [--folds 5] [--policies full,rule,eps10,uniform1] [--work DIR]
Nothing is written into the checkout: the logs, heads and reports go to --work (a temporary
folder by default).
"""
import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import defaultdict

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def read_lines(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(l) for l in f if l.strip()]


def priced_models(config):
    with open(config, "rb") as f:
        cfg = tomllib.load(f)
    return {m["id"] for m in cfg.get("models", [])}


def rule_policy(lines_by_prompt, first_prompts, models):
    """Per task tag: argmax over models of mean score - 0.5 * mean tokens / max mean tokens."""
    stats = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0, 0]))
    for pid in first_prompts:
        for r in lines_by_prompt[pid]:
            s = stats[r.get("task") or ""][r["model"]]
            s[0] += r["score"]
            s[1] += r["output_tokens"]
            s[2] += 1
    overall = defaultdict(lambda: [0.0, 0.0, 0])
    for tag in stats.values():
        for m, s in tag.items():
            for i in range(3):
                overall[m][i] += s[i]

    def best(table):
        means = {m: (s[0] / s[2], s[1] / s[2]) for m, s in table.items() if s[2] > 0}
        top = max(t for _, t in means.values()) or 1.0
        return max(sorted(means), key=lambda m: means[m][0] - 0.5 * means[m][1] / top)

    rule = {tag: best(t) for tag, t in stats.items()}
    fallback = best(overall)
    return rule, fallback


def make_logs(lines_by_prompt, task_of, train_prompts, models, seed):
    """The four logs as lists of lines (dicts)."""
    rng = random.Random(seed * 1000 + 17)
    rule, fallback = rule_policy(lines_by_prompt, train_prompts[:1000], models)
    m = len(models)
    logs = {"full": [], "rule": [], "eps10": [], "uniform1": []}
    for pid in train_prompts:
        by_model = {r["model"]: r for r in lines_by_prompt[pid]}
        logs["full"].extend(lines_by_prompt[pid])
        r_model = rule.get(task_of[pid], fallback)
        logs["rule"].append(dict(by_model[r_model]))
        if rng.random() < 0.1:
            e_model = models[rng.randrange(m)]
        else:
            e_model = r_model
        p = 0.1 / m + (0.9 if e_model == r_model else 0.0)
        logs["eps10"].append(dict(by_model[e_model], propensity=p))
        u_model = models[rng.randrange(m)]
        logs["uniform1"].append(dict(by_model[u_model], propensity=1.0 / m))
    return logs, rule


def write(path, lines):
    with open(path, "w") as f:
        for l in lines:
            f.write(json.dumps(l) + "\n")


def run(cmd, log):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n--- stdout\n" + p.stdout + "\n--- stderr\n" + p.stderr)
    if p.returncode != 0:
        sys.exit(f"failed ({log}):\n{p.stderr[-3000:]}")
    return p.stdout, time.time() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/pointsman"))
    ap.add_argument("--config", default=os.path.join(ROOT, "config/pointsman.toml"))
    ap.add_argument("--data", default=os.path.join(ROOT, "data/mmlu_pro/train.jsonl.gz"))
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--only-folds", default="", help="comma-separated fold indices to run (default: all)")
    ap.add_argument("--policies", default="full,rule,eps10,uniform1")
    ap.add_argument("--work", default="")
    ap.add_argument("--train-args", default="", help="extra `train` arguments (default: none, the defaults)")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="pointsman-how-good-")
    os.makedirs(work, exist_ok=True)
    priced = priced_models(a.config)
    lines = [l for l in read_lines(a.data) if l["model"] in priced]
    by_prompt = defaultdict(list)
    order = []
    for l in lines:
        if l["prompt_id"] not in by_prompt:
            order.append(l["prompt_id"])
        by_prompt[l["prompt_id"]].append(l)
    models = sorted({l["model"] for l in lines})
    # The full matrix: prompts every priced model answered.
    order = [p for p in order if len({r["model"] for r in by_prompt[p]}) == len(models)]
    task_of = {p: by_prompt[p][0].get("task") or "" for p in order}
    print(f"{len(order)} prompts x {len(models)} priced models: {', '.join(models)}", flush=True)
    policies = a.policies.split(",")
    results = defaultdict(list)  # (seed, policy) -> per-fold gap closed
    knn = defaultdict(list)
    only = {int(x) for x in a.only_folds.split(",") if x}
    for seed in [int(s) for s in a.seeds.split(",")]:
        shuffled = order[:]
        random.Random(seed).shuffle(shuffled)
        fold_of = {p: i % a.folds for i, p in enumerate(shuffled)}
        for f in range(a.folds):
            if only and f not in only:
                continue
            d = os.path.join(work, f"seed{seed}-fold{f}")
            os.makedirs(d, exist_ok=True)
            test = [p for p in order if fold_of[p] == f]
            # The log's order is the seed's shuffle (the file is grouped by task: its first
            # 1,000 prompts would hold two of the 14 tags).
            train_prompts = [p for p in shuffled if fold_of[p] != f]
            write(os.path.join(d, "test.jsonl"), [r for p in test for r in by_prompt[p]])
            logs, rule = make_logs(by_prompt, task_of, train_prompts, models, seed * 100 + f)
            for pol in policies:
                log = os.path.join(d, f"{pol}.jsonl")
                write(log, logs[pol])
                head = os.path.join(d, f"head-{pol}")
                cmd = [a.bin, "--config", a.config, "train", "--quiet", "--data", log, "--out", head, "--name", pol]
                cmd += a.train_args.split()
                _, t_train = run(cmd, os.path.join(d, f"train-{pol}.log"))
                ev = [a.bin, "--config", a.config, "eval", "--quiet", "--all-prompts", "--head", head,
                      "--data", os.path.join(d, "test.jsonl"), "--out", os.path.join(d, f"eval-{pol}")]
                if pol == "full":
                    ev += ["--knn-memory", log]
                _, t_eval = run(ev, os.path.join(d, f"eval-{pol}.log"))
                rep = json.load(open(os.path.join(d, f"eval-{pol}", "report.json")))[0]
                results[(seed, pol)].append(rep["router_gap_closed"])
                if pol == "full" and rep.get("tuned_knn"):
                    knn[seed].append(rep["tuned_knn"]["gap_closed"])
                print(f"seed {seed} fold {f} {pol:9s} gap closed {rep['router_gap_closed']*100:6.2f}%"
                      + (f"  tuned kNN {rep['tuned_knn']['gap_closed']*100:6.2f}%" if pol == 'full' and rep.get('tuned_knn') else "")
                      + f"  (train {t_train:.0f}s, eval {t_eval:.0f}s)", flush=True)
    seeds = sorted({s for s, _ in results})
    mean = lambda v: sum(v) / len(v) if v else float("nan")
    print()
    print("| log | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | share of full |")
    print("|---|" + "---|" * (len(seeds) + 2))
    full_mean = mean([mean(results[(s, "full")]) for s in seeds if results[(s, "full")]])
    for pol in policies:
        per = [mean(results[(s, pol)]) for s in seeds]
        m = mean(per)
        share = f"{m / full_mean * 100:.0f}%" if full_mean == full_mean and full_mean > 0 else "-"
        print(f"| {pol} | " + " | ".join(f"{v*100:.2f}%" for v in per) + f" | {m*100:.2f}% | {share} |")
    if knn:
        per = [mean(knn[s]) for s in seeds]
        print("| tuned kNN (full matrix) | " + " | ".join(f"{v*100:.2f}%" for v in per) + f" | {mean(per)*100:.2f}% | |")
    print(f"\n(work folder: {work})")


if __name__ == "__main__":
    main()
