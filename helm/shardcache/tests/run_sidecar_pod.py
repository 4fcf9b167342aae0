"""The chart's sidecar, run: `podman kube play` of the rendered example (trainer + shardcache
sidecar from the same image, the shared socket volume), reading a dataset from an S3 origin.

    run_sidecar_pod.py HELM MOTO_SERVER

Run with a Python that has the shardcache package and PyYAML (scripts/test.sh's .venv-wheel).
The origin is moto's S3 server on loopback; the pod uses the host's network (so both reach
it). Checked: the sidecar turns ready; the trainer container lists the dataset through the
sidecar's local socket; this process reads the object byte-exact through the same socket
(found in the pod's volume) and over TCP; the PyTorch example's script (rendered from the
chart, run by this Python, which has torch: the image has no Python) reads tar shards through
the socket with a DataLoader, every sample in each of two epochs; stopping the pod drains the
sidecar, which exits 0.

What podman cannot express is changed, and said: the native sidecar (an init container with
`restartPolicy: Always`) becomes a regular container of the pod, since podman runs init
containers to completion before the others, and the trainer is restarted on failure until
the sidecar answers (Kubernetes starts it after its native sidecar has started); the Job
becomes its pod (podman plays Pods); the
pod uses the host's network, where podman takes no `containerPort` mappings, so they are
dropped (the probes, whose ports are named, are checked here by requesting the same paths).
"""

import hashlib
import io
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

import yaml

import shardcache

helm, moto = sys.argv[1:3]
repo = pathlib.Path(__file__).resolve().parents[3]
env = dict(os.environ, CONTAINERS_CONF=os.environ.get("CONTAINERS_CONF", str(repo / "deploy/containers.conf")))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman(*args, check=True):
    r = subprocess.run(["podman", *args], env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"podman {' '.join(args)}: {r.stdout}{r.stderr}")
    return r


def wait_http(url, deadline_s=60):
    deadline = time.time() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise SystemExit(f"{url} never answered 200")
        time.sleep(0.2)


s3_port, data, control, admin = free_port(), free_port(), free_port(), free_port()
scratch = tempfile.mkdtemp()
origin = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(s3_port)], cwd=scratch,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
pod = "shardcache-trainer-pod"
try:
    wait_http(f"http://127.0.0.1:{s3_port}/moto-api/")
    rng = random.Random(7)
    body = rng.randbytes(12 << 20)
    # Tar shards for the PyTorch example: 3 shards of 5 samples.
    tars, expected = {}, []
    for i in range(3):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for j in range(5):
                sample = rng.randbytes(rng.randrange(1000, 300_000))
                info = tarfile.TarInfo(f"{i:04d}{j:02d}.bin")
                info.size = len(sample)
                tar.addfile(info, io.BytesIO(sample))
                expected.append(hashlib.sha256(f"train/pt/shard-{i}.tar/{info.name}".encode() + b"\0" + sample).digest())
        tars[f"pt/shard-{i}.tar"] = out.getvalue()
    objects = [("", b""), ("/shard-0.tar", body)] + [(f"/{k}", v) for k, v in tars.items()]
    for url, payload in [(f"http://127.0.0.1:{s3_port}/training{k}", v) for k, v in objects]:
        headers = {"Content-Type": "application/octet-stream"}
        urllib.request.urlopen(urllib.request.Request(url, data=payload, method="PUT", headers=headers)).read()

    dataset = {"name": "train", "origin": "s3://training/", "endpoint": f"http://127.0.0.1:{s3_port}",
               "region": "us-east-1", "access_key_id": "test", "secret_access_key": "test"}
    rendered = subprocess.run(
        [helm, "template", "shardcache", str(repo / "helm/shardcache"), "--namespace", "training",
         "--set", "mode=sidecar", "--set", "sidecarExample.enabled=true",
         "--set", "cache.ramMiB=256", "--set", "cache.responseBufferMiB=64",
         "--set", f"ports.data={data}", "--set", f"ports.control={control}", "--set", f"ports.admin={admin}",
         "--set-json", f"datasets=[{json.dumps(dataset)}]",
         "--set-json", 'sidecarExample.command=["/usr/local/bin/cachectl","ls","train/"]',
         "--show-only", "templates/configmap.yaml", "--show-only", "templates/sidecar-example.yaml"],
        check=True, capture_output=True, text=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    job = next(d for d in docs if d["kind"] == "Job")
    spec = job["spec"]["template"]["spec"]
    sidecar = spec.pop("initContainers")[0]
    assert sidecar.pop("restartPolicy") == "Always"
    spec["containers"].insert(0, sidecar)
    spec["hostNetwork"] = True
    # With the host's network podman takes no port mappings (the ports are the host's).
    for c in spec["containers"]:
        c.pop("ports", None)
    # Kubernetes starts the trainer once its native sidecar has started; podman starts them at
    # once, so the trainer is restarted until the sidecar answers.
    spec["restartPolicy"] = "OnFailure"
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod}, "spec": spec}
    play = pathlib.Path(scratch) / "pod.yaml"
    play.write_text(yaml.safe_dump_all([config_map, manifest]))
    podman("kube", "play", "--replace", str(play))

    wait_http(f"http://127.0.0.1:{admin}/readyz")
    # The trainer listed the dataset through the sidecar's local socket, then ended.
    deadline = time.time() + 60
    while podman("inspect", f"{pod}-trainer", "--format", "{{.State.Status}}").stdout.strip() != "exited":
        if time.time() > deadline:
            raise SystemExit("the trainer never finished: " + podman("logs", f"{pod}-trainer", check=False).stdout)
        time.sleep(0.2)
    trainer_logs = podman("logs", f"{pod}-trainer").stdout + podman("logs", f"{pod}-trainer").stderr
    code = podman("inspect", f"{pod}-trainer", "--format", "{{.State.ExitCode}}").stdout.strip()
    assert code == "0" and "shard-0.tar" in trainer_logs, f"trainer exit {code}: {trainer_logs}"

    # This process reads through the same socket (in the pod's volume) and over TCP.
    mounts = json.loads(podman("inspect", f"{pod}-shardcache", "--format", "{{json .Mounts}}").stdout)
    source = next(m["Source"] for m in mounts if m["Destination"] == "/run/shardcache")
    theirs = json.loads(podman("inspect", f"{pod}-trainer", "--format", "{{json .Mounts}}").stdout)
    assert source == next(m["Source"] for m in theirs if m["Destination"] == "/run/shardcache")
    local = shardcache.Client(os.path.join(source, "shardcache.sock"))
    assert local.read("train/shard-0.tar") == body, "bytes through the local socket"
    assert shardcache.Client(f"127.0.0.1:{data}").read("train/shard-0.tar") == body, "bytes over TCP"

    # The PyTorch example's trainer script, as the chart renders it, run here (the image has no
    # Python): its DataLoader reads the tar shards through the sidecar's socket.
    example = subprocess.run(
        [helm, "template", "shardcache", str(repo / "helm/shardcache"), "--set", "mode=sidecar",
         "--set", "pytorchExample.enabled=true", "--show-only", "templates/pytorch-example.yaml"],
        check=True, capture_output=True, text=True).stdout
    example_docs = [d for d in yaml.safe_load_all(example) if d]
    script = pathlib.Path(scratch) / "train.py"
    script.write_text(next(d for d in example_docs if d["kind"] == "ConfigMap")["data"]["train.py"])
    trainer_env = {e["name"]: e["value"] for e in next(d for d in example_docs if d["kind"] == "Job")
                   ["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert trainer_env["SHARDCACHE_DATA"] == "/run/shardcache/shardcache.sock"
    trained = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300,
        env=dict(os.environ, SHARDCACHE_DATA=os.path.join(source, "shardcache.sock"),
                 SHARDS="train/pt/", EPOCHS="2", WORKERS="2"))
    assert trained.returncode == 0, trained.stdout + trained.stderr
    digest = hashlib.sha256(b"".join(sorted(expected))).hexdigest()
    epochs = [line for line in trained.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2, trained.stdout
    for line in epochs:
        assert "15 samples from 3 shards" in line and digest in line, f"{line} (expected {digest})"

    # Stopping the pod sends SIGTERM: the sidecar drains and exits 0.
    podman("pod", "stop", "-t", "30", pod)
    code = podman("inspect", f"{pod}-shardcache", "--format", "{{.State.ExitCode}}").stdout.strip()
    logs = podman("logs", f"{pod}-shardcache").stderr + podman("logs", f"{pod}-shardcache").stdout
    assert code == "0", f"sidecar exit code {code}: {logs[-2000:]}"
    assert "shutting down" in logs, logs[-2000:]
    print("sidecar pod: ready, the trainer listed through the local socket, 12 MiB read byte-exact "
          "through the socket and over TCP, the PyTorch example's DataLoader (2 workers, 2 epochs) "
          "read every sample of 3 tar shards through the socket, drained and exited 0 on stop")
finally:
    podman("pod", "rm", "-f", "-t", "0", pod, check=False)
    origin.kill()
