#!/usr/bin/env python3
"""Checks the deployment files (run by deploy/check.sh, which provides kubernetes-validate).

  (a) every manifest of deploy/kubernetes against the Kubernetes OpenAPI schemas bundled in
      kubernetes-validate, strict (unknown fields are errors), offline; kustomization.yaml lists
      every manifest but the *.example.yaml ones, and every file it lists exists;
  (b) the ConfigMap's pointsman.toml: every key it sets exists in the same section of
      config/pointsman.toml (set or commented out), its catalog equals the shipped one, and it
      agrees with the Deployment (ports, config mount, writable spill folder, Secret keys);
  (c) the security posture: [auth] on with every token from a Secret through the environment,
      no admin port on the Service, a NetworkPolicy that selects the pods and lets only chosen
      pods reach the data ports and only a chosen namespace the admin port, feedback verified
      (health.count_unknown_requests off), and the spill folder's volume with a sizeLimit above
      decision_log.spill_max_bytes plus decision_log.max_bytes;
  (d) deploy/docker/Dockerfile: the final stage's USER is numeric and not 0 (and is the pod's
      runAsUser), and every COPY source exists in the repository and is not in .dockerignore.

  deploy/check.py                 all checks, then the negative self-test
  deploy/check.py --sync-catalog  copy config/pointsman.toml's [[models]] into the ConfigMap
"""
import argparse
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv
from kubernetes_validate.version import __version__ as KV_VERSION

ROOT = Path(__file__).resolve().parent.parent
# The newest Kubernetes whose schemas kubernetes-validate (deploy/requirements.txt) bundles, and
# the oldest: the manifests must hold for both.
K8S_VERSIONS = ["1.37.0", "1.32.0"]
CONFIGMAP = "pointsman-config"
CONFIG_KEY = "pointsman.toml"
CATALOG_MARKER = "# The catalog: a copy of config/pointsman.toml's [[models]]"


class Paths:
    """The files under check; the self-test points some of them at broken copies."""

    def __init__(self, kdir=None, dockerfile=None):
        self.kdir = Path(kdir or ROOT / "deploy/kubernetes")
        self.dockerfile = Path(dockerfile or ROOT / "deploy/docker/Dockerfile")
        self.dockerignore = ROOT / ".dockerignore"
        self.context = ROOT
        self.shipped_config = ROOT / "config/pointsman.toml"


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def objects(p):
    """(file name, object) of every manifest in the folder, kustomization.yaml excepted."""
    out = []
    for f in sorted(p.kdir.glob("*.y*ml")):
        if f.name != "kustomization.yaml":
            out.extend((f.name, d) for d in load_docs(f))
    return out


def find(objs, kind, name=None):
    for _, o in objs:
        if o.get("kind") == kind and (name is None or o.get("metadata", {}).get("name") == name):
            return o
    return None


# (a) ---------------------------------------------------------------------------------------


def check_manifests(p, say=print):
    errors = []
    kust = load_docs(p.kdir / "kustomization.yaml")[0]
    listed = kust.get("resources", [])
    for r in listed:
        if not (p.kdir / r).is_file():
            errors.append(f"kustomization.yaml lists {r}, which does not exist")
    for f in sorted(p.kdir.glob("*.y*ml")):
        if f.name == "kustomization.yaml":
            continue
        if f.name.endswith(".example.yaml"):
            if f.name in listed:
                errors.append(f"kustomization.yaml lists {f.name}: an example must not be deployed")
        elif f.name not in listed:
            errors.append(f"{f.name} is not listed in kustomization.yaml's resources")
    say(f"  kustomization.yaml: {len(listed)} resources, all present and every manifest listed" if not errors else "  kustomization.yaml: see errors")
    for name, obj in objects(p):
        for version in K8S_VERSIONS:
            what = f"{name} {obj.get('kind')}/{obj.get('metadata', {}).get('name')} (Kubernetes {version}, strict)"
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(x) for x in e.path)
                errors.append(f"{what}: {path}: {e.message}")
                continue
            except kv.SchemaNotFoundError as e:
                # The CLI only warns here; an unknown kind or apiVersion is an error for us.
                errors.append(f"{what}: {e.message}")
                continue
            say(f"  valid: {what}")
    return errors


def check_rendered(p, say=print):
    """The output of `kubectl kustomize` (the image rewritten), when kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        say("  kubectl kustomize: skipped (no kubectl)")
        return []
    r = subprocess.run([kubectl, "kustomize", str(p.kdir)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return [f"kubectl kustomize {p.kdir}: {r.stderr.strip()}"]
    errors = []
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    for obj in docs:
        try:
            kv.validate(obj, K8S_VERSIONS[0], strict=True)
        except (kv.ValidationError, kv.SchemaNotFoundError) as e:
            errors.append(f"kubectl kustomize output, {obj.get('kind')}: {getattr(e, 'message', e)}")
    say(f"  kubectl kustomize: {len(docs)} objects rendered, valid (Kubernetes {K8S_VERSIONS[0]}, strict)")
    return errors


# (b) ---------------------------------------------------------------------------------------


def shipped_keys(text):
    """section -> {key: "set" | "commented"} of config/pointsman.toml, commented-out keys and
    tables included (the shipped file documents optional keys as comments)."""
    known, section = {}, ""
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^(#\s*)?\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?\s*$", s)
        if m:
            section = m.group(2)
            known.setdefault(section, {})
            continue
        m = re.match(r"^(#\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*=", s)
        if m:
            state = "commented" if m.group(1) else "set"
            if known.setdefault(section, {}).get(m.group(2)) != "set":
                known[section][m.group(2)] = state
    return known


def flat(table, prefix=""):
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from flat(v, key + ".")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):  # [[array.of.tables]]
            for x in v:
                yield from flat(x, key + ".")
        else:
            yield key, v


def port(addr):
    return int(addr.rsplit(":", 1)[1])


def check_config(p, say=print):
    errors = []
    objs = objects(p)
    cm = find(objs, "ConfigMap", CONFIGMAP)
    if cm is None or CONFIG_KEY not in cm.get("data", {}):
        return [f"no ConfigMap {CONFIGMAP} with a {CONFIG_KEY} key"]
    try:
        fleet = tomllib.loads(cm["data"][CONFIG_KEY])
    except tomllib.TOMLDecodeError as e:
        return [f"ConfigMap {CONFIGMAP} {CONFIG_KEY}: not TOML: {e}"]
    shipped_text = p.shipped_config.read_text()
    known = shipped_keys(shipped_text)
    shipped = tomllib.loads(shipped_text)

    for key, value in flat({k: v for k, v in fleet.items() if k != "models"}):
        section, _, name = key.rpartition(".")
        if section not in known:
            errors.append(f"ConfigMap {CONFIG_KEY}: [{section}] is not a section of config/pointsman.toml")
        elif name not in known[section]:
            errors.append(f"ConfigMap {CONFIG_KEY}: {key} is not a key of [{section}] in config/pointsman.toml")
        else:
            say(f"  key {key} = {value!r} ({known[section][name]} in config/pointsman.toml)")
    for section in fleet:
        if section != "models" and section not in known:
            errors.append(f"ConfigMap {CONFIG_KEY}: [{section}] is not a section of config/pointsman.toml")
    if fleet.get("models") != shipped.get("models"):
        errors.append(f"ConfigMap {CONFIG_KEY}: [[models]] differs from config/pointsman.toml's (deploy/check.sh --sync-catalog)")
    else:
        say(f"  catalog: {len(fleet['models'])} [[models]], equal to config/pointsman.toml's")

    # Secrets stay in the Secret; paths must not resolve into the read-only ConfigMap folder.
    for key in ("decision_log.url", "health.shared"):
        section, name = key.split(".")
        if name in fleet.get(section, {}):
            errors.append(f"ConfigMap {CONFIG_KEY}: {key} is set; it comes from the Secret (env) instead")
    for key in ("encoder.dir", "head.dir", "decision_log.path", "decision_log.spill_path"):
        section, name = key.split(".")
        v = fleet.get(section, {}).get(name)
        if v is not None and not v.startswith("/"):
            errors.append(f"ConfigMap {CONFIG_KEY}: {key} = {v!r} must be absolute (relative paths land in the ConfigMap's read-only folder)")
    for key in ("encoder.dir", "head.dir"):
        section, name = key.split(".")
        v = fleet.get(section, {}).get(name, "")
        if v.startswith("/app/models/") and not (p.context / "models" / v[len("/app/models/"):]).is_dir():
            errors.append(f"ConfigMap {CONFIG_KEY}: {key} = {v!r}, but the image's models/ has no such folder")
    errors += check_deployment(p, objs, cm, fleet, say)
    return errors


def secrets(objs):
    """Secret name -> its keys."""
    return {o["metadata"]["name"]: set(o.get("stringData", {})) | set(o.get("data", {})) for _, o in objs if o.get("kind") == "Secret"}


def from_secret(objs, container, var):
    """Whether env `var` of `container` is a secretKeyRef to a key of a Secret we ship."""
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
    return bool(ref) and ref.get("key") in secrets(objs).get(ref.get("name"), set())


def check_deployment(p, objs, cm, fleet, say):
    """The ConfigMap, the Deployment, the Service, the HPA and the PDB agree with each other."""
    errors = []
    dep = find(objs, "Deployment")
    if dep is None:
        return ["no Deployment"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    ports = {x.get("name"): x["containerPort"] for x in c.get("ports", [])}
    listen = port(fleet.get("server", {}).get("listen", "127.0.0.1:50051"))
    admin = port(fleet.get("admin", {}).get("listen", "127.0.0.1:9464"))
    if ports.get("grpc") != listen:
        errors.append(f"Deployment: containerPort grpc {ports.get('grpc')} != server.listen's port {listen}")
    if ports.get("metrics") != admin:
        errors.append(f"Deployment: containerPort metrics {ports.get('metrics')} != admin.listen's port {admin}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        got = c.get(probe, {}).get("grpc", {}).get("port")
        if got != listen:
            errors.append(f"Deployment: {probe} must be a grpc probe on {listen} (server.listen). Given: {got}")
    ann = pod.get("metadata", {}).get("annotations", {})
    if ann.get("prometheus.io/port") != str(admin):
        errors.append(f"Deployment: prometheus.io/port {ann.get('prometheus.io/port')!r} != admin.listen's port {admin}")
    # --config points into the ConfigMap's mount.
    args = c.get("args", [])
    cfg = args[args.index("--config") + 1] if "--config" in args else None
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    cfg_ok = False
    if cfg:
        folder, name = cfg.rsplit("/", 1)
        m = mounts.get(folder)
        vol = volumes.get(m["name"]) if m else None
        cfg_ok = bool(vol and vol.get("configMap", {}).get("name") == CONFIGMAP and name in cm["data"] and "subPath" not in m)
    if not cfg_ok:
        errors.append(f"Deployment: --config {cfg!r} is not {CONFIG_KEY} of ConfigMap {CONFIGMAP} mounted as a folder")
    # The spill file's folder is a writable volume.
    spill = fleet.get("decision_log", {}).get("spill_path")
    if spill:
        m = mounts.get(spill.rsplit("/", 1)[0])
        vol = volumes.get(m["name"]) if m else None
        if not vol or m.get("readOnly") or not ({"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(vol)):
            errors.append(f"Deployment: the folder of decision_log.spill_path {spill!r} is not a writable volume mount")
    # The backends' URLs come from the Secret example's keys.
    for var in ("POINTSMAN_DECISION_LOG_URL", "POINTSMAN_HEALTH_SHARED"):
        if not from_secret(objs, c, var):
            errors.append(f"Deployment: env {var} must come from a key of a Secret in secret.example.yaml")
    ext_listen = fleet.get("ext_proc", {}).get("listen", "")
    if ext_listen and ports.get("ext-proc") != port(ext_listen):
        errors.append(f"Deployment: containerPort ext-proc {ports.get('ext-proc')} != ext_proc.listen's port {port(ext_listen)}")
    # Service, HPA and PDB point at this Deployment and its ports.
    labels = pod.get("metadata", {}).get("labels", {})
    svc = find(objs, "Service")
    if svc:
        if not svc["spec"].get("selector", {}).items() <= labels.items():
            errors.append("Service: selector does not match the pod's labels")
        for sp in svc["spec"].get("ports", []):
            if sp.get("targetPort") not in ports and sp.get("targetPort") not in ports.values():
                errors.append(f"Service: targetPort {sp.get('targetPort')!r} is not a container port")
    hpa = find(objs, "HorizontalPodAutoscaler")
    if hpa and hpa["spec"]["scaleTargetRef"].get("name") != dep["metadata"]["name"]:
        errors.append("HorizontalPodAutoscaler: scaleTargetRef is not the Deployment")
    if hpa and hpa["spec"].get("minReplicas", 1) > dep["spec"].get("replicas", 1):
        errors.append("HorizontalPodAutoscaler: minReplicas above the Deployment's replicas")
    pdb = find(objs, "PodDisruptionBudget")
    if pdb and not pdb["spec"]["selector"].get("matchLabels", {}).items() <= labels.items():
        errors.append("PodDisruptionBudget: selector does not match the pod's labels")
    if not errors:
        say(f"  agree: ports {listen}/{admin} (config, containerPorts, probes, scrape annotation, Service), "
            f"--config {cfg}, spill folder writable, Secret keys, selectors")
    return errors


# (c) ---------------------------------------------------------------------------------------

QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}


def quantity_bytes(q):
    """A Kubernetes quantity (512Mi, 1G, 1000) in bytes, or None when it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|Ki)?", str(q).strip())
    if not m or (m.group(2) or "") not in QUANTITY:
        return None
    return int(float(m.group(1)) * QUANTITY[m.group(2) or ""])


def fleet_config(objs):
    cm = find(objs, "ConfigMap", CONFIGMAP)
    try:
        return tomllib.loads(cm["data"][CONFIG_KEY]) if cm else {}
    except (KeyError, tomllib.TOMLDecodeError):
        return {}


def check_security(p, say=print):
    """What the shipped manifests must not give away (review M8, M12)."""
    errors = []
    objs = objects(p)
    fleet = fleet_config(objs)
    dep = find(objs, "Deployment")
    if dep is None:
        return ["no Deployment"]
    spec = dep["spec"]["template"]["spec"]
    c = spec["containers"][0]
    ports = {x.get("name"): x["containerPort"] for x in c.get("ports", [])}
    admin = port(fleet.get("admin", {}).get("listen", "127.0.0.1:9464"))
    labels = dep["spec"]["template"].get("metadata", {}).get("labels", {})

    # [auth] on, every token from a Secret through the environment.
    auth = fleet.get("auth", {})
    tokens = auth.get("tokens", [])
    if auth.get("enabled") is not True:
        errors.append("ConfigMap: [auth] enabled must be true (tokens from a Secret)")
    elif not tokens:
        errors.append("ConfigMap: [auth] is on without [[auth.tokens]]")
    for i, t in enumerate(tokens):
        if "token" in t:
            errors.append(f"ConfigMap: auth.tokens[{i}] ({t.get('name')}) has its token in the ConfigMap; use token_env and a Secret")
        elif not t.get("token_env") or not from_secret(objs, c, t["token_env"]):
            errors.append(f"ConfigMap: auth.tokens[{i}].token_env {t.get('token_env')!r} is not an env var of the Deployment from a Secret key")
    roles = {r for t in tokens for r in t.get("roles", [])}
    if fleet.get("ext_proc", {}).get("listen") and "gateway" not in roles:
        errors.append("ConfigMap: the ext_proc listener is on but no token has the `gateway` role")

    # No admin port on the Service.
    for _, svc in ((n, o) for n, o in objs if o.get("kind") == "Service"):
        for sp in svc["spec"].get("ports", []):
            target = sp.get("targetPort")
            if target == admin or ports.get(target) == admin or sp.get("port") == admin:
                errors.append(f"Service {svc['metadata']['name']}: port {sp.get('name')!r} exposes the admin listener ({admin}); Prometheus scrapes pods")

    # A NetworkPolicy for the pods: data ports from chosen pods, admin from a chosen namespace.
    policies = [o for _, o in objs if o.get("kind") == "NetworkPolicy" and o["spec"].get("podSelector", {}).get("matchLabels", {}).items() <= labels.items()
                and o["spec"].get("podSelector", {}).get("matchLabels")]
    if not policies:
        errors.append("no NetworkPolicy selects the Deployment's pods")
    for np in policies:
        name = np["metadata"]["name"]
        types = set(np["spec"].get("policyTypes", []))
        if not {"Ingress", "Egress"} <= types:
            errors.append(f"NetworkPolicy {name}: policyTypes must hold Ingress and Egress. Given: {sorted(types)}")
        reach = {}
        for rule in np["spec"].get("ingress", []):
            sources = rule.get("from", [])
            for rp in rule.get("ports", [{}]):
                num = ports.get(rp.get("port"), rp.get("port"))
                reach.setdefault(num, []).append(sources)
        data_ports = [x for x in (ports.get("grpc"), ports.get("ext-proc")) if x is not None]
        for num, what in [(admin, "namespaceSelector")] + [(x, "podSelector") for x in data_ports]:
            rules = reach.get(num, []) + reach.get(None, [])
            if not rules:
                errors.append(f"NetworkPolicy {name}: nothing may reach port {num}; expected a rule from a {what}")
            for sources in rules:
                if not sources or any(not src.get(what) or not src[what].get("matchLabels") for src in sources):
                    errors.append(f"NetworkPolicy {name}: port {num} must be reachable only from a {what} with matchLabels. Given: {sources}")
        egress_ports = {rp.get("port") for rule in np["spec"].get("egress", []) for rp in rule.get("ports", [])}
        if not {53, 5432, 6379} <= egress_ports:
            errors.append(f"NetworkPolicy {name}: egress must allow DNS (53), PostgreSQL (5432) and Redis (6379). Given: {sorted(egress_ports, key=str)}")

    # Feedback verified by the fleet, not taken on trust.
    if fleet.get("health", {}).get("count_unknown_requests", False) is not False:
        errors.append("ConfigMap: health.count_unknown_requests must be false (every report would move the breakers)")

    # The spill folder's volume is capped above the spill's own cap.
    log = fleet.get("decision_log", {})
    spill = log.get("spill_path")
    if spill:
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        m = mounts.get(spill.rsplit("/", 1)[0])
        vol = volumes.get(m["name"]) if m else None
        limit = quantity_bytes(((vol or {}).get("emptyDir") or {}).get("sizeLimit", ""))
        need = int(log.get("spill_max_bytes", 256 << 20)) + int(log.get("max_bytes", 1 << 30))
        if vol is not None and "emptyDir" in vol and (limit is None or limit <= need):
            errors.append(f"Deployment: the spill folder's emptyDir needs a sizeLimit above decision_log.spill_max_bytes + max_bytes ({need} bytes). Given: {(vol.get('emptyDir') or {}).get('sizeLimit')}")
    if not errors:
        say(f"  auth on ({len(tokens)} tokens from Secrets: {', '.join(t.get('name', '?') for t in tokens)}); no admin port on the Service; "
            f"NetworkPolicy {', '.join(n['metadata']['name'] for n in policies)}; count_unknown_requests off; spill volume capped")
    return errors


# (d) ---------------------------------------------------------------------------------------


def dockerfile_instructions(text):
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


def ignored(path, patterns):
    """Whether .dockerignore excludes `path` (or a folder above it); last match wins."""
    parts = Path(path).parts
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if fnmatch.fnmatch(sub, pat) or (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:])):
                result = not neg
    return result


def check_dockerfile(p, say=print):
    errors = []
    ins = dockerfile_instructions(p.dockerfile.read_text())
    patterns = [l.strip() for l in p.dockerignore.read_text().splitlines() if l.strip() and not l.startswith("#")]
    stages = [i for i, (w, _) in enumerate(ins) if w == "FROM"]
    final = ins[stages[-1]:] if stages else ins
    users = [a for w, a in final if w == "USER"]
    uid = None
    if not users:
        errors.append("Dockerfile: the final stage has no USER (it would run as root)")
    else:
        m = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
        if not m:
            errors.append(f"Dockerfile: final USER {users[-1]!r} is not numeric (uid or uid:gid): Kubernetes' runAsNonRoot cannot verify a name")
        elif int(m.group(1)) == 0:
            errors.append("Dockerfile: final USER is 0 (root)")
        else:
            uid = int(m.group(1))
            say(f"  final stage USER {users[-1]} (numeric, not root)")
    copied = 0
    for w, a in ins:
        if w not in ("COPY", "ADD"):
            continue
        if a.startswith("["):
            args = json.loads(a)
        else:
            args = shlex.split(a)
        flags = [x for x in args if x.startswith("--")]
        srcs = [x for x in args if not x.startswith("--")][:-1]
        if any(f.startswith("--from=") for f in flags):
            continue
        for src in srcs:
            copied += 1
            if not list(p.context.glob(src.rstrip("/"))):
                errors.append(f"Dockerfile: {w} {src}: no such path in the repository")
            elif ignored(src.rstrip("/"), patterns):
                errors.append(f"Dockerfile: {w} {src}: excluded from the build context by .dockerignore")
    say(f"  {copied} COPY sources from the context: all exist, none in .dockerignore" if not any("COPY" in e or "ADD" in e for e in errors) else "  COPY sources: see errors")
    exposed = {int(x.split("/")[0]) for w, a in final if w == "EXPOSE" for x in a.split()}
    if not {50051, 9464} <= exposed:
        errors.append(f"Dockerfile: EXPOSE {sorted(exposed)} lacks 50051 or 9464")
    dep = find(objects(p), "Deployment")
    if dep and uid is not None:
        run_as = dep["spec"]["template"]["spec"].get("securityContext", {}).get("runAsUser")
        if run_as != uid:
            errors.append(f"Deployment runAsUser {run_as} != the image's USER {uid}")
        else:
            say(f"  Deployment runAsUser {run_as} = image USER")
    return errors


# --sync-catalog ----------------------------------------------------------------------------


def sync_catalog(p):
    path = p.kdir / "configmap.yaml"
    lines = path.read_text().splitlines()
    at = next((i for i, l in enumerate(lines) if l.strip().startswith(CATALOG_MARKER)), None)
    if at is None:
        sys.exit(f"{path}: no line starting with {CATALOG_MARKER!r}")
    indent = lines[at][: len(lines[at]) - len(lines[at].lstrip())]
    shipped = p.shipped_config.read_text().splitlines()
    first = next(i for i, l in enumerate(shipped) if l.strip() == "[[models]]")
    catalog = [(indent + l) if l.strip() else "" for l in shipped[first:]]
    path.write_text("\n".join(lines[: at + 1] + [""] + catalog).rstrip("\n") + "\n")
    print(f"{path}: catalog copied from {p.shipped_config} ({sum(1 for l in catalog if l.strip() == '[[models]]')} models)")


# Negative self-test ------------------------------------------------------------------------


def self_test():
    """Broken copies, each of which a check must reject (and the intact copy must pass)."""
    src = ROOT / "deploy/kubernetes"
    cases = [
        ("misspelled field (imagePullPolicey)", "deployment.yaml", "imagePullPolicy:", "imagePullPolicey:", check_manifests),
        ("wrong type (replicas: \"three\")", "deployment.yaml", "replicas: 3", 'replicas: "three"', check_manifests),
        ("removed apiVersion (autoscaling/v2beta2)", "hpa.yaml", "apiVersion: autoscaling/v2", "apiVersion: autoscaling/v2beta2", check_manifests),
        ("unknown kind (Servise)", "service.yaml", "kind: Service", "kind: Servise", check_manifests),
        ("manifest missing from kustomization.yaml", "kustomization.yaml", "  - pdb.yaml\n", "", check_manifests),
        ("unknown config key (server.listen_addr)", "configmap.yaml", '    listen = "0.0.0.0:50051"', '    listen_addr = "0.0.0.0:50051"', check_config),
        ("probe on another port than server.listen", "deployment.yaml", "port: 50051\n            periodSeconds: 5", "port: 50052\n            periodSeconds: 5", check_config),
        ("auth off", "configmap.yaml", "    enabled = true", "    enabled = false", check_security),
        ("a token in the ConfigMap", "configmap.yaml", '    token_env = "POINTSMAN_APPS_TOKEN"', '    token = "0123456789abcdef0123"', check_security),
        ("a token_env not from a Secret", "deployment.yaml", "name: POINTSMAN_OPS_TOKEN", "name: POINTSMAN_OPS_TOKEN_X", check_security),
        ("the admin port on the Service", "service.yaml", "    - name: ext-proc\n      port: 50052\n      targetPort: ext-proc", "    - name: metrics\n      port: 9464\n      targetPort: metrics", check_security),
        ("no NetworkPolicy for the pods", "networkpolicy.yaml", "      app.kubernetes.io/name: pointsman\n  policyTypes", "      app.kubernetes.io/name: someone-else\n  policyTypes", check_security),
        ("the admin port open to every pod", "networkpolicy.yaml", "        - namespaceSelector:\n            matchLabels:\n              kubernetes.io/metadata.name: monitoring\n", "        - namespaceSelector: {}\n", check_security),
        ("count_unknown_requests on", "configmap.yaml", "count_unknown_requests = false", "count_unknown_requests = true", check_security),
        ("the spill volume without sizeLimit", "deployment.yaml", "          emptyDir:\n            sizeLimit: 640Mi", "          emptyDir: {}", check_security),
        ("Dockerfile USER root", "Dockerfile", "USER 10001:10001", "USER 0", check_dockerfile),
        ("Dockerfile USER by name", "Dockerfile", "USER 10001:10001", "USER pointsman", check_dockerfile),
        ("Dockerfile COPY of a missing path", "Dockerfile", "COPY config/ /app/config/", "COPY conf/ /app/config/", check_dockerfile),
        ("Dockerfile COPY of an ignored path", "Dockerfile", "COPY config/ /app/config/", "COPY data/ /app/data/", check_dockerfile),
    ]
    quiet = lambda *_: None  # noqa: E731
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        def fresh():
            d = Path(tempfile.mkdtemp(dir=tmp))
            shutil.copytree(src, d / "kubernetes")
            shutil.copy(ROOT / "deploy/docker/Dockerfile", d / "Dockerfile")
            return Paths(kdir=d / "kubernetes", dockerfile=d / "Dockerfile")

        p = fresh()
        intact = check_manifests(p, quiet) + check_config(p, quiet) + check_security(p, quiet) + check_dockerfile(p, quiet)
        if intact:
            failures.append(f"the intact copy was rejected: {intact}")
        for label, name, old, new, check in cases:
            p = fresh()
            target = p.dockerfile if name == "Dockerfile" else p.kdir / name
            text = target.read_text()
            if old not in text:
                failures.append(f"{label}: {old!r} not found in {name} (update the self-test)")
                continue
            target.write_text(text.replace(old, new, 1))
            errors = check(p, quiet)
            if errors:
                print(f"  rejected, as it must be: {label}: {errors[0]}")
            else:
                failures.append(f"{label}: accepted")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sync-catalog", action="store_true", help="copy config/pointsman.toml's catalog into the ConfigMap")
    ap.add_argument("--no-self-test", action="store_true")
    args = ap.parse_args()
    p = Paths()
    if args.sync_catalog:
        sync_catalog(p)
        return 0
    failed = False
    steps = [
        (f"(a) manifests, kubernetes-validate {KV_VERSION}, strict, Kubernetes {' and '.join(K8S_VERSIONS)}", lambda: check_manifests(p) + check_rendered(p)),
        ("(b) ConfigMap pointsman.toml against config/pointsman.toml, and the Deployment", lambda: check_config(p)),
        ("(c) security posture: auth, Service, NetworkPolicy, feedback verification, spill volume", lambda: check_security(p)),
        ("(d) deploy/docker/Dockerfile", lambda: check_dockerfile(p)),
    ]
    if not args.no_self_test:
        steps.append(("negative self-test: broken copies must be rejected", self_test))
    for title, step in steps:
        print(title)
        errors = step()
        for e in errors:
            print(f"  FAIL {e}")
        failed |= bool(errors)
    print("deploy/check: FAILED" if failed else "deploy/check: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
