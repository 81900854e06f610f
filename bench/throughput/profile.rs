//! Where the CPU goes under load (perf).

use super::*;

/// Which part of the work a sampled symbol belongs to.
pub(crate) fn cpu_part(dso: &str, sym: &str) -> &'static str {
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
pub(crate) async fn profile(args: &Args, machine: &str, texts: &[String], seconds: f64) -> anyhow::Result<()> {
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
