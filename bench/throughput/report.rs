//! The report: Markdown and JSON, ratios against the ceiling and the peers.

use super::*;

pub(crate) struct Report {
    pub(crate) machine: String,
    pub(crate) command: String,
    pub(crate) sentences: usize,
    /// Per model folder: its ceiling, measured before and after the service's scenarios.
    pub(crate) models: Vec<(String, Vec<Ceiling>)>,
    pub(crate) sweep: Vec<Ceiling>,
    /// Per model folder: the 32-in-flight bound (`in_flight_bound`).
    pub(crate) in_flight: Vec<(String, InFlightBound)>,
    pub(crate) runs: Vec<LoadResult>,
    pub(crate) formats: Vec<FormatResult>,
    pub(crate) server_log_problems: Vec<String>,
    pub(crate) overload: Option<(LoadResult, LoadResult, Vec<String>)>,
}

impl Report {
    pub(crate) fn new(args: &Args, threads: usize, sentences: usize) -> Report {
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

    pub(crate) fn find(
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

    pub(crate) fn render(&self) -> (String, serde_json::Value) {
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
