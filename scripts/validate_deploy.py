"""Checks deploy/, docker-compose.yml and the Dockerfile without a cluster or a Docker engine.

Run by scripts/validate-deploy.sh (which installs what this needs); see there for usage.

1. Renders every kustomize variant with kubectl's built-in kustomize (the same code as
   `kubectl apply -k`).
2. Validates every rendered object against the Kubernetes JSON schemas (kubernetes-validate,
   strict: unknown fields are errors) for the oldest and newest Kubernetes we support. Objects of
   CRDs (KEDA, Prometheus Operator) have no schema there: their required fields are checked here.
3. Checks what schemas cannot see: references between objects (selectors, ports, names), the
   security settings every workload must have, probes, grace periods, JetStream sizing against
   the streams' byte caps (common/src/topology.rs), KEDA's stream and consumer names against
   proto/src/subjects.rs, configuration variables against the README, and nats.conf with
   `nats-server -t`.
4. `docker-compose config -q` on docker-compose.yml.
5. The Dockerfile: --locked, a non-root distroless runtime, every workspace member copied.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The oldest Kubernetes the manifests support (preStop `sleep` is on by default from 1.30) and
# the newest this kubernetes-validate knows.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
CRD_KINDS = {"ScaledObject", "PodMonitor", "PrometheusRule"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
SECRET_NAME = "webhooks-secrets"
MIB = 1024 * 1024


class Checker:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.checks = 0

    def check(self, ok: bool, message: str) -> bool:
        self.checks += 1
        if not ok:
            self.errors.append(message)
        return ok


# ---------------------------------------------------------------- helpers


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def rust_const(path: Path, name: str) -> str:
    """The value of `pub const NAME: &str = "...";` in a Rust file."""
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', path.read_text())
    if not m:
        raise SystemExit(f"{path}: no `pub const {name}`")
    return m.group(1)


def quantity(text: str) -> int:
    """A Kubernetes quantity (10Gi, 512M, 1e3) in bytes or units."""
    m = re.fullmatch(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text}")
    factor = {None: 1, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "Ti": 1024**4,
              "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}[m.group(2)]
    return int(float(m.group(1)) * factor)


def nats_size(text: str) -> int:
    """A nats-server size (8G, 512MB, 1T): binary multiples, as nats-server reads them."""
    m = re.fullmatch(r"([0-9]+)\s*([KMGT])?I?B?", str(text).strip().upper())
    if not m:
        raise ValueError(f"not a nats-server size: {text}")
    return int(m.group(1)) * {None: 1, "K": 1024, "M": MIB, "G": 1024 * MIB, "T": 1024**4}[m.group(2)]


def duration_seconds(text: str) -> float:
    """A humantime duration as the services read it (20s, 2m, 1h30m)."""
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)\s*(ms|s|m|h|d)", text):
        total += float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]
    return total


def jetstream_reservation(events_max_bytes: int) -> int:
    """What the streams and buckets of common/src/topology.rs reserve, on each replica."""
    m = events_max_bytes
    return (6 * m                      # events, deliveries, replays, waiting, dead letters, attempts
            + max(m // 4, 16 * MIB)    # rejects
            + max(m // 4, 16 * MIB)    # event-id index stream
            + max(m // 4, 16 * MIB)    # event-id index bucket of earlier versions (read only)
            + 2 * 64 * MIB             # waiting-room ticks, fan-out progress bucket
            + 3 * 256 * MIB)           # subscriptions, api keys, endpoint health buckets


def matches(selector: dict, labels: dict) -> bool:
    """Whether `labels` satisfy a label selector (matchLabels and matchExpressions)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pod_template(obj: dict) -> dict:
    return obj["spec"]["template"]


def container_ports(template: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"]
            for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p}


# ---------------------------------------------------------------- rendering


def render(kubectl: str, target: Path) -> list[dict]:
    result = run([kubectl, "kustomize", str(target)])
    if result.returncode != 0:
        raise SystemExit(f"kustomize failed for {target}:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def variants() -> dict[str, Path]:
    """Every kustomization a user may apply; components are rendered on top of the base."""
    out = {
        "deploy/base": ROOT / "deploy/base",
        "deploy/overlays/production": ROOT / "deploy/overlays/production",
    }
    check_dir = ROOT / "target/deploy-check"
    for component in sorted((ROOT / "deploy/components").iterdir()):
        if component.name == "monitoring":
            continue  # in the production overlay already
        d = check_dir / component.name
        d.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(ROOT / "deploy", d)
        (d / "kustomization.yaml").write_text(
            "# Generated by scripts/validate_deploy.py: the base with one component.\n"
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - {rel}/base\ncomponents:\n  - {rel}/components/{component.name}\n")
        out[f"deploy/base + components/{component.name}"] = d
    return out


# ---------------------------------------------------------------- checks


def check_schemas(c: Checker, name: str, objs: list[dict]) -> None:
    for obj in objs:
        ident = f"{name}: {obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if obj.get("kind") in CRD_KINDS:
            continue  # check_crds
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                c.check(True, "")
            except kubernetes_validate.ValidationError as e:
                c.check(False, f"{ident}: Kubernetes {version} schema: {e.message} at "
                               f"{'.'.join(str(p) for p in e.path)}")
            except kubernetes_validate.SchemaNotFoundError:
                c.check(False, f"{ident}: no Kubernetes {version} schema for "
                               f"{obj.get('apiVersion')} {obj.get('kind')}")


def check_crds(c: Checker, name: str, objs: list[dict], stream: str, consumer: str) -> None:
    """Required fields of the CRD objects, which have no schema in kubernetes-validate."""
    deployments = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
    pods = [pod_template(o) for o in objs if o["kind"] in WORKLOAD_KINDS]
    for obj in objs:
        kind, meta, spec = obj["kind"], obj["metadata"], obj.get("spec") or {}
        ident = f"{name}: {kind}/{meta.get('name')}"
        if kind == "ScaledObject":
            c.check(obj["apiVersion"] == "keda.sh/v1alpha1", f"{ident}: apiVersion keda.sh/v1alpha1")
            target = (spec.get("scaleTargetRef") or {}).get("name")
            c.check(target in deployments, f"{ident}: scaleTargetRef.name {target!r} is no Deployment")
            lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
            c.check(isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi,
                    f"{ident}: 1 <= minReplicaCount <= maxReplicaCount")
            triggers = spec.get("triggers") or []
            c.check(bool(triggers), f"{ident}: no triggers")
            for t in triggers:
                md = t.get("metadata") or {}
                c.check(bool(t.get("type")), f"{ident}: a trigger without type")
                # KEDA's trigger metadata is map[string]string: a bare number fails at apply.
                c.check(all(isinstance(v, str) for v in md.values()),
                        f"{ident}: trigger metadata values must be strings: {md}")
                if t.get("type") != "nats-jetstream":
                    continue
                for key in ("natsServerMonitoringEndpoint", "account", "stream", "consumer",
                            "lagThreshold"):
                    c.check(bool(md.get(key)), f"{ident}: nats-jetstream trigger needs {key}")
                c.check(md.get("stream") == stream,
                        f"{ident}: stream {md.get('stream')!r} is not EVENTS_STREAM {stream!r}")
                c.check(md.get("consumer") == consumer,
                        f"{ident}: consumer {md.get('consumer')!r} is not FANOUT_CONSUMER {consumer!r}")
                # <headless service>.<namespace>.svc...:8222, in the object's own namespace.
                host = str(md.get("natsServerMonitoringEndpoint", ""))
                parts = host.split(".")
                ns = meta.get("namespace", "default")
                c.check(len(parts) > 2 and parts[1] == ns and host.endswith(":8222"),
                        f"{ident}: natsServerMonitoringEndpoint {host!r} is not "
                        f"<service>.{ns}.svc...:8222")
                services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
                svc = services.get(parts[0])
                c.check(svc is not None and svc["spec"].get("clusterIP") == "None",
                        f"{ident}: {parts[0]!r} is not a headless Service (the scaler asks the "
                        f"consumer leader at <pod>.<service>)")
        elif kind == "PodMonitor":
            selector = spec.get("selector") or {}
            selected = [p for p in pods if matches(selector, p["metadata"].get("labels", {}))]
            c.check(bool(selected), f"{ident}: selector matches no pod template")
            for ep in spec.get("podMetricsEndpoints") or []:
                c.check(all(ep.get("port") in container_ports(p) for p in selected),
                        f"{ident}: port {ep.get('port')!r} is not a named port of its pods")
            c.check(bool(spec.get("podMetricsEndpoints")), f"{ident}: no podMetricsEndpoints")
        elif kind == "PrometheusRule":
            groups = spec.get("groups") or []
            c.check(bool(groups), f"{ident}: no groups")
            for g in groups:
                for r in g.get("rules") or []:
                    c.check(bool(r.get("expr")) and bool(r.get("alert") or r.get("record")),
                            f"{ident}: rule without expr or alert/record in group {g.get('name')}")


def check_references(c: Checker, name: str, objs: list[dict]) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    workloads = [o for o in objs if o["kind"] in WORKLOAD_KINDS]
    templates = [pod_template(o) for o in workloads]

    for svc in by_kind.get("Service", {}).values():
        ident = f"{name}: Service/{svc['metadata']['name']}"
        selected = [t for t in templates if matches({"matchLabels": svc["spec"]["selector"]},
                                                    t["metadata"].get("labels", {}))]
        if not c.check(bool(selected), f"{ident}: selector matches no pod template"):
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            ok = all((target in container_ports(t)) if isinstance(target, str)
                     else (target in container_ports(t).values()) for t in selected)
            c.check(ok, f"{ident}: targetPort {target!r} is not a port of its pods")

    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for o in by_kind.get(kind, {}).values():
            sel = o["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]
            c.check(any(matches(sel, t["metadata"].get("labels", {})) for t in templates),
                    f"{name}: {kind}/{o['metadata']['name']} selects no pods")

    # The peers a NetworkPolicy names in this namespace must exist, or the traffic it means to
    # allow is silently dropped (a peer with a namespaceSelector may be elsewhere).
    for np in by_kind.get("NetworkPolicy", {}).values():
        rules = [*(np["spec"].get("ingress") or []), *(np["spec"].get("egress") or [])]
        for peer in (p for r in rules for p in (r.get("from") or r.get("to") or [])):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                c.check(any(matches(peer["podSelector"], t["metadata"].get("labels", {}))
                            for t in templates),
                        f"{name}: NetworkPolicy/{np['metadata']['name']} names peers "
                        f"{peer['podSelector']} that match no pods")

    # One autoscaler per Deployment: an HPA and a ScaledObject (which makes its own HPA) on the
    # same one would fight over its replicas.
    scaled: dict[str, list[str]] = {}
    for hpa in by_kind.get("HorizontalPodAutoscaler", {}).values():
        ref = hpa["spec"]["scaleTargetRef"]
        c.check(ref["name"] in by_kind.get(ref["kind"], {}),
                f"{name}: HorizontalPodAutoscaler/{hpa['metadata']['name']} targets a missing "
                f"{ref['kind']}/{ref['name']}")
        scaled.setdefault(ref["name"], []).append(f"HPA {hpa['metadata']['name']}")
    for so in by_kind.get("ScaledObject", {}).values():
        scaled.setdefault(so["spec"]["scaleTargetRef"]["name"], []).append(
            f"ScaledObject {so['metadata']['name']}")
    for target, scalers in scaled.items():
        c.check(len(scalers) == 1, f"{name}: Deployment/{target} has several autoscalers: {scalers}")
    for d in by_kind.get("Deployment", {}).values():
        if d["metadata"]["name"] in scaled:
            c.check("replicas" not in d["spec"],
                    f"{name}: Deployment/{d['metadata']['name']} sets replicas, which its "
                    f"autoscaler owns (every apply would reset it)")

    # ConfigMaps and Secrets the pods read.
    secret_keys = set(yaml.safe_load((ROOT / "deploy/base/secret.example.yaml").read_text())
                      ["stringData"]) | {"WEBHOOKS_MASTER_KEY_PREVIOUS"}
    for w in workloads:
        spec = pod_template(w)["spec"]
        for ctr in spec["containers"]:
            ident = f"{name}: {w['kind']}/{w['metadata']['name']} container {ctr['name']}"
            for src in ctr.get("envFrom", []):
                if "configMapRef" in src:
                    c.check(src["configMapRef"]["name"] in by_kind.get("ConfigMap", {}),
                            f"{ident}: ConfigMap {src['configMapRef']['name']} is not rendered")
            for env in ctr.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    c.check(ref["name"] == SECRET_NAME and ref["key"] in secret_keys,
                            f"{ident}: secret {ref['name']}/{ref['key']} is not in "
                            f"deploy/base/secret.example.yaml")
        for vol in spec.get("volumes", []):
            if "configMap" in vol:
                c.check(vol["configMap"]["name"] in by_kind.get("ConfigMap", {}),
                        f"{name}: {w['metadata']['name']}: volume ConfigMap "
                        f"{vol['configMap']['name']} is not rendered")


def check_workloads(c: Checker, name: str, objs: list[dict]) -> None:
    """Security context, probes, resources and grace periods of every workload."""
    config = next((o["data"] for o in objs if o["kind"] == "ConfigMap"
                   and o["metadata"]["name"].startswith("webhooks-config")), {})
    grace = duration_seconds(config.get("WEBHOOKS_SHUTDOWN_GRACE", "20s"))
    expected = {"ingest": ("http", 8080), "dispatcher": ("metrics", 9090)}
    for w in (o for o in objs if o["kind"] in WORKLOAD_KINDS):
        wname = w["metadata"]["name"]
        spec = pod_template(w)["spec"]
        psc = spec.get("securityContext") or {}
        ident = f"{name}: {w['kind']}/{wname}"
        c.check(spec.get("automountServiceAccountToken") is False,
                f"{ident}: automountServiceAccountToken must be false (no API access needed)")
        c.check((psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
                f"{ident}: pod seccompProfile RuntimeDefault")
        for ctr in spec["containers"]:
            cid = f"{ident} container {ctr['name']}"
            sc = ctr.get("securityContext") or {}
            c.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cid}: runAsNonRoot")
            c.check(sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, f"{cid}: runs as uid 0")
            c.check(sc.get("readOnlyRootFilesystem") is True, f"{cid}: readOnlyRootFilesystem")
            c.check(sc.get("allowPrivilegeEscalation") is False, f"{cid}: allowPrivilegeEscalation")
            c.check((sc.get("capabilities") or {}).get("drop") == ["ALL"], f"{cid}: drop ALL caps")
            res = ctr.get("resources") or {}
            c.check({"cpu", "memory"} <= set(res.get("requests") or {}),
                    f"{cid}: cpu and memory requests")
            c.check("memory" in (res.get("limits") or {}), f"{cid}: a memory limit")
            ports = {p["name"]: p["containerPort"] for p in ctr.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                get = (ctr.get(probe) or {}).get("httpGet")
                if c.check(get is not None, f"{cid}: {probe} (httpGet)"):
                    c.check(get["port"] in ports or get["port"] in ports.values(),
                            f"{cid}: {probe} port {get['port']!r} is not a container port")
            if wname in expected:
                port_name, port = expected[wname]
                c.check(ports.get(port_name) == port, f"{cid}: port {port_name} must be {port}")
                path = lambda probe: ((ctr.get(probe) or {}).get("httpGet") or {}).get("path")
                c.check(path("readinessProbe") == "/readyz", f"{cid}: readiness on /readyz")
                c.check(path("livenessProbe") == "/healthz", f"{cid}: liveness on /healthz")
                sleep = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
                # Room for the preStop sleep, the drain (WEBHOOKS_SHUTDOWN_GRACE) and the
                # NATS flush after it.
                c.check(spec.get("terminationGracePeriodSeconds", 30) >= sleep + grace + 10,
                        f"{cid}: terminationGracePeriodSeconds must exceed preStop sleep "
                        f"({sleep} s) + WEBHOOKS_SHUTDOWN_GRACE ({grace:g} s) + 10 s")


def check_config(c: Checker, name: str, objs: list[dict], nats_server: str) -> None:
    """The services' configuration, and NATS' against it."""
    readme = (ROOT / "README.md").read_text()
    maps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    config = next((m["data"] for n, m in maps.items() if n.startswith("webhooks-config")), None)
    if not c.check(config is not None, f"{name}: no webhooks-config ConfigMap"):
        return
    for key in config:
        c.check(re.search(rf"`{key}[`=]", readme) is not None, f"{name}: webhooks-config sets {key}, which README.md "
                                      f"(Configuration) does not know")
    # The dispatcher's payload budget (WEBHOOKS_PAYLOAD_MEMORY) is what its memory grows with
    # under load; the rest (the subscription index, connections) needs the other half.
    dispatcher = next((o for o in objs if o["kind"] == "Deployment"
                       and o["metadata"]["name"] == "dispatcher"), None)
    if dispatcher is not None:
        limit = (next(ct for ct in pod_template(dispatcher)["spec"]["containers"])
                 .get("resources", {}).get("limits", {}).get("memory"))
        payload = int(config.get("WEBHOOKS_PAYLOAD_MEMORY", str(64 * MIB)))
        c.check(limit is not None and payload * 2 <= quantity(limit),
                f"{name}: WEBHOOKS_PAYLOAD_MEMORY ({payload} B) must be at most half the "
                f"dispatcher's memory limit ({limit})")
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    host, _, port = config.get("NATS_URL", "").removeprefix("nats://").partition(":")
    svc = services.get(host)
    c.check(svc is not None and any(p["port"] == int(port or 4222) for p in svc["spec"]["ports"]),
            f"{name}: NATS_URL {config.get('NATS_URL')!r} is not a Service port here")

    sts = next((o for o in objs if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "nats"), None)
    if not c.check(sts is not None, f"{name}: no nats StatefulSet"):
        return
    replicas = sts["spec"]["replicas"]
    c.check(int(config.get("WEBHOOKS_STREAM_REPLICAS", "1")) in (1, 3)
            and int(config.get("WEBHOOKS_STREAM_REPLICAS", "1")) <= replicas,
            f"{name}: WEBHOOKS_STREAM_REPLICAS must be 1 or 3 and at most the {replicas} NATS nodes")
    ctr = sts["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    env["POD_NAME"] = f"{sts['metadata']['name']}-0"

    # Every stream and bucket reserves its byte cap on each replica (R3: on every node).
    events_max = int(config.get("WEBHOOKS_EVENTS_MAX_BYTES", str(1024 * MIB)))
    need = jetstream_reservation(events_max)
    store = nats_size(env.get("JS_MAX_FILE_STORE", "0"))
    c.check(store >= need, f"{name}: JS_MAX_FILE_STORE {env.get('JS_MAX_FILE_STORE')} is below "
                           f"the {need / 1024**3:.2f} GiB the streams reserve for "
                           f"WEBHOOKS_EVENTS_MAX_BYTES={events_max}")
    pvc = next(t for t in sts["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == "data")
    disk = quantity(pvc["spec"]["resources"]["requests"]["storage"])
    c.check(disk >= store, f"{name}: the NATS volume ({disk} B) is smaller than JS_MAX_FILE_STORE")

    # nats.conf: routes name every node through the headless Service, and nats-server accepts it
    # with the container's environment.
    conf_map = next((m for n, m in maps.items() if n.startswith("nats-config")), None)
    if not c.check(conf_map is not None, f"{name}: no nats-config ConfigMap"):
        return
    conf = conf_map["data"]["nats.conf"]
    service = sts["spec"]["serviceName"]
    routes = set(re.findall(r"nats://([a-z0-9.-]+):6222", conf))
    want = {f"{sts['metadata']['name']}-{i}.{service}" for i in range(replicas)}
    c.check(routes == want, f"{name}: nats.conf routes {sorted(routes)} are not {sorted(want)}")
    c.check(services.get(service, {}).get("spec", {}).get("clusterIP") == "None",
            f"{name}: StatefulSet serviceName {service} is not a headless Service")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nats.conf"
        path.write_text(conf)
        result = run([nats_server, "-c", str(path), "-t"],
                     env={**os.environ, **{k: v for k, v in env.items() if v is not None}})
        c.check(result.returncode == 0,
                f"{name}: nats-server -t rejects nats.conf: {result.stderr.strip() or result.stdout.strip()}")


def check_objects(c: Checker, name: str, objs: list[dict], nats_server: str, stream: str,
                  consumer: str) -> None:
    """Every check of rendered manifests."""
    check_schemas(c, name, objs)
    check_crds(c, name, objs, stream, consumer)
    check_references(c, name, objs)
    check_workloads(c, name, objs)
    check_config(c, name, objs, nats_server)


def check_compose(c: Checker, docker_compose: str, root: Path = ROOT) -> None:
    result = run([docker_compose, "-f", str(root / "docker-compose.yml"), "config", "-q"], cwd=root)
    if not c.check(result.returncode == 0, f"docker-compose config: {result.stderr.strip()}"):
        return
    services = yaml.safe_load((root / "docker-compose.yml").read_text())["services"]
    for svc in ("nats", "ingest", "dispatcher", "receiver", "jaeger"):
        c.check(svc in services, f"docker-compose.yml: no service {svc}")
    for svc in ("ingest", "dispatcher"):
        s = services.get(svc, {})
        c.check(s.get("build") == ".", f"docker-compose.yml: {svc} must build the Dockerfile")
        c.check(s.get("environment", {}).get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4318",
                f"docker-compose.yml: {svc} must export traces to jaeger")


def check_dockerfile(c: Checker, root: Path = ROOT) -> None:
    text = (root / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in lines if l.upper().startswith("FROM ")]
    c.check(bool(froms) and "distroless" in froms[-1] and ":nonroot" in froms[-1],
            "Dockerfile: the runtime stage must be a distroless :nonroot image")
    builds = [l for l in text.splitlines() if "cargo build" in l]
    c.check(bool(builds) and all("--locked" in l for l in builds), "Dockerfile: cargo build --locked")
    users = [l.split(None, 1)[1] for l in lines if l.upper().startswith("USER ")]
    c.check(bool(users) and users[-1].split(":")[0] not in ("0", "root"),
            "Dockerfile: the final USER must not be root")
    c.check("EXPOSE 8080 9090" in lines, "Dockerfile: EXPOSE 8080 9090")
    members = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["members"]
    for m in members:
        c.check(f"COPY {m}/Cargo.toml {m}/" in lines,
                f"Dockerfile: workspace member {m} is not copied into the deps stage")
    ignored = (root / ".dockerignore").read_text().split()
    c.check("target" in ignored and ".git" in ignored, ".dockerignore: target and .git")


# ---------------------------------------------------------------- self-test


def self_test(good: list[dict], nats_server: str, docker_compose: str, stream: str,
              consumer: str) -> list[str]:
    """Breaks the rendered production overlay `good` (and a copy of the compose file and Dockerfile) in
    the ways the checks exist for, and returns every break that was not caught: a check that
    cannot fail would let its mistake through."""
    import copy

    def find(objs: list[dict], kind: str, name: str) -> dict:
        return next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name)

    def ctr(objs: list[dict], name: str) -> dict:
        return pod_template(find(objs, "Deployment", name))["spec"]["containers"][0]

    def webhooks_config(objs: list[dict]) -> dict:
        return next(o for o in objs if o["kind"] == "ConfigMap"
                    and o["metadata"]["name"].startswith("webhooks-config"))["data"]

    def nats_env(objs: list[dict]) -> list[dict]:
        return pod_template(find(objs, "StatefulSet", "nats"))["spec"]["containers"][0]["env"]

    def set_env(objs: list[dict], key: str, value: str) -> None:
        next(e for e in nats_env(objs) if e["name"] == key)["value"] = value

    def trigger(objs: list[dict]) -> dict:
        return find(objs, "ScaledObject", "dispatcher")["spec"]["triggers"][0]["metadata"]

    breaks = {
        "an unknown field (strict schema)":
            lambda o: ctr(o, "ingest").__setitem__("imagePullPolicyy", "Always"),
        "a container running as root":
            lambda o: ctr(o, "dispatcher")["securityContext"].__setitem__("runAsNonRoot", False),
        "a writable root filesystem":
            lambda o: ctr(o, "ingest")["securityContext"].__setitem__("readOnlyRootFilesystem", False),
        "privilege escalation":
            lambda o: ctr(o, "ingest")["securityContext"].__setitem__("allowPrivilegeEscalation", True),
        "no readiness probe":
            lambda o: ctr(o, "dispatcher").pop("readinessProbe"),
        "liveness on the wrong path":
            lambda o: ctr(o, "ingest")["livenessProbe"]["httpGet"].__setitem__("path", "/readyz"),
        "no memory limit":
            lambda o: ctr(o, "dispatcher")["resources"]["limits"].pop("memory"),
        "a grace period shorter than the drain":
            lambda o: pod_template(find(o, "Deployment", "dispatcher"))["spec"].__setitem__(
                "terminationGracePeriodSeconds", 10),
        "a Service selecting no pods":
            lambda o: find(o, "Service", "ingest")["spec"]["selector"].__setitem__(
                "app.kubernetes.io/name", "nobody"),
        "a PodDisruptionBudget selecting no pods":
            lambda o: find(o, "PodDisruptionBudget", "dispatcher")["spec"]["selector"].__setitem__(
                "matchLabels", {"app.kubernetes.io/name": "nobody"}),
        "a Deployment with two autoscalers":
            lambda o: o.append({**copy.deepcopy(find(o, "HorizontalPodAutoscaler", "ingest")),
                                "metadata": {"name": "second", "namespace": "webhooks"}}),
        "a secret key the example does not have":
            lambda o: next(e for e in ctr(o, "ingest")["env"] if "valueFrom" in e)["valueFrom"]
                ["secretKeyRef"].__setitem__("key", "NOT_A_KEY"),
        "KEDA watching the wrong consumer":
            lambda o: trigger(o).__setitem__("consumer", "dispatcher-deliver"),
        "KEDA trigger metadata that is not a string":
            lambda o: trigger(o).__setitem__("lagThreshold", 1000),
        "JetStream storage below the streams' reservation":
            lambda o: set_env(o, "JS_MAX_FILE_STORE", "1G"),
        "R3 streams on a smaller cluster":
            lambda o: find(o, "StatefulSet", "nats")["spec"].__setitem__("replicas", 1),
        "a payload budget over half the dispatcher's memory limit":
            lambda o: webhooks_config(o).__setitem__("WEBHOOKS_PAYLOAD_MEMORY", str(4096 * MIB)),
        "a setting the README does not know":
            lambda o: webhooks_config(o).__setitem__("WEBHOOKS_NO_SUCH_SETTING", "1"),
        "a nats.conf nats-server rejects":
            lambda o: next(m for m in o if m["kind"] == "ConfigMap"
                           and m["metadata"]["name"].startswith("nats-config"))["data"].__setitem__(
                "nats.conf", "jetstream { max_file_store: }\n" + "cluster { routes: [\n"
                + "".join(f"nats://nats-{i}.nats-headless:6222\n" for i in range(3)) + "] }\n"),
    }
    missed = []
    for what, breaker in breaks.items():
        objs = copy.deepcopy(good)
        breaker(objs)
        c = Checker()
        check_objects(c, "self-test", objs, nats_server, stream, consumer)
        if not c.errors:
            missed.append(what)
    # (That the unbroken overlay passes is what main() checked before.)

    # The compose file and the Dockerfile, broken in a copy of the files they are checked with.
    compose = (ROOT / "docker-compose.yml").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    file_breaks = {
        "a compose file docker-compose rejects":
            ("docker-compose.yml", compose.replace("services:", "services:\n  broken: [", 1)),
        "a compose service without the trace viewer":
            ("docker-compose.yml", compose.replace("OTEL_EXPORTER_OTLP_ENDPOINT: http://jaeger:4318",
                                                   "OTEL_EXPORTER_OTLP_ENDPOINT: http://elsewhere:4318")),
        "a build without --locked": ("Dockerfile", dockerfile.replace(" --locked --offline", " --offline")),
        "a runtime stage running as root": ("Dockerfile", dockerfile.replace("USER 65532:65532", "USER root")),
        "a workspace member not copied":
            ("Dockerfile", dockerfile.replace("COPY bench/Cargo.toml bench/\n", "")),
    }
    for what, (file, text) in file_breaks.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for f in ("docker-compose.yml", "Dockerfile", "Cargo.toml", ".dockerignore"):
                (root / f).write_text((ROOT / f).read_text())
            if text == (ROOT / file).read_text():
                missed.append(f"{what}: the break did not apply (the file changed?)")
                continue
            (root / file).write_text(text)
            c = Checker()
            if file == "Dockerfile":
                check_dockerfile(c, root)
            else:
                check_compose(c, docker_compose, root)
            if not c.errors:
                missed.append(what)
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--nats-server", required=True)
    parser.add_argument("--docker-compose", required=True)
    args = parser.parse_args()

    subjects = ROOT / "proto/src/subjects.rs"
    stream = rust_const(subjects, "EVENTS_STREAM")
    consumer = rust_const(subjects, "FANOUT_CONSUMER")
    c = Checker()

    example = yaml.safe_load((ROOT / "deploy/base/secret.example.yaml").read_text())
    check_schemas(c, "deploy/base/secret.example.yaml", [example])

    rendered: dict[str, list[dict]] = {}
    for name, target in variants().items():
        objs = render(args.kubectl, target)
        rendered[name] = objs
        before = len(c.errors)
        kinds = sorted({o["kind"] for o in objs})
        check_objects(c, name, objs, args.nats_server, stream, consumer)
        skipped = sorted({o["kind"] for o in objs if o["kind"] in CRD_KINDS})
        status = "ok" if len(c.errors) == before else f"{len(c.errors) - before} problem(s)"
        print(f"{name}: {len(objs)} objects ({', '.join(kinds)}): {status}")
        if skipped:
            print(f"  no Kubernetes schema for the CRD kinds {', '.join(skipped)}: "
                  f"their required fields were checked instead")

    before = len(c.errors)
    check_compose(c, args.docker_compose)
    print(f"docker-compose.yml: {'ok' if len(c.errors) == before else 'problems'}")
    before = len(c.errors)
    check_dockerfile(c)
    print(f"Dockerfile: {'ok' if len(c.errors) == before else 'problems'}")

    missed = self_test(rendered["deploy/overlays/production"], args.nats_server, args.docker_compose, stream, consumer)
    for what in missed:
        c.errors.append(f"self-test: the checks let this through: {what}")
    print(f"self-test: {'every deliberate break caught' if not missed else f'{len(missed)} missed'}")

    for e in c.errors:
        print(f"ERROR {e}")
    print(f"deploy validation: {c.checks} checks, {len(c.errors)} problem(s) "
          f"(Kubernetes schemas {', '.join(K8S_VERSIONS)})")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
