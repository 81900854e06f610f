//! Overload: what a replica answers past its capacity (`make bench-overload`).
//!
//! Per model and route, against one server started for it:
//! - the in-process ceiling (sorted batches of 32, the same sentences);
//! - closed-loop clients that retry a refusal at once (as `wrk`, scripts and a
//!   load balancer's retries do), at each of `--overload-clients`; the first
//!   (64) is the capacity the others are compared with;
//! - open-loop arrivals at 2x, 5x and 10x that capacity (no retries);
//! - a burst after idle: 5 s of nothing, then 512 requests at once.
//!
//! Per point: answered/s and its ratio to the capacity, refusals/s, p50/p99 of
//! the answered (each attempt timed alone), and the CPU the server's HTTP
//! side spent per refusal: the process's CPU outside the model's threads less
//! what the answered requests cost it at capacity (where nothing is refused),
//! over the refusals. Per route, a line fitted over its points with refusals
//! parts that into what one more refusal costs and what being past capacity
//! costs a second (`overload_report`).
//!
//! The client is a few lines of raw HTTP/1.1 over keep-alive connections, so
//! that the load generator takes as little of the shared CPU as `wrk` does.
//! Its thread runs `SCHED_BATCH` while it loads a server (unless
//! `--overload-clients-preempt`): clients on other machines cost a replica
//! their packets, not thousands of wake-ups a second that each preempt one
//! of the model's threads and stall the operator the other was running (on
//! 2 vCPUs that slowed MiniLM's model calls by a quarter at open loop 10x;
//! BENCHMARKS.md, "Overload: ... the load generator's wake-ups").

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::*;

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct OverloadPoint {
    pub(crate) model: String,
    pub(crate) route: String,
    /// "closed 256", "open 10x", "burst 512".
    pub(crate) load: String,
    pub(crate) seconds: f64,
    pub(crate) answered: usize,
    pub(crate) refused: usize,
    pub(crate) failed: usize,
    pub(crate) answered_per_s: f64,
    /// Answered/s over the 64-client answered/s of the same run.
    pub(crate) of_capacity: f64,
    pub(crate) refused_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Queue time less the admission's estimate of it, p99 of the answered.
    pub(crate) late_p99_ms: f64,
    /// The slowest refusal's answer, p99.
    pub(crate) refused_p99_ms: f64,
    /// CPU seconds of the server's HTTP threads (tokio) and model threads.
    pub(crate) http_cpu_s: f64,
    pub(crate) model_cpu_s: f64,
    /// HTTP-side CPU seconds beyond what the answered requests cost at
    /// capacity (NaN without a capacity point): what refusing cost.
    pub(crate) refusing_cpu_s: f64,
    /// That over the refusals, µs (NaN without refusals or a capacity point).
    pub(crate) cpu_per_refusal_us: f64,
    /// The load generator's own CPU seconds.
    pub(crate) client_cpu_s: f64,
    /// The server's model calls over the point (/metrics): sequences per call,
    /// padded tokens per real token, and model milliseconds per sequence.
    pub(crate) sequences_per_call: f64,
    pub(crate) padding: f64,
    pub(crate) model_ms_per_sequence: f64,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
    body: Vec<u8>,
}

/// Per answer since the last point: when it came and its queue time less the
/// estimate it was admitted on, ms.
static LATE_MS: std::sync::Mutex<Vec<(Instant, f64)>> = std::sync::Mutex::new(Vec::new());

/// The measured part of a point, after its warm-up: what is counted, and
/// what the server's and the generator's CPU and model calls are read over.
/// Read over the whole point instead, the CPU of the warm-up's refusals and
/// of the seconds the last answers take after the load stops was scaled into
/// the window, which understated the CPU per refusal by about a fifth.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

impl Window {
    /// A window of `seconds` that starts `warm` after the load does (now).
    fn after(warm: Duration, seconds: f64) -> Window {
        let start = Instant::now() + warm;
        Window { start, end: start + Duration::from_secs_f64(seconds) }
    }

    fn contains(&self, at: Instant) -> bool {
        at >= self.start && at <= self.end
    }
}

impl Conn {
    async fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream: BufReader::new(stream), line: Vec::new(), body: Vec::new() })
    }

    /// Sends `request` (whole, with its headers) and reads the answer: its
    /// status and whether the server keeps the connection open. Keeps the
    /// queue time the server reports beyond its estimate at admission.
    async fn send(&mut self, request: &[u8]) -> std::io::Result<(u16, bool)> {
        self.stream.get_mut().write_all(request).await?;
        let mut status = 0u16;
        let (mut queue_ms, mut estimate_ms) = (None::<f64>, None::<f64>);
        let (mut length, mut chunked, mut keep) = (0usize, false, true);
        loop {
            self.line.clear();
            if self.stream.read_until(b'\n', &mut self.line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = std::str::from_utf8(&self.line).unwrap_or("").trim_end();
            if status == 0 {
                status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                continue;
            }
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                "x-queue-time-ms" => queue_ms = value.parse().ok(),
                "x-queue-estimate-ms" => estimate_ms = value.parse().ok(),
                _ => {}
            }
        }
        if chunked {
            loop {
                self.line.clear();
                self.stream.read_until(b'\n', &mut self.line).await?;
                let size = std::str::from_utf8(&self.line).unwrap_or("").trim();
                let size = usize::from_str_radix(size.split(';').next().unwrap_or(""), 16).unwrap_or(0);
                self.body.resize(size + 2, 0);
                self.stream.read_exact(&mut self.body).await?;
                if size == 0 {
                    break;
                }
            }
        } else {
            self.body.resize(length, 0);
            self.stream.read_exact(&mut self.body).await?;
        }
        if let (Some(queue), Some(estimate)) = (queue_ms, estimate_ms) {
            LATE_MS.lock().unwrap().push((Instant::now(), queue - estimate));
        }
        Ok((status, keep))
    }
}

fn requests_for(route: &str, texts: &[String]) -> Arc<Vec<Vec<u8>>> {
    let pooled = route == "/embed";
    Arc::new(
        texts
            .iter()
            .map(|t| {
                let body = if pooled { json!({"inputs": t, "pooling": "mean"}) } else { json!({"inputs": t}) };
                let body = body.to_string();
                format!(
                    "POST {route} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            })
            .collect(),
    )
}

/// (ms, status) of each attempt in the measured window; status 0: no answer.
type Seen = Vec<(f64, u16)>;

/// `clients` connections sending one sentence each, back to back; a refused
/// sentence is sent again at once.
async fn closed_loop_retrying(port: u16, requests: Arc<Vec<Vec<u8>>>, clients: usize, window: Window) -> Seen {
    let next = Arc::new(AtomicUsize::new(0));
    let end = window.end;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (requests, next) = (requests.clone(), next.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut conn = None;
                let mut i = next.fetch_add(1, Ordering::Relaxed);
                while Instant::now() < end {
                    if conn.is_none() {
                        conn = Conn::open(port).await.ok();
                        if conn.is_none() {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                    let sent = Instant::now();
                    let (status, keep) = match conn.as_mut().unwrap().send(&requests[i % requests.len()]).await {
                        Ok(answer) => answer,
                        Err(_) => (0, false),
                    };
                    if !keep {
                        conn = None;
                    }
                    let done = Instant::now();
                    if window.contains(done) {
                        seen.push((done.duration_since(sent).as_secs_f64() * 1000.0, status));
                    }
                    if status == 200 {
                        i = next.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("client task"));
    }
    seen
}

/// Requests sent at i / rate whatever the answers' pace (no retries), each on
/// an idle connection of a shared pool or a new one; latency from the
/// scheduled time. Counted: those answered in the measured window (after the
/// warm-up, before the last arrival), as in the closed loop.
async fn open_loop_arrivals(port: u16, requests: Arc<Vec<Vec<u8>>>, rate: f64, warm: Duration, window: Window) -> Seen {
    let pool: Arc<std::sync::Mutex<Vec<Conn>>> = Arc::default();
    let start = tokio::time::Instant::from_std(window.start - warm);
    let n = (rate * (window.end - start.into_std()).as_secs_f64()) as usize;
    let mut tasks = Vec::with_capacity(n);
    // The driver wakes once a millisecond and sends what is due (a timer per
    // arrival cost the generator more CPU than the server spent refusing).
    let mut tick = tokio::time::interval_at(start, Duration::from_millis(1));
    let mut now = start;
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        while now < at {
            now = tick.tick().await.max(tokio::time::Instant::now());
        }
        let (pool, requests) = (pool.clone(), requests.clone());
        let counted = move |at: tokio::time::Instant| window.contains(at.into_std());
        tasks.push(tokio::spawn(async move {
            let idle = pool.lock().unwrap().pop();
            let reused = idle.is_some();
            let conn = match idle {
                Some(c) => Some(c),
                None => Conn::open(port).await.ok(),
            };
            let Some(mut conn) = conn else {
                return (counted(tokio::time::Instant::now()), at.elapsed().as_secs_f64() * 1000.0, 0);
            };
            let request = &requests[i % requests.len()];
            let mut answer = conn.send(request).await;
            if answer.is_err() && reused {
                // The server closed it while idle (its header timeout): a fresh one, as any pool does.
                if let Ok(fresh) = Conn::open(port).await {
                    conn = fresh;
                    answer = conn.send(request).await;
                }
            }
            let status = match answer {
                Ok((status, keep)) => {
                    if keep {
                        pool.lock().unwrap().push(conn);
                    }
                    status
                }
                Err(_) => 0,
            };
            (counted(tokio::time::Instant::now()), at.elapsed().as_secs_f64() * 1000.0, status)
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        let (counted, ms, status) = t.await.expect("arrival task");
        if counted {
            seen.push((ms, status));
        }
    }
    seen
}

/// `n` requests at once on fresh connections, after `idle` of nothing.
async fn burst(port: u16, requests: Arc<Vec<Vec<u8>>>, n: usize, idle: Duration) -> Seen {
    tokio::time::sleep(idle).await;
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(Conn::open(port).await);
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let requests = requests.clone();
            tokio::spawn(async move {
                let sent = Instant::now();
                let status = match conn {
                    Ok(mut c) => c.send(&requests[i % requests.len()]).await.map(|a| a.0).unwrap_or(0),
                    Err(_) => 0,
                };
                (sent.elapsed().as_secs_f64() * 1000.0, status)
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("burst task"));
    }
    seen
}

/// CPU seconds so far of a process: the model's (its workers' and ONNX
/// Runtime's threads, which live as long as it) and the rest (tokio's threads:
/// HTTP, tokenizing, JSON). The rest is the process's total, which keeps the
/// CPU of threads that have exited, less the model's: tokio's blocking
/// threads (tokenizing) exit after 10 s idle, and a sum over live threads
/// lost their CPU (an HTTP CPU of -17 s over a point).
fn thread_cpu(pid: u32) -> (f64, f64) {
    let total = stat_cpu(&format!("/proc/{pid}/stat"));
    let mut model = 0.0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return (f64::NAN, f64::NAN) };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        // ONNX Runtime's threads are named `onnxruntime` (src/model/mod.rs), the
        // queue's workers after their runtime.
        if comm.starts_with("onnxruntime") || comm.starts_with("encoder-") || comm.starts_with("classifier-") {
            model += stat_cpu(&task.path().join("stat").to_string_lossy());
        }
    }
    (total - model, model)
}

/// utime + stime of a /proc stat file, seconds (fields 14 and 15, 11 and 12
/// after the command's name, which may hold spaces).
fn stat_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let close = stat.rfind(')').unwrap_or(0);
    let fields: Vec<&str> = stat.get(close + 2..).unwrap_or("").split(' ').collect();
    fields.get(11..13).map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum::<f64>() / 100.0).unwrap_or(f64::NAN)
}

fn own_cpu() -> f64 {
    stat_cpu("/proc/self/stat")
}

struct Measured {
    seen: Seen,
    seconds: f64,
    http_cpu: f64,
    model_cpu: f64,
    client_cpu: f64,
    /// Differences of [`batch_counters`] over the window.
    batches: Option<[f64; 5]>,
    /// Queue time less estimate, ms, of the answers that came in the window.
    late: Vec<f64>,
}

/// Runs `load` and reads the CPU and model counters at `window`'s start and end.
async fn measure<F: std::future::Future<Output = Seen>>(server: &Server, window: Window, load: F) -> Measured {
    let pid = server.child.id();
    let read = || async { (thread_cpu(pid), own_cpu(), batch_counters(server).await) };
    let at_edges = async {
        tokio::time::sleep_until(window.start.into()).await;
        let start = read().await;
        tokio::time::sleep_until(window.end.into()).await;
        (start, read().await)
    };
    let (seen, (((h0, m0), c0, before), ((h1, m1), c1, after))) = tokio::join!(load, at_edges);
    let batches = match (before, after) {
        (Some(b), Some(a)) => Some(std::array::from_fn(|i| a[i] - b[i])),
        _ => None,
    };
    let late = std::mem::take(&mut *LATE_MS.lock().unwrap());
    Measured {
        seen,
        seconds: (window.end - window.start).as_secs_f64(),
        http_cpu: h1 - h0,
        model_cpu: m1 - m0,
        client_cpu: c1 - c0,
        batches,
        late: late.into_iter().filter(|(at, _)| window.contains(*at)).map(|(_, ms)| ms).collect(),
    }
}

fn point(model: &str, route: &str, load: String, m: &Measured, capacity: Option<(f64, f64)>) -> OverloadPoint {
    let mut ok: Vec<f64> = m.seen.iter().filter(|s| s.1 == 200).map(|s| s.0).collect();
    let mut refused: Vec<f64> = m.seen.iter().filter(|s| s.1 == 503 || s.1 == 429).map(|s| s.0).collect();
    let failed = m.seen.len() - ok.len() - refused.len();
    let answered_per_s = ok.len() as f64 / m.seconds;
    let refusing_cpu_s = capacity.map_or(f64::NAN, |(_, per_answer)| m.http_cpu - ok.len() as f64 * per_answer);
    let (of_capacity, cpu_per_refusal_us) = match capacity {
        Some((per_s, _)) if !refused.is_empty() => {
            (answered_per_s / per_s, refusing_cpu_s / refused.len() as f64 * 1e6)
        }
        Some((per_s, _)) => (answered_per_s / per_s, f64::NAN),
        // The first closed-loop point is the capacity; a burst has no rate to compare.
        None if load.starts_with("closed") => (1.0, f64::NAN),
        None => (f64::NAN, f64::NAN),
    };
    let p = OverloadPoint {
        model: model.into(),
        route: route.into(),
        load,
        seconds: m.seconds,
        answered: ok.len(),
        refused: refused.len(),
        failed,
        answered_per_s,
        of_capacity,
        refused_per_s: refused.len() as f64 / m.seconds,
        p50_ms: percentile(&mut ok, 0.5),
        p99_ms: percentile(&mut ok, 0.99),
        late_p99_ms: percentile(&mut m.late.clone(), 0.99),
        refused_p99_ms: percentile(&mut refused, 0.99),
        http_cpu_s: m.http_cpu,
        model_cpu_s: m.model_cpu,
        refusing_cpu_s,
        cpu_per_refusal_us,
        client_cpu_s: m.client_cpu,
        sequences_per_call: m.batches.map_or(f64::NAN, |b| b[1] / b[0]),
        padding: m.batches.map_or(f64::NAN, |b| b[3] / b[2]),
        model_ms_per_sequence: m.batches.map_or(f64::NAN, |b| b[4] * 1e3 / b[1]),
    };
    eprintln!(
        "  {route} {}: {:.1} answered/s ({:.2}x capacity), {:.0} refused/s, {} failed, p50 {:.0} ms, p99 {:.0} ms, \
         queued past estimate p99 {:.0} ms, refusal p99 {:.0} ms, CPU http {:.1} s model {:.1} s client {:.1} s, {:.1} µs per refusal; \
         {:.1} sequences per call, padding {:.2}, model {:.1} ms per sequence",
        p.load,
        p.answered_per_s,
        p.of_capacity,
        p.refused_per_s,
        p.failed,
        p.p50_ms,
        p.p99_ms,
        p.late_p99_ms,
        p.refused_p99_ms,
        p.http_cpu_s,
        p.model_cpu_s,
        p.client_cpu_s,
        p.cpu_per_refusal_us,
        p.sequences_per_call,
        p.padding,
        p.model_ms_per_sequence
    );
    p
}

/// The whole benchmark: see the module's comment.
pub(crate) async fn overload(args: &Args, machine: &str, texts: &[String], settings: &Settings) -> anyhow::Result<()> {
    let model_dirs =
        if args.model_dirs.is_empty() { vec![settings.model.dir.clone()] } else { args.model_dirs.clone() };
    let threads = distilserve::threads::cores();
    let warm = Duration::from_secs_f64(args.seconds / 5.0);
    let mut points = Vec::new();
    let mut ceilings = Vec::new();
    for dir in &model_dirs {
        let model = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let model_settings = in_process_settings(settings, dir, threads);
        eprintln!("== {model}: ceiling, in-process, sorted batches of 32");
        let ceiling = ceiling(&model_settings, texts, 1)?;
        ceilings.push((model.clone(), ceiling.sentences_per_s));
        for route in &args.routes {
            let mut flags = args.serve_flags.clone();
            flags.extend(["--model-dir".to_string(), dir.display().to_string()]);
            let server = Server::distilserve(args, &flags)?;
            // After the server is started, which would inherit the policy.
            let _clients = (!args.overload_clients_preempt).then(ClientsYield::new);
            let port = server.port;
            let requests = requests_for(route, texts);
            let mut capacity: Option<(f64, f64)> = None;
            for &clients in &args.overload_clients {
                let window = Window::after(warm, args.seconds);
                let m = measure(&server, window, closed_loop_retrying(port, requests.clone(), clients, window)).await;
                let p = point(&model, route, format!("closed {clients}"), &m, capacity);
                if capacity.is_none() {
                    capacity = Some((p.answered_per_s, m.http_cpu / p.answered.max(1) as f64));
                }
                points.push(p);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let (per_s, _) = capacity.context("--overload-clients is empty")?;
            for &times in &args.overload_open {
                let window = Window::after(warm, args.seconds);
                let rate = per_s * times;
                let m = measure(&server, window, open_loop_arrivals(port, requests.clone(), rate, warm, window)).await;
                points.push(point(&model, route, format!("open {times:.0}x"), &m, capacity));
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            // A burst has no rate: its answered/s is 512 over the time to the last answer.
            let t = Instant::now();
            let seen = burst(port, requests.clone(), 512, Duration::from_secs(5)).await;
            let m = Measured {
                seconds: t.elapsed().as_secs_f64() - 5.0,
                seen,
                http_cpu: f64::NAN,
                model_cpu: f64::NAN,
                client_cpu: f64::NAN,
                batches: None,
                late: std::mem::take(&mut *LATE_MS.lock().unwrap()).into_iter().map(|(_, ms)| ms).collect(),
            };
            points.push(point(&model, route, "burst 512".into(), &m, None));
            let problems = server.log_problems()?;
            if !problems.is_empty() {
                eprintln!("  server log problems: {problems:?}");
            }
        }
    }
    write_overload_report(args, machine, threads, warm, &ceilings, &points)
}

/// While it lives, the calling thread (the load generator's, a current-thread
/// runtime) runs `SCHED_BATCH`: it does not preempt a running thread when it
/// wakes. See the module's comment.
struct ClientsYield;

impl ClientsYield {
    fn new() -> ClientsYield {
        set_policy(libc::SCHED_BATCH);
        ClientsYield
    }
}

impl Drop for ClientsYield {
    fn drop(&mut self) {
        set_policy(libc::SCHED_OTHER);
    }
}

fn set_policy(policy: libc::c_int) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` lives across the call, which only reads it.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        eprintln!("  cannot set the load generator's scheduling policy: {}", std::io::Error::last_os_error());
    }
}
