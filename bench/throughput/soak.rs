//! Minutes of mixed good and bad requests: memory, latency and errors over time.

use super::*;

/// A memory line of /proc/PID/status (`VmRSS:` now, `VmHWM:` peak), in MB.
pub(crate) fn proc_status_mb(pid: u32, key: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// One soak request: what to send and the status it must get.
pub(crate) fn soak_request(i: usize, texts: &[String]) -> (&'static str, Vec<u8>, u16) {
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
pub(crate) async fn soak(args: &Args, texts: &[String], seconds: f64) -> anyhow::Result<()> {
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
