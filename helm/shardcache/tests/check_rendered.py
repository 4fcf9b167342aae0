"""Checks of the chart's rendered manifests against the server they run.

    check_rendered.py RENDERED_DIR VALUES_DIR SHARDCACHE_BIN

RENDERED_DIR holds daemonset.yaml, statefulset.yaml and sidecar.yaml (`helm template` of the
values files of the same names in VALUES_DIR, sidecar with the example Job). Every flag the
chart passes and every config.toml key must be one `shardcache serve --help` lists; ports,
probes, the security context, the memory limit, the headless Service and the Secret
references must agree with the values and with each other.
"""

import pathlib
import re
import subprocess
import sys
import tomllib

import yaml

rendered, values_dir, binary = map(pathlib.Path, sys.argv[1:4])
help_text = subprocess.run(
    [str(binary), "serve", "--help"], check=True, capture_output=True, text=True
).stdout
FLAGS = set(re.findall(r"(--[a-z0-9-]+)", help_text))
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def docs(name):
    return [d for d in yaml.safe_load_all((rendered / name).read_text()) if d]


def values(name):
    base = yaml.safe_load((values_dir / "../values.yaml").read_text())
    over = yaml.safe_load((values_dir / name).read_text()) or {}

    def merge(a, b):
        for k, v in b.items():
            a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    return merge(base, over)


def flag_value(args, flag):
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def check_server(container, v, where, config):
    args = container["args"]
    check(args[0] == "serve", f"{where}: runs `serve`")
    for a in args[1:]:
        check(a.split("=", 1)[0] in FLAGS, f"{where}: {a} is not a flag of `shardcache serve`")
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    admin_port = int(flag_value(args, "--admin-listen").rsplit(":", 1)[1])
    probe_port = container["livenessProbe"]["httpGet"]["port"]
    check(ports.get(probe_port) == admin_port, f"{where}: probes on the admin port {admin_port}")
    check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{where}: liveness is /healthz")
    check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{where}: readiness is /readyz")
    sc = container["securityContext"]
    check(sc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, f"{where}: read-only root")
    check(sc.get("allowPrivilegeEscalation") is False, f"{where}: no privilege escalation")
    check(sc["capabilities"]["drop"] == ["ALL"], f"{where}: drops every capability")
    check(sc["capabilities"].get("add", []) in ([], ["IPC_LOCK"]), f"{where}: adds IPC_LOCK at most")
    c = v["cache"]
    memory = f'{c["ramMiB"] + c["responseBufferMiB"] + c["overheadMiB"]}Mi'
    check(container["resources"]["limits"]["memory"] == memory, f"{where}: memory limit {memory}")
    toml = tomllib.loads(config)
    for key in toml:
        if key != "datasets":
            check("--" + key.replace("_", "-") in FLAGS, f"{where}: config.toml key {key} unknown")
    check(toml["ram_cache"] == f'{c["ramMiB"]}MiB', f"{where}: ram_cache from cache.ramMiB")
    for ds in toml.get("datasets", []):
        check("name" in ds and "origin" in ds, f"{where}: dataset {ds} has a name and an origin")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    config_flag = flag_value(args, "--config")
    check(str(pathlib.Path(config_flag).parent) in mounts, f"{where}: --config is mounted")
    return args, ports


def secret_names(pod):
    return {vol["secret"]["secretName"] for vol in pod["volumes"] if "secret" in vol}


for mode in ["daemonset", "statefulset"]:
    v = values(f"{mode}-values.yaml")
    objs = docs(f"{mode}.yaml")
    kinds = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    workload = next(o for o in objs if o["kind"] in ("DaemonSet", "StatefulSet"))
    check(workload["kind"].lower() == mode, f"{mode}: the workload is a {mode}")
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config_map = next(o for o in objs if o["kind"] == "ConfigMap" and "config.toml" in o["data"])
    args, ports = check_server(container, v, mode, config_map["data"]["config.toml"])
    data_port = int(flag_value(args, "--listen").rsplit(":", 1)[1])
    check(ports.get("data") == data_port == v["ports"]["data"], f"{mode}: data port {data_port}")
    check(int(flag_value(args, "--control-listen").rsplit(":", 1)[1]) == ports.get("control"), f"{mode}: control port")
    services = [o for o in objs if o["kind"] == "Service"]
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    check(len(headless) == 1, f"{mode}: one headless Service")
    if headless:
        h = headless[0]
        check(h["spec"].get("publishNotReadyAddresses") is True, f"{mode}: the headless Service publishes starting members")
        peer_dns = flag_value(args, "--peer-dns")
        check(peer_dns.startswith(h["metadata"]["name"] + "."), f"{mode}: --peer-dns {peer_dns} names the headless Service")
        check(peer_dns.endswith(f':{v["ports"]["data"]}'), f"{mode}: --peer-dns uses the data port")
    for s in services:
        for p in s["spec"]["ports"]:
            check(p["targetPort"] in ports, f"{mode}: Service {s['metadata']['name']} targets port {p['targetPort']}")
    wanted = {x for x in [v["auth"]["tokensSecret"], v["auth"]["controlTokenSecret"], v["auth"]["clusterSecret"], v["tls"]["secret"]] if x}
    check(secret_names(pod) == wanted, f"{mode}: Secrets {secret_names(pod)} are {wanted}")
    if v["auth"]["tokensSecret"]:
        check(flag_value(args, "--access-tokens") is not None, f"{mode}: tokens are passed")
    if v["origin"]["envSecret"]:
        check(container["envFrom"][0]["secretRef"]["name"] == v["origin"]["envSecret"], f"{mode}: origin credentials")
    check(any(o["kind"] == "PodDisruptionBudget" for o in objs), f"{mode}: a PodDisruptionBudget")
    check(workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > container["lifecycle"]["preStop"]["sleep"]["seconds"], f"{mode}: the grace covers the preStop wait")
    if mode == "statefulset":
        claim = workload["spec"]["volumeClaimTemplates"][0]
        size = int(claim["spec"]["resources"]["requests"]["storage"].removesuffix("Mi"))
        check(size >= v["cache"]["disk"]["sizeMiB"], f"{mode}: the claim holds the disk tier")
        check("topologySpreadConstraints" in pod, f"{mode}: spread over nodes")
    else:
        check(any(vol.get("hostPath") for vol in pod["volumes"]), f"{mode}: the disk tier on the node")
        # The init container that gives the node's directory to the server's user.
        init = next((c for c in pod.get("initContainers", []) if c["name"] == "prepare-disk"), None)
        check(init is not None, f"{mode}: the hostPath directory is prepared")
        if init:
            disk_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "disk")
            check(init["args"][:2] == ["prepare-disk", disk_mount], f"{mode}: prepare-disk {disk_mount}")
            owner = f'{pod["securityContext"]["runAsUser"]}:{pod["securityContext"]["runAsGroup"]}'
            check(init["args"][2:] == ["--owner", owner], f"{mode}: given to the server's user {owner}")
            check(init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]},
                  f"{mode}: prepare-disk has CHOWN and FOWNER only")
            check(subprocess.run([str(binary), "prepare-disk", "--help"], capture_output=True).returncode == 0,
                  f"{mode}: `shardcache prepare-disk` exists")

# The sidecar, as the example Job renders it.
v = values("sidecar-values.yaml")
objs = docs("sidecar.yaml")
check(not any(o["kind"] in ("DaemonSet", "StatefulSet", "Service") for o in objs), "sidecar: no cache pods")
job = next(o for o in objs if o["kind"] == "Job")
pod = job["spec"]["template"]["spec"]
sidecar = next(c for c in pod["initContainers"] if c["name"] == "shardcache")
check(sidecar.get("restartPolicy") == "Always", "sidecar: a native sidecar")
config_map = next(o for o in objs if o["kind"] == "ConfigMap" and "sidecar.toml" in o["data"])
args, _ = check_server(sidecar, v, "sidecar", config_map["data"]["sidecar.toml"])
check(flag_value(args, "--listen").startswith("127.0.0.1:"), "sidecar: data plane on loopback")
socket = flag_value(args, "--local-socket")
trainer = pod["containers"][0]
env = {e["name"]: e["value"] for e in trainer.get("env", [])}
check(env.get("SHARDCACHE_DATA") == socket, "sidecar: the trainer's client uses the local socket")
shared = {m["name"] for m in trainer["volumeMounts"]} & {m["name"] for m in sidecar["volumeMounts"]}
check("shardcache-socket" in shared, "sidecar: the socket volume is shared")
vol = next(x for x in pod["volumes"] if x["name"] == "shardcache-socket")
check(vol["emptyDir"].get("medium") == "Memory", "sidecar: the socket volume is in memory")

if failures:
    print("chart checks failed:\n  " + "\n  ".join(failures))
    sys.exit(1)
print("chart checks: all held")
