//! The release binary and the Python peers as child processes.

use super::*;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Where /metrics answers: distilserve's private listener
    /// (`server.private_address`), whose connections are its own, so that it
    /// answers while the load holds the public port at `server.max_connections`
    /// (1,024 clients, open loops past capacity); the others' port.
    pub(crate) metrics_port: u16,
    pub(crate) log: PathBuf,
    pub(crate) name: &'static str,
}

impl Server {
    pub(crate) fn distilserve(args: &Args, flags: &[String]) -> anyhow::Result<Server> {
        let (port, metrics_port) = (free_port()?, free_port()?);
        let log = args.out.join(format!("distilserve-{port}.log"));
        let mut command = Command::new(&args.bin);
        if !args.routes.iter().any(|r| r == "/classify") {
            // Nothing classifies: no head to load or train for this model.
            command.env("DISTILSERVE_CLASSIFY__SERVE", "[]").env("DISTILSERVE_CLASSIFY__DEFAULT_HEAD", "");
        }
        let child = command
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--log-format", "json"])
            .args(["--private-address", &format!("127.0.0.1:{metrics_port}")])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {} (build it: cargo build --release)", args.bin.display()))?;
        Server { child, port, metrics_port, log, name: "distilserve" }.ready("/health/ready")?.settled()
    }

    /// Waits until no head is training on a second graph. Ready once a new
    /// head is trained on the heads' graph, the service then trains it on the
    /// exact graph to compare the two (`graphs` of GET /heads/{name}): on a
    /// fresh start with no head file, two minutes of extraction and fitting
    /// that took half the model's CPU from whatever point was measured then.
    fn settled(self) -> anyhow::Result<Server> {
        let started = Instant::now();
        let training = |server: &Server| -> anyhow::Result<bool> {
            let list = get_json(server.port, "/heads")?;
            let names = list["heads"].as_array().into_iter().flatten().filter_map(|h| h["name"].as_str());
            for name in names {
                let head = get_json(server.port, &format!("/heads/{name}"))?;
                if head["graphs"].as_array().into_iter().flatten().any(|g| g["phase"] == "training") {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        while training(&self)? {
            if started.elapsed() > Duration::from_secs(900) {
                bail!("a head still training on a second graph after 900 s; log: {}", self.log.display());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        if started.elapsed() > Duration::from_secs(1) {
            eprintln!("  heads compared on both graphs after {:.1} s more", started.elapsed().as_secs_f64());
        }
        Ok(self)
    }

    pub(crate) fn infinity(model_dir: &Path, hf_model: &Path, threads: usize) -> anyhow::Result<Server> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("infinity-{port}.log"));
        let child = Command::new("bench/infinity_peer.sh")
            .arg(model_dir)
            .arg(hf_model)
            .args([port.to_string(), threads.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start bench/infinity_peer.sh")?;
        Server { child, port, metrics_port: port, log, name: "infinity" }.ready("/health")
    }

    pub(crate) fn notebook(python: &Path, hf_model: &Path, data: &Path, threads: usize) -> anyhow::Result<Server> {
        let port = free_port()?;
        let log = std::env::temp_dir().join(format!("notebook-server-{port}.log"));
        let child = Command::new(python)
            .arg("bench/notebook_server.py")
            .arg("--model")
            .arg(hf_model)
            .arg("--train")
            .arg(data.join("train.jsonl"))
            .args(["--threads", &threads.to_string(), "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start bench/notebook_server.py")?;
        Server { child, port, metrics_port: port, log, name: "python" }.ready("/health")
    }

    pub(crate) fn ready(mut self, path: &str) -> anyhow::Result<Server> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(900) {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}; log: {}", self.name, self.log.display());
            }
            if let Ok(mut stream) = send_get(self.port, path) {
                use std::io::Read;
                let mut head = [0u8; 12];
                if stream.read_exact(&mut head).is_ok() && &head[9..12] == b"200" {
                    eprintln!("  {} ready on :{} after {:.1} s", self.name, self.port, started.elapsed().as_secs_f64());
                    return Ok(self);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{} not ready after 900 s; log: {}", self.name, self.log.display())
    }

    /// Peak resident set size so far (VmHWM), in MB.
    pub(crate) fn peak_rss_mb(&self) -> f64 {
        proc_status_mb(self.child.id(), "VmHWM:")
    }

    /// Log lines at WARN or ERROR level, but for the intended (rate-limited)
    /// "queue full" warning.
    pub(crate) fn log_problems(&self) -> anyhow::Result<Vec<String>> {
        let log = std::fs::read_to_string(&self.log)?;
        Ok(log
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .filter(|l| !l.contains("inference queue full"))
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends GET `path` to 127.0.0.1:`port` (one request, `connection: close`).
fn send_get(port: u16, path: &str) -> std::io::Result<std::net::TcpStream> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
    Ok(stream)
}

/// GET `path` on 127.0.0.1:`port`, its JSON body.
fn get_json(port: u16, path: &str) -> anyhow::Result<serde_json::Value> {
    use std::io::Read;
    let mut stream = send_get(port, path)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(serde_json::from_str(body)?)
}
