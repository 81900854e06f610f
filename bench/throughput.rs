//! Throughput benchmark: distilserve against the encoder's in-process ceiling and
//! against the notebook's way served from Python, on the Rotten Tomatoes test
//! sentences, over loopback, bounded in time. `make bench` runs it; see
//! BENCHMARKS.md for a run and what each row means.
//!
//!   cargo bench --bench throughput -- --python VENV_PYTHON --hf-model HF_DIR [--seconds 10]
//!
//! Phases:
//! 1. ceiling: the service's ONNX session called in-process with length-sorted
//!    batches of 32 (sentences/s) and one sentence at a time (latency);
//! 2. the release binary over HTTP: /embed (mean pooled) and /classify at
//!    concurrency 1 and 32 with one sentence per request, and 16 per request at
//!    concurrency 8; requests/s, sentences/s, p50/p99, peak RSS;
//! 3. bench/notebook_server.py (transformers + torch, [CLS], scikit-learn) under
//!    the same load;
//! 4. overload: concurrency 512 against a queue of 64 sequences, then load drops
//!    to one client: refusals must be fast and recovery immediate;
//! and prints the ratios. `--sweep` adds an in-process table of runtime settings.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use distilserve::batching::{plan_batch, BatcherConfig};
use distilserve::config::{ModelSettings, OptimizationLevel, Settings};
use distilserve::data::Dataset;
use distilserve::encoder::Encoder;
use distilserve::model::Model;
use distilserve::tokenize::Tokenized;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// The release binary to serve with.
    #[arg(long, default_value = "target/release/distilserve")]
    bin: PathBuf,
    /// Python with torch, transformers and scikit-learn (scripts/python-env.sh); none: skip the baseline.
    #[arg(long)]
    python: Option<PathBuf>,
    /// The default model's Hugging Face folder, for the Python baseline.
    #[arg(long)]
    hf_model: Option<PathBuf>,
    /// Data set whose test split is sent.
    #[arg(long, default_value = "data/rotten_tomatoes")]
    data: PathBuf,
    /// Measured seconds per load scenario (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Also measure runtime settings in-process (threads, optimisation, model file, sessions).
    #[arg(long)]
    sweep: bool,
    /// Routes loaded (for quick experiments: --routes /embed).
    #[arg(long, value_delimiter = ',', default_value = "/embed,/classify")]
    routes: Vec<String>,
    /// Skip the overload phase.
    #[arg(long)]
    no_overload: bool,
    /// Instead of the benchmark: a soak test of this many seconds of mixed load
    /// (embed, classify, batches, bad requests) reporting memory and latency over time.
    #[arg(long)]
    soak: Option<f64>,
    /// Where the Markdown table and JSON go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Model folders measured one after another, each against its own in-process
    /// ceiling (e.g. models/all-minilm-l6-v2,models/distilbert-base-shaped);
    /// default: model.dir of the settings. The Python baseline runs the first's
    /// Hugging Face model (--hf-model) only.
    #[arg(long, value_delimiter = ',')]
    model_dirs: Vec<PathBuf>,
    /// Instead of the benchmark: open-loop load on the first model, requests
    /// arriving at each of these rates (requests/s, one sentence each) for
    /// --seconds, whatever the answers' pace; latency percentiles and goodput
    /// per rate, drawn to bench/results/open-loop-<time>.svg.
    #[arg(long, value_delimiter = ',')]
    open_loop: Vec<f64>,
    /// Instead of the benchmark: profile the whole machine with `perf record -a`
    /// for this many seconds while 32 clients load /embed on the first model,
    /// and print where the CPU time went (model, tokenizing, HTTP, JSON, the
    /// async runtime, the kernel, the load generator).
    #[arg(long)]
    profile: Option<f64>,
    /// Peers measured under the same load after distilserve, on the first
    /// model's files: `infinity` (bench/infinity_peer.sh; needs --hf-model).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Extra flags for `distilserve serve` (e.g. --model-file model.int8.onnx).
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    serve_flags: Vec<String>,
    // `cargo bench` passes --bench to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(None, &Default::default())?;
    let texts = Dataset::open(&args.data)?.split("test")?.texts;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    std::fs::create_dir_all(&args.out)?;
    let mut report = Report::new(&args, threads, texts.len());

    if let Some(seconds) = args.soak {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(soak(&args, &texts, seconds));
    }
    if let Some(seconds) = args.profile {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(profile(&args, &report.machine, &texts, seconds));
    }
    if !args.open_loop.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(open_loop(&args, &report.machine, &texts));
    }
    let model_dirs =
        if args.model_dirs.is_empty() { vec![settings.model.dir.clone()] } else { args.model_dirs.clone() };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let planner = BatcherConfig::new(&settings.batching, &settings.limits);
    for (m, dir) in model_dirs.iter().enumerate() {
        // The service's model settings (config/default.toml), all cores to one session.
        let mut model_settings = settings.model.clone();
        model_settings.intra_threads = threads;
        model_settings.dir = dir.clone();
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        report.models.push((name.clone(), Vec::new()));
        eprintln!("== {name}: ceiling, in-process, sorted batches of 32");
        report.models[m].1.push(ceiling(&model_settings, &texts, 1)?);
        eprintln!("== {name}: in-process, 32 sequences in flight, the service's batch planner");
        report.in_flight.push((name.clone(), in_flight_bound(&model_settings, &planner, &texts)?));
        if args.sweep && m == 0 {
            report.sweep = sweep(&settings, &texts, threads)?;
        }
        let mut flags = args.serve_flags.clone();
        flags.extend(["--model-dir".to_string(), dir.display().to_string()]);
        rt.block_on(async {
            eprintln!("== {name}: distilserve over HTTP");
            let server = Server::distilserve(&args, &flags)?;
            let runs = scenarios(&server, "distilserve", &args.routes, &texts, args.seconds).await?;
            report.runs.extend(runs.into_iter().map(|r| LoadResult { model: name.clone(), ..r }));
            if m == 0 {
                eprintln!("== output formats: 16 sentences, pooling none");
                for format in ["application/json", "application/x-npy"] {
                    report.formats.push(output_format(&server, &texts, format).await?);
                }
            }
            report.server_log_problems.extend(server.log_problems()?);
            anyhow::Ok(())
        })?;
        // Again, in the same conditions: the machine's speed drifts, ratios use the mean.
        eprintln!("== {name}: ceiling again");
        report.models[m].1.push(ceiling(&model_settings, &texts, 1)?);
    }
    let first_model = report.models[0].0.clone();

    rt.block_on(async {
        for peer in &args.peers {
            if peer != "infinity" {
                bail!("unknown peer {peer:?} (known: infinity)");
            }
            let hf = args.hf_model.as_ref().context("--peers infinity needs --hf-model")?;
            eprintln!("== Infinity on the same model files");
            let server = Server::infinity(&model_dirs[0], hf, threads)?;
            let routes: Vec<String> = args.routes.iter().filter(|r| *r == "/embed").cloned().collect();
            let runs = scenarios(&server, "infinity", &routes, &texts, args.seconds).await?;
            report.runs.extend(runs.into_iter().map(|r| LoadResult { model: first_model.clone(), ..r }));
        }
        if let (Some(python), Some(hf)) = (&args.python, &args.hf_model) {
            eprintln!("== notebook-style Python server");
            let server = Server::notebook(python, hf, &args.data, threads)?;
            let runs = scenarios(&server, "python", &args.routes, &texts, args.seconds).await?;
            report.runs.extend(runs.into_iter().map(|r| LoadResult { model: first_model.clone(), ..r }));
        }

        if args.no_overload {
            return anyhow::Ok(());
        }
        eprintln!("== overload: concurrency 512 against a queue of 64 sequences");
        let mut flags = args.serve_flags.clone();
        flags.extend([
            "--queue-capacity".into(),
            "64".into(),
            "--model-dir".into(),
            model_dirs[0].display().to_string(),
        ]);
        let server = Server::distilserve(&args, &flags)?;
        let overload = load(&server, "/embed", &texts, 1, 512, args.seconds, Duration::from_secs(10)).await;
        let recovery = load(&server, "/embed", &texts, 1, 1, 3.0, Duration::from_secs(10)).await;
        report.overload = Some((overload, recovery, server.log_problems()?));
        anyhow::Ok(())
    })?;

    let (markdown, json) = report.render();
    println!("{markdown}");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    std::fs::write(args.out.join(format!("throughput-{stamp}.md")), &markdown)?;
    std::fs::write(args.out.join(format!("throughput-{stamp}.json")), serde_json::to_string_pretty(&json)?)?;
    eprintln!("written to {}/throughput-{stamp}.{{md,json}}", args.out.display());
    Ok(())
}

// ---------------------------------------------------------------- ceiling

#[derive(Clone, Debug, serde::Serialize)]
struct Ceiling {
    setting: String,
    sentences_per_s: f64,
    single_p50_ms: f64,
}

/// Sorted batches of 32 through `sessions` sessions (best of two passes), and
/// one-sentence latency (tokenizing included) on the first session.
fn ceiling(model_settings: &ModelSettings, texts: &[String], sessions: usize) -> anyhow::Result<Ceiling> {
    let s = model_settings;
    let setting = format!(
        "{}, {sessions} session(s) x {} thread(s), optimisation {:?}, spinning {}",
        s.file, s.intra_threads, s.optimization_level, s.intra_op_spinning
    );
    let mut model = Model::load(model_settings, sessions)?;
    let seqs = model.tokenizer.encode_all(texts, true)?;
    let mut order: Vec<&Tokenized> = seqs.iter().collect();
    order.sort_by_key(|s| s.len());
    let batches: Vec<Vec<&Tokenized>> = order.chunks(32).map(|c| c.to_vec()).collect();
    for batch in batches.iter().step_by(8) {
        model.encoders[0].encode(batch)?; // warm-up: buffers for every length
    }
    let mut best = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let workers: Vec<_> = model
                .encoders
                .iter_mut()
                .map(|encoder| {
                    let (next, batches) = (&next, &batches);
                    scope.spawn(move || -> anyhow::Result<()> {
                        while let Some(batch) = batches.get(next.fetch_add(1, Ordering::Relaxed)) {
                            encoder.encode(batch)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().expect("ceiling worker")?;
            }
            Ok(())
        })?;
        best = best.min(started.elapsed().as_secs_f64());
    }
    let mut single = Vec::new();
    for text in texts.iter().step_by(5).take(200) {
        let started = Instant::now();
        let seq = model.tokenizer.encode_all(&[text], true)?;
        model.encoders[0].encode(&[&seq[0]])?;
        single.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let c =
        Ceiling { setting, sentences_per_s: texts.len() as f64 / best, single_p50_ms: percentile(&mut single, 0.5) };
    eprintln!("  {}: {:.0} sentences/s, one sentence {:.2} ms", c.setting, c.sentences_per_s, c.single_p50_ms);
    Ok(c)
}

/// What the model does when it sees batches shaped like 32 closed-loop clients'
/// (one random test sentence each): in-process, no HTTP, the service's own
/// planner (`plan_batch`: length grouping, the oldest first) over the 32
/// sequences in flight; each computed sequence is replaced by the next one of a
/// fixed shuffle. `lagged`: the replacements join the queue one model call
/// late, as over HTTP, where the worker plans its next call before the clients
/// it just answered have sent again. Sentences/s over one pass of the test set.
#[derive(Clone, Debug, serde::Serialize)]
struct InFlightBound {
    all_queued: f64,
    lagged: f64,
}

fn in_flight_bound(
    settings: &ModelSettings,
    planner: &BatcherConfig,
    texts: &[String],
) -> anyhow::Result<InFlightBound> {
    const IN_FLIGHT: usize = 32;
    let mut model = Model::load(settings, 1)?;
    let seqs = model.tokenizer.encode_all(texts, true)?;
    // A fixed shuffle (xorshift), so that every run and model sees the same arrivals.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let mut run = |lagged: bool| -> anyhow::Result<f64> {
        let mut arrivals = order.iter().cycle().map(|&i| &seqs[i]);
        let mut queue: Vec<&Tokenized> = arrivals.by_ref().take(IN_FLIGHT).collect();
        let mut returning: Vec<&Tokenized> = Vec::new();
        let (started, mut done) = (Instant::now(), 0);
        while done < seqs.len() {
            let lengths: Vec<usize> = queue.iter().map(|s| s.len()).collect();
            let mut picked = plan_batch(&lengths, planner);
            picked.sort_unstable_by(|a, b| b.cmp(a));
            let batch: Vec<&Tokenized> = picked.iter().map(|&p| queue.remove(p)).collect();
            model.encoders[0].encode(&batch)?;
            done += batch.len();
            queue.append(&mut returning);
            returning.extend(arrivals.by_ref().take(batch.len()));
            if !lagged {
                queue.append(&mut returning);
            }
        }
        Ok(done as f64 / started.elapsed().as_secs_f64())
    };
    run(false)?; // warm-up
    let bound = InFlightBound { all_queued: run(false)?, lagged: run(true)? };
    eprintln!("  all queued: {:.0} sentences/s; replacements one call late: {:.0}/s", bound.all_queued, bound.lagged);
    Ok(bound)
}

fn sweep(settings: &Settings, texts: &[String], threads: usize) -> anyhow::Result<Vec<Ceiling>> {
    eprintln!("== sweep of runtime settings, in-process");
    let base = || {
        let mut m = settings.model.clone();
        m.intra_threads = threads;
        m
    };
    let mut out = Vec::new();
    for file in ["model.opt.onnx", "model.int8.onnx"] {
        if settings.model.dir.join(file).is_file() {
            out.push(ceiling(&ModelSettings { file: file.into(), ..base() }, texts, 1)?);
        }
    }
    out.push(ceiling(&ModelSettings { intra_op_spinning: !settings.model.intra_op_spinning, ..base() }, texts, 1)?);
    out.push(ceiling(&ModelSettings { optimization_level: OptimizationLevel::Basic, ..base() }, texts, 1)?);
    out.push(ceiling(&ModelSettings { intra_threads: 1, ..base() }, texts, 1)?);
    if threads > 1 {
        out.push(ceiling(&ModelSettings { intra_threads: 1, ..base() }, texts, threads)?);
    }
    Ok(out)
}

// ---------------------------------------------------------------- servers

struct Server {
    child: Child,
    port: u16,
    log: PathBuf,
    name: &'static str,
}

impl Server {
    fn distilserve(args: &Args, flags: &[String]) -> anyhow::Result<Server> {
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

    fn infinity(model_dir: &Path, hf_model: &Path, threads: usize) -> anyhow::Result<Server> {
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

    fn notebook(python: &Path, hf_model: &Path, data: &Path, threads: usize) -> anyhow::Result<Server> {
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

    fn ready(mut self, path: &str) -> anyhow::Result<Server> {
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
    fn peak_rss_mb(&self) -> f64 {
        proc_status_mb(self.child.id(), "VmHWM:")
    }

    /// Log lines at WARN or ERROR level, but for the intended (rate-limited)
    /// "queue full" warning.
    fn log_problems(&self) -> anyhow::Result<Vec<String>> {
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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// ---------------------------------------------------------------- load

#[derive(Clone, Debug, Default, serde::Serialize)]
struct LoadResult {
    server: String,
    /// Model folder name (distilserve) or the model the baseline serves.
    model: String,
    route: String,
    concurrency: usize,
    per_request: usize,
    seconds: f64,
    ok: usize,
    refused: usize,
    other_status: usize,
    client_errors: usize,
    requests_per_s: f64,
    sentences_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    refused_p99_ms: f64,
    peak_rss_mb: f64,
    /// distilserve only, from /metrics over the scenario: sequences per model call...
    mean_batch: f64,
    /// ...and real tokens over padded tokens fed to the model.
    padding_efficiency: f64,
    /// Share of the scenario (warm-up included) the model was computing.
    model_busy: f64,
}

async fn scenarios(
    server: &Server,
    name: &str,
    routes: &[String],
    texts: &[String],
    seconds: f64,
) -> anyhow::Result<Vec<LoadResult>> {
    let mut out = Vec::new();
    for route in routes {
        for (per_request, concurrency) in [(1, 1), (1, 32), (16, 8)] {
            let mut r = load(server, route, texts, per_request, concurrency, seconds, Duration::from_secs(60)).await;
            r.server = name.into();
            if r.ok == 0 || r.other_status + r.client_errors > 0 {
                bail!("{name} {route} failed under load: {r:?}; log: {}", server.log.display());
            }
            out.push(r);
        }
    }
    Ok(out)
}

/// `concurrency` clients, each sending `per_request` consecutive test sentences
/// per request back to back, for a warm-up of `seconds / 5` and then `seconds`.
async fn load(
    server: &Server,
    route: &str,
    texts: &[String],
    per_request: usize,
    concurrency: usize,
    seconds: f64,
    client_timeout: Duration,
) -> LoadResult {
    let before = batch_counters(server).await;
    let client = reqwest::Client::builder().timeout(client_timeout).pool_max_idle_per_host(1024).build().unwrap();
    // Infinity answers OpenAI-style embeddings (mean-pooled, as /embed here).
    let infinity = server.name == "infinity";
    let url = if infinity {
        format!("http://127.0.0.1:{}/embeddings", server.port)
    } else {
        format!("http://127.0.0.1:{}{route}", server.port)
    };
    let texts = Arc::new(texts.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let warm_until = Instant::now() + Duration::from_secs_f64(seconds / 5.0);
    let end = warm_until + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, texts, next) = (client.clone(), url.clone(), texts.clone(), next.clone());
            let pooled = route == "/embed";
            let infinity = infinity;
            tokio::spawn(async move {
                // (latency ms, HTTP status or 0 for a client-side error), measured part only.
                let mut seen: Vec<(f64, u16)> = Vec::new();
                while Instant::now() < end {
                    let start = next.fetch_add(per_request, Ordering::Relaxed);
                    let inputs: Vec<&String> = (start..start + per_request).map(|i| &texts[i % texts.len()]).collect();
                    let body = if infinity {
                        json!({"input": inputs, "model": "peer"})
                    } else if pooled {
                        json!({"inputs": inputs, "pooling": "mean"})
                    } else {
                        json!({"inputs": inputs})
                    };
                    let sent = Instant::now();
                    let status = match client.post(&url).json(&body).send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            match response.bytes().await {
                                Ok(_) => status,
                                Err(_) => 0,
                            }
                        }
                        Err(_) => 0,
                    };
                    if sent >= warm_until && Instant::now() <= end {
                        seen.push((sent.elapsed().as_secs_f64() * 1000.0, status));
                    }
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.expect("load task"));
    }
    let mut ok: Vec<f64> = seen.iter().filter(|s| s.1 == 200).map(|s| s.0).collect();
    let mut refused: Vec<f64> = seen.iter().filter(|s| s.1 == 503 || s.1 == 429).map(|s| s.0).collect();
    let r = LoadResult {
        server: String::new(),
        model: String::new(),
        route: route.into(),
        concurrency,
        per_request,
        seconds,
        ok: ok.len(),
        refused: refused.len(),
        other_status: seen.iter().filter(|s| ![0, 200, 429, 503].contains(&s.1)).count(),
        client_errors: seen.iter().filter(|s| s.1 == 0).count(),
        requests_per_s: ok.len() as f64 / seconds,
        sentences_per_s: (ok.len() * per_request) as f64 / seconds,
        p50_ms: percentile(&mut ok, 0.5),
        p99_ms: percentile(&mut ok, 0.99),
        max_ms: percentile(&mut ok, 1.0),
        refused_p99_ms: percentile(&mut refused, 0.99),
        peak_rss_mb: server.peak_rss_mb(),
        mean_batch: f64::NAN,
        padding_efficiency: f64::NAN,
        model_busy: f64::NAN,
    };
    let mut r = r;
    if let (Some(b), Some(a)) = (before, batch_counters(server).await) {
        r.mean_batch = (a[1] - b[1]) / (a[0] - b[0]);
        r.padding_efficiency = (a[2] - b[2]) / (a[3] - b[3]);
        r.model_busy = (a[4] - b[4]) / (seconds * 1.2);
    }
    eprintln!(
        "  {route} c={concurrency} x{per_request}: {:.1} req/s, {:.1} sentences/s, p50 {:.1} ms, p99 {:.1} ms, \
         refused {}, errors {}, peak RSS {:.0} MB, mean batch {:.1}, padding efficiency {:.2}, model busy {:.2}",
        r.requests_per_s,
        r.sentences_per_s,
        r.p50_ms,
        r.p99_ms,
        r.refused,
        r.other_status + r.client_errors,
        r.peak_rss_mb,
        r.mean_batch,
        r.padding_efficiency,
        r.model_busy
    );
    r
}

/// distilserve's batches, sequences, tokens and padded tokens so far (None for other servers).
async fn batch_counters(server: &Server) -> Option<[f64; 5]> {
    if server.name != "distilserve" {
        return None;
    }
    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", server.port)).await.ok()?.text().await.ok()?;
    let value = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
    };
    Some([
        value("distilserve_batches_total")?,
        value("distilserve_sequences_total")?,
        value("distilserve_tokens_total")?,
        value("distilserve_padded_tokens_total")?,
        value("distilserve_inference_seconds_sum")?,
    ])
}

#[derive(Clone, Debug, serde::Serialize)]
struct FormatResult {
    format: String,
    response_bytes: usize,
    p50_total_ms: f64,
    p50_model_ms: f64,
}

/// 100 sequential /embed requests of 16 sentences with pooling none (every
/// token's vector) in `accept`: the whole request against the time the server
/// spent tokenizing, queueing and in the model (its timing headers); the rest
/// is routing, serialisation and transfer.
async fn output_format(server: &Server, texts: &[String], accept: &str) -> anyhow::Result<FormatResult> {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/embed", server.port);
    let (mut total, mut model, mut bytes) = (Vec::new(), Vec::new(), 0);
    for i in 0..105 {
        let inputs: Vec<&String> = (0..16).map(|j| &texts[(i * 16 + j) % texts.len()]).collect();
        let sent = Instant::now();
        let response = client
            .post(&url)
            .header("accept", accept)
            .json(&json!({"inputs": inputs, "pooling": "none"}))
            .send()
            .await?
            .error_for_status()?;
        let header = |name: &str| -> f64 {
            response.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
        };
        let in_model = header("x-tokenize-time-ms") + header("x-queue-time-ms") + header("x-inference-time-ms");
        bytes = response.bytes().await?.len();
        if i >= 5 {
            total.push(sent.elapsed().as_secs_f64() * 1000.0);
            model.push(in_model);
        }
    }
    let r = FormatResult {
        format: accept.into(),
        response_bytes: bytes,
        p50_total_ms: percentile(&mut total, 0.5),
        p50_model_ms: percentile(&mut model, 0.5),
    };
    eprintln!(
        "  {accept}: {} bytes, p50 {:.1} ms, of which tokenize+queue+model {:.1} ms",
        bytes, r.p50_total_ms, r.p50_model_ms
    );
    Ok(r)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

// ---------------------------------------------------------------- report

struct Report {
    machine: String,
    command: String,
    sentences: usize,
    /// Per model folder: its ceiling, measured before and after the service's scenarios.
    models: Vec<(String, Vec<Ceiling>)>,
    sweep: Vec<Ceiling>,
    /// Per model folder: the 32-in-flight bound (`in_flight_bound`).
    in_flight: Vec<(String, InFlightBound)>,
    runs: Vec<LoadResult>,
    formats: Vec<FormatResult>,
    server_log_problems: Vec<String>,
    overload: Option<(LoadResult, LoadResult, Vec<String>)>,
}

impl Report {
    fn new(args: &Args, threads: usize, sentences: usize) -> Report {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_else(|| "unknown CPU".into());
        let mem_gb = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(f64::NAN);
        Report {
            machine: format!("{cpu}, {threads} cores available, {mem_gb:.0} GiB"),
            command: format!("--seconds {} {}", args.seconds, if args.sweep { "--sweep" } else { "" }),
            sentences,
            models: Vec::new(),
            sweep: Vec::new(),
            in_flight: Vec::new(),
            runs: Vec::new(),
            formats: Vec::new(),
            server_log_problems: Vec::new(),
            overload: None,
        }
    }

    fn find(
        &self,
        server: &str,
        model: &str,
        route: &str,
        per_request: usize,
        concurrency: usize,
    ) -> Option<&LoadResult> {
        self.runs.iter().find(|r| {
            r.server == server
                && r.model == model
                && r.route == route
                && r.per_request == per_request
                && r.concurrency == concurrency
        })
    }

    fn render(&self) -> (String, serde_json::Value) {
        let mut md = String::new();
        let _ = writeln!(md, "Machine: {}. Test sentences: {}. Flags: {}", self.machine, self.sentences, self.command);
        let mut targets = Vec::new();
        let mut ceilings = Vec::new();
        for (model, measured) in &self.models {
            let n = measured.len() as f64;
            let ceiling = Ceiling {
                setting: format!("mean of {n} runs"),
                sentences_per_s: measured.iter().map(|c| c.sentences_per_s).sum::<f64>() / n,
                single_p50_ms: measured.iter().map(|c| c.single_p50_ms).sum::<f64>() / n,
            };
            let _ = writeln!(
                md,
                "\n### {model}\n\n| in-process (sorted batches of 32) | sentences/s | one sentence p50 |\n|---|---:|---:|"
            );
            for (i, c) in measured.iter().enumerate() {
                let when = if i == 0 { "ceiling, before the HTTP runs" } else { "ceiling, after them" };
                let _ =
                    writeln!(md, "| {when}: {} | {:.0} | {:.2} ms |", c.setting, c.sentences_per_s, c.single_p50_ms);
            }
            let _ = writeln!(
                md,
                "| **ceiling used for ratios** (mean) | {:.0} | {:.2} ms |",
                ceiling.sentences_per_s, ceiling.single_p50_ms
            );
            let in_flight = self.in_flight.iter().find(|(m, _)| m == model).map(|(_, b)| b);
            if let Some(b) = in_flight {
                for (what, rate) in [
                    ("32 in flight, the service's planner, all queued at each call", b.all_queued),
                    ("32 in flight, the service's planner, replacements one call late (as over HTTP)", b.lagged),
                ] {
                    let share = 100.0 * rate / ceiling.sentences_per_s;
                    let _ = writeln!(md, "| {what} ({share:.0}% of the ceiling) | {rate:.0} | |");
                }
            }
            if model == &self.models[0].0 {
                for c in &self.sweep {
                    let _ =
                        writeln!(md, "| sweep: {} | {:.0} | {:.2} ms |", c.setting, c.sentences_per_s, c.single_p50_ms);
                }
            }
            let _ = writeln!(
                md,
                "\n| server | route | clients | sentences/request | requests/s | sentences/s | % of ceiling | p50 | p99 | peak RSS | mean batch | padding efficiency |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for r in self.runs.iter().filter(|r| &r.model == model) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.1} | {:.1} | {:.0}% | {:.1} ms | {:.1} ms | {:.0} MB | {} | {} |",
                    r.server,
                    r.route,
                    r.concurrency,
                    r.per_request,
                    r.requests_per_s,
                    r.sentences_per_s,
                    100.0 * r.sentences_per_s / ceiling.sentences_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.peak_rss_mb,
                    if r.mean_batch.is_nan() { "-".to_string() } else { format!("{:.1}", r.mean_batch) },
                    if r.padding_efficiency.is_nan() {
                        "-".to_string()
                    } else {
                        format!("{:.2}", r.padding_efficiency)
                    },
                );
            }
            // Targets (issue 15): 85% of the ceiling for MiniLM, where HTTP and
            // tokenizing weigh most, 90% for base-size models.
            let small = model.contains("minilm");
            let share = if small { 0.85 } else { 0.9 };
            for route in ["/embed", "/classify"] {
                if let Some(r) = self.find("distilserve", model, route, 1, 32) {
                    let ratio = r.sentences_per_s / ceiling.sentences_per_s;
                    targets.push((
                        format!("{model} {route} c=32 >= {:.0}% of ceiling", share * 100.0),
                        format!("{:.1}%", 100.0 * ratio),
                        ratio >= share,
                    ));
                    if small {
                        let rss = r.peak_rss_mb;
                        targets.push((
                            format!("{model} {route} peak RSS <= 250 MB"),
                            format!("{rss:.0} MB"),
                            rss <= 250.0,
                        ));
                    }
                    if let Some(p) = self.find("python", model, route, 1, 32) {
                        let x = r.sentences_per_s / p.sentences_per_s;
                        targets.push((format!("{model} {route} c=32 >= 5x Python"), format!("{x:.1}x"), x >= 5.0));
                    }
                }
                if let Some(r) = self.find("distilserve", model, route, 1, 1) {
                    let limit = ceiling.single_p50_ms + 2.0;
                    targets.push((
                        format!("{model} {route} c=1 p50 <= ceiling one sentence + 2 ms ({limit:.2} ms)"),
                        format!("{:.2} ms", r.p50_ms),
                        r.p50_ms <= limit,
                    ));
                }
            }
            ceilings.push(json!({"model": model, "measured": measured, "mean": ceiling, "in_flight_32": in_flight}));
        }
        let _ = writeln!(
            md,
            "\n| /embed, 16 sentences, pooling none | response | p50 whole request | p50 tokenize + queue + model | rest (routing, serialisation, transfer) |\n|---|---:|---:|---:|---:|"
        );
        for f in &self.formats {
            let _ = writeln!(
                md,
                "| {} | {:.0} KB | {:.1} ms | {:.1} ms | {:.1} ms ({:.0}%) |",
                f.format,
                f.response_bytes as f64 / 1024.0,
                f.p50_total_ms,
                f.p50_model_ms,
                f.p50_total_ms - f.p50_model_ms,
                100.0 * (f.p50_total_ms - f.p50_model_ms) / f.p50_total_ms
            );
        }
        let _ = writeln!(md, "\n| target | measured | met |\n|---|---|---|");
        if let Some((over, recovery, problems)) = &self.overload {
            let clean = over.other_status + over.client_errors == 0 && problems.is_empty();
            targets.push((
                "overload c=512, queue 64: only 200 and fast 503, no client errors, no log errors".into(),
                format!(
                    "{} ok, {} refused (p99 {:.1} ms), {} other, {} client errors, {} WARN/ERROR log lines",
                    over.ok,
                    over.refused,
                    over.refused_p99_ms,
                    over.other_status,
                    over.client_errors,
                    problems.len()
                ),
                clean && over.ok > 0,
            ));
            let recovered = recovery.ok > 0 && recovery.refused + recovery.other_status + recovery.client_errors == 0;
            targets.push((
                "recovery: one client right after".into(),
                format!("{} ok, p50 {:.1} ms, {} refused", recovery.ok, recovery.p50_ms, recovery.refused),
                recovered,
            ));
        }
        targets.push((
            "no WARN/ERROR in the service log under normal load".into(),
            format!("{} lines", self.server_log_problems.len()),
            self.server_log_problems.is_empty(),
        ));
        for (what, measured, met) in &targets {
            let _ = writeln!(md, "| {what} | {measured} | {} |", if *met { "yes" } else { "**no**" });
        }
        let json = json!({
            "machine": self.machine,
            "ceilings": ceilings,
            "sweep": self.sweep,
            "runs": self.runs,
            "formats": self.formats,
            "overload": self.overload.as_ref().map(|(o, r, p)| json!({"load": o, "recovery": r, "log_problems": p})),
            "server_log_problems": self.server_log_problems,
            "targets": targets.iter().map(|(w, m, ok)| json!({"target": w, "measured": m, "met": ok})).collect::<Vec<_>>(),
        });
        (md, json)
    }
}

// ---------------------------------------------------------------- profile

/// Which part of the work a sampled symbol belongs to.
fn cpu_part(dso: &str, sym: &str) -> &'static str {
    let has = |needles: &[&str]| needles.iter().any(|n| sym.contains(n));
    if dso.contains("onnxruntime") {
        "model (ONNX Runtime)"
    } else if dso.starts_with("throughput") {
        "load generator (this benchmark)"
    } else if dso.contains("kernel") {
        "kernel (network, scheduling, memory)"
    } else if dso.starts_with("libc") || dso.starts_with("ld-") || dso.starts_with("libm") || dso.contains("libgcc") {
        "libc (allocation, copies)"
    } else if dso != "distilserve" {
        "other"
    } else if has(&["tokenizers", "onig", "fancy_regex", "unicode_normalization", "esaxx"]) {
        "service: tokenizing"
    } else if has(&["serde_json", "serde::", "ryu", "itoa"]) {
        "service: JSON"
    } else if has(&["hyper", "axum", "tower", "http::", "httparse", "h2::"]) {
        "service: HTTP"
    } else if has(&["tokio", "parking_lot", "crossbeam"]) {
        "service: async runtime"
    } else if has(&["distilserve"]) {
        "service: batching, pooling, handlers"
    } else {
        "service: other"
    }
}

/// `perf record -a` over `seconds` of /embed at concurrency 32, summed by part.
async fn profile(args: &Args, machine: &str, texts: &[String], seconds: f64) -> anyhow::Result<()> {
    let mut flags = args.serve_flags.clone();
    if let Some(dir) = args.model_dirs.first() {
        flags.extend(["--model-dir".to_string(), dir.display().to_string()]);
    }
    let server = Server::distilserve(args, &flags)?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let data = args.out.join(format!("perf-{stamp}.data"));
    // The load's own warm-up is a fifth of its length: perf starts after it.
    let load = load(&server, "/embed", texts, 1, 32, seconds, Duration::from_secs(60));
    let perf = async {
        tokio::time::sleep(Duration::from_secs_f64(seconds / 5.0)).await;
        tokio::process::Command::new("perf")
            .args(["record", "-a", "-F", "499", "-o"])
            .arg(&data)
            .args(["--", "sleep", &format!("{seconds}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
    };
    let (result, status) = tokio::join!(load, perf);
    if !status.as_ref().is_ok_and(|s| s.success()) {
        bail!("perf record failed ({status:?}): install perf (Debian: linux-perf) and run as root");
    }
    let report = Command::new("perf")
        .args(["report", "--no-children", "--sort", "dso,sym", "--stdio", "--percent-limit", "0", "-i"])
        .arg(&data)
        .output()?;
    let text = String::from_utf8_lossy(&report.stdout);
    let mut parts: std::collections::BTreeMap<&str, f64> = Default::default();
    for line in text.lines() {
        let line = line.trim();
        let Some((share, rest)) = line.split_once('%') else { continue };
        let Ok(share) = share.trim().parse::<f64>() else { continue };
        let mut fields = rest.split_whitespace();
        let dso = fields.next().unwrap_or("");
        let sym = rest.split_once("] ").map(|(_, s)| s).unwrap_or("");
        *parts.entry(cpu_part(dso, sym)).or_default() += share;
    }
    let mut rows: Vec<(&str, f64)> = parts.into_iter().collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    let model = args.model_dirs.first().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned());
    let mut md = format!(
        "Where the CPU went: `perf record -a` for {seconds:.0} s while 32 clients sent /embed (one sentence, mean \
         pooling) to {} ({machine}); {:.1} sentences/s, p50 {:.1} ms.\n\n| part | share of samples |\n|---|---:|\n",
        model.as_deref().unwrap_or("the default model"),
        result.sentences_per_s,
        result.p50_ms
    );
    for (part, share) in &rows {
        md.push_str(&format!("| {part} | {share:.1}% |\n"));
    }
    println!("{md}");
    std::fs::write(args.out.join(format!("profile-{stamp}.md")), &md)?;
    eprintln!("written to {}/profile-{stamp}.md (samples: {})", args.out.display(), data.display());
    Ok(())
}

// ---------------------------------------------------------------- open loop

#[derive(Clone, Debug, serde::Serialize)]
struct OpenLoopPoint {
    route: String,
    offered_per_s: f64,
    sent: usize,
    ok: usize,
    refused: usize,
    failed: usize,
    /// Answers with 200 within the SLO, per second.
    goodput_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Answers slower than this do not count as goodput.
const OPEN_LOOP_SLO_MS: f64 = 1000.0;

/// Requests sent at fixed times (i / rate), each on its own task, so a slow
/// answer never delays the next request (no coordinated omission): latency
/// is from the scheduled send time to the last byte.
async fn open_loop(args: &Args, machine: &str, texts: &[String]) -> anyhow::Result<()> {
    let model_dir = args.model_dirs.first().cloned();
    let mut flags = args.serve_flags.clone();
    if let Some(dir) = &model_dir {
        flags.extend(["--model-dir".to_string(), dir.display().to_string()]);
    }
    let server = Server::distilserve(args, &flags)?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).pool_max_idle_per_host(4096).build()?;
    let mut points = Vec::new();
    for route in &args.routes {
        for &rate in &args.open_loop {
            let url = format!("http://127.0.0.1:{}{route}", server.port);
            let pooled = route == "/embed";
            let n = (rate * args.seconds).round().max(1.0) as usize;
            let start = tokio::time::Instant::now() + Duration::from_millis(100);
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                let (client, url) = (client.clone(), url.clone());
                let text = texts[i % texts.len()].clone();
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    let body =
                        if pooled { json!({"inputs": [text], "pooling": "mean"}) } else { json!({"inputs": [text]}) };
                    let status = match client.post(&url).json(&body).send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            if r.bytes().await.is_ok() {
                                s
                            } else {
                                0
                            }
                        }
                        Err(_) => 0,
                    };
                    (at.elapsed().as_secs_f64() * 1000.0, status)
                }));
            }
            let mut seen = Vec::with_capacity(n);
            for t in tasks {
                seen.push(t.await?);
            }
            let mut ok: Vec<f64> = seen.iter().filter(|s| s.1 == 200).map(|s| s.0).collect();
            let good = ok.iter().filter(|&&ms| ms <= OPEN_LOOP_SLO_MS).count();
            let p = OpenLoopPoint {
                route: route.clone(),
                offered_per_s: rate,
                sent: n,
                ok: ok.len(),
                refused: seen.iter().filter(|s| s.1 == 503 || s.1 == 429).count(),
                failed: seen.iter().filter(|s| ![200, 429, 503].contains(&s.1)).count(),
                goodput_per_s: good as f64 / args.seconds,
                p50_ms: percentile(&mut ok, 0.5),
                p99_ms: percentile(&mut ok, 0.99),
            };
            eprintln!(
                "  {route} offered {rate:.0}/s: {} ok, {} refused, {} failed, goodput {:.1}/s, p50 {:.1} ms, p99 {:.1} ms",
                p.ok, p.refused, p.failed, p.goodput_per_s, p.p50_ms, p.p99_ms
            );
            points.push(p);
            // Let the queue drain before the next rate.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let model = model_dir
        .as_ref()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "the default model".into());
    let title = format!("distilserve, {model}, open-loop, one sentence per request ({machine})");
    let mut md = format!(
        "{title}\n\n| route | offered/s | sent | 200 | refused | failed | goodput/s (200 within {OPEN_LOOP_SLO_MS:.0} ms) | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for p in &points {
        md.push_str(&format!(
            "| {} | {:.0} | {} | {} | {} | {} | {:.1} | {:.1} ms | {:.1} ms |\n",
            p.route, p.offered_per_s, p.sent, p.ok, p.refused, p.failed, p.goodput_per_s, p.p50_ms, p.p99_ms
        ));
    }
    println!("{md}");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    std::fs::write(args.out.join(format!("open-loop-{stamp}.md")), &md)?;
    std::fs::write(args.out.join(format!("open-loop-{stamp}.json")), serde_json::to_string_pretty(&points)?)?;
    std::fs::write(args.out.join(format!("open-loop-{stamp}.svg")), open_loop_svg(&title, &points))?;
    eprintln!("written to {}/open-loop-{stamp}.{{md,json,svg}}", args.out.display());
    Ok(())
}

/// Two panels over the offered rate: p50 and p99 latency (log scale), and
/// goodput against the offered rate (the diagonal is "every request served in time").
fn open_loop_svg(title: &str, points: &[OpenLoopPoint]) -> String {
    let (w, h, left, top, panel_w, panel_h, gap) = (980.0, 420.0, 70.0, 60.0, 390.0, 300.0, 90.0);
    let max_rate = points.iter().map(|p| p.offered_per_s).fold(1.0, f64::max);
    let x = |panel: usize, rate: f64| left + panel as f64 * (panel_w + gap) + rate / max_rate * panel_w;
    let (lat_min, lat_max) = (1.0f64, 20000.0f64);
    let y_lat = |ms: f64| {
        let v = ms.clamp(lat_min, lat_max);
        top + panel_h - (v.ln() - lat_min.ln()) / (lat_max.ln() - lat_min.ln()) * panel_h
    };
    let y_good = |r: f64| top + panel_h - r / max_rate * panel_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"24\" font-size=\"14\">{}</text>\n",
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    for panel in 0..2 {
        let x0 = left + panel as f64 * (panel_w + gap);
        svg.push_str(&format!(
            "<rect x=\"{x0}\" y=\"{top}\" width=\"{panel_w}\" height=\"{panel_h}\" fill=\"none\" stroke=\"#999\"/>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">offered load (requests/s)</text>\n",
            x0 + panel_w / 2.0,
            top + panel_h + 36.0
        ));
        for k in 0..=4 {
            let rate = max_rate * k as f64 / 4.0;
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{rate:.0}</text>\n",
                x(panel, rate),
                top + panel_h + 16.0
            ));
        }
    }
    for ms in [1.0, 10.0, 100.0, 1000.0, 10000.0] {
        let y = y_lat(ms);
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{ms:.0} ms</text>\n",
            left + panel_w,
            left - 6.0,
            y + 4.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{left}\" y=\"{}\">latency, p50 (solid) and p99 (dashed), log scale</text>\n",
        top - 8.0
    ));
    let x1 = left + panel_w + gap;
    svg.push_str(&format!(
        "<text x=\"{x1}\" y=\"{}\">goodput: 200 within {OPEN_LOOP_SLO_MS:.0} ms, per second (grey: offered)</text>\n\
         <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"3 3\"/>\n",
        top - 8.0,
        x(1, 0.0),
        y_good(0.0),
        x(1, max_rate),
        y_good(max_rate)
    ));
    for k in 0..=4 {
        let r = max_rate * k as f64 / 4.0;
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{r:.0}</text>\n",
            x1 - 6.0,
            y_good(r) + 4.0
        ));
    }
    let colors = ["#1f6fb2", "#c2571a", "#2e8b57"];
    let routes: Vec<&str> = points.iter().map(|p| p.route.as_str()).fold(Vec::new(), |mut v, r| {
        if !v.contains(&r) {
            v.push(r);
        }
        v
    });
    for (i, route) in routes.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mine: Vec<&OpenLoopPoint> = points.iter().filter(|p| p.route == *route).collect();
        let line = |f: &dyn Fn(&OpenLoopPoint) -> Option<(f64, f64)>| -> String {
            mine.iter().filter_map(|p| f(p)).map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ")
        };
        let p50 = line(&|p| p.p50_ms.is_finite().then(|| (x(0, p.offered_per_s), y_lat(p.p50_ms))));
        let p99 = line(&|p| p.p99_ms.is_finite().then(|| (x(0, p.offered_per_s), y_lat(p.p99_ms))));
        let good = line(&|p| Some((x(1, p.offered_per_s), y_good(p.goodput_per_s))));
        svg.push_str(&format!(
            "<polyline points=\"{p50}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n\
             <polyline points=\"{p99}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>\n\
             <polyline points=\"{good}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{route}</text>\n",
            left + 10.0 + i as f64 * 90.0,
            h - 14.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

// ---------------------------------------------------------------- soak

/// A memory line of /proc/PID/status (`VmRSS:` now, `VmHWM:` peak), in MB.
fn proc_status_mb(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One soak request: what to send and the status it must get.
fn soak_request(i: usize, texts: &[String]) -> (&'static str, Vec<u8>, u16) {
    let text = &texts[i % texts.len()];
    match i % 20 {
        0..=8 => ("/embed", json!({"inputs": [text], "pooling": "mean"}).to_string().into_bytes(), 200),
        9..=15 => ("/classify", json!({"inputs": [text]}).to_string().into_bytes(), 200),
        16 => {
            let batch: Vec<&String> = (0..16).map(|j| &texts[(i + j) % texts.len()]).collect();
            ("/embed", json!({"inputs": batch, "pooling": "none"}).to_string().into_bytes(), 200)
        }
        17 => ("/embed", b"{\"inputs\": [\"unterminated".to_vec(), 400),
        18 => ("/classify", json!({"inputs": [text], "head": "no-such-head"}).to_string().into_bytes(), 404),
        _ => ("/embed", json!({"inputs": ["word ".repeat(2000)], "truncate": false}).to_string().into_bytes(), 422),
    }
}

/// `seconds` of mixed load from 16 clients; every 30 s: requests, unexpected
/// answers, p50/p99 of the successful ones, RSS. Memory growth is measured
/// from the end of the first minute (warm-up) to the end.
async fn soak(args: &Args, texts: &[String], seconds: f64) -> anyhow::Result<()> {
    let server = Server::distilserve(args, &args.serve_flags)?;
    let pid = server.child.id();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let base = format!("http://127.0.0.1:{}", server.port);
    let texts = Arc::new(texts.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(seconds);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(f64, u16, u16, &'static str)>();
    for _ in 0..16 {
        let (client, base, texts, next, tx) = (client.clone(), base.clone(), texts.clone(), next.clone(), tx.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                let (route, body, expected) = soak_request(next.fetch_add(1, Ordering::Relaxed), &texts);
                let sent = Instant::now();
                let status = match client
                    .post(format!("{base}{route}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        if r.bytes().await.is_ok() {
                            s
                        } else {
                            0
                        }
                    }
                    Err(_) => 0,
                };
                let _ = tx.send((sent.elapsed().as_secs_f64() * 1000.0, status, expected, route));
            }
        });
    }
    drop(tx);
    let mut md = format!(
        "Soak: {seconds:.0} s, 16 clients, mixed load (45% /embed one sentence, 35% /classify, 5% /embed 16 x pooling none, \
         15% bad requests expecting 400/404/422)\n\n| at | 200 answers | unexpected | p50 (200s) | p99 (200s) | RSS |\n|---:|---:|---:|---:|---:|---:|\n"
    );
    let (mut window, mut total, mut unexpected_total) = (Vec::new(), 0usize, 0usize);
    let mut unexpected = 0;
    let mut rss_samples: Vec<(f64, f64)> = Vec::new();
    let mut p50s = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.tick().await;
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some((ms, status, expected, _route)) => {
                    total += 1;
                    if status != expected { unexpected += 1; }
                    if status == 200 { window.push(ms); }
                }
                None => break,
            },
            _ = tick.tick() => {
                let at = started.elapsed().as_secs_f64();
                let rss = proc_status_mb(pid, "VmRSS:");
                rss_samples.push((at, rss));
                let (p50, p99) = (percentile(&mut window, 0.5), percentile(&mut window, 0.99));
                if at > 60.0 { p50s.push(p50); }
                let line = format!("| {at:.0} s | {} | {unexpected} | {p50:.1} ms | {p99:.1} ms | {rss:.1} MB |\n", window.len());
                eprint!("{line}");
                md.push_str(&line);
                unexpected_total += unexpected;
                unexpected = 0;
                window.clear();
            }
        }
    }
    unexpected_total += unexpected;
    let warm = rss_samples.iter().find(|(at, _)| *at >= 60.0).map(|s| s.1).unwrap_or(f64::NAN);
    let last = rss_samples.last().map(|s| s.1).unwrap_or(f64::NAN);
    let peak = server.peak_rss_mb();
    let problems = server.log_problems()?;
    p50s.retain(|v| v.is_finite());
    let (p50_min, p50_max) = (p50s.iter().cloned().fold(f64::MAX, f64::min), p50s.iter().cloned().fold(0.0, f64::max));
    let summary = format!(
        "\n{total} requests, {unexpected_total} with an unexpected status or a client error; RSS after warm-up (60 s) \
         {warm:.1} MB, at the end {last:.1} MB: growth {:+.1}% (target under 5%); peak {peak:.1} MB; p50 per 30 s window \
         after warm-up from {p50_min:.1} to {p50_max:.1} ms; {} WARN/ERROR lines in the service log.\n",
        100.0 * (last - warm) / warm,
        problems.len()
    );
    eprint!("{summary}");
    md.push_str(&summary);
    println!("{md}");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    std::fs::write(args.out.join(format!("soak-{stamp}.md")), &md)?;
    if unexpected_total > 0 || !problems.is_empty() || (last - warm) / warm >= 0.05 {
        bail!("soak failed: see above");
    }
    Ok(())
}
