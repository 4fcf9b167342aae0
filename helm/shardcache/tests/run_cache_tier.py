"""The chart's cache tier, run: the three-replica StatefulSet rendered from the chart, played
with `podman kube play` on a podman network of its own, read by a trainer pod through the
Service's name.

    run_cache_tier.py HELM MOTO_SERVER

Run as root with podman (scripts/test.sh does, with deploy/containers.conf). The origin is
moto's S3 server, run in a pod's network namespace on the same network (so it is reached only
there, at that pod's address), configured in the cache pods through `AWS_*` variables from the
origin Secret, plain http. Checked:

- every pod turns ready (`/readyz`), sees the other two as members found through the
  headless Service's name (`--peer-dns`) and knows its own address there as itself, and has
  its disk tier on its claim;
- a trainer pod copies the dataset through the ClusterIP Service's name with `cachectl cp`
  (byte-exact), the blocks owned by the other members served by them (their peer counters);
- stopping one pod drains it (SIGTERM, exit 0), the others mark it down, and the trainer's
  next copy through the Service name is byte-exact again.

What podman 4.3 cannot express is changed, and said: the StatefulSet becomes its three Pods
(`shardcache-0..2`, each with its PersistentVolumeClaim, a podman volume) since `kube play`
runs Pods and Deployments only; a crash ends the run rather than restarting
the pod (`restartPolicy: Never`); the Services become network aliases (the headless Service's
and the ClusterIP Service's names resolve to every pod's address through podman's DNS, where
Kubernetes gives the ClusterIP Service one virtual address); `containerPort`s are dropped, since podman publishes
each on the host's port of that number (Kubernetes publishes none); Secret volumes, which
crash podman 4.3's `kube play`, become host directories holding the same files (`envFrom` Secrets
are podman secrets, as kube play reads them).
"""

import base64
import copy
import hashlib
import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

helm, moto = sys.argv[1:3]
repo = pathlib.Path(__file__).resolve().parents[3]
env = dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", str(repo / "deploy/containers.conf")))
network = "shardcache-tier-test"
namespace = "training"
service = f"shardcache.{namespace}.svc.cluster.local"
peers_service = f"shardcache-peers.{namespace}.svc.cluster.local"
pods = [f"shardcache-{i}" for i in range(3)]
origin_pod, trainer_pod = "shardcache-origin", "shardcache-trainer"
secret_names = ["shardcache-origin-env"]


def podman(*args, check=True):
    r = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=180)
    if check and r.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait(what, check, deadline_s=90):
    deadline = time.time() + deadline_s
    last = None
    while True:
        try:
            if check():
                return
        except OSError as e:
            last = e
        if time.time() > deadline:
            raise SystemExit(f"{what}: not within {deadline_s} s ({last})")
        time.sleep(0.3)


def address(container):
    nets = json.loads(podman("inspect", container, "--format", "{{json .NetworkSettings.Networks}}").stdout)
    return nets[network]["IPAddress"]


def logs(container):
    r = podman("logs", container, check=False)
    return r.stdout + r.stderr


def metric(ip, name):
    _, text = get(f"http://{ip}:7073/metrics")
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def cleanup():
    podman("pod", "rm", "-f", "-t", "0", *pods, origin_pod, trainer_pod, check=False)
    for i in range(3):
        podman("volume", "rm", "-f", f"disk-shardcache-{i}", check=False)
    for name in secret_names:
        podman("secret", "rm", name, check=False)
    podman("network", "rm", "-f", network, check=False)


scratch = pathlib.Path(tempfile.mkdtemp())
origin = None
cleanup()
try:
    podman("network", "create", network)

    # The origin: moto in the network namespace of a pod of its own on the network.
    podman("pod", "create", "--name", origin_pod, "--network", network)
    podman("pod", "start", origin_pod)
    infra = podman("pod", "inspect", origin_pod, "--format", "{{.InfraContainerID}}").stdout.strip()
    pid = podman("inspect", infra, "--format", "{{.State.Pid}}").stdout.strip()
    origin_ip = address(infra)
    origin = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", moto, "-H", "0.0.0.0", "-p", "5000"],
                              cwd=scratch, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{origin_ip}:5000"
    wait("the origin", lambda: get(f"{endpoint}/moto-api/")[0] == 200)
    rng = random.Random(11)
    # Blocks of 1 MiB: each shard's blocks spread over the three members by placement.
    bodies = {f"shard-{i}.tar": rng.randbytes((6 << 20) + 1000 * i) for i in range(4)}
    headers = {"Content-Type": "application/octet-stream"}
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/training", data=b"", method="PUT", headers=headers)).read()
    for key, body in bodies.items():
        req = urllib.request.Request(f"{endpoint}/training/imagenet/{key}", data=body, method="PUT", headers=headers)
        urllib.request.urlopen(req).read()

    # The Secrets the values name. Files for the volumes; the origin's environment as a
    # podman secret (the flat JSON of base64 values podman 4.3's kube play reads).
    # One token for the trainer on both planes (cp of a prefix lists it on the control plane).
    token = "%032x" % rng.getrandbits(128)
    files = {"shardcache-tokens": {"tokens": f"{token} imagenet\n"},
             "shardcache-control": {"token": f"{token}\n"},
             "shardcache-cluster": {"secret": "%064x" % rng.getrandbits(256) + "\n"},
             "shardcache-reader": {"token": f"{token}\n"}}
    for name, items in files.items():
        d = scratch / "secrets" / name
        d.mkdir(parents=True)
        for key, value in items.items():
            (d / key).write_text(value)
            (d / key).chmod(0o644)
    origin_env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                  "AWS_ENDPOINT_URL": endpoint}
    secret_file = scratch / "origin-env.json"
    secret_file.write_text(json.dumps({k: base64.b64encode(v.encode()).decode() for k, v in origin_env.items()}))
    podman("secret", "create", "shardcache-origin-env", str(secret_file))

    rendered = subprocess.run(
        [helm, "template", "shardcache", str(repo / "helm/shardcache"), "--namespace", namespace,
         "-f", str(repo / "helm/shardcache/ci/statefulset-values.yaml"),
         "--set", "tls.secret=", "--set", "origin.envSecret=shardcache-origin-env",
         "--set", "cache.ramMiB=128", "--set", "cache.responseBufferMiB=32", "--set", "cache.overheadMiB=256",
         "--set", "cache.blockSizeMiB=1", "--set", "cache.disk.sizeMiB=256", "--set", "cache.disk.storageClass=",
         "--set", "settings.origin_concurrency=8", "--set", "preStopSleepSeconds=1",
         "--set-json", 'datasets=[{"name": "imagenet", "origin": "s3://training/imagenet/"}]'],
        check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config_map = kinds[("ConfigMap", "shardcache")]
    statefulset = kinds[("StatefulSet", "shardcache")]
    # The Services podman expresses as names: the headless one is what --peer-dns resolves.
    assert kinds[("Service", "shardcache-peers")]["spec"]["clusterIP"] == "None"
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--peer-dns={peers_service}:7070" in args, args

    config_dir = scratch / "config"
    config_dir.mkdir()
    for key, text in config_map["data"].items():
        (config_dir / key).write_text(text)
        (config_dir / key).chmod(0o644)
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "disk" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    manifests = []
    for i, name in enumerate(pods):
        # Each pod's claim: a podman volume, owned by the pod's fsGroup as the kubelet makes it.
        claim_name = f"disk-{name}"
        podman("volume", "create", claim_name)
        mountpoint = podman("volume", "inspect", claim_name, "--format", "{{.Mountpoint}}").stdout.strip()
        os.chown(mountpoint, 65532, 65532)
        spec = copy.deepcopy(statefulset["spec"]["template"]["spec"])
        spec["hostname"] = name
        # A crash fails the run with the pod's log instead of a restart loop.
        spec["restartPolicy"] = "Never"
        # podman publishes every containerPort on the host's port of that number (Kubernetes
        # publishes none): dropped, the pods are reached at their addresses on the network.
        for c in spec["containers"]:
            c.pop("ports", None)
        for volume in spec["volumes"]:
            if "secret" in volume:
                volume["hostPath"] = {"path": str(scratch / "secrets" / volume.pop("secret")["secretName"]),
                                      "type": "Directory"}
            if "configMap" in volume:
                assert volume.pop("configMap")["name"] == config_map["metadata"]["name"]
                volume["hostPath"] = {"path": str(config_dir), "type": "Directory"}
        spec["volumes"].append({"name": "disk", "persistentVolumeClaim": {"claimName": claim_name}})
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        manifests.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                          "spec": spec})
    tier = scratch / "tier.yaml"
    tier.write_text(yaml.safe_dump_all(manifests))
    podman("kube", "play", "--network", f"{network}:alias={peers_service},alias={service}", str(tier))
    ips = {name: address(f"{name}-shardcache") for name in pods}

    def running(name):
        state = podman("inspect", f"{name}-shardcache", "--format", "{{.State.Status}}").stdout.strip()
        if state != "running":
            raise SystemExit(f"{name} is {state}: {logs(name + '-shardcache')[-3000:]}")

    def every_pod_ready():
        for name, ip in ips.items():
            running(name)
            try:
                if get(f"http://{ip}:7073/readyz")[0] != 200:
                    return False
            except OSError:
                return False
        return True

    def all_members_up():
        for ip in ips.values():
            _, members = get(f"http://{ip}:7073/members")
            if sum(1 for line in members.splitlines() if " up " in f" {line} ") != 2:
                return False
            # Its own address in the headless Service's answer is known as itself.
            if f"{ip}:7070 self" not in members:
                return False
        return True

    try:
        wait("every pod ready", every_pod_ready)
        wait("every pod sees the other two", all_members_up)
    except SystemExit:
        for name in pods:
            print(f"--- {name}\n{logs(name + '-shardcache')[-3000:]}", file=sys.stderr)
        raise
    _, members = get(f"http://{ips['shardcache-0']}:7073/members")
    for name in pods:
        assert name in members, members

    def trainer(*command):
        """Runs cachectl in a trainer pod on the network; returns what it copied to /out."""
        out = scratch / "out"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        out.chmod(0o777)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": trainer_pod}, "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "trainer", "image": statefulset["spec"]["template"]["spec"]["containers"][0]["image"],
                "command": ["/usr/local/bin/cachectl", *command],
                "env": [{"name": "SHARDCACHE_DATA", "value": f"{service}:7070"},
                        {"name": "SHARDCACHE_TOKEN_FILE", "value": "/etc/shardcache/token/token"}],
                "securityContext": {"runAsUser": 65532, "readOnlyRootFilesystem": True},
                "volumeMounts": [{"name": "token", "mountPath": "/etc/shardcache/token", "readOnly": True},
                                 {"name": "out", "mountPath": "/out"}]}],
            "volumes": [{"name": "token", "hostPath": {"path": str(scratch / "secrets/shardcache-reader")}},
                        {"name": "out", "hostPath": {"path": str(out)}}]}}
        play = scratch / "trainer.yaml"
        play.write_text(yaml.safe_dump(pod))
        podman("pod", "rm", "-f", "-t", "0", trainer_pod, check=False)
        podman("kube", "play", "--network", network, str(play))
        container = f"{trainer_pod}-trainer"
        wait("the trainer", lambda: podman("inspect", container, "--format", "{{.State.Status}}").stdout.strip() == "exited")
        code = podman("inspect", container, "--format", "{{.State.ExitCode}}").stdout.strip()
        said = logs(container)
        assert code == "0", f"trainer `cachectl {' '.join(command)}` exit {code}: {said}"
        return {p.name: p.read_bytes() for p in out.iterdir()}, said

    def check_copy(copied, when):
        assert sorted(copied) == sorted(bodies), f"{when}: copied {sorted(copied)}"
        for key, body in bodies.items():
            assert hashlib.sha256(copied[key]).digest() == hashlib.sha256(body).digest(), f"{when}: {key} differs"

    served_before = sum(metric(ip, "shardcache_peer_requests_served_total") for ip in ips.values())
    copied, said = trainer("cp", "imagenet/", "/out/")
    check_copy(copied, "first copy")
    served = sum(metric(ip, "shardcache_peer_requests_served_total") for ip in ips.values()) - served_before
    origin_bytes = sum(metric(ip, "shardcache_origin_bytes_total") for ip in ips.values())
    total = sum(len(b) for b in bodies.values())
    assert served > 0, "no block was served by another member"
    # Each block is fetched from the origin once, by its owner, cluster-wide.
    assert origin_bytes <= total * 1.01, f"origin bytes {origin_bytes} for {total}"
    _, members_said = trainer("-o", "json", "members")
    listed = json.loads(members_said.strip().splitlines()[-1])["members"]
    assert len(listed) == 3, members_said
    # Each pod's disk tier is up on its claim.
    assert all(m["disk_capacity_bytes"] == 256 << 20 for m in listed), (
        members_said + "".join(line for line in logs("shardcache-0-shardcache").splitlines(True) if "disk" in line))

    # Stopping a pod drains it; the rest mark it down, and reads through the name go on.
    gone = "shardcache-2"
    podman("pod", "stop", "-t", "30", gone)
    code = podman("inspect", f"{gone}-shardcache", "--format", "{{.State.ExitCode}}").stdout.strip()
    said_gone = logs(f"{gone}-shardcache")
    assert code == "0", f"{gone} exit {code}: {said_gone[-2000:]}"
    assert "shutting down" in said_gone, said_gone[-2000:]
    del ips[gone]

    def gone_marked_down():
        for ip in ips.values():
            _, members = get(f"http://{ip}:7073/members")
            if sum(1 for line in members.splitlines() if " up " in f" {line} ") != 1:
                return False
        return True

    wait(f"the others mark {gone} down", gone_marked_down, 60)
    copied, _ = trainer("cp", "imagenet/", "/out/")
    check_copy(copied, f"after {gone} stopped")
    print(f"cache tier: 3 pods ready and members through {peers_service}; {len(bodies)} shards "
          f"({total >> 20} MiB) copied byte-exact through {service}, {served:.0f} peer requests "
          f"served, {origin_bytes / total:.2f}x the bytes from the origin; {gone} drained and exited 0 "
          f"on stop, marked down by the others, and the copy again byte-exact")
finally:
    if origin is not None:
        origin.kill()
    cleanup()
    shutil.rmtree(scratch, ignore_errors=True)
