"""Checks for deploy/, run by .ci/deploy-checks inside its tool venv.

  manifests VERSION FILE...  strict Kubernetes schemas, plus rekey's rules
  rules FILE                 alert rules: structure and metric names
  dashboard FILE OUT         Grafana JSON: structure and metric names; writes
                             its queries to OUT as a rule file for promtool
  check-config BINARY FILE...  `rekey check-config` with each overlay's settings
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / ".ci" / "schemas"
# Kinds the core schemas do not have, each with a schema kept here.
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json"}
# Labels a scrape adds besides the metric's own.
SCRAPE_LABELS = {"namespace", "job", "instance", "pod", "service", "container", "endpoint"}

failures = []


def fail(message):
    failures.append(message)
    print(f"  FAIL {message}")


def finish(what):
    if failures:
        sys.exit(f"{what}: {len(failures)} problem(s)")
    print(f"  ok: {what}")


# ---- metric names ----------------------------------------------------------


def contract():
    """Metric name -> (type, labels), from deploy/prometheus/metric-names.txt."""
    metrics = {}
    for line in (ROOT / "deploy/prometheus/metric-names.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, kind, *labels = line.split()
            metrics[name] = (kind, set(labels))
    return metrics


def series_names(metrics):
    """Every series name the contract yields: histograms give _bucket/_count/_sum."""
    names = {}
    for name, (kind, labels) in metrics.items():
        if kind == "histogram":
            names[name + "_bucket"] = labels | {"le"}
            names[name + "_count"] = labels
            names[name + "_sum"] = labels
        else:
            names[name] = labels
    return names


PROMQL_FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv", "changes",
    "resets", "histogram_quantile", "abs", "absent", "absent_over_time", "clamp_min", "clamp_max",
    "ceil", "floor", "round", "scalar", "vector", "time", "label_replace", "label_join",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time",
    "last_over_time", "predict_linear", "sort", "sort_desc", "timestamp",
    "label_values",  # Grafana's variable query
}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
MATCHERS = re.compile(r"\{([^}]*)\}")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENT = re.compile(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*")


def check_expr(where, expr, names):
    """Metric names, functions and label names of one PromQL expression."""
    grafana_vars = re.sub(r"\$\{?\w+\}?", "5m", expr)
    labels_used = set()
    metric_of_matchers = []
    # Label matchers: {name op "value", ...}, names only once strings are gone.
    no_strings = STRING.sub('""', grafana_vars)
    for body in MATCHERS.findall(no_strings):
        for matcher in filter(None, (m.strip() for m in body.split(","))):
            label = re.match(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)", matcher)
            if label is None:
                fail(f"{where}: cannot read the matcher {matcher!r}")
            else:
                labels_used.add(label.group(1))
    rest = MATCHERS.sub(" ", no_strings)
    for _, body in GROUPING.findall(rest):
        labels_used |= {x.strip() for x in body.split(",") if x.strip()}
    rest = GROUPING.sub(" ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    for match in IDENT.finditer(rest):
        word = match.group(0)
        follows = rest[match.end():].lstrip()[:1]
        if follows == "(":
            if word not in PROMQL_FUNCTIONS:
                fail(f"{where}: unknown function {word}()")
        elif word.lower() not in KEYWORDS:
            if word not in names:
                fail(f"{where}: {word} is not a metric in deploy/prometheus/metric-names.txt")
            else:
                metric_of_matchers.append(word)
    known_labels = SCRAPE_LABELS | set().union(*(names[m] for m in metric_of_matchers)) \
        if metric_of_matchers else SCRAPE_LABELS
    for label in labels_used - known_labels - {"le"}:
        fail(f"{where}: label {label} belongs to none of {sorted(set(metric_of_matchers))}")
    if not metric_of_matchers:
        fail(f"{where}: no metric in {expr!r}")


# ---- alert rules -----------------------------------------------------------


def rules(path):
    names = series_names(contract())
    doc = yaml.safe_load(Path(path).read_text())
    if set(doc) != {"groups"}:
        fail(f"{path}: top-level keys {sorted(doc)} (want only groups)")
    alerts = set()
    for group in doc.get("groups", []):
        if not group.get("name") or not group.get("rules"):
            fail(f"{path}: a group without name or rules")
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            where = f"{path}: {name}"
            if "alert" not in rule:
                fail(f"{where}: only alerts are expected here")
                continue
            alerts.add(name)
            if not re.fullmatch(r"Rekey[A-Za-z]+", name):
                fail(f"{where}: alert names start with Rekey")
            if rule.get("labels", {}).get("severity") not in {"warning", "critical"}:
                fail(f"{where}: severity label must be warning or critical")
            missing = {"summary", "description", "runbook"} - set(rule.get("annotations", {}))
            if missing:
                fail(f"{where}: annotations missing {sorted(missing)}")
            check_expr(where, rule["expr"], names)
    for wanted in ["RekeyOutboxGrowing", "RekeyMailPendingTooLong", "RekeyDeadLetters",
                   "RekeyReadinessFlapping", "RekeyHashPoolSaturated", "RekeyHighErrorRatio"]:
        if wanted not in alerts:
            fail(f"{path}: no alert {wanted}")
    finish(f"{path}: {len(alerts)} alerts, metric names from the contract")


# ---- Grafana dashboard ----------------------------------------------------


def dashboard(path, rule_file_out):
    names = series_names(contract())
    board = json.loads(Path(path).read_text())
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        fail(f"{path}: no datasource variable")
    exprs = []
    for name, var in variables.items():
        if var.get("type") == "query":
            query = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
            if query is None:
                fail(f"{path}: variable {name} is not label_values(METRIC, LABEL)")
                continue
            exprs.append((f"variable {name}", f"max by ({query.group(2)}) ({query.group(1)})"))
        if var.get("type") == "query" and var.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{path}: variable {name} does not use ${{datasource}}")
    panels = [p for p in board.get("panels", []) if p.get("type") != "row"]
    ids = [p["id"] for p in board["panels"]]
    if len(ids) != len(set(ids)):
        fail(f"{path}: panel ids repeat")
    for panel in panels:
        title = panel.get("title", "?")
        if panel.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{path}: panel {title!r} does not use ${{datasource}}")
        if not panel.get("targets"):
            fail(f"{path}: panel {title!r} has no query")
        for target in panel.get("targets", []):
            exprs.append((f"panel {title!r}", target["expr"]))
    for where, expr in exprs:
        check_expr(f"{path}: {where}", expr, names)
    # The queries as recording rules, so that promtool parses each one.
    queries = [e for w, e in exprs if not w.startswith("variable")]
    grafana = {"$__rate_interval": "5m", "$namespace": ".*", "$instance": ".*"}
    recorded = []
    for i, expr in enumerate(queries):
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        recorded.append({"record": f"dashboard:query_{i}", "expr": expr})
    Path(rule_file_out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    finish(f"{path}: {len(panels)} panels, {len(queries)} queries, metric names from the contract")


# ---- Kubernetes manifests --------------------------------------------------


def known_settings():
    """REKEY_* names rekey accepts: src/config/raw.rs's fields and companions."""
    raw = (ROOT / "src/config/raw.rs").read_text()
    body = raw.split("pub(super) struct RawSettings {", 1)[1].split("\n}\n", 1)[0]
    fields = set(re.findall(r"^\s*pub (\w+):", body, re.M))
    secrets = re.search(r"SECRET_SETTINGS: \[&str; \d+\] = \[([^\]]*)\]", raw)
    secret_files = {s + "_file" for s in re.findall(r'"(\w+)"', secrets.group(1))}
    return {"REKEY_" + f.upper() for f in fields | secret_files | {"config"}}


def mebibytes(quantity):
    units = {"Mi": 1, "Gi": 1024}
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()
    return int(number) * units[unit]


def check_pod(where, spec, settings, config):
    pod_security = spec.get("securityContext", {})
    if not pod_security.get("runAsNonRoot"):
        fail(f"{where}: pod runAsNonRoot")
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        fail(f"{where}: seccomp RuntimeDefault")
    if spec.get("automountServiceAccountToken") is not False:
        fail(f"{where}: automountServiceAccountToken false")
    for container in spec["containers"]:
        name = f"{where}/{container['name']}"
        security = container.get("securityContext", {})
        if security.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}: allowPrivilegeEscalation false")
        if security.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: readOnlyRootFilesystem")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            fail(f"{name}: drop ALL capabilities")
        resources = container.get("resources", {})
        if resources.get("requests", {}).get("memory") != resources.get("limits", {}).get("memory"):
            fail(f"{name}: memory request and limit differ")
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        for key in env:
            if key.startswith("REKEY_") and key not in settings:
                fail(f"{name}: {key} is not a rekey setting (rekey refuses to start)")
        if container.get("args") != ["serve"]:
            continue
        values = {**config, **env}
        # Memory = hash permits x argon2 memory + base (64 MiB).
        permits = int(values["REKEY_HASH_CONCURRENCY"])
        argon2_mib = int(values["REKEY_ARGON2_MEMORY_KIB"]) / 1024
        want = permits * argon2_mib + 64
        got = mebibytes(resources["limits"]["memory"])
        if got != want:
            fail(f"{name}: memory {got}Mi, want {permits} x {argon2_mib}Mi + 64Mi = {want}Mi")
        health_port = int(values["REKEY_HEALTH_LISTEN"].rsplit(":", 1)[1])
        for probe, service in [("startupProbe", "liveness"), ("livenessProbe", "liveness"),
                               ("readinessProbe", "readiness")]:
            grpc = container.get(probe, {}).get("grpc", {})
            if grpc.get("port") != health_port or grpc.get("service") != service:
                fail(f"{name}: {probe} must be grpc on {health_port}, service {service}")
        ports = {p["containerPort"] for p in container.get("ports", [])}
        for key in ["REKEY_LISTEN", "REKEY_HEALTH_LISTEN", "REKEY_METRICS_LISTEN"]:
            if int(values[key].rsplit(":", 1)[1]) not in ports:
                fail(f"{name}: {key} is not one of the container's ports")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        delay, drain = (int(values[k].rstrip("s")) for k in ["REKEY_SHUTDOWN_DELAY", "REKEY_SHUTDOWN_GRACE"])
        if grace < delay + 2 * drain:
            fail(f"{name}: terminationGracePeriodSeconds {grace} < delay + 2 x grace")


def manifests(version, paths):
    settings = known_settings()
    crd_validators = {key: jsonschema.Draft202012Validator(json.loads((SCHEMAS / f).read_text()))
                      for key, f in CRD_SCHEMAS.items()}
    for path in paths:
        resources = [r for r in yaml.safe_load_all(Path(path).read_text()) if r]
        configs = {}
        for r in resources:
            if r["kind"] == "ConfigMap":
                configs[r["metadata"]["name"]] = r.get("data", {})
                for key in r.get("data", {}):
                    if key.startswith("REKEY_") and key not in settings:
                        fail(f"{path}: ConfigMap {key} is not a rekey setting")
        for r in resources:
            where = f"{path}: {r['kind']}/{r['metadata']['name']}"
            key = (r["apiVersion"], r["kind"])
            if key in crd_validators:
                errors = list(crd_validators[key].iter_errors(r))
                for e in errors:
                    fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
                if not errors:
                    print(f"  ok {where} (own schema {CRD_SCHEMAS[key]}: the fields used, strict)")
                continue
            try:
                kv.validate(r, version, strict=True)
                print(f"  ok {where} (Kubernetes {version}, strict)")
            except kv.ValidationError as e:
                fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            except kv.SchemaNotFoundError as e:
                fail(f"{where}: {e.message}")
            if r["kind"] in {"Deployment", "Job"}:
                spec = r["spec"]["template"]["spec"]
                config = {}
                for container in spec["containers"]:
                    for source in container.get("envFrom", []):
                        config.update(configs.get(source["configMapRef"]["name"], {}))
                check_pod(where, spec, settings, config)
    finish(f"manifests against Kubernetes {version}")


def check_config(binary, paths):
    """The binary accepts each overlay's settings, secrets stood in for."""
    raw = (ROOT / "src/config/raw.rs").read_text()
    for path in paths:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
        maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        with tempfile.TemporaryDirectory() as tmp:
            stand_in = {"secrets/database-url": "postgres://rekey@db.invalid:5432/rekey",
                        "secrets/smtp-url": "smtps://rekey@smtp.invalid:465",
                        "secrets/api-keys": "web:reset+auth:" + "x" * 40}
            for name, text in stand_in.items():
                Path(tmp, name).parent.mkdir(parents=True, exist_ok=True)
                Path(tmp, name).write_text(text)
            Path(tmp, "tls").mkdir()
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=rekey",
                            "-keyout", f"{tmp}/tls/tls.key", "-out", f"{tmp}/tls/tls.crt"],
                           check=True, capture_output=True)
            env = {"PATH": os.environ["PATH"]}
            for source in container.get("envFrom", []):
                env.update(maps[source["configMapRef"]["name"]])
            env.update({e["name"]: e["value"] for e in container.get("env", [])})
            env = {k: v.replace("/etc/rekey", tmp).replace("/var/lib/rekey", tmp) for k, v in env.items()}
            run = subprocess.run([binary, "check-config"], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"{path}: rekey check-config: {run.stderr.strip()}")
        else:
            print(f"  ok {path}: " + " / ".join(line.strip() for line in run.stdout.splitlines()[1:]))
    finish(f"{binary} check-config accepts every overlay")


def strict_is_on(version):
    """A negative control: an unknown field must fail, or strict is not on."""
    bogus = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
             "spec": {"ports": [{"port": 1}], "notAField": True}}
    try:
        kv.validate(bogus, version, strict=True)
    except kv.ValidationError:
        print("  ok: strict validation rejects an unknown field")
        return
    sys.exit("kubernetes-validate accepted an unknown field: strict mode is not working")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "manifests":
        strict_is_on(args[0])
        manifests(args[0], args[1:])
    elif command == "rules":
        rules(args[0])
    elif command == "dashboard":
        dashboard(args[0], args[1])
    elif command == "check-config":
        check_config(args[0], args[1:])
    else:
        sys.exit(__doc__)
