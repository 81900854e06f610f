//! Heads trained over the API: a bounded queue of trainings run one at a time
//! on their own thread, each reporting its phase and progress.
//!
//! A training extracts features through the service's own batching queue in
//! its low-priority lane (`Batcher::run_blocking`: live requests go first),
//! chooses and fits the head exactly as startup training does
//! (cross-validation on the non-test part), judges it on the held-out part,
//! publishes it as a new version (`store.rs`) and swaps it in. A job is kept
//! in memory: one accepted and not finished when the process stops is lost
//! (the log says so) and must be sent again.
//!
//! From acceptance to the end, a job holds its head's lock in the heads
//! folder (`HeadStore::try_lock`): no other replica sharing the folder can
//! train, roll back or delete that head meanwhile. Its status, mirrored to the
//! folder for the other replicas, names the process that owns it and is
//! rewritten every few seconds (a heartbeat); a status whose owner has died
//! (its lock is free) or stopped beating reads as `failed` (interrupted)
//! everywhere, and the head can be trained again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::anyhow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::logistic::{EncoderStamp, LabelCount, LogisticHead, UploadRecord};
use super::multi_label::{train_multi_label, MultiLabelData};
use super::scores::{MultiLabelScores, Scores};
use super::search::{train, LabelledFeatures, TrainConfig, TrainingData};
use super::store::{version_of, HeadStore};
use super::training::{begin_comparison, compare_graphs, layer_options_of, save_head};
use super::upload::{LabelSets, TrainingSet};
use super::{Head, Heads};
use crate::config::HeadName;
use crate::config::TrainingSettings;
use crate::features::{extract, layers_to_extract, PooledFeatures, Progress, ProgressFn};
use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::model::ModelInfo;
use crate::runtimes::Runtimes;

/// A head to train, as accepted by `POST /heads`.
pub struct Job {
    pub name: HeadName,
    /// The head's lock in the heads folder, released when the job ends.
    pub lock: Option<super::store::HeadLock>,
    pub prepared: TrainingSet,
    pub description: Option<String>,
    /// `x-request-id` of the upload: in every log line of the job.
    pub request_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Training,
    Ready,
    Failed,
}

/// What `GET /heads/{name}` shows of the latest training of a head on this replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobStatus {
    pub state: JobState,
    /// While training: `extracting` (features of every example), `searching`
    /// (cross-validation fits), `evaluating` (held-out part), `saving`. Where
    /// the heads have a graph of their own (`classify.model_file`), these run
    /// on it and the head is ready after them; its training on the exact
    /// graph follows (`graphs` of `GET /heads/{name}` says where it stands).
    pub phase: Option<String>,
    /// Progress of the phase: texts or fits done, of `total`.
    pub done: usize,
    pub total: usize,
    /// Why it failed.
    pub error: Option<String>,
    pub request_id: String,
    pub examples: usize,
    pub label_counts: Vec<LabelCount>,
    pub test_source: String,
    pub submitted_unix: u64,
    pub started_unix: Option<u64>,
    pub finished_unix: Option<u64>,
    /// Seconds from the start of training to ready or failed.
    pub seconds: Option<f64>,
    /// The version it produced, once ready.
    pub version: Option<String>,
    /// The process running it (`host/pid/start`).
    #[serde(default)]
    pub owner: Option<String>,
    /// When its owner last said it is alive (every few seconds while queued or training).
    #[serde(default)]
    pub heartbeat_unix: Option<u64>,
}

/// How often a queued or running training's status is rewritten.
pub const HEARTBEAT_SECONDS: u64 = 5;
/// A status not rewritten for this long has lost its owner.
pub const STALE_AFTER_SECONDS: u64 = 30;

/// This process, as statuses name their owner: host, process id and start
/// time (a restarted container has the same host name and often the same pid).
fn this_process() -> &'static str {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        format!("{host}/{}/{started}", std::process::id())
    })
}

impl JobStatus {
    fn in_progress(&self) -> bool {
        matches!(self.state, JobState::Queued | JobState::Training)
    }

    /// A status another process wrote, as it stands: one still in progress
    /// whose owner is gone (the head's lock is free: the kernel released a dead
    /// process's lock) or silent for [`STALE_AFTER_SECONDS`] reads as failed.
    fn judged(mut self, store: &HeadStore, name: &HeadName) -> JobStatus {
        if !self.in_progress() || self.owner.as_deref() == Some(this_process()) {
            return self;
        }
        let silent = unix_now().saturating_sub(self.heartbeat_unix.unwrap_or(self.submitted_unix));
        let reason = if silent > STALE_AFTER_SECONDS {
            format!("interrupted: the replica training it stopped answering ({silent} s without a heartbeat)")
        } else if !store.is_locked(name) {
            "interrupted: the replica training it stopped before it finished".to_string()
        } else {
            return self;
        };
        self.state = JobState::Failed;
        self.phase = None;
        self.error = Some(reason);
        self
    }
}

/// Why a training was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("head {0:?} is already queued or training; wait for it (GET /heads/{0})")]
    InProgress(HeadName),
    #[error("{0} trainings are already waiting (training.max_queued); retry later")]
    QueueFull(usize),
    #[error("the service is shutting down")]
    Closed,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// What a training needs from the service.
pub struct Trainer {
    pub runtimes: Arc<Runtimes>,
    pub heads: Arc<Heads>,
    pub store: HeadStore,
    pub settings: TrainingSettings,
    pub metrics: Arc<Metrics>,
}

/// Each head's latest status here, mirrored to the heads folder for the other replicas.
#[derive(Clone)]
struct Statuses {
    map: Arc<Mutex<BTreeMap<HeadName, JobStatus>>>,
    store: HeadStore,
    /// When progress was last written to the folder (at most once a second).
    last_written: Arc<Mutex<Option<Instant>>>,
}

impl Statuses {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<HeadName, JobStatus>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue of trainings and the status of each head's latest one.
pub struct TrainingJobs {
    statuses: Statuses,
    sender: Mutex<Option<SyncSender<Job>>>,
    /// Accepted and not finished (queued or training).
    unfinished: Arc<AtomicUsize>,
    max_queued: usize,
}

impl TrainingJobs {
    /// Starts the training thread; it ends when this is dropped or closed.
    pub fn start(trainer: Trainer) -> TrainingJobs {
        let max_queued = trainer.settings.max_queued;
        // Room for the queued jobs; the one training has left the channel.
        let (sender, receiver) = sync_channel::<Job>(max_queued);
        let statuses = Statuses { map: Arc::default(), store: trainer.store.clone(), last_written: Arc::default() };
        let unfinished = Arc::new(AtomicUsize::new(0));
        let (s, u) = (statuses.clone(), unfinished.clone());
        std::thread::Builder::new()
            .name("head-trainer".into())
            .spawn(move || {
                while let Ok(job) = receiver.recv() {
                    run_job(&trainer, &s, job);
                    u.fetch_sub(1, Ordering::SeqCst);
                    trainer.metrics.trainings_queued.set(u.load(Ordering::SeqCst) as i64);
                }
            })
            .expect("spawn the head trainer");
        let beating = Arc::downgrade(&statuses.map);
        let store = statuses.store.clone();
        std::thread::Builder::new()
            .name("head-heartbeat".into())
            .spawn(move || heartbeat(&beating, &store))
            .expect("spawn the head heartbeat");
        TrainingJobs { statuses, sender: Mutex::new(Some(sender)), unfinished, max_queued }
    }

    /// Queues `job`; its status is `queued` until the thread takes it.
    pub fn submit(&self, job: Job, metrics: &Metrics) -> Result<JobStatus, SubmitError> {
        let mut statuses = self.statuses.lock();
        if statuses.get(&job.name).is_some_and(|s| matches!(s.state, JobState::Queued | JobState::Training)) {
            return Err(SubmitError::InProgress(job.name));
        }
        // One training plus max_queued waiting.
        if self.unfinished.load(Ordering::SeqCst) > self.max_queued {
            return Err(SubmitError::QueueFull(self.max_queued));
        }
        let status = JobStatus {
            state: JobState::Queued,
            phase: None,
            done: 0,
            total: 0,
            error: None,
            request_id: job.request_id.clone(),
            examples: job.prepared.examples(),
            label_counts: job.prepared.label_counts.clone(),
            test_source: job.prepared.test_source.clone(),
            submitted_unix: unix_now(),
            started_unix: None,
            finished_unix: None,
            seconds: None,
            version: None,
            owner: Some(this_process().to_string()),
            heartbeat_unix: Some(unix_now()),
        };
        let name = job.name.clone();
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = sender.as_ref() else { return Err(SubmitError::Closed) };
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SubmitError::QueueFull(self.max_queued)),
            Err(TrySendError::Disconnected(_)) => return Err(SubmitError::Closed),
        }
        let n = self.unfinished.fetch_add(1, Ordering::SeqCst) + 1;
        metrics.trainings_queued.set(n as i64);
        self.statuses.store.write_job_status(&name, &status);
        statuses.insert(name, status.clone());
        Ok(status)
    }

    /// The latest training of `name`: run here, else as another replica
    /// sharing the heads folder recorded it (a dead owner's reads as failed).
    pub fn status(&self, name: &str) -> Option<JobStatus> {
        let local = self.statuses.lock().get(name).cloned();
        let store = &self.statuses.store;
        // Only a valid name can have a status in the folder.
        let name = HeadName::parse(name).ok()?;
        local.or_else(|| store.read_job_status::<JobStatus>(&name).map(|s| s.judged(store, &name)))
    }

    /// Names with a training queued or running.
    pub fn in_progress(&self) -> Vec<HeadName> {
        let statuses = self.statuses.lock();
        statuses
            .iter()
            .filter(|(_, s)| matches!(s.state, JobState::Queued | JobState::Training))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Forgets a finished job's status (the head was deleted).
    pub fn forget(&self, name: &HeadName) {
        let mut statuses = self.statuses.lock();
        if statuses.get(name).is_none_or(|s| matches!(s.state, JobState::Ready | JobState::Failed)) {
            statuses.remove(name);
            self.statuses.store.remove_job_status(name);
        }
    }

    /// Takes no more jobs; queued ones still run while the encoder is up.
    /// Returns how many were accepted and not finished.
    pub fn close(&self) -> usize {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.unfinished.load(Ordering::SeqCst)
    }
}

/// Every [`HEARTBEAT_SECONDS`], rewrites the status of each training queued
/// or running here, until the jobs are dropped.
fn heartbeat(statuses: &std::sync::Weak<Mutex<BTreeMap<HeadName, JobStatus>>>, store: &HeadStore) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(HEARTBEAT_SECONDS));
        let Some(map) = statuses.upgrade() else { return };
        // Written under the lock, as every status change is: a heartbeat
        // never lands after (and over) the change that ended the training.
        let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
        for (name, status) in map.iter_mut().filter(|(_, s)| s.in_progress()) {
            status.heartbeat_unix = Some(unix_now());
            store.write_job_status(name, status);
        }
    }
}

/// Changes `name`'s status; a change of state or phase is written to the
/// heads folder at once, progress within a phase at most once a second.
fn update(statuses: &Statuses, name: &HeadName, change: impl FnOnce(&mut JobStatus)) {
    let mut map = statuses.lock();
    let Some(status) = map.get_mut(name) else { return };
    let before = (status.state, status.phase.clone());
    change(status);
    let mut last = statuses.last_written.lock().unwrap_or_else(|p| p.into_inner());
    if before != (status.state, status.phase.clone()) || last.is_none_or(|t| t.elapsed().as_secs_f64() >= 1.0) {
        *last = Some(Instant::now());
        status.heartbeat_unix = Some(unix_now());
        statuses.store.write_job_status(name, status);
    }
}

fn phase_reporter(statuses: &Statuses, name: &HeadName, phase: &'static str) -> ProgressFn {
    let (statuses, name) = (statuses.clone(), name.clone());
    ProgressFn(Arc::new(move |done, total| {
        update(&statuses, &name, |s| {
            s.phase = Some(phase.to_string());
            s.done = done;
            s.total = total;
        })
    }))
}

fn run_job(trainer: &Trainer, statuses: &Statuses, job: Job) {
    let started = Instant::now();
    update(statuses, &job.name, |s| {
        s.state = JobState::Training;
        s.started_unix = Some(unix_now());
    });
    tracing::info!(head = %job.name, request_id = %job.request_id, examples = job.prepared.examples(), "head training started");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train_job(trainer, Some(statuses), &job)))
        .unwrap_or_else(|panic| Err(anyhow!("training panicked: {}", crate::telemetry::panic_message(&*panic))));
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(head) => {
            let version = version_of(&head);
            tracing::info!(
                head = %job.name,
                request_id = %job.request_id,
                version = %version,
                pooling = %head.pooling,
                alpha = head.training.alpha,
                test_accuracy = head.metrics.test.as_ref().map(|m| m.accuracy),
                seconds = format!("{seconds:.1}"),
                "head trained over the API is ready"
            );
            let (heads_graph, exact) = (&trainer.runtimes.training_graph().info, &trainer.runtimes.encoder.info);
            let compare = heads_graph.fingerprint != exact.fingerprint;
            trainer.heads.insert(Head::Logistic(head.clone()));
            if compare {
                begin_comparison(&trainer.heads, job.name.as_str(), heads_graph, exact);
            }
            trainer.metrics.record_training("ready", started.elapsed());
            update(statuses, &job.name, |s| {
                s.state = JobState::Ready;
                s.phase = None;
                s.finished_unix = Some(unix_now());
                s.seconds = Some(seconds);
                s.version = Some(version);
            });
            if compare {
                compare_on_exact_graph(trainer, &job, head);
            }
        }
        Err(e) => {
            // Shown on a public route: the heads folder by its setting's name, not its path.
            let reason = format!("{e:#}").replace(&trainer.store.dir().display().to_string(), "<heads_dir>");
            tracing::error!(head = %job.name, request_id = %job.request_id, error = %reason, "head training failed");
            trainer.metrics.record_training("failed", started.elapsed());
            update(statuses, &job.name, |s| {
                s.state = JobState::Failed;
                s.finished_unix = Some(unix_now());
                s.seconds = Some(seconds);
                s.error = Some(reason);
            });
        }
    }
}

/// `training.search_threads`; 0: every core.
fn search_threads(setting: usize) -> Option<usize> {
    (setting > 0).then_some(setting)
}

/// Extract, search, evaluate, save: the head, published and active on disk,
/// trained on the heads' graph (`classify.model_file`, e.g. int8, where the
/// heads have one). It is served from then on; the exact graph's comparison
/// runs after ([`compare_on_exact_graph`]).
fn train_job(trainer: &Trainer, statuses: Option<&Statuses>, job: &Job) -> anyhow::Result<LogisticHead> {
    let mut head = train_job_on(trainer, statuses, job, trainer.runtimes.training_graph())?;
    if let Some(statuses) = statuses {
        update(statuses, &job.name, |s| s.phase = Some("saving".into()));
    }
    save_head(&mut head, &trainer.store)?;
    Ok(head)
}

/// `first`, served on the heads' graph, against the same upload trained on the
/// exact graph ([`compare_graphs`]).
fn compare_on_exact_graph(trainer: &Trainer, job: &Job, first: LogisticHead) {
    let (heads_graph, exact) = (trainer.runtimes.training_graph(), &trainer.runtimes.encoder);
    compare_graphs(&trainer.heads, &trainer.store, first, &heads_graph.info, &exact.info, || {
        train_job_on(trainer, None, job, exact)
    });
}

/// The head trained on `encoder`'s features of the upload, with its test metrics.
fn train_job_on(
    trainer: &Trainer,
    statuses: Option<&Statuses>,
    job: &Job,
    encoder: &Inference,
) -> anyhow::Result<LogisticHead> {
    let p = &job.prepared;
    let settings = &trainer.settings;
    // A pair upload's second texts follow its first ones, in the same order.
    let seconds: (&[String], &[String]) = p.pairs.as_ref().map_or((&[], &[]), |(a, b)| (a, b));
    let texts: Vec<String> =
        p.train_texts.iter().chain(&p.test_texts).chain(seconds.0).chain(seconds.1).cloned().collect();
    let mut progress = Progress::new(format!("{}/upload", job.name));
    if let Some(statuses) = statuses {
        progress = progress.observed(phase_reporter(statuses, &job.name, "extracting"));
    }
    let mut source = encoder.queued_forward_pass();
    let layer_options = layer_options_of(&job.name, &p.options.layers, &encoder.info)?;
    let layers = layers_to_extract(&layer_options, encoder.info.last_layer());
    let all = extract(
        &mut source,
        &encoder.tokenizer,
        &encoder.info,
        &layers,
        &texts,
        settings.batch_size,
        settings.batch_tokens.max(encoder.info.max_tokens),
        &progress,
    )?;
    let (n_train, n) = (p.train_texts.len(), p.train_texts.len() + p.test_texts.len());
    let (train_features, test_features) = (all.slice_rows(0, n_train), all.slice_rows(n_train, n));
    let second_features =
        p.pairs.as_ref().map(|_| (all.slice_rows(n, n + n_train), all.slice_rows(n + n_train, 2 * n)));
    let config = TrainConfig {
        progress: statuses.map(|statuses| phase_reporter(statuses, &job.name, "searching")),
        threads: search_threads(settings.search_threads),
        ..TrainConfig::of(&p.options, layer_options, p.class_weight.clone())
    };
    let mut head = match &p.label_sets {
        Some(sets) => train_multi_label_job(job, &config, &train_features, &test_features, sets, &encoder.info)?,
        None => {
            let train = LabelledFeatures {
                features: &train_features,
                labels: &p.train_labels,
                // Suspects list first texts: of a pair, that would mislead.
                texts: p.pairs.is_none().then_some(p.train_texts.as_slice()),
                source: "upload",
                pair: second_features.as_ref().map(|(train, _)| train),
            };
            let test = LabelledFeatures {
                features: &test_features,
                labels: &p.test_labels,
                texts: None,
                source: "upload",
                pair: second_features.as_ref().map(|(_, test)| test),
            };
            train_single_label_job(job, &config, train, test, &encoder.info)?
        }
    };
    if let Some(statuses) = statuses {
        update(statuses, &job.name, |s| s.phase = Some("evaluating".into()));
    }
    head.description = job.description.clone();
    head.min_probability = p.options.min_probability;
    head.training.upload = Some(UploadRecord {
        request_id: job.request_id.clone(),
        label_counts: p.label_counts.clone(),
        test_source: p.test_source.clone(),
        warnings: p.warnings.clone(),
    });
    Ok(head)
}

/// One label per example: the search, the suspects by upload row, test metrics.
fn train_single_label_job(
    job: &Job,
    config: &TrainConfig,
    fitted: LabelledFeatures<'_>,
    test: LabelledFeatures<'_>,
    info: &ModelInfo,
) -> anyhow::Result<LogisticHead> {
    let p = &job.prepared;
    let data = TrainingData {
        labels: &p.labels,
        train: fitted,
        validation: None,
        data_dir: "upload".into(),
        data_fingerprints: [("upload".to_string(), p.fingerprint.clone())].into_iter().collect(),
    };
    let mut head = train(&job.name, EncoderStamp::of(info), data, config)?;
    // Suspects name training rows; the user knows the upload's.
    for suspect in &mut head.suspects {
        suspect.row = p.train_rows[suspect.row];
    }
    // The held-out part is looked at once, after the choice: for the report.
    let x = test.get(head.pooling, head.layers.as_ref());
    let predicted = head.predict(&x);
    head.metrics.test = Some(Scores::compute(&p.labels, &p.test_labels, &predicted));
    head.metrics.test_calibration = Some(head.calibration_error(&x, &p.test_labels));
    Ok(head)
}

/// Several labels per example: one-vs-rest, thresholds, test metrics.
fn train_multi_label_job(
    job: &Job,
    config: &TrainConfig,
    train_features: &PooledFeatures,
    test_features: &PooledFeatures,
    sets: &LabelSets,
    info: &ModelInfo,
) -> anyhow::Result<LogisticHead> {
    let p = &job.prepared;
    let data = MultiLabelData {
        labels: &p.labels,
        features: train_features,
        sets: &sets.train,
        data_dir: "upload".into(),
        data_fingerprints: [("upload".to_string(), p.fingerprint.clone())].into_iter().collect(),
    };
    let mut head = train_multi_label(&job.name, EncoderStamp::of(info), data, config)?;
    let x = test_features.get(head.pooling, head.layers.as_ref());
    let predicted: Vec<Vec<usize>> = x
        .rows()
        .into_iter()
        .map(|row| head.label_set(&head.probabilities(&row.iter().copied().collect::<Vec<_>>())))
        .collect();
    let thresholds = head.multi_label.as_ref().map(|m| m.thresholds.clone()).unwrap_or_default();
    head.metrics.multi_label_test = Some(MultiLabelScores::compute(&p.labels, &thresholds, &sets.test, &predicted));
    Ok(head)
}
