"""The binary under test, started on a free loopback port and stopped: shared
by bench/worst_request.py, bench/admission.py, bench/upload_peak.py and
bench/container.py (which waits for a container with `wait_ready`)."""
import http.client, json, os, socket, subprocess, threading, time


def cpu_name():
    """This machine's CPU model, to name beside every figure."""
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def start(binary, model_dir, *args, admin_key=None, log_name="serve", heads="", ready_s=60):
    """`binary serve` on the model with the configured heads `heads` (none by
    default; also the default head), plus `args`; returns (process, port) once
    /health/ready answers 200 (or after `ready_s`)."""
    port = free_port()
    env = dict(os.environ)
    if admin_key:
        env["DISTILSERVE_SECURITY__ADMIN_KEY"] = admin_key
    log = open(f"/tmp/{log_name}-{port}.log", "w")
    proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--model-dir", model_dir,
                             "--heads", heads, "--default-head", heads, *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_ready(port, ready_s, proc=proc)
    return proc, port


def wait_ready(port, limit_s=60, proc=None):
    """Whether /health/ready on `port` answered 200 within `limit_s` (false at
    once if `proc` exits first)."""
    start = time.time()
    while time.time() - start < limit_s and (proc is None or proc.poll() is None):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2); c.request("GET", "/health/ready")
            if c.getresponse().status == 200: return True
        except OSError: pass
        time.sleep(0.1)
    return False


def stop(proc):
    proc.terminate()
    try: proc.wait(20)
    except subprocess.TimeoutExpired: proc.kill()


def closed_loop(port, path, body_of, clients, seconds):
    """`clients` keep-alive connections POSTing `body_of(i)` (JSON) to `path`
    back to back for `seconds`: requests answered per second, p50/p99 ms and
    the errors (counted, not fatal)."""
    done, lat, errors = [0], [], []
    lock = threading.Lock()
    stop_at = time.time() + seconds

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k * 997
        while time.time() < stop_at:
            body = json.dumps(body_of(i)).encode()
            i += clients
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, {"content-type": "application/json"})
                r = conn.getresponse(); data = r.read()
                if r.status != 200:
                    raise RuntimeError(f"{r.status}: {data[:200]!r}")
            except Exception as e:
                errors.append(str(e)); conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60); continue
            with lock:
                lat.append(time.perf_counter() - t); done[0] += 1

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    [t.start() for t in threads]; [t.join() for t in threads]
    wall = time.time() - t0
    lat.sort()
    q = lambda p: round(1000 * lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None
    return {"per_s": round(done[0] / wall, 1), "p50_ms": q(0.5), "p99_ms": q(0.99), "errors": len(errors)}


def rss_mib(pid, field="VmHWM"):
    """The process's peak (VmHWM) or current (VmRSS) resident memory, MiB."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) // 1024


def get_json(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.request("GET", path)
    return json.loads(c.getresponse().read())
