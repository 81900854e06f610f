//! Closed-loop load over HTTP: scenarios, latency percentiles, batch counters, output formats.

use super::*;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub(crate) struct LoadResult {
    pub(crate) server: String,
    /// Model folder name (distilserve) or the model the baseline serves.
    pub(crate) model: String,
    pub(crate) route: String,
    pub(crate) concurrency: usize,
    pub(crate) per_request: usize,
    pub(crate) seconds: f64,
    pub(crate) ok: usize,
    pub(crate) refused: usize,
    pub(crate) other_status: usize,
    pub(crate) client_errors: usize,
    pub(crate) requests_per_s: f64,
    pub(crate) sentences_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) refused_p99_ms: f64,
    pub(crate) peak_rss_mb: f64,
    /// distilserve only, from /metrics over the scenario: sequences per model call...
    pub(crate) mean_batch: f64,
    /// ...and real tokens over padded tokens fed to the model.
    pub(crate) padding_efficiency: f64,
    /// Share of the scenario (warm-up included) the model was computing.
    pub(crate) model_busy: f64,
}

pub(crate) async fn scenarios(
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
pub(crate) async fn load(
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

/// distilserve's batches, sequences, tokens, padded tokens and model seconds so far (None for other servers).
pub(crate) async fn batch_counters(server: &Server) -> Option<[f64; 5]> {
    if server.name != "distilserve" {
        return None;
    }
    // On the private listener (`Server::metrics_port`); should it be busy, try
    // again for up to a second.
    let url = format!("http://127.0.0.1:{}/metrics", server.metrics_port);
    let mut text = None;
    for _ in 0..50 {
        match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => {
                text = r.text().await.ok();
                break;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let text = text?;
    // Summed over the model runtimes (the encoder's, the heads' graph's).
    let value = |name: &str| {
        let samples: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .collect();
        (!samples.is_empty()).then(|| samples.iter().sum::<f64>())
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
pub(crate) struct FormatResult {
    pub(crate) format: String,
    pub(crate) response_bytes: usize,
    pub(crate) p50_total_ms: f64,
    pub(crate) p50_model_ms: f64,
}

/// 100 sequential /embed requests of 16 sentences with pooling none (every
/// token's vector) in `accept`: the whole request against the time the server
/// spent tokenizing, queueing and in the model (its timing headers); the rest
/// is routing, serialisation and transfer.
pub(crate) async fn output_format(server: &Server, texts: &[String], accept: &str) -> anyhow::Result<FormatResult> {
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

pub(crate) fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[((values.len() - 1) as f64 * q).round() as usize]
}
