//! The overload benchmark's report: its table (Markdown, JSON), the fit of
//! what refusing costs, and the goodput plot.
//!
//! The CPU a point's refusals cost is the server's HTTP-side CPU less what
//! its answered requests cost at capacity; over the refusals that is a mean
//! per point, which also carries whatever the HTTP side spends past capacity
//! at any refusal rate (its wake-ups on the 10 ms tick, answers read and
//! written in the yielding mode): where refusals are few the mean is mostly
//! that. The fit over a route's points separates the two: the slope is what
//! one more refusal costs, the intercept what being past capacity costs a
//! second.

use super::*;

/// What refusing costs one model and route: see the module's comment.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct RefusalCost {
    pub(crate) model: String,
    pub(crate) route: String,
    /// Points with refusals the fit is over.
    pub(crate) points: usize,
    /// The slope: HTTP-side CPU one more refusal costs, µs.
    pub(crate) per_refusal_us: f64,
    /// The intercept: HTTP-side CPU past capacity beyond the answers' cost at
    /// any refusal rate, ms a second.
    pub(crate) fixed_ms_per_s: f64,
}

/// Least squares of refusing CPU a second on refusals a second, per model
/// and route, over its points with refusals and a capacity to compare with;
/// routes with fewer than two such points, or one refusal rate, have none.
pub(crate) fn refusal_costs(points: &[OverloadPoint]) -> Vec<RefusalCost> {
    let mut routes: Vec<(&str, &str)> = Vec::new();
    for p in points {
        if !routes.contains(&(p.model.as_str(), p.route.as_str())) {
            routes.push((p.model.as_str(), p.route.as_str()));
        }
    }
    let mut costs = Vec::new();
    for (model, route) in routes {
        let xy: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.model == model && p.route == route && p.refused > 0 && p.refusing_cpu_s.is_finite())
            .map(|p| (p.refused_per_s, p.refusing_cpu_s / p.seconds))
            .collect();
        if let Some((slope, intercept)) = least_squares(&xy) {
            costs.push(RefusalCost {
                model: model.into(),
                route: route.into(),
                points: xy.len(),
                per_refusal_us: slope * 1e6,
                fixed_ms_per_s: intercept * 1e3,
            });
        }
    }
    costs
}

/// The line y = intercept + slope x nearest `xy` (None: under two points or one x).
fn least_squares(xy: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = xy.len() as f64;
    let (mx, my) = (xy.iter().map(|p| p.0).sum::<f64>() / n, xy.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if xy.len() < 2 || sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

pub(crate) fn write_overload_report(
    args: &Args,
    machine: &str,
    threads: usize,
    warm: Duration,
    ceilings: &[(String, f64)],
    points: &[OverloadPoint],
) -> anyhow::Result<()> {
    let mut md = format!(
        "Overload, one sentence per request, {} s per point after {:.0} s of warm-up ({machine}, {threads} threads; \
         the load generator {})\n\n",
        args.seconds,
        warm.as_secs_f64(),
        if args.overload_clients_preempt { "preempting the server's threads" } else { "SCHED_BATCH" }
    );
    for (model, per_s) in ceilings {
        md.push_str(&format!("- {model}: in-process ceiling {per_s:.1} sentences/s\n"));
    }
    md.push_str(
        "\n| model | route | load | answered/s | x capacity | refused/s | failed | p50 | p99 | refusal p99 | CPU/refusal, mean |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for p in points {
        md.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.0} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.1} µs |\n",
            p.model,
            p.route,
            p.load,
            p.answered_per_s,
            p.of_capacity,
            p.refused_per_s,
            p.failed,
            p.p50_ms,
            p.p99_ms,
            p.refused_p99_ms,
            p.cpu_per_refusal_us
        ));
    }
    let costs = refusal_costs(points);
    if !costs.is_empty() {
        md.push_str(
            "\nWhat refusing costs the HTTP side, fitted over each route's points with refusals (CPU a second beyond \
             the answers' cost at capacity = fixed + per refusal x refusals a second):\n\n\
             | model | route | points | CPU per refusal (slope) | fixed past capacity (intercept) |\n|---|---|---:|---:|---:|\n",
        );
        for c in &costs {
            md.push_str(&format!(
                "| {} | {} | {} | {:.1} µs | {:.1} ms/s |\n",
                c.model, c.route, c.points, c.per_refusal_us, c.fixed_ms_per_s
            ));
        }
    }
    println!("{md}");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    std::fs::write(args.out.join(format!("overload-{stamp}.md")), &md)?;
    let json = json!({
        "machine": machine,
        "clients_preempt": args.overload_clients_preempt,
        "ceilings": ceilings,
        "points": points,
        "refusal_costs": costs
    });
    std::fs::write(args.out.join(format!("overload-{stamp}.json")), serde_json::to_string_pretty(&json)?)?;
    let cpu = machine.split(',').next().unwrap_or(machine);
    let title = format!("Past capacity: answered/s against offered load ({cpu}, {threads} threads)");
    std::fs::write(args.out.join(format!("overload-{stamp}.svg")), goodput_svg(&title, points))?;
    eprintln!("written to {}/overload-{stamp}.{{md,json,svg}}", args.out.display());
    Ok(())
}

/// Answered/s over the offered load, both in multiples of the capacity (the
/// 64-client figure), one line per model and route: open-loop points, with
/// the capacity as 1x. The diagonal up to 1x is "everything offered answered".
pub(crate) fn goodput_svg(title: &str, points: &[OverloadPoint]) -> String {
    let (w, h, left, top, plot_w, plot_h) = (720.0, 470.0, 70.0, 50.0, 600.0, 300.0);
    let max_x = 10.0;
    let max_y = 1.4;
    let x = |v: f64| left + v / max_x * plot_w;
    let y = |v: f64| top + plot_h - v.min(max_y) / max_y * plot_h;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"24\" font-size=\"14\">{}</text>\n\
         <rect x=\"{left}\" y=\"{top}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>\n\
         <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"3 3\"/>\n\
         <line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#bbb\" stroke-dasharray=\"3 3\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">offered load, x capacity (open loop)</text>\n\
         <text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">answered/s, x capacity</text>\n",
        title.replace('&', "&amp;").replace('<', "&lt;"),
        x(0.0),
        y(0.0),
        x(1.0),
        y(1.0),
        x(1.0),
        y(1.0),
        x(max_x),
        y(1.0),
        left + plot_w / 2.0,
        top + plot_h + 36.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0,
    );
    for v in [0.0, 1.0, 2.0, 5.0, 10.0] {
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{v:.0}</text>\n",
            x(v),
            top + plot_h + 16.0
        ));
    }
    for v in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0, 1.25] {
        svg.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v}</text>\n",
            left + plot_w,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        ));
    }
    let colors = ["#1f6fb2", "#c2571a", "#2e8b57", "#7b3fa0"];
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for p in points {
        let offered = if p.load.starts_with("closed") && p.of_capacity == 1.0 {
            1.0
        } else if let Some(times) =
            p.load.strip_prefix("open ").and_then(|t| t.trim_end_matches('x').parse::<f64>().ok())
        {
            times
        } else {
            continue;
        };
        let name = format!("{} {}", p.model, p.route);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, line)) => line.push((offered, p.of_capacity)),
            None => series.push((name, vec![(offered, p.of_capacity)])),
        }
    }
    for (i, (name, line)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = line.iter().map(|&(a, b)| format!("{:.1},{:.1}", x(a), y(b))).collect();
        svg.push_str(&format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>\n",
            path.join(" ")
        ));
        for &(a, b) in line {
            svg.push_str(&format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n", x(a), y(b)));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            left + 10.0 + (i % 2) as f64 * 300.0,
            top + plot_h + 62.0 + (i / 2) as f64 * 16.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
