#!/usr/bin/env python3
"""The image as users deploy it (issue 24), run for real with podman or docker:
three replicas of IMAGE, each `--memory 512m --memory-swap 512m --cpus 2
--read-only` (no writable /tmp either), all capabilities dropped, sharing one heads volume, behind Debian's nginx with
deploy/nginx/proxy.conf (deploy/local/topology.sh nginx). Checks, in order:

  startup     run -> ready with the baked head; non-root; HEALTHCHECK passes;
              the root file system refuses writes
  serving     /embed and /classify through nginx; every replica answers; the
              baked head is served on the int8 graph the image ships, as
              `make run` serves it
  heads       POST /heads trained on replica 1 (admin key, private port) is
              served by all three (the shared volume), with equal predictions
  drain       `stop` of one replica under load: requests sent / answered / failed
              (no failure allowed), exit code 0
  kill        `kill` (SIGKILL) of one replica under load: same, at nginx
  worst       the largest request the limits admit (all hidden states of 512
              tokens concatenated as .npy; the worst of bench/worst_request.py),
              found by bisection on one replica: it is answered, the replica
              is not OOM-killed, its peak RSS (VmHWM) is printed against 512 MiB
  too-small   the image under `--memory 320m`: the service refuses to start,
              saying that its models plus the largest admitted request exceed
              the limit (exit 1), instead of an OOM kill under that request
  compose     deploy/compose.yaml brought up with podman-compose (three
              replicas, nginx from Debian's package in its own image with
              deploy/nginx/compose-static.conf): /classify through its nginx
              answered by every replica, then down

Prints one JSON line per check and a summary; exits 1 when a check fails.

  tests/container/test_image.py [--image distilserve:latest] [--keep]
"""
import argparse, http.client, json, os, shutil, subprocess, sys, threading, time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN = "container-test-admin"
PREFIX = "distilserve-ct"
MEMORY = "512m"


def engine():
    name = os.environ.get("CONTAINER_ENGINE") or shutil.which("podman") or shutil.which("docker")
    if not name:
        return None
    if os.path.basename(name) == "podman":
        os.environ.setdefault("CONTAINERS_CONF", os.path.join(REPO, "deploy/podman/containers.conf"))
    return name


ENGINE = engine()
# podman mounts a writable /tmp under --read-only unless told not to; Kubernetes'
# readOnlyRootFilesystem gives none, nor does docker: run as they do.
NO_TMPFS = ["--read-only-tmpfs=false"] if ENGINE and os.path.basename(ENGINE) == "podman" else []


def sh(*args, check=True, capture=True):
    r = subprocess.run([ENGINE, *args], capture_output=capture, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.returncode}: {r.stderr.strip()[-600:]}")
    return r.stdout.strip() if capture else ""


def request(port, method, path, body=None, headers=None, timeout=120):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    h = {"content-type": "application/json", **(headers or {})} if data is not None else dict(headers or {})
    c.request(method, path, data, h)
    r = c.getresponse()
    payload = r.read()
    c.close()
    return r.status, dict(r.getheaders()), payload


class Replicas:
    def __init__(self, image, n, first_port):
        self.image, self.n = image, n
        self.ports = [first_port + i for i in range(n)]            # public, behind nginx
        self.private = [first_port + 100 + i for i in range(n)]    # /metrics, /info, admin routes
        self.volume = f"{PREFIX}-heads"

    def name(self, i):
        return f"{PREFIX}-{i + 1}"

    def run(self, i):
        sh("run", "-d", "--name", self.name(i),
           "--memory", MEMORY, "--memory-swap", MEMORY, "--cpus", "2", "--read-only", *NO_TMPFS,
           "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
           "-v", f"{self.volume}:/app/models/heads",
           "-p", f"127.0.0.1:{self.ports[i]}:8080", "-p", f"127.0.0.1:{self.private[i]}:9090",
           "-e", "DISTILSERVE_SERVER__PRIVATE_ADDRESS=0.0.0.0:9090",
           "-e", "DISTILSERVE_SERVER__SHUTDOWN_GRACE_MS=3000",
           "-e", "DISTILSERVE_MODEL__INTRA_THREADS=2",
           "-e", f"DISTILSERVE_SECURITY__ADMIN_KEY={ADMIN}",
           self.image)

    def wait_ready(self, i, limit_s=240):
        start = time.time()
        while time.time() - start < limit_s:
            state = self.state(i)
            if state["Status"] not in ("running", "created", "configured", "initialized"):
                raise RuntimeError(f"{self.name(i)} is {state['Status']} (exit {state['ExitCode']}): "
                                   + sh("logs", "--tail", "20", self.name(i), check=False))
            try:
                if request(self.ports[i], "GET", "/health/ready", timeout=2)[0] == 200:
                    return time.time() - start
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name(i)} not ready after {limit_s} s")

    def state(self, i):
        return json.loads(sh("inspect", "--format", "{{json .State}}", self.name(i)))

    def remove_all(self):
        for i in range(self.n):
            sh("rm", "-f", "-t", "0", self.name(i), check=False)
        sh("volume", "rm", "-f", self.volume, check=False)


class Load:
    """`workers` clients sending one sentence each to /classify through nginx
    until stopped; counts what was sent, answered 200 and failed."""

    def __init__(self, port, workers=8):
        self.port, self.workers = port, workers
        self.sent = self.answered = 0
        self.failures = []
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.client, args=(w,), daemon=True) for w in range(workers)]

    def client(self, w):
        i = 0
        while self.running:
            i += 1
            body = {"inputs": f"review {w}-{i}: a gripping, funny film"}
            with self.lock:
                self.sent += 1
            try:
                status, _, payload = request(self.port, "POST", "/classify", body, timeout=60)
                ok = status == 200
            except OSError as e:
                status, payload, ok = None, str(e).encode(), False
            with self.lock:
                if ok:
                    self.answered += 1
                else:
                    self.failures.append((status, payload[:200].decode("utf-8", "replace")))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.running = False
        for t in self.threads:
            t.join(90)

    def result(self):
        return {"sent": self.sent, "answered": self.answered, "failed": len(self.failures),
                "first_failures": self.failures[:3]}


def examples(per_label=12):
    words = [("sport", "match goal team score"), ("food", "soup bread cheese taste"),
             ("tech", "chip code screen battery")]
    out = []
    for label, vocabulary in words:
        v = vocabulary.split()
        out += [{"text": f"{v[i % 4]} {v[(i + 1) % 4]} and {v[(i + 2) % 4]} number {i}", "label": label}
                for i in range(per_label)]
    return out


def compose_check(a, check):
    compose = shutil.which("podman-compose") or os.path.join(
        os.environ.get("DISTILSERVE_CACHE", os.path.expanduser("~/.cache/distilserve")), "deploy-venv/bin/podman-compose")
    if os.path.basename(ENGINE) != "podman":
        return check("compose", True, skipped="docker: `docker compose` is not driven here")
    if not os.path.exists(compose):
        return check("compose", False, message="podman-compose missing: scripts/check-deploy.sh installs it")
    nginx_image = "localhost/distilserve-nginx:bookworm"
    if subprocess.run([ENGINE, "image", "exists", nginx_image]).returncode != 0:
        sh("build", "-q", "-f", f"{REPO}/tests/container/nginx.Containerfile", "-t", nginx_image, f"{REPO}/tests/container")
    port = a.port + 50
    env = {**os.environ, "DISTILSERVE_IMAGE": a.image, "NGINX_IMAGE": nginx_image,
           "NGINX_CONF": "./nginx/compose-static.conf", "DISTILSERVE_PORT": str(port)}
    project = ["-p", f"{PREFIX}-compose", "-f", f"{REPO}/deploy/compose.yaml"]
    subprocess.run([compose, *project, "down", "-v", "-t", "5"], env=env, capture_output=True)
    t = time.time()
    up = subprocess.run([compose, *project, "up", "-d"], env=env, capture_output=True, text=True)
    try:
        if up.returncode != 0:
            return check("compose", False, message=(up.stdout + up.stderr)[-1500:])
        upstreams, status = set(), None
        while time.time() - t < 180:
            try:
                status, headers, _ = request(port, "POST", "/classify", {"inputs": "a gripping, funny film"}, timeout=10)
                if status == 200:
                    upstreams.add(headers.get("X-Upstream"))
                    if len(upstreams) == 3:
                        break
                    continue
            except OSError:
                pass
            time.sleep(0.2)
        running = sh("ps", "--filter", f"label=io.podman.compose.project={PREFIX}-compose",
                     "--format", "{{.Names}} {{.Status}}").splitlines()
        check("compose", len(upstreams) == 3, seconds_to_all_replicas=round(time.time() - t, 1),
              replicas_answering=len(upstreams), containers=running)
    finally:
        subprocess.run([compose, *project, "down", "-v", "-t", "10"], env=env, capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default="distilserve:latest")
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--port", type=int, default=18180, help="nginx; replicas on PORT+1..., private PORT+101...")
    ap.add_argument("--keep", action="store_true", help="leave containers and nginx running")
    ap.add_argument("--skip-compose", action="store_true")
    a = ap.parse_args()
    if ENGINE is None:
        print("SKIPPED: no container engine (podman or docker) and none could be installed", flush=True)
        return 0

    results, failed = {}, []

    def check(name, ok, **figures):
        results[name] = {"ok": bool(ok), **figures}
        print(json.dumps({"check": name, **results[name]}), flush=True)
        if not ok:
            failed.append(name)

    reps = Replicas(a.image, a.replicas, a.port + 1)
    topo = f"/tmp/{PREFIX}-nginx"
    topo_env = {**os.environ, "REPLICAS": str(a.replicas), "NGINX_PORT": str(a.port), "BASE_PORT": str(a.port + 1)}
    reps.remove_all()
    subprocess.run([f"{REPO}/deploy/local/topology.sh", "down", topo], env=topo_env, capture_output=True)
    try:
        # --- startup
        t0 = time.time()
        reps.run(0)
        reps.wait_ready(0)
        ready_s = time.time() - t0   # from `run`: container creation and start included
        for i in range(1, a.replicas):
            reps.run(i)
        for i in range(1, a.replicas):
            reps.wait_ready(i)
        user = sh("exec", reps.name(0), "id", "-u")
        health = subprocess.run([ENGINE, "healthcheck", "run", reps.name(0)], capture_output=True, text=True) \
            if os.path.basename(ENGINE) == "podman" else None
        healthy = health is None or health.returncode == 0
        ro = subprocess.run([ENGINE, "exec", reps.name(0), "touch", "/app/probe", "/tmp/probe"],
                            capture_output=True, text=True)
        check("startup", ready_s < 60 and user != "0" and healthy and ro.returncode != 0 and "/tmp" in ro.stderr,
              run_to_ready_s=round(ready_s, 2), all_ready_s=round(time.time() - t0, 1), uid=user,
              healthcheck=("passed" if healthy else health.stdout + health.stderr) if health else "not run (docker)",
              root_fs_write=ro.stderr.strip()[-80:])

        subprocess.run([f"{REPO}/deploy/local/topology.sh", "nginx", topo], env=topo_env, check=True,
                       capture_output=True)

        # --- serving through nginx, and by every replica
        st, _, body = request(a.port, "POST", "/embed", {"inputs": ["a gripping, funny film"], "pooling": "mean"})
        dims = len(json.loads(body)["embeddings"][0]) if st == 200 else None
        st2, _, body2 = request(a.port, "POST", "/classify", {"inputs": "a gripping, funny film"})
        label = json.loads(body2)["predictions"][0]["label"] if st2 == 200 else None
        per_replica = [request(p, "POST", "/classify", {"inputs": "a gripping, funny film"})[0] for p in reps.ports]
        sentiment = json.loads(request(reps.ports[0], "GET", "/heads/sentiment")[2])
        graphs = {g["graph"]: g["phase"] for g in sentiment.get("graphs", [])}
        check("serving", st == 200 and dims and st2 == 200 and label == "pos" and per_replica == [200] * a.replicas
              and sentiment.get("graph") == "model.int8.onnx" and "model.int8.onnx" in graphs,
              embed_status=st, embed_dims=dims, classify_label=label, replicas_answering=per_replica,
              head_graph=sentiment.get("graph"), graphs=graphs)

        # --- a head trained over the API on replica 1, served by all
        t = time.time()
        st, _, body = request(reps.private[0], "POST", "/heads",
                              {"name": "topics", "examples": examples(), "description": "container test"},
                              {"authorization": f"Bearer {ADMIN}"})
        assert st == 202, body
        answers = [None] * a.replicas
        while time.time() - t < 180 and None in answers:
            for i, port in enumerate(reps.ports):
                if answers[i] is None:
                    s, _, b = request(port, "POST", "/classify", {"inputs": ["soup and bread", "goal and team"],
                                                                  "head": "topics"})
                    if s == 200:
                        answers[i] = [p["label"] for p in json.loads(b)["predictions"]]
            time.sleep(0.2)
        check("heads", None not in answers and all(x == answers[0] for x in answers),
              seconds_to_served_by_all=round(time.time() - t, 1), labels=answers)

        # --- drain: stop one replica under load
        with Load(a.port) as load:
            time.sleep(3)
            t = time.time()
            sh("stop", "-t", "40", reps.name(1))
            stop_s = time.time() - t
            time.sleep(3)
        exit_code = reps.state(1)["ExitCode"]
        r = load.result()
        check("drain", r["failed"] == 0 and r["answered"] > 0 and exit_code == 0,
              **r, stop_seconds=round(stop_s, 1), exit_code=exit_code)
        sh("start", reps.name(1))
        reps.wait_ready(1)

        # --- kill: SIGKILL one replica under load
        with Load(a.port) as load:
            time.sleep(3)
            sh("kill", reps.name(2))    # SIGKILL, the default of both engines
            time.sleep(5)
        r = load.result()
        st = reps.state(2)
        check("kill", r["failed"] == 0 and r["answered"] > 0, **r, killed_exit_code=st["ExitCode"])
        sh("start", reps.name(2))
        reps.wait_ready(2)

        # --- the worst admitted request on replica 1, inside the memory limit
        port = reps.ports[0]
        info = json.loads(request(reps.private[0], "GET", "/info")[2])
        max_tokens, layers = info["model"]["max_tokens"], info["model"]["layers"]
        long_text = "word " * (max_tokens + 100)

        def body_of(n):  # one text of max_tokens and n one-word texts, zero-padded: all layers side by side
            return {"inputs": [long_text] + ["a"] * n, "pooling": "none",
                    "layers": list(range(layers + 1)), "layer_combine": "concat"}

        lo, hi, best = 0, info["limits"]["max_inputs"] - 1, None
        while lo <= hi:   # refusals (413) are priced before any work and cost nothing
            mid = (lo + hi) // 2
            s, _, _ = request(port, "POST", "/embed", body_of(mid), {"accept": "application/x-npy"})
            if s == 413:
                hi = mid - 1
            else:
                assert s == 200, s
                best, lo = mid, mid + 1
        sh("restart", "-t", "10", reps.name(0))    # a fresh process: the peak is this request's
        reps.wait_ready(0)
        s, _, payload = request(port, "POST", "/embed", body_of(best), {"accept": "application/x-npy"})
        status_text = sh("exec", reps.name(0), "cat", "/proc/1/status", check=False)
        hwm = next((int(l.split()[1]) // 1024 for l in status_text.splitlines() if l.startswith("VmHWM")), None)
        st = reps.state(0)
        # The service reads its own limit from the cgroup (the memory alert divides by it).
        metrics = request(reps.private[0], "GET", "/metrics")[2].decode()
        limit = next((float(l.split()[1]) for l in metrics.splitlines()
                      if l.startswith("distilserve_memory_limit_bytes ")), None)
        check("worst", s == 200 and not st["OOMKilled"] and st["Status"] == "running" and hwm and hwm < 512
              and limit == 512 * 2**20,
              texts=best + 1, limit_seen_by_service=limit, answer_mb=round(len(payload) / 2**20, 1), status=s, peak_rss_mb=hwm, limit_mb=512,
              oom_killed=st["OOMKilled"], container_status=st["Status"])

        # --- a limit the models and the largest request cannot fit: said at start
        small = f"{PREFIX}-small"
        subprocess.run([ENGINE, "rm", "-f", small], capture_output=True)
        sh("run", "-d", "--name", small, "--memory", "320m", "--memory-swap", "320m", "--cpus", "2",
           "--read-only", *NO_TMPFS, "-e", "DISTILSERVE_MODEL__INTRA_THREADS=2", a.image)
        deadline = time.time() + 120
        while time.time() < deadline and json.loads(sh("inspect", "--format", "{{json .State}}", small))["Status"] \
                in ("running", "created", "configured", "initialized"):
            time.sleep(0.5)
        st = json.loads(sh("inspect", "--format", "{{json .State}}", small))
        logs = subprocess.run([ENGINE, "logs", small], capture_output=True, text=True)
        said = logs.stdout + logs.stderr   # the refusal is the process's last line, on stderr
        subprocess.run([ENGINE, "rm", "-f", small], capture_output=True)
        line = next((l for l in said.splitlines() if "exceed the container's limit" in l), "")
        check("too-small", st["ExitCode"] == 1 and not st["OOMKilled"] and "limit of 320 MiB" in line,
              exit_code=st["ExitCode"], oom_killed=st["OOMKilled"], said=line[-400:])

        # --- compose, as written, with podman-compose
        if not a.skip_compose:
            compose_check(a, check)
    except Exception as e:  # a step that could not run counts as a failed check
        check("error", False, message=str(e)[-1000:])
        for i in range(reps.n):
            print(sh("logs", "--tail", "15", reps.name(i), check=False)[-3000:], file=sys.stderr)
    finally:
        if not a.keep:
            subprocess.run([f"{REPO}/deploy/local/topology.sh", "down", topo], env=topo_env, capture_output=True)
            reps.remove_all()
    print(json.dumps({"summary": "failed" if failed else "passed", "failed": failed, "image": a.image}), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
