//! Open-loop load: offered rate against goodput and latency, with its SVG plot.

use super::*;

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct OpenLoopPoint {
    pub(crate) route: String,
    pub(crate) offered_per_s: f64,
    pub(crate) sent: usize,
    pub(crate) ok: usize,
    pub(crate) refused: usize,
    pub(crate) failed: usize,
    /// Answers with 200 within the SLO, per second.
    pub(crate) goodput_per_s: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// Answers slower than this do not count as goodput.
pub(crate) const OPEN_LOOP_SLO_MS: f64 = 1000.0;

/// Requests sent at fixed times (i / rate), each on its own task, so a slow
/// answer never delays the next request (no coordinated omission): latency
/// is from the scheduled send time to the last byte.
pub(crate) async fn open_loop(args: &Args, machine: &str, texts: &[String]) -> anyhow::Result<()> {
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
pub(crate) fn open_loop_svg(title: &str, points: &[OpenLoopPoint]) -> String {
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
