//! The registry of heads being served: lookups by name, heads still training
//! at startup ("pending") or failed, and keeping up with the heads folder
//! that replicas may share ([`Heads::sync_folder`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::logistic::LogisticHead;
use super::{store, Head};
use crate::config::{HeadKind, HeadName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    NotFound,
    /// Configured, still training.
    NotReady,
    /// Configured, its training at startup failed: the reason.
    Failed(String),
}

/// Where one graph of the model stands for a head. Where the heads have a
/// graph of their own (`classify.model_file`), a head is served on it as soon
/// as it is trained there, then trained on the exact graph, and the better of
/// the two by held-out accuracy is served (the heads' graph unless it is more
/// than 0.5 points lower).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GraphPhase {
    /// The graph's file in the model's folder.
    pub graph: String,
    pub phase: GraphState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GraphState {
    /// The head answers `/classify` on this graph.
    Served,
    /// The head is being trained on this graph, to be compared with the served one.
    Training,
    /// Trained and compared, kept in the folder's history, not served.
    Kept,
    /// Its training failed (logged); the served head stays.
    Failed,
}

/// The heads being served.
pub struct Heads {
    map: RwLock<BTreeMap<String, Arc<Head>>>,
    /// Head files as last seen in the heads folder (see [`Heads::sync_folder`]).
    seen: std::sync::Mutex<BTreeMap<HeadName, FileStamp>>,
    default: String,
    pending: AtomicUsize,
    configured: Vec<String>,
    /// Heads whose startup training failed, with the reason.
    failed: RwLock<BTreeMap<String, String>>,
    /// Why the last look at the heads folder failed (None: it worked).
    folder_error: std::sync::Mutex<Option<String>>,
    /// Heads whose graphs are being compared on this replica (or whose comparison failed).
    graph_phases: std::sync::Mutex<BTreeMap<String, Vec<GraphPhase>>>,
}

impl Heads {
    pub fn new(default: String, configured: Vec<String>) -> Heads {
        Heads {
            map: RwLock::new(BTreeMap::new()),
            seen: Default::default(),
            default,
            pending: AtomicUsize::new(0),
            configured,
            failed: RwLock::new(BTreeMap::new()),
            folder_error: Default::default(),
            graph_phases: Default::default(),
        }
    }

    /// Records where each graph stands for head `name` (see [`GraphPhase`]).
    pub fn set_graph_phases(&self, name: &str, phases: Vec<GraphPhase>) {
        self.graph_phases.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), phases);
    }

    /// Where each graph stands for head `name`, when a comparison ran on this replica.
    pub fn graph_phases(&self, name: &str) -> Option<Vec<GraphPhase>> {
        self.graph_phases.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    // The lock policy of the whole crate: a panic while a lock was held leaves
    // whole values behind (every write is one insert or remove), so a
    // poisoned lock is used as it is rather than turning requests into panics.
    fn read_map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Head>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Head>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the last look at the heads folder failed, if it did.
    pub fn folder_error(&self) -> Option<String> {
        self.folder_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `name` is served because the settings say so (`classify.serve`
    /// or the default head): such a head is never dropped with its file.
    pub fn is_configured(&self, name: &str) -> bool {
        name == self.default || self.configured.iter().any(|c| c == name)
    }

    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// Serves `head`; where its graphs stand is then its own file's to say
    /// (a comparison recorded for the head it replaces is forgotten).
    pub fn insert(&self, head: Head) {
        self.graph_phases.lock().unwrap_or_else(|p| p.into_inner()).remove(head.name());
        self.write_map().insert(head.name().to_string(), Arc::new(head));
    }

    /// Stops serving `name`; true when it was served.
    pub fn remove(&self, name: &str) -> bool {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        self.write_map().remove(name).is_some()
    }

    /// Brings the served logistic heads in line with the heads folder, which
    /// other replicas may write (a shared volume): a new or changed active
    /// file is loaded and swapped in when valid and made for `encoder`; a head
    /// whose file was seen and is gone (deleted through another replica) stops
    /// being served, as `DELETE` would: a head the settings name keeps
    /// serving (its file removed by hand is logged as an error). A folder that
    /// cannot be listed changes nothing (logged, counted, shown by `GET
    /// /heads`); a file that cannot be read or parsed keeps its loaded head.
    /// Files are compared by size and modification time first, so an
    /// unchanged folder costs one `stat` per head. Heads that never had a file
    /// (ONNX heads, or trained where the folder is read-only) are left alone.
    pub fn sync_folder(&self, store: &store::HeadStore, runtimes: &crate::runtimes::Runtimes) -> SyncReport {
        let mut report = SyncReport::default();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let found = match store.scan() {
            Ok(found) => found,
            // A folder not made yet (a fresh deployment before its first head
            // is written) holds no heads, and nothing was seen there to lose.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && seen.is_empty() => Vec::new(),
            Err(e) => {
                tracing::warn!(dir = %store.dir().display(), error = %e, "cannot list the heads folder; every loaded head keeps serving");
                // No path in what clients see: the setting's name stands for it.
                let message = format!("cannot list classify.heads_dir: {e}");
                *self.folder_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.clone());
                report.error = Some(message);
                return report;
            }
        };
        *self.folder_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        for (name, path) in &found {
            let Some(stamp) = FileStamp::of(path) else { continue };
            if seen.get(name) == Some(&stamp) {
                continue;
            }
            seen.insert(name.clone(), stamp);
            let head = match LogisticHead::load(path) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(head = %name, error = %e, "head file in the heads folder not loaded");
                    continue;
                }
            };
            if head.name != name.as_str() {
                tracing::warn!(head = %name, holds = %head.name, "head file holds another head; not loaded");
                continue;
            }
            match super::loading::check_served(&head, path, runtimes) {
                Ok(()) => {}
                Err(e @ super::logistic::HeadFileError::WrongEncoder { .. }) => {
                    tracing::info!(head = %name, reason = %e, "head file in the heads folder is for another encoder; not served");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(head = %name, error = %e, "head file in the heads folder not loaded");
                    continue;
                }
            }
            let version = store::version_of(&head);
            let current = self.read_map().get(name.as_str()).map(|h| h.version());
            if current.as_deref() == Some(version.as_str()) {
                continue;
            }
            tracing::info!(head = %name, version = %version, previous = ?current, "head loaded from the heads folder");
            self.insert(Head::Logistic(head));
            report.loaded.push(name.to_string());
        }
        let gone: Vec<HeadName> = seen.keys().filter(|n| !found.iter().any(|(f, _)| f == *n)).cloned().collect();
        for name in gone {
            seen.remove(&name);
            if self.is_configured(&name) {
                tracing::error!(head = %name, "the file of a head named in the settings is gone from the heads folder; it keeps serving (restore the file, or train it again)");
                continue;
            }
            let mut map = self.write_map();
            if matches!(map.get(name.as_str()).map(|h| h.kind()), Some(HeadKind::Logistic)) {
                map.remove(name.as_str());
                tracing::info!(head = %name, "head file removed from the heads folder; no longer served");
                report.removed.push(name);
            }
        }
        report
    }

    pub fn set_pending(&self, n: usize) {
        self.pending.store(n, Ordering::SeqCst);
    }

    /// Inserts a head that was pending (trained at startup).
    pub fn finish_pending(&self, head: Head) {
        self.insert(head);
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Records that a pending head failed to train; it is no longer waited for.
    pub fn fail_pending(&self, name: &str, reason: String) {
        self.failed.write().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), reason);
        self.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Heads whose startup training failed, with the reasons.
    pub fn failed(&self) -> BTreeMap<String, String> {
        self.failed.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when no configured head is still training (loaded or failed).
    pub fn ready(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }

    pub fn get(&self, name: Option<&str>) -> Result<Arc<Head>, Lookup> {
        let name = name.unwrap_or(&self.default);
        if let Some(head) = self.read_map().get(name) {
            return Ok(head.clone());
        }
        if let Some(reason) = self.failed.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Err(Lookup::Failed(reason.clone()));
        }
        if self.configured.iter().any(|c| c == name) {
            Err(Lookup::NotReady)
        } else {
            Err(Lookup::NotFound)
        }
    }

    pub fn all(&self) -> Vec<Arc<Head>> {
        self.read_map().values().cloned().collect()
    }

    pub fn configured(&self) -> &[String] {
        &self.configured
    }
}

/// Size and modification time of a head file: what tells a changed file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    /// Every atomic write is a new file: a new inode even within one clock tick.
    inode: u64,
}

impl FileStamp {
    fn of(path: &std::path::Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(FileStamp { len: meta.len(), modified: meta.modified().ok(), inode })
    }
}

/// What one [`Heads::sync_folder`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub loaded: Vec<String>,
    pub removed: Vec<HeadName>,
    /// Why the folder could not be listed (nothing changed).
    pub error: Option<String>,
}
