#!/usr/bin/env python3
"""Writes the shipped config/pointsman.toml: server defaults, profiles, and a catalog made of
the models in a prices CSV (model,provider,input_usd_per_mtok,output_usd_per_mtok,context_tokens)
that the routing head covers (models/router/manifest.json). A model listed in an endpoints CSV
beside the prices CSV (endpoints.csv: model,provider,input_usd_per_mtok,output_usd_per_mtok,
context_tokens,quantization,tools,json_schema,source) gets one [[models.endpoints]] entry per row
instead; its prices.csv row should be its first endpoint (the one ListModels shows as the model's).

    python3 scripts/make_config.py data/prices.csv models/router/manifest.json > config/pointsman.toml
"""
import os
import csv
import json
import sys

HEADER = '''# Pointsman configuration. Relative paths are resolved against this file's folder.
# Every key is optional; the values below are the defaults unless marked otherwise.

[server]
# Address of the data plane: Route, ListModels, Feedback, grpc.health.v1.Health and reflection
# (override with --listen / POINTSMAN_LISTEN).
listen = "127.0.0.1:50051"
# Largest accepted Route request in bytes; larger ones get INVALID_ARGUMENT.
max_request_bytes = 1048576
# Most messages in one conversation.
max_messages = 256
# Fallbacks after the primary when a request does not say, and the most it may ask for.
default_fallbacks = 3
max_fallbacks = 8
# Most entries in each allow/deny list of a request.
max_list_entries = 256
# Requests that may wait for a free encoder session before Route answers RESOURCE_EXHAUSTED.
max_queued_requests = 256

[admin]
# The operator surface, Admin.Reload and GET /metrics, on a listener of its own; the data port
# answers UNIMPLEMENTED for Admin and 404 for /metrics. Loopback by default: open it wider only
# with [auth] on (override with --admin-listen / POINTSMAN_ADMIN_LISTEN). Default (commented out
# because `listen` is already a key above):
# listen = "127.0.0.1:9464"

[auth]
# Bearer tokens (`authorization: Bearer <token>` metadata). Off by default; when on, Route and
# ListModels need the `route` role, Feedback `feedback`, Admin and /metrics `admin`. Health checks
# and reflection stay open. A missing or unknown token gets UNAUTHENTICATED (HTTP 401), a token
# without the role PERMISSION_DENIED (HTTP 403). Tokens are at least 16 visible ASCII characters;
# give each in an environment variable (token_env) rather than here (token).
# enabled = true
#
# [[auth.tokens]]
# name = "gateway"
# token_env = "POINTSMAN_GATEWAY_TOKEN"
# roles = ["route", "feedback"]
#
# [[auth.tokens]]
# name = "ops"
# token_env = "POINTSMAN_OPS_TOKEN"
# roles = ["admin"]

[tls]
# TLS (rustls) on the data port: PEM certificate chain and key. With client_ca, clients must
# present a certificate signed by that CA (mutual TLS). admin = true serves the admin listener
# with the same settings (it is plaintext otherwise).
# cert = "/etc/pointsman/tls/server.pem"
# key = "/etc/pointsman/tls/server.key"
# client_ca = "/etc/pointsman/tls/clients-ca.pem"
admin = false

[runtime]
# ONNX Runtime library; unset = ORT_DYLIB_PATH, then .runtime/ (installed by scripts/bootstrap.sh).
# onnxruntime = "/usr/lib/libonnxruntime.so.1.31.1"

[encoder]
dir = "../models/encoder"
# "int8" (per-channel dynamic quantisation, ~2x faster) or "fp32" (exact).
variant = "int8"
# Parallel ONNX sessions, each serving one prompt at a time, and threads per session.
# On 2 cores: 2 sessions x 1 thread gives the best throughput; 1 x 2 the lowest latency when idle.
sessions = 2
intra_threads = 1
# Token cap of the routing text (the encoder's own limit is 256).
max_tokens = 256

[head]
dir = "../models/router"

[cache]
# Routing texts whose predictions are kept (about 1 KB each); 0 disables the cache.
capacity = 20000
# Seconds an entry lives; 0 = until evicted.
ttl_seconds = 3600

[decision_log]
# Every Route decision and Feedback report, in SQLite (WAL). Writes go through a bounded queue
# and a writer thread, never on the request path.
enabled = true
path = "../var/decisions.db"
# false: keep only each prompt's embedding, not its text (the trainer can still learn from it).
store_prompts = true
# Records waiting for the writer; when full, decisions are dropped and counted
# (pointsman_decision_log_dropped_total) and Feedback answers RESOURCE_EXHAUSTED after feedback_wait_ms.
queue_capacity = 10000
batch_max = 512
# ms the writer waits after a batch's first record for more (fewer transactions under load).
linger_ms = 5
feedback_wait_ms = 1000
# "normal": a commit survives a process crash; "full": also a power loss (a fsync per batch).
synchronous = "normal"
# Retention: rows older than max_age_days go (0 = keep), then the oldest while over max_bytes (0 = no limit).
max_age_days = 30.0
max_bytes = 1073741824
retention_interval_seconds = 60

[health]
# Circuit breaker per model, from Feedback outcomes (timeouts, rate limits, server errors).
window_seconds = 60
# Attempts in the window before an error rate counts.
min_requests = 10
# From this error rate a model ranks behind every healthy one...
degraded_error_rate = 0.2
# ...and from this one (or after this many failures in a row) it is left out for a cool-down,
# then tried again; each failed retry doubles the cool-down up to the maximum.
open_error_rate = 0.5
open_after_consecutive_failures = 5
cool_down_seconds = 30.0
max_cool_down_seconds = 600.0
# false: a report moves a model's breaker only when this replica routed that request_id (in the
# last hour) and offered that model for it, so made-up reports cannot take a model out of routing
# (they are still logged and counted, in pointsman_feedback_unverified_total). true: every report
# on a catalog model counts: for replicas without shared state whose gateway may report to a
# replica other than the one that routed.
count_unknown_requests = false

[sessions]
# A request may name a session (RouteRequest.session, Envoy's x-session-id header, OpenAI's `user`
# with a conversation key): within it Pointsman keeps the model and endpoint of the last turn while
# they stay healthy and eligible and switching is worth less than the cached-input saving it would
# lose (the endpoints' cached_input_usd_per_mtok; see docs/routing.md, "Sessions").
enabled = true
# Seconds a session lives after its last turn (OpenRouter's sticky sessions: 10 minutes).
ttl_seconds = 600
# Most sessions kept by a replica; beyond it the least used are forgotten first.
max_sessions = 100000
# With [health] shared, sessions are shared through the same Redis (stream <shared_key>:sessions),
# so a conversation whose turns land on different replicas keeps its endpoint.
shared = true

[reload]
# Seconds between checks of this file and the encoder and head folders; a change that stays
# put for one interval is validated and swapped in. 0 = off (SIGHUP and Admin.Reload always work).
watch_interval_seconds = 0.0

[routing]
# Profile applied when a request gives neither `profile` nor `cost_weight`.
default_profile = "balanced"
# Latency estimate for models without their own ttft_ms / output_tokens_per_second.
default_ttft_ms = 500.0
default_output_tokens_per_second = 60.0

[routing.profiles]
# Cost weight in [0,1]: 0 = best predicted quality whatever it costs, 1 = cheapest model that
# meets min_quality. `pointsman tune` can write calibrated profiles here.
quality = 0.0
balanced = 0.5
economy = 0.85

# The catalog: candidate models with list prices (USD per million tokens) and context windows.
# Generated from {prices} for the models the head in {head} covers. A model served by several
# providers lists them as [[models.endpoints]] (from endpoints.csv; see README "Endpoints").
'''


def main():
    prices_path, manifest_path = sys.argv[1], sys.argv[2]
    covered = set(json.load(open(manifest_path))["models"])
    out = [HEADER.format(prices=prices_path.split("/")[-1], head="models/router")]
    endpoints_path = os.path.join(os.path.dirname(prices_path), "endpoints.csv")
    # Cached-input list prices (prompt caching), by (model, provider): sessions weigh them.
    cached_path = os.path.join(os.path.dirname(prices_path), "cached_prices.csv")
    cached = {}
    if os.path.exists(cached_path):
        for row in csv.DictReader(open(cached_path)):
            cached[(row["model"], row["provider"])] = row
    endpoints = {}
    if os.path.exists(endpoints_path):
        for row in csv.DictReader(open(endpoints_path)):
            endpoints.setdefault(row["model"], []).append(row)
    for row in csv.DictReader(open(prices_path)):
        if row["model"] not in covered:
            continue
        if row["model"] in endpoints:
            text = f'[[models]]\nid = "{row["model"]}"\n'
            for e in endpoints[row["model"]]:
                text += (
                    "\n[[models.endpoints]]\n"
                    f'# {e["source"]}\n'
                    f'provider = "{e["provider"]}"\n'
                    f'input_usd_per_mtok = {float(e["input_usd_per_mtok"])}\n'
                    f'output_usd_per_mtok = {float(e["output_usd_per_mtok"])}\n'
                    f'context_tokens = {int(e["context_tokens"])}\n'
                )
                c = cached.get((row["model"], e["provider"]))
                if c:
                    text += f'# {c["source"]}\ncached_input_usd_per_mtok = {float(c["cached_input_usd_per_mtok"])}\n'
                if e["quantization"]:
                    text += f'quantization = "{e["quantization"]}"\n'
                caps = [f"{k} = {e[k]}" for k in ("tools", "json_schema") if e[k]]
                if caps:
                    text += "capabilities = { " + ", ".join(caps) + " }\n"
            out.append(text)
            continue
        c = cached.get((row["model"], row["provider"]))
        out.append(
            "[[models]]\n"
            f'id = "{row["model"]}"\n'
            f'provider = "{row["provider"]}"\n'
            f'input_usd_per_mtok = {float(row["input_usd_per_mtok"])}\n'
            f'output_usd_per_mtok = {float(row["output_usd_per_mtok"])}\n'
            + (f'# {c["source"]}\ncached_input_usd_per_mtok = {float(c["cached_input_usd_per_mtok"])}\n' if c else "")
            + f'context_tokens = {int(row["context_tokens"])}\n'
        )
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
