#!/usr/bin/env python3
"""How cheaply could a router match the best single model on zeroeval, if it knew each prompt's task?

An upper bound for routing on *what a prompt is about*: zeroeval has three tasks (the prompt id's
prefix: gsm, crux, math-l5). A task-level router sends every prompt of a task to one model. This
script picks, with hindsight on the whole file, the per-task models that reach the best single
model's mean quality at the least mean cost, with random mixing between such policies allowed
(the same frontier convention as `pointsman eval`). No router that sees only the task can do
better, and one that must learn the task from prompts does worse. It also prints quality by
prompt-length quartile within each task (length is a per-prompt signal the task label lacks).

Models: the catalog's priced models answering >= 95% of the prompts, prompts answered by all of
them (as `eval`'s full-matrix rule). Cost: list prices, input tokens estimated as characters / 4,
the logged output tokens.

Usage: python3 scripts/zeroeval_top_end.py [data/zeroeval/train.jsonl.gz] [config/pointsman.toml]
"""
import collections
import gzip
import json
import random
import sys
import tomllib


def envelope(points):
    """Upper concave envelope (cost, quality), cheapest first, quality increasing."""
    pts = sorted(points, key=lambda p: (p[0], -p[1]))
    mono = []
    for p in pts:
        if not mono or p[1] > mono[-1][1]:
            mono.append(p)
    hull = []
    for p in mono:
        while len(hull) >= 2:
            (ac, aq), (bc, bq) = hull[-2], hull[-1]
            if (bc - ac) * (p[1] - aq) - (bq - aq) * (p[0] - ac) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def cost_to_reach(env, q):
    if env[0][1] >= q:
        return env[0][0]
    for (ac, aq), (bc, bq) in zip(env, env[1:]):
        if bq >= q:
            return ac + (q - aq) / (bq - aq) * (bc - ac)
    return None


def cell_frontier(cells):
    """Frontier of routers that send each cell (a group of prompts) to one model, mixing allowed:
    the sup-convolution of the cells' concave envelopes, merged segment by segment in order of
    decreasing slope. `cells` is a list of lists of (cost, quality) contributions to the file mean."""
    starts = [envelope(c) for c in cells]
    c0 = sum(e[0][0] for e in starts)
    q0 = sum(e[0][1] for e in starts)
    segments = [(b[0] - a[0], b[1] - a[1]) for e in starts for a, b in zip(e, e[1:])]
    segments.sort(key=lambda s: -s[1] / s[0] if s[0] > 0 else float("-inf"))
    env = [(c0, q0)]
    for dc, dq in segments:
        env.append((env[-1][0] + dc, env[-1][1] + dq))
    return env


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else "data/zeroeval/train.jsonl.gz"
    config = sys.argv[2] if len(sys.argv) > 2 else "config/pointsman.toml"
    with open(config, "rb") as f:
        prices = {m["id"]: m for m in tomllib.load(f)["models"]}
    obs = collections.defaultdict(dict)
    chars = {}
    with gzip.open(data, "rt") as f:
        for line in f:
            o = json.loads(line)
            m = prices.get(o["model"])
            if m is None:
                continue
            cost = (len(o["prompt"]) / 4 * m["input_usd_per_mtok"] + (o.get("output_tokens") or 0) * m["output_usd_per_mtok"]) / 1e6
            obs[o["prompt_id"]][o["model"]] = (float(o["score"]), cost)
            chars[o["prompt_id"]] = len(o["prompt"])
    models = [m for m in prices if sum(m in v for v in obs.values()) >= 0.95 * len(obs)]
    prompts = [p for p, v in obs.items() if all(m in v for m in models)]
    n = len(prompts)
    tasks = collections.defaultdict(list)
    for p in prompts:
        tasks[p.split(":")[0]].append(p)
    mean = lambda ps, m, i: sum(obs[p][m][i] for p in ps) / len(ps)  # noqa: E731
    singles = {m: (mean(prompts, m, 1), mean(prompts, m, 0)) for m in models}
    best = max(models, key=lambda m: singles[m][1])
    bc, bq = singles[best]
    print(f"{data}: {n} prompts x {len(models)} priced models; best single {best}: quality {bq:.4f} at ${bc:.6f}/request")
    # Per task, each model's contribution to the whole file's mean (cost, quality).
    options = {}
    for t, ps in sorted(tasks.items()):
        w = len(ps) / n
        options[t] = [(w * mean(ps, m, 1), w * mean(ps, m, 0), m) for m in models]
        top = sorted(options[t], key=lambda r: -r[1])[:4]
        print(f"  {t} ({len(ps)} prompts): " + ", ".join(f"{m} {q / w:.3f} (${c / w:.6f})" for c, q, m in top))
    def report(label, groups):
        cells = [[(sum(obs[p][m][1] for p in ps) / n, sum(obs[p][m][0] for p in ps) / n) for m in models] for ps in groups if ps]
        reach = cost_to_reach(cell_frontier(cells), bq)
        share = "never" if reach is None else f"{reach / bc:.1%} of its cost"
        print(f"{label} with hindsight ({len(cells)} cells): reaches {best}'s quality at {share}")

    def cross_validated(label, groups, seeds=5, folds=5):
        """The same lookup-table router, learned: each cell's model chosen on the other folds'
        prompts for each cost weight, scored on the held-out fold; a point per weight."""
        weights = [0.0] + [10 ** (-3 + 6 * i / 48) for i in range(49)]
        shares = []
        for seed in range(1, seeds + 1):
            rng = random.Random(seed)
            fold = {p: rng.randrange(folds) for p in prompts}
            points = []
            for lam in weights:
                cost = quality = 0.0
                for ps in groups:
                    for k in range(folds):
                        train = [p for p in ps if fold[p] != k]
                        held = [p for p in ps if fold[p] == k]
                        if not train or not held:
                            continue
                        pick = max(models, key=lambda m: mean(train, m, 0) - lam * mean(train, m, 1) / bc)
                        cost += sum(obs[p][pick][1] for p in held) / n
                        quality += sum(obs[p][pick][0] for p in held) / n
                points.append((cost, quality))
            reach = cost_to_reach(envelope(points), bq)
            shares.append("never" if reach is None else f"{reach / bc:.0%}")
        print(f"{label}, learned (5-fold, seeds 1-{seeds}): reaches {best}'s quality at {', '.join(shares)} of its cost")

    report("one model per task", list(tasks.values()))
    cross_validated("one model per task", list(tasks.values()))
    for q in (4, 10):
        groups = []
        for ps in tasks.values():
            ps = sorted(ps, key=lambda p: chars[p])
            groups += [ps[i * len(ps) // q : (i + 1) * len(ps) // q] for i in range(q)]
        report(f"one model per task and prompt-length {q}-quantile", groups)
        cross_validated(f"one model per task and prompt-length {q}-quantile", groups)
    print("quality by prompt-length quartile (shortest first):")
    cheap = sorted(models, key=lambda m: singles[m][0])
    watch = [best] + [m for m in sorted(models, key=lambda m: -singles[m][1]) if m != best][:2] + [m for m in cheap if singles[m][1] > 0.7][:2]
    for t, ps in sorted(tasks.items()):
        ps = sorted(ps, key=lambda p: chars[p])
        k = len(ps)
        quarts = [ps[i * k // 4 : (i + 1) * k // 4] for i in range(4)]
        for m in watch:
            print(f"  {t:8} {m:40} " + " ".join(f"{mean(qq, m, 0):.3f}" for qq in quarts))


if __name__ == "__main__":
    main()
