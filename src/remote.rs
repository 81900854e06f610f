//! `distilserve extract --remote URL`: a data set's features computed by a
//! running deployment (its `POST /embed`, through the load balancer and so
//! every replica) instead of the local model, for data larger than one
//! machine. The same files as a local extraction (`<out>/<split>/X.npy`,
//! `y.npy`, `meta.json`). Shards of `--shard-size` texts go out
//! `--concurrency` at a time; each answer is written to `<out>/.partial/` as it
//! arrives, so an interrupted run continues where it stopped. 503 and 429 are
//! retried after their `Retry-After`, lost connections and 502/504 with
//! backoff; every shard must come from the encoder the job started with
//! (`x-encoder-fingerprint`), so a deployment changing models mid-run cannot
//! mix features.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use crate::atomic_file::write_atomic;
use crate::cli::ExtractArgs;
use crate::data::Dataset;
use crate::features::Progress;
use crate::npy;
use crate::pooling::FeaturePooling;

/// Tries per shard before the run gives up (each waits up to `MAX_BACKOFF`).
const MAX_ATTEMPTS: u32 = 60;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What a run computes: a partial folder is resumed only for the same job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    data: String,
    /// Per split: texts and the split file's fingerprint.
    splits: BTreeMap<String, (usize, String)>,
    pooling: String,
    layers: String,
    shard_size: usize,
    model_fingerprint: String,
}

/// What the deployment serves, from `/tei/info` and one probe of `/embed`.
struct Served {
    name: String,
    fingerprint: String,
    max_tokens: usize,
    /// Width of one feature vector, and the hidden states it comes from (absolute).
    width: usize,
    layer_indices: Vec<usize>,
}

/// One shard's place: its split, number and texts.
struct Shard {
    split: String,
    index: usize,
    texts: Vec<String>,
}

struct Remote {
    client: reqwest::Client,
    url: String,
    api_key: Option<String>,
}

impl Remote {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.url));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// Sends a request until it is answered with something other than a
    /// refusal to retry: 503 and 429 after their `Retry-After`; lost
    /// connections, 502 and 504 after a growing wait.
    async fn send(&self, what: &str, make: impl Fn() -> reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let mut backoff = Duration::from_millis(250);
        for attempt in 1..=MAX_ATTEMPTS {
            let wait = match make().send().await {
                Ok(response) => match response.status().as_u16() {
                    503 | 429 => retry_after(&response).unwrap_or(backoff),
                    502 | 504 => backoff,
                    _ => return Ok(response),
                },
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    tracing::debug!(what, attempt, error = %e, "request failed; retrying");
                    backoff
                }
                Err(e) => return Err(e).with_context(|| format!("{what}: {}", self.url)),
            };
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        bail!("{what}: no answer from {} after {MAX_ATTEMPTS} tries", self.url)
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response.headers().get("retry-after")?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds))
}

/// The error a deployment answered, as its JSON body says it.
async fn refusal(what: &str, response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(body);
    anyhow!("{what}: the deployment answered {status}: {message}")
}

pub fn extract(args: &ExtractArgs, url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args, url))
}

async fn run(args: &ExtractArgs, url: &str) -> anyhow::Result<()> {
    let pooling = match args.pooling {
        FeaturePooling::Cls => "cls",
        FeaturePooling::Mean => "mean",
        FeaturePooling::ClsMean => bail!("--remote extracts cls or mean pooling (cls_mean is two extractions)"),
    };
    if args.shard_size == 0 || args.concurrency == 0 {
        bail!("--shard-size and --concurrency must be at least 1");
    }
    let remote = Remote {
        client: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()?,
        url: url.trim_end_matches('/').to_string(),
        api_key: args.remote_api_key.clone().filter(|k| !k.is_empty()),
    };
    let dataset = Dataset::open(&args.data)?;
    let splits =
        dataset.splits_or_all(&args.splits).iter().map(|n| dataset.split(n)).collect::<anyhow::Result<Vec<_>>>()?;
    let served = describe(&remote, pooling, args).await?;
    let job = Job {
        data: args.data.display().to_string(),
        splits: splits.iter().map(|s| (s.name.clone(), (s.texts.len(), s.fingerprint.clone()))).collect(),
        pooling: pooling.to_string(),
        layers: args.layers.to_string(),
        shard_size: args.shard_size,
        model_fingerprint: served.fingerprint.clone(),
    };
    let partial = args.out.join(".partial");
    resume_or_start(&partial, &job)?;

    // Shards not yet on disk (or unreadable) are what is left to do.
    let mut todo = VecDeque::new();
    let mut done = 0;
    let total: usize = splits.iter().map(|s| s.texts.len()).sum();
    for split in &splits {
        for (index, texts) in split.texts.chunks(args.shard_size).enumerate() {
            match read_shard(&shard_path(&partial, &split.name, index), texts.len(), served.width) {
                Ok(_) => done += texts.len(),
                Err(_) => todo.push_back(Shard { split: split.name.clone(), index, texts: texts.to_vec() }),
            }
        }
    }
    if done > 0 {
        tracing::info!(done, total, "resuming: {done} of {total} texts already extracted");
    }
    let progress = Arc::new(Progress::new(format!("extracting through {}", remote.url)));
    progress.update(done, total);
    let state = Arc::new(Fetching {
        remote,
        todo: Mutex::new(todo),
        done: AtomicUsize::new(done),
        total,
        failed: AtomicBool::new(false),
        partial: partial.clone(),
        served_fingerprint: served.fingerprint.clone(),
        width: served.width,
        body: serde_json::json!({
            "pooling": pooling,
            "layers": args.layers.indices,
            "layer_combine": args.layers.combine,
            "truncate": true,
            "normalize": false,
        }),
        progress: progress.clone(),
    });
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        workers.spawn(fetch_shards(state.clone()));
    }
    let mut first_error = None;
    while let Some(joined) = workers.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            state.failed.store(true, Ordering::Relaxed);
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(
            e.context(format!("shards received so far are kept in {}: run again to continue", partial.display()))
        );
    }
    progress.finish(total);

    let mut written = BTreeMap::new();
    for split in &splits {
        let dir = args.out.join(&split.name);
        let mut x = npy::Writer::<f32>::new(&[split.texts.len(), served.width]);
        for (index, texts) in split.texts.chunks(args.shard_size).enumerate() {
            x.extend(&read_shard(&shard_path(&partial, &split.name, index), texts.len(), served.width)?);
        }
        let y: Vec<i64> = split.labels.iter().map(|&l| l as i64).collect();
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join("X.npy"), &x.finish())?;
        write_atomic(&dir.join("y.npy"), &npy::encode(&[y.len()], &y))?;
        println!("{}: X ({}, {}) float32, y ({},) int64", dir.display(), split.texts.len(), served.width, y.len());
        written.insert(split.name.clone(), y.len());
    }
    let meta = serde_json::json!({
        "labels": dataset.labels,
        "pooling": args.pooling,
        "layers": args.layers.to_string(),
        "layer_indices": served.layer_indices,
        "width": served.width,
        "model": served.name,
        "model_fingerprint": served.fingerprint,
        "max_tokens": served.max_tokens,
        "data": args.data,
        "splits": written,
        "remote": url,
    });
    write_atomic(&args.out.join("meta.json"), serde_json::to_string_pretty(&meta)?.as_bytes())?;
    std::fs::remove_dir_all(&partial).with_context(|| format!("removing {}", partial.display()))?;
    Ok(())
}

/// The served model (`/tei/info`) and the width and hidden states of the
/// features asked for (one text through `/embed`, which also checks the
/// options against the model before any shard goes out).
async fn describe(remote: &Remote, pooling: &str, args: &ExtractArgs) -> anyhow::Result<Served> {
    let response = remote.send("GET /tei/info", || remote.request(reqwest::Method::GET, "/tei/info")).await?;
    if !response.status().is_success() {
        return Err(refusal("GET /tei/info", response).await);
    }
    let info: serde_json::Value = response.json().await.context("GET /tei/info: not JSON")?;
    let probe = serde_json::json!({
        "inputs": ["probe"],
        "pooling": pooling,
        "layers": args.layers.indices,
        "layer_combine": args.layers.combine,
    });
    let response = remote.send("POST /embed", || remote.request(reqwest::Method::POST, "/embed").json(&probe)).await?;
    if !response.status().is_success() {
        return Err(refusal("POST /embed", response).await);
    }
    let answer: serde_json::Value = response.json().await.context("POST /embed: not JSON")?;
    let field = |v: &serde_json::Value, what: &str| -> anyhow::Result<usize> {
        v.as_u64().map(|n| n as usize).ok_or_else(|| anyhow!("the deployment's answer has no {what}"))
    };
    Ok(Served {
        name: info["model_id"].as_str().unwrap_or_default().to_string(),
        fingerprint: info["model_sha"].as_str().ok_or_else(|| anyhow!("/tei/info has no model_sha"))?.to_string(),
        max_tokens: field(&info["max_input_length"], "max_input_length")?,
        width: field(&answer["dimensions"], "dimensions")?,
        layer_indices: serde_json::from_value(answer["layers"].clone()).context("/embed's layers")?,
    })
}

/// Keeps `partial` for the same job (resume); starts it afresh for another.
fn resume_or_start(partial: &Path, job: &Job) -> anyhow::Result<()> {
    let job_file = partial.join("job.json");
    if let Ok(text) = std::fs::read_to_string(&job_file) {
        if serde_json::from_str::<Job>(&text).ok().as_ref() == Some(job) {
            return Ok(());
        }
        tracing::warn!(folder = %partial.display(), "a different extraction was left here; starting afresh");
        std::fs::remove_dir_all(partial)?;
    }
    std::fs::create_dir_all(partial)?;
    write_atomic(&job_file, serde_json::to_string_pretty(job)?.as_bytes())
}

fn shard_path(partial: &Path, split: &str, index: usize) -> PathBuf {
    partial.join(split).join(format!("{index:06}.npy"))
}

/// A shard written earlier, checked: a `.npy` of `rows` x `width` float32.
fn read_shard(path: &Path, rows: usize, width: usize) -> anyhow::Result<Vec<f32>> {
    let bytes = std::fs::read(path)?;
    let (shape, data) = npy::decode::<f32>(&bytes)?;
    if shape != [rows, width] {
        bail!("{}: shape {shape:?}, expected [{rows}, {width}]", path.display());
    }
    Ok(data)
}

/// What the workers share.
struct Fetching {
    remote: Remote,
    todo: Mutex<VecDeque<Shard>>,
    done: AtomicUsize,
    total: usize,
    failed: AtomicBool,
    partial: PathBuf,
    served_fingerprint: String,
    width: usize,
    /// The `/embed` request's options (`inputs` added per shard).
    body: serde_json::Value,
    progress: Arc<Progress>,
}

/// One worker: takes shards until none is left (or another worker failed),
/// writing each answer as it arrives.
async fn fetch_shards(state: Arc<Fetching>) -> anyhow::Result<()> {
    loop {
        if state.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(shard) = state.todo.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else { return Ok(()) };
        let mut body = state.body.clone();
        body["inputs"] = serde_json::json!(shard.texts);
        let what = format!("shard {} of {}", shard.index, shard.split);
        let remote = &state.remote;
        let response = remote
            .send(&what, || {
                remote.request(reqwest::Method::POST, "/embed").header("accept", npy::MEDIA_TYPE).json(&body)
            })
            .await?;
        if !response.status().is_success() {
            return Err(refusal(&what, response).await);
        }
        let fingerprint =
            response.headers().get("x-encoder-fingerprint").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        if fingerprint != state.served_fingerprint {
            bail!(
                "{what} was computed by encoder {fingerprint:?}, the job by {:?}: the deployment changed models; \
                 run again when every replica serves one",
                state.served_fingerprint
            );
        }
        let bytes = response.bytes().await.with_context(|| format!("{what}: reading the answer"))?;
        let (shape, _) = npy::decode::<f32>(&bytes).with_context(|| format!("{what}: the answer"))?;
        if shape != [shard.texts.len(), state.width] {
            bail!("{what}: answer of shape {shape:?}, expected [{}, {}]", shard.texts.len(), state.width);
        }
        let path = shard_path(&state.partial, &shard.split, shard.index);
        std::fs::create_dir_all(path.parent().expect("split folder"))?;
        write_atomic(&path, &bytes)?;
        let done = state.done.fetch_add(shard.texts.len(), Ordering::Relaxed) + shard.texts.len();
        state.progress.update(done, state.total);
    }
}
