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
//!
//! One file per part: `ceiling.rs` (in-process ceiling, in-flight bound,
//! sweep), `servers.rs` (the binary and the Python peers as child processes),
//! `load.rs` (closed-loop load, percentiles), `report.rs` (Markdown and JSON),
//! `profile.rs` (perf), `open_loop.rs` (offered rate against goodput, SVG),
//! `soak.rs` (minutes of mixed traffic), `overload.rs` (past capacity: retrying
//! clients, open-loop arrivals, a burst); this file parses the flags and runs them.

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
use distilserve::forward::ForwardPass;
use distilserve::model::Model;
use distilserve::tokenize::Tokenized;
use serde_json::json;

mod ceiling;
mod load;
mod open_loop;
mod overload;
mod overload_report;
mod profile;
mod report;
mod servers;
mod soak;

use ceiling::*;
use load::*;
use open_loop::*;
use overload::*;
use overload_report::*;
use profile::*;
use report::*;
use servers::*;
use soak::*;

#[derive(Parser)]
pub(crate) struct Args {
    /// The release binary to serve with.
    #[arg(long, default_value = "target/release/distilserve")]
    pub(crate) bin: PathBuf,
    /// Python with torch, transformers and scikit-learn (scripts/python-env.sh); none: skip the baseline.
    #[arg(long)]
    pub(crate) python: Option<PathBuf>,
    /// The default model's Hugging Face folder, for the Python baseline.
    #[arg(long)]
    pub(crate) hf_model: Option<PathBuf>,
    /// Data set whose test split is sent.
    #[arg(long, default_value = "data/rotten_tomatoes")]
    pub(crate) data: PathBuf,
    /// Measured seconds per load scenario (after a warm-up of a fifth of it).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Also measure runtime settings in-process (threads, optimisation, model file, sessions).
    #[arg(long)]
    pub(crate) sweep: bool,
    /// Routes loaded (for quick experiments: --routes /embed).
    #[arg(long, value_delimiter = ',', default_value = "/embed,/classify")]
    pub(crate) routes: Vec<String>,
    /// Skip the overload phase.
    #[arg(long)]
    pub(crate) no_overload: bool,
    /// Instead of the benchmark: a soak test of this many seconds of mixed load
    /// (embed, classify, batches, bad requests) reporting memory and latency over time.
    #[arg(long)]
    pub(crate) soak: Option<f64>,
    /// Where the Markdown table and JSON go.
    #[arg(long, default_value = "bench/results")]
    pub(crate) out: PathBuf,
    /// Model folders measured one after another, each against its own in-process
    /// ceiling (e.g. models/all-minilm-l6-v2,models/distilbert-base-shaped);
    /// default: model.dir of the settings. The Python baseline runs the first's
    /// Hugging Face model (--hf-model) only.
    #[arg(long, value_delimiter = ',')]
    pub(crate) model_dirs: Vec<PathBuf>,
    /// Instead of the benchmark: open-loop load on the first model, requests
    /// arriving at each of these rates (requests/s, one sentence each) for
    /// --seconds, whatever the answers' pace; latency percentiles and goodput
    /// per rate, drawn to bench/results/open-loop-<time>.svg.
    #[arg(long, value_delimiter = ',')]
    pub(crate) open_loop: Vec<f64>,
    /// Instead of the benchmark: overload on each model of --model-dirs and
    /// each of --routes (bench/throughput/overload.rs, `make bench-overload`):
    /// closed-loop clients retrying a refusal at once, open-loop arrivals at
    /// 2x, 5x and 10x the capacity, a burst after idle.
    #[arg(long)]
    pub(crate) overload: bool,
    /// Closed-loop client counts of --overload; the first is the capacity.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    pub(crate) overload_clients: Vec<usize>,
    /// Open-loop arrival rates of --overload, as multiples of the capacity.
    #[arg(long, value_delimiter = ',', default_value = "2,5,10")]
    pub(crate) overload_open: Vec<f64>,
    /// Let --overload's load generator preempt the server's threads when it
    /// wakes (as `wrk` on the same machine does). By default it runs
    /// `SCHED_BATCH`, standing in for clients on other machines: it still takes
    /// its share of the CPU, but its thousands of wake-ups a second do not
    /// stall the model's parallel operators (overload.rs).
    #[arg(long)]
    pub(crate) overload_clients_preempt: bool,
    /// Instead of the benchmark: profile the whole machine with `perf record -a`
    /// for this many seconds while 32 clients load /embed on the first model,
    /// and print where the CPU time went (model, tokenizing, HTTP, JSON, the
    /// async runtime, the kernel, the load generator).
    #[arg(long)]
    pub(crate) profile: Option<f64>,
    /// Peers measured under the same load after distilserve, on the first
    /// model's files: `infinity` (bench/infinity_peer.sh; needs --hf-model).
    #[arg(long, value_delimiter = ',')]
    pub(crate) peers: Vec<String>,
    /// Extra flags for `distilserve serve` (e.g. --model-file model.int8.onnx).
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    pub(crate) serve_flags: Vec<String>,
    /// Instead of the benchmark: in-process, the first model fed by the
    /// service's planner with this many sequences in flight (replacements one
    /// call late), for each of --planner-overheads; sentences/s against the
    /// sorted ceiling, sequences per call, padding.
    #[arg(long, value_delimiter = ',')]
    pub(crate) planner_sweep: Vec<usize>,
    /// `call_overhead_tokens` values of --planner-sweep.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64")]
    pub(crate) planner_overheads: Vec<usize>,
    // `cargo bench` passes --bench to every bench target.
    #[arg(long, hide = true)]
    pub(crate) bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(None, &Default::default())?;
    let texts = Dataset::open(&args.data)?.split("test")?.texts;
    let threads = distilserve::threads::cores();
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
    if args.overload {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(overload(&args, &report.machine, &texts, &settings));
    }
    if !args.open_loop.is_empty() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        return rt.block_on(open_loop(&args, &report.machine, &texts));
    }
    let model_dirs =
        if args.model_dirs.is_empty() { vec![settings.model.dir.clone()] } else { args.model_dirs.clone() };
    if !args.planner_sweep.is_empty() {
        let model_settings = in_process_settings(&settings, &model_dirs[0], threads);
        return planner_sweep(&model_settings, &settings, &texts, &args.planner_sweep, &args.planner_overheads);
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let planner = BatcherConfig::new(&settings.batching, &settings.limits);
    for (m, dir) in model_dirs.iter().enumerate() {
        let model_settings = in_process_settings(&settings, dir, threads);
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
