"""The binary under test, started on a free loopback port and stopped: shared
by bench/worst_request.py, bench/admission.py, bench/upload_peak.py and
bench/container.py (which waits for a container with `wait_ready`)."""
import http.client, os, socket, subprocess, time


def cpu_name():
    """This machine's CPU model, to name beside every figure."""
    return next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def start(binary, model_dir, *args, admin_key=None, log_name="serve", heads=""):
    """`binary serve` on the model with the configured heads `heads` (none by
    default; also the default head), plus `args`; returns (process, port) once
    /health/ready answers 200 (or after 60 s)."""
    port = free_port()
    env = dict(os.environ)
    if admin_key:
        env["DISTILSERVE_SECURITY__ADMIN_KEY"] = admin_key
    log = open(f"/tmp/{log_name}-{port}.log", "w")
    proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--model-dir", model_dir,
                             "--heads", heads, "--default-head", heads, *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    wait_ready(port, proc=proc)
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
