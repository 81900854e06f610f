//! Assembling the application: load the model, start its runtimes, load or
//! train the heads, bind the listeners, start the background jobs (startup
//! training, the heads folder watch), serve through `server`, drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::batching::BatcherConfig;
use crate::config::HeadName;
use crate::config::{Examples, ExecutionProvider, ModelSettings, Settings};
use crate::features::FeatureCache;
use crate::heads::logistic::LogisticHead;
use crate::heads::store::HeadStore;
use crate::heads::training::{begin_comparison, compare_graphs, save_head, train_head, Extraction};
use crate::heads::{load_configured, Head, Heads};
use crate::http::{service_for, AppState, Routes};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::runtimes::Runtimes;
use crate::server::{self, ConnectionLimits};
use crate::weights::SharedWeights;

pub struct Application {
    listener: TcpListener,
    /// `server.private_address`: /metrics, /info and the admin routes.
    private: Option<TcpListener>,
    state: AppState,
    /// Heads missing on disk, to train before the service reports ready.
    to_train: Vec<String>,
}

impl Application {
    /// Loads the model and binds the listener (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let started = Instant::now();
        let sessions = settings.batching.sessions;
        let heads_graph = heads_graph_plan(&settings)?;
        let shared = share_weights(&settings, heads_graph.as_ref()).await?;
        let model_settings = settings.model.clone();
        let encoder_shared = shared.clone();
        let model =
            tokio::task::spawn_blocking(move || Model::load_with(&model_settings, sessions, None, &encoder_shared))
                .await
                .context("model loading task failed")??;
        tracing::info!(
            model = %model.info.name,
            file = %model.info.dir.join(&model.info.file).display(),
            hidden_size = model.info.hidden_size,
            max_tokens = model.info.max_tokens,
            execution_provider = %model.info.execution_provider,
            sessions,
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        if settings.limits.max_request_tokens < model.info.max_tokens {
            anyhow::bail!(
                "limits.max_request_tokens ({}) is less than one text's maximum ({} tokens, model.max_tokens): \
                 raise it, or lower model.max_tokens",
                settings.limits.max_request_tokens,
                model.info.max_tokens
            );
        }
        let heads_model = load_heads_graph(heads_graph, &model, shared).await?;
        let metrics = Arc::new(Metrics::new());
        let runtimes = Arc::new(Runtimes::start(
            model,
            heads_model,
            BatcherConfig::new(&settings.batching, &settings.limits),
            metrics.clone(),
        ));
        // Past this point the model's worker threads run: every failure stops them, here.
        let assembled = Self::assemble(settings, runtimes.clone(), metrics).await.and_then(|app| {
            let resident = crate::metrics::resident_memory_bytes().unwrap_or(0);
            check_memory_fits(&app.state.settings, crate::metrics::memory_limit_bytes(), resident)?;
            Ok(app)
        });
        match assembled {
            Ok(app) => Ok(app),
            Err(e) => {
                stop_runtimes(runtimes).await;
                Err(e)
            }
        }
    }

    /// Heads, listeners and state around running model runtimes.
    async fn assemble(
        settings: Settings,
        runtimes: Arc<Runtimes>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Application> {
        let startup_heads = {
            let (settings, shared) = (settings.clone(), runtimes.clone());
            tokio::task::spawn_blocking(move || load_configured(&settings, &shared))
                .await
                .context("head loading task failed")??
        };
        let heads = Heads::new(default_head(&settings), settings.classify.serve.clone());
        for head in startup_heads.loaded {
            heads.insert(head);
        }
        // Heads created over the API (by any replica sharing the folder) serve after a restart too.
        let heads = {
            let (store, runtimes) = (HeadStore::of(&settings), runtimes.clone());
            tokio::task::spawn_blocking(move || {
                heads.sync_folder(&store, &runtimes);
                heads
            })
            .await
            .context("heads folder scan failed")?
        };
        heads.set_pending(startup_heads.to_train.len());
        let address = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("cannot listen on {address} (server.host, server.port)"))?;
        let private = match settings.server.private_address.as_str() {
            "" => None,
            address => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen on {address} (server.private_address)"))?,
            ),
        };
        let state = AppState::new(runtimes, heads, settings, metrics);
        Ok(Application { listener, private, state, to_train: startup_heads.to_train })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    /// The private listener's address, when `server.private_address` is set.
    pub fn private_addr(&self) -> Option<SocketAddr> {
        self.private.as_ref().map(|l| l.local_addr().expect("bound listener has an address"))
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until `shutdown` completes, then marks the service draining, stops
    /// accepting, lets in-flight requests finish (bounded by
    /// `server.shutdown_timeout_ms`) and stops the inference workers.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let state = self.state;
        let drain = Duration::from_millis(state.settings.server.shutdown_timeout_ms);
        if state.settings.model.warm_up {
            state.warming.store(true, Ordering::Relaxed);
            let state = state.clone();
            tokio::task::spawn_blocking(move || {
                state.runtimes.warm_up();
                state.warming.store(false, Ordering::Relaxed);
            });
        }
        let (trainer, names) = (state.clone(), self.to_train);
        tokio::task::spawn_blocking(move || {
            train_missing_heads(&trainer, &names);
            close_unused_heads_graph(&trainer);
        });
        let watcher = tokio::spawn(watch_heads_folder(state.clone()));
        let signal = {
            let state = state.clone();
            async move {
                shutdown.await;
                state.draining.store(true, Ordering::Relaxed);
                let grace = Duration::from_millis(state.settings.server.shutdown_grace_ms);
                if !grace.is_zero() {
                    tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down: not ready, still serving");
                    tokio::time::sleep(grace).await;
                }
                tracing::info!("shutting down: no new connections, finishing in-flight requests");
            }
        };
        tracing::info!(address = %self.listener.local_addr()?, "listening");
        let mut listeners = Vec::new();
        match self.private {
            None => listeners.push((self.listener, service_for(state.clone(), Routes::All))),
            Some(private) => {
                tracing::info!(address = %private.local_addr()?, "listening for operators (/metrics, /info, admin routes)");
                listeners.push((self.listener, service_for(state.clone(), Routes::Public)));
                listeners.push((private, service_for(state.clone(), Routes::Private)));
            }
        }
        server::serve(
            listeners,
            signal,
            ConnectionLimits::of(&state.settings.server, state.metrics.refused_connections.clone()),
            drain,
        )
        .await;
        watcher.abort();
        let unfinished = state.jobs.close();
        if unfinished > 0 {
            tracing::warn!(
                trainings = unfinished,
                "stopping with head trainings unfinished: they are lost; send them again"
            );
        }
        stop_runtimes(state.runtimes.clone()).await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Refuses to start where the process, once its models and heads are loaded
/// (`resident` bytes), plus the largest request its limits admit (its working
/// memory, `limits.max_request_memory_bytes`, and its answer,
/// `limits.max_response_bytes`) would not fit the container's memory `limit`:
/// said at start, with the figures and what to change, instead of an OOM kill
/// under the first large request. (all-MiniLM-L6-v2 with both graphs: about
/// 230 MiB loaded + 160 MiB; the worst admitted request measured 397 MiB at
/// its peak, `make worst-request`.)
fn check_memory_fits(settings: &Settings, limit: Option<u64>, resident: u64) -> anyhow::Result<()> {
    let Some(limit) = limit else { return Ok(()) };
    let limits = &settings.limits;
    let request = limits.max_request_memory_bytes + limits.max_response_bytes;
    let mib = |bytes: u64| bytes >> 20;
    if resident + request <= limit {
        tracing::info!(
            resident_mib = mib(resident),
            largest_request_mib = mib(request),
            limit_mib = mib(limit),
            "memory: the loaded models and the largest admitted request fit the container's limit"
        );
        return Ok(());
    }
    let graphs = if settings.heads_model().is_some() {
        ", or serve the heads on model.file (classify.model_file = \"\", one graph)"
    } else {
        ""
    };
    anyhow::bail!(
        "memory: {} MiB once the models are loaded plus {} MiB for the largest request the limits admit \
         (limits.max_request_memory_bytes {} MiB + limits.max_response_bytes {} MiB) exceed the container's \
         limit of {} MiB: raise the limit, or lower those limits{graphs}",
        mib(resident),
        mib(request),
        mib(limits.max_request_memory_bytes),
        mib(limits.max_response_bytes),
        mib(limit)
    )
}

/// The logistic heads' own graph of the model (`classify.model_file`), where
/// it is another file than `model.file`: its settings (those of the model,
/// with the file and threads of its own) and its sessions
/// ([`heads_graph_parallelism`]).
struct HeadsGraph {
    settings: ModelSettings,
    sessions: usize,
    one_sequence_per_call: bool,
}

fn heads_graph_plan(settings: &Settings) -> anyhow::Result<Option<HeadsGraph>> {
    let Some(mut heads_settings) = settings.heads_model() else { return Ok(None) };
    let path = heads_settings.dir.join(&heads_settings.file);
    let per_call = crate::model::has_dynamic_quantisation(&path).context("classify.model_file: the heads' graph")?;
    let quantised = if per_call {
        let tables = crate::weights::initializers(&path).context("classify.model_file: the heads' graph")?;
        tables.iter().filter(|t| t.is_quantised()).map(|t| t.raw_len).sum()
    } else {
        0
    };
    let (sessions, intra_threads) = heads_graph_parallelism(settings, per_call, quantised);
    heads_settings.intra_threads = intra_threads;
    Ok(Some(HeadsGraph { settings: heads_settings, sessions, one_sequence_per_call: per_call }))
}

/// One copy of each weight that more than one session of the two graphs
/// holds ([`SharedWeights`]): on the CPU, where the sessions would each keep
/// their own.
async fn share_weights(settings: &Settings, heads_graph: Option<&HeadsGraph>) -> anyhow::Result<Arc<SharedWeights>> {
    let model = &settings.model;
    let path = model.dir.join(&model.file);
    if !model.share_weights || model.execution_provider != ExecutionProvider::Cpu || !path.is_file() {
        return Ok(Arc::new(SharedWeights::none()));
    }
    let mut graphs = vec![(path, settings.batching.sessions)];
    if let Some(heads) = heads_graph {
        graphs.push((heads.settings.dir.join(&heads.settings.file), heads.sessions));
    }
    crate::model::ort_environment(&model.onnxruntime_library)?;
    let started = Instant::now();
    let planned =
        tokio::task::spawn_blocking(move || SharedWeights::plan(&graphs)).await.context("model loading task failed")?;
    // A file this reader cannot follow is left to the loading, whose checks
    // (the manifest's size and sha256, ONNX Runtime's parser) name the problem.
    let shared = match planned {
        Ok(shared) => shared,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "weights not shared: each session loads its own");
            return Ok(Arc::new(SharedWeights::none()));
        }
    };
    tracing::info!(
        shared_mib = shared.bytes >> 20,
        instead_of_mib = shared.bytes_unshared >> 20,
        plan_ms = started.elapsed().as_millis() as u64,
        "weights that several sessions hold are loaded once"
    );
    Ok(Arc::new(shared))
}

/// Loads the heads' graph, sharing `shared`, and refuses it unless it has the
/// model's widths.
async fn load_heads_graph(
    heads_graph: Option<HeadsGraph>,
    model: &Model,
    shared: Arc<SharedWeights>,
) -> anyhow::Result<Option<Model>> {
    let Some(HeadsGraph { settings: heads_settings, sessions, one_sequence_per_call: per_call }) = heads_graph else {
        return Ok(None);
    };
    let intra_threads = heads_settings.intra_threads;
    let loaded =
        tokio::task::spawn_blocking(move || Model::load_with(&heads_settings, sessions, Some(per_call), &shared))
            .await
            .context("model loading task failed")?
            .context("classify.model_file: the heads' graph")?;
    let (ours, theirs) = (&loaded.info, &model.info);
    if ours.hidden_size != theirs.hidden_size || ours.max_tokens != theirs.max_tokens || ours.layers != theirs.layers {
        anyhow::bail!(
            "classify.model_file {} is not a graph of model {}: hidden size {}, {} tokens, {:?} layers against {}, {}, {:?}",
            ours.file,
            theirs.name,
            ours.hidden_size,
            ours.max_tokens,
            ours.layers,
            theirs.hidden_size,
            theirs.max_tokens,
            theirs.layers
        );
    }
    tracing::info!(
        file = %ours.file,
        sessions,
        intra_threads,
        one_sequence_per_call = per_call,
        "heads' graph loaded: logistic heads run on it, /embed on model.file"
    );
    Ok(Some(loaded))
}

/// Sessions of the heads' graph and intra-op threads per session:
/// `classify.model_sessions` when set; for a graph that runs one sequence per
/// call (dynamic int8) single-sentence calls are too small to split across
/// threads well, so one session per core, single-threaded, up to 4 (then the
/// cores shared out): on 2 vCPUs two such sessions answered `/classify` at
/// 1.2-1.9x one session of two threads (BENCHMARKS.md "Heads on the int8 graph");
/// otherwise the encoder's `batching.sessions` and `model.intra_threads`.
///
/// Parallel sessions share one copy of the weights, but ONNX Runtime then
/// keeps both a shared weight and its pre-packed form, where one session
/// alone frees the original once packed: the quantised weights are held
/// twice. So a graph with more than [`PARALLEL_SESSIONS_MAX_QUANTISED_BYTES`]
/// of them runs as one session on every core (all-mpnet-base-v2, 85 MB:
/// +85 MiB over fp32 instead of +185, at 0.81-0.89x the speed in-process;
/// MiniLM, 11 MB: parallel sessions at 1.43-1.48x for 11 MB).
fn heads_graph_parallelism(settings: &Settings, one_sequence_per_call: bool, quantised_bytes: u64) -> (usize, usize) {
    let configured = settings.classify.model_sessions;
    if !one_sequence_per_call || configured > 0 {
        let sessions = if configured > 0 { configured } else { settings.batching.sessions };
        return (sessions, settings.model.intra_threads);
    }
    let cores = crate::threads::cores();
    if quantised_bytes > PARALLEL_SESSIONS_MAX_QUANTISED_BYTES {
        return (1, cores);
    }
    let sessions = cores.min(4);
    (sessions, cores / sessions)
}

/// See [`heads_graph_parallelism`].
pub const PARALLEL_SESSIONS_MAX_QUANTISED_BYTES: u64 = 32 << 20;

fn default_head(settings: &Settings) -> String {
    if settings.classify.default_head.is_empty() {
        settings.classify.serve.first().cloned().unwrap_or_default()
    } else {
        settings.classify.default_head.clone()
    }
}

/// Trains the heads missing at startup through the service's own queue; each
/// joins the registry when done, and the service is ready after the last. A
/// head that fails is reported failed (`GET /heads`, 503 `head_failed` on
/// `/classify`) while everything else keeps serving: a restart would fail the
/// same way, so stopping would only make a crash loop. Where the heads have a
/// graph of their own, each is trained there first and served; only then,
/// with the service ready, is it trained on the exact graph and compared
/// ([`compare_on_exact_graph`]): nothing trains twice before the first answer.
fn train_missing_heads(state: &AppState, names: &[String]) {
    let mut to_compare = Vec::new();
    for name in names {
        tracing::info!(head = %name, "head file missing: training it before reporting ready");
        match train_first(state, name) {
            Ok(head) => {
                let (heads_graph, exact) = (&state.training_graph().info, &state.encoder_runtime().info);
                let compare = heads_graph.fingerprint != exact.fingerprint;
                if compare {
                    to_compare.push(head.clone());
                }
                state.heads.finish_pending(Head::Logistic(head));
                if compare {
                    begin_comparison(&state.heads, name, heads_graph, exact);
                }
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::error!(head = %name, error = %reason, "training head at startup failed; the head is not served");
                state.heads.fail_pending(name, reason);
            }
        }
    }
    if !names.is_empty() {
        tracing::info!("startup training done");
    }
    for head in to_compare {
        compare_on_exact_graph(state, head);
    }
}
/// Once the startup heads are trained or loaded: the heads' own graph is
/// closed if no head served uses it (see
/// [`Runtimes::close_unused_heads_graph`]).
fn close_unused_heads_graph(state: &AppState) {
    let heads = state.heads.all();
    let served = heads.iter().filter_map(|h| match &**h {
        Head::Logistic(l) => Some(l.encoder.fingerprint.as_str()),
        Head::Onnx(_) => None,
    });
    if let Some(file) = state.runtimes.close_unused_heads_graph(served) {
        tracing::info!(
            file = %file,
            "every head's comparison chose model.file: the heads' graph is closed; heads trained from now on use model.file"
        );
    }
}

/// Trains head `name` on the heads' graph and saves it. A head that cannot be
/// written (read-only folder, full disk) still serves from memory; it is
/// trained again at the next start.
fn train_first(state: &AppState, name: &str) -> anyhow::Result<LogisticHead> {
    let mut head = train_on(state, state.training_graph(), name)?;
    if let Err(e) = save_head(&mut head, &state.store) {
        tracing::error!(head = %head.name, error = %format!("{e:#}"), "serving the trained head from memory only");
    }
    Ok(head)
}

/// `first`, served on the heads' graph, against the same head on the exact
/// graph, taken from the folder where one is kept, else trained ([`compare_graphs`]).
fn compare_on_exact_graph(state: &AppState, first: LogisticHead) {
    let (heads_graph, exact) = (state.training_graph(), state.encoder_runtime());
    let kept =
        HeadName::parse(&first.name).ok().and_then(|n| state.store.newest_for_encoder(&n, &exact.info.fingerprint));
    let name = first.name.clone();
    compare_graphs(&state.heads, &state.store, first, &heads_graph.info, &exact.info, || match kept {
        Some(head) => Ok(head),
        None => train_on(state, exact, &name),
    });
}

/// Head `name` trained from its settings on `runtime`'s graph, through its queue.
fn train_on(state: &AppState, runtime: &crate::inference::Inference, name: &str) -> anyhow::Result<LogisticHead> {
    let settings = &state.settings;
    let cache = FeatureCache::new(&settings.classify.feature_cache_dir);
    let mut source = runtime.queued_forward_pass();
    let mut extraction = Extraction {
        source: &mut source,
        info: &runtime.info,
        tokenizer: &runtime.tokenizer,
        cache: &cache,
        max_batch_size: settings.batching.max_batch_size,
        max_batch_tokens: settings.batching.max_batch_tokens,
    };
    let head = &settings.heads[name];
    let data = head.data.as_deref().ok_or_else(|| anyhow::anyhow!("heads.{name}.data is not set"))?;
    let options = head
        .training_options()
        .resolve(&settings.training, Examples::DataSet)
        .map_err(|e| anyhow::anyhow!("heads.{name}.{}: {e}", e.option))?;
    train_head(name, data, &options, &mut extraction)
}

/// Every `classify.watch_interval_ms`, brings the served heads in line with
/// the heads folder (heads created, replaced, rolled back or deleted through
/// another replica sharing it). Runs until aborted at shutdown.
async fn watch_heads_folder(state: AppState) {
    let interval = state.settings.classify.watch_interval_ms;
    if interval == 0 {
        return;
    }
    let mut ticks = tokio::time::interval(Duration::from_millis(interval));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let synced = tokio::task::spawn_blocking({
            let state = state.clone();
            move || state.heads.sync_folder(&state.store, &state.runtimes)
        })
        .await;
        let Ok(report) = synced else { continue };
        if report.error.is_some() {
            state.metrics.heads_folder_errors.inc();
        }
        // A head deleted through another replica: its finished training here is history too.
        for name in &report.removed {
            state.jobs.forget(name);
        }
    }
}

/// Drains every model runtime (on a blocking thread: it joins worker threads).
async fn stop_runtimes(runtimes: Arc<Runtimes>) {
    tokio::task::spawn_blocking(move || runtimes.shutdown()).await.ok();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_that_cannot_fit_its_memory_limit_says_so_with_the_figures() {
        let mut settings = Settings::defaults();
        let mib = 1 << 20;
        settings.limits.max_request_memory_bytes = 96 * mib;
        settings.limits.max_response_bytes = 64 * mib;
        assert!(check_memory_fits(&settings, None, 900 * mib).is_ok(), "no limit: nothing to check");
        assert!(check_memory_fits(&settings, Some(512 * mib), 230 * mib).is_ok(), "230 + 160 <= 512");
        let refused = check_memory_fits(&settings, Some(350 * mib), 230 * mib).unwrap_err().to_string();
        for figure in
            ["230 MiB once the models are loaded plus 160 MiB", "limit of 350 MiB", "limits.max_response_bytes"]
        {
            assert!(refused.contains(figure), "{figure:?} not in {refused}");
        }
        settings.limits.max_response_bytes = 16 * mib;
        assert!(check_memory_fits(&settings, Some(350 * mib), 230 * mib).is_ok(), "lowered as it says: fits");
    }

    #[test]
    fn a_per_call_graph_runs_parallel_sessions_only_where_its_quantised_weights_are_small() {
        let mut settings = Settings::defaults();
        let cores = crate::threads::cores();
        let (minilm, mpnet) = (11 << 20, 85 << 20);
        assert_eq!(heads_graph_parallelism(&settings, true, minilm), (cores.min(4), cores / cores.min(4)));
        assert_eq!(heads_graph_parallelism(&settings, true, mpnet), (1, cores), "held twice: one session");
        settings.classify.model_sessions = 3;
        assert_eq!(heads_graph_parallelism(&settings, true, mpnet).0, 3, "the setting decides where set");
        settings.classify.model_sessions = 0;
        let batched = heads_graph_parallelism(&settings, false, 0);
        assert_eq!(batched, (settings.batching.sessions, settings.model.intra_threads), "a batched graph");
    }
}
