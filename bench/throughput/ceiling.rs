//! The in-process ceiling: the ONNX session called directly, the in-flight bound and its sweep over
//! in-flight counts and call overheads, the runtime-settings sweep.

use super::*;

#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Ceiling {
    pub(crate) setting: String,
    pub(crate) sentences_per_s: f64,
    pub(crate) single_p50_ms: f64,
}

/// The service's model settings (config/default.toml) for the model in `dir`,
/// all `threads` cores to one session: what the in-process figures run on.
pub(crate) fn in_process_settings(settings: &Settings, dir: &Path, threads: usize) -> ModelSettings {
    ModelSettings { intra_threads: threads, dir: dir.to_path_buf(), ..settings.model.clone() }
}

/// Sorted batches of 32 through `sessions` sessions (best of two passes), and
/// one-sentence latency (tokenizing included) on the first session.
pub(crate) fn ceiling(model_settings: &ModelSettings, texts: &[String], sessions: usize) -> anyhow::Result<Ceiling> {
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
        model.sessions[0].encode(batch)?; // warm-up: buffers for every length
    }
    let mut best = f64::MAX;
    for _ in 0..2 {
        let started = Instant::now();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| -> anyhow::Result<()> {
            let workers: Vec<_> = model
                .sessions
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
        model.sessions[0].encode(&[&seq[0]])?;
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
pub(crate) struct InFlightBound {
    pub(crate) all_queued: f64,
    pub(crate) lagged: f64,
}

pub(crate) fn in_flight_bound(
    settings: &ModelSettings,
    planner: &BatcherConfig,
    texts: &[String],
) -> anyhow::Result<InFlightBound> {
    let mut model = Model::load(settings, 1)?;
    let mut run = in_flight_runner(&mut model, planner, texts, 32)?;
    run(false)?; // warm-up
    let bound = InFlightBound { all_queued: run(false)?.0, lagged: run(true)?.0 };
    eprintln!("  all queued: {:.0} sentences/s; replacements one call late: {:.0}/s", bound.all_queued, bound.lagged);
    Ok(bound)
}

/// One pass of the test set through `plan_batch` with `in_flight` sequences in
/// flight: sentences/s, mean sequences per call, padded over real tokens.
pub(crate) fn in_flight_runner<'a>(
    model: &'a mut Model,
    planner: &'a BatcherConfig,
    texts: &[String],
    in_flight: usize,
) -> anyhow::Result<impl FnMut(bool) -> anyhow::Result<(f64, f64, f64)> + 'a> {
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
    Ok(move |lagged: bool| -> anyhow::Result<(f64, f64, f64)> {
        let mut arrivals = order.iter().cycle().map(|&i| &seqs[i]);
        let mut queue: Vec<&Tokenized> = arrivals.by_ref().take(in_flight).collect();
        let mut returning: Vec<&Tokenized> = Vec::new();
        let (started, mut done, mut calls, mut real, mut padded) = (Instant::now(), 0, 0, 0, 0);
        while done < seqs.len() {
            let lengths: Vec<usize> = queue.iter().map(|s| s.len()).collect();
            let mut picked = plan_batch(&lengths, planner);
            picked.sort_unstable_by(|a, b| b.cmp(a));
            let batch: Vec<&Tokenized> = picked.iter().map(|&p| queue.remove(p)).collect();
            model.sessions[0].encode(&batch)?;
            done += batch.len();
            calls += 1;
            real += batch.iter().map(|s| s.len()).sum::<usize>();
            padded += batch.len() * batch.iter().map(|s| s.len()).max().unwrap_or(0);
            queue.append(&mut returning);
            returning.extend(arrivals.by_ref().take(batch.len()));
            if !lagged {
                queue.append(&mut returning);
            }
        }
        Ok((done as f64 / started.elapsed().as_secs_f64(), done as f64 / calls as f64, padded as f64 / real as f64))
    })
}

pub(crate) fn planner_sweep(
    model_settings: &ModelSettings,
    settings: &Settings,
    texts: &[String],
    in_flight: &[usize],
    overheads: &[usize],
) -> anyhow::Result<()> {
    let before = ceiling(model_settings, texts, 1)?.sentences_per_s;
    let mut model = Model::load(model_settings, 1)?;
    let mut rows = Vec::new();
    for &overhead in overheads {
        let mut planner = BatcherConfig::new(&settings.batching, &settings.limits);
        planner.call_overhead_tokens = overhead;
        for &n in in_flight {
            let mut run = in_flight_runner(&mut model, &planner, texts, n)?;
            let (per_s, size, padding) = run(true)?;
            eprintln!(
                "  in flight {n}, call overhead {overhead}: {per_s:.1}/s, {size:.1} a call, padding {padding:.2}"
            );
            rows.push((n, overhead, per_s, size, padding));
        }
    }
    let after = ceiling(model_settings, texts, 1)?.sentences_per_s;
    let mean = (before + after) / 2.0;
    println!("ceiling {before:.1} / {after:.1} sentences/s");
    println!("| in flight | call overhead | sentences/s | x ceiling | a call | padding |\n|---|---|---|---|---|---|");
    for (n, overhead, per_s, size, padding) in rows {
        println!("| {n} | {overhead} | {per_s:.1} | {:.2} | {size:.1} | {padding:.2} |", per_s / mean);
    }
    Ok(())
}

pub(crate) fn sweep(settings: &Settings, texts: &[String], threads: usize) -> anyhow::Result<Vec<Ceiling>> {
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
