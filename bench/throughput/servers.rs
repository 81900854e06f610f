//! The release binary and the Python peers as child processes.

use super::*;

pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
    pub(crate) name: &'static str,
}

impl Server {
    pub(crate) fn distilserve(args: &Args, flags: &[String]) -> anyhow::Result<Server> {
        let port = free_port()?;
        let log = args.out.join(format!("distilserve-{port}.log"));
        let mut command = Command::new(&args.bin);
        if !args.routes.iter().any(|r| r == "/classify") {
            // Nothing classifies: no head to load or train for this model.
            command.env("DISTILSERVE_CLASSIFY__SERVE", "[]").env("DISTILSERVE_CLASSIFY__DEFAULT_HEAD", "");
        }
        let child = command
            .args(["serve", "--host", "127.0.0.1", "--port", &port.to_string(), "--log-format", "json"])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("cannot start {} (build it: cargo build --release)", args.bin.display()))?;
        Server { child, port, log, name: "distilserve" }.ready("/health/ready")
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
        Server { child, port, log, name: "infinity" }.ready("/health")
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
        Server { child, port, log, name: "python" }.ready("/health")
    }

    pub(crate) fn ready(mut self, path: &str) -> anyhow::Result<Server> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(900) {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}; log: {}", self.name, self.log.display());
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
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
