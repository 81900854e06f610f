//! The heads folder: every trained head is an immutable, checksummed version,
//! and the head's name points at the active one.
//!
//! ```text
//! <heads_dir>/<name>.json                      the active version (what is served)
//! <heads_dir>/.versions/<name>/<version>.json  every version kept, never rewritten
//! <heads_dir>/.versions/<name>/history.json    versions in the order they were published
//! ```
//!
//! The active file is a whole copy of a version, replaced by an atomic rename:
//! replicas sharing the folder (a volume) see the old head or the new one,
//! never a mix, and `distilserve train`, startup and older releases read it as
//! they always did. A version is the first 16 hex digits of the head's checksum.
//!
//! Replicas sharing the folder coordinate through file locks (`flock`) in
//! `.locks/`: `<name>.lock` is held by whoever trains, rolls back or deletes
//! the head (others are refused at once: 409), `<name>.history.lock` around
//! every write of its versions and active file (others wait: no history entry
//! is lost to two publishes at once). The kernel releases a dead process's
//! locks, so a crash never leaves a head locked. They hold on local file
//! systems and on NFSv4 (the Linux client maps `flock` to NFS byte-range
//! locks, released when a dead client's lease expires: 90 s by default);
//! not on NFSv3 without a lock manager, nor on SMB mounts without `nobrl`
//! semantics: use one replica per folder there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::logistic::LogisticHead;
use crate::atomic_file::write_atomic;
use crate::config::HeadName;

/// Folder of the versions, inside the heads folder (hidden from the scan).
const VERSIONS_DIR: &str = ".versions";
/// Status of the latest training of each head over the API, written by the
/// replica that runs it, so that any replica sharing the folder can show it.
const JOBS_DIR: &str = ".jobs";
/// File locks of each head (see the module's documentation).
const LOCKS_DIR: &str = ".locks";

/// One head held for a training, a rollback or a delete, by this process,
/// against every process sharing the folder; released when dropped (or when
/// the process dies).
#[derive(Debug)]
pub struct HeadLock {
    _file: std::fs::File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another training, rollback or delete of this head holds it")]
    Held,
    #[error("cannot lock the head in the heads folder: {0}")]
    Io(std::io::Error),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionEntry {
    pub version: String,
    pub created_unix: u64,
    /// Fingerprint of the encoder the version was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<String>,
}

/// How [`HeadStore::publish_as`] records a version.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub activate: bool,
    pub replacing: Option<&'a str>,
}

/// Why a rollback did not happen; in each case nothing was switched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("the head has no valid active file in the heads folder")]
    NoActive,
    #[error("the head has no version before {active}")]
    NoPrevious { active: String },
    #[error("the active version {active} is not in the head's history")]
    NotInHistory { active: String },
    #[error("the previous version {version} cannot be used: {message}")]
    Damaged { version: String, message: String },
    #[error("the previous version was made for another encoder: {0}")]
    OtherEncoder(String),
    #[error("the heads folder cannot be read or written: {0}")]
    Folder(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct History {
    versions: Vec<VersionEntry>,
}

/// The version id of a head: what `/classify` and `GET /heads/{name}` report.
pub fn version_of(head: &LogisticHead) -> String {
    head.checksum.chars().take(16).collect()
}

#[derive(Debug, Clone)]
pub struct HeadStore {
    dir: PathBuf,
    /// Versions kept per head besides the active one.
    keep: usize,
}

impl HeadStore {
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> HeadStore {
        HeadStore { dir: dir.into(), keep: keep.max(1) }
    }

    /// The store of `classify.heads_dir`, keeping `training.keep_versions`.
    pub fn of(settings: &crate::config::Settings) -> HeadStore {
        HeadStore::new(&settings.classify.heads_dir, settings.training.keep_versions)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn versions_dir(&self, name: &HeadName) -> PathBuf {
        name.file_in(&self.dir.join(VERSIONS_DIR), "")
    }

    /// `<heads_dir>/<name>.json`: what replicas serve.
    fn active_path(&self, name: &HeadName) -> PathBuf {
        name.file_in(&self.dir, ".json")
    }

    fn history(&self, name: &HeadName) -> anyhow::Result<History> {
        let path = self.versions_dir(name).join("history.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("{} is damaged", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn write_history(&self, name: &HeadName, history: &History) -> anyhow::Result<()> {
        let path = self.versions_dir(name).join("history.json");
        write_atomic(&path, &serde_json::to_vec_pretty(history)?)
    }

    fn lock_file(&self, name: &HeadName, suffix: &str) -> std::io::Result<std::fs::File> {
        let dir = self.dir.join(LOCKS_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(name.file_in(&dir, &format!(".{suffix}")))
    }

    /// Holds `name` for a training, rollback or delete, or says another
    /// process (or another of this process's operations) holds it.
    pub fn try_lock(&self, name: &HeadName) -> Result<HeadLock, LockError> {
        let file = self.lock_file(name, "lock").map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => Ok(HeadLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held),
            Err(std::fs::TryLockError::Error(e)) => Err(LockError::Io(e)),
        }
    }

    /// Whether a process holds `name` (a training in progress somewhere);
    /// false when the lock can be had, or cannot be tried (read-only folder).
    pub fn is_locked(&self, name: &HeadName) -> bool {
        matches!(self.try_lock(name), Err(LockError::Held))
    }

    /// Waits for the history of `name` to be free: writes of versions and the
    /// active file go one at a time across processes.
    fn lock_history(&self, name: &HeadName) -> anyhow::Result<std::fs::File> {
        let file = self.lock_file(name, "history.lock").context("cannot lock the head's history")?;
        file.lock().context("cannot lock the head's history")?;
        Ok(file)
    }

    /// Writes `head` (sealed: its checksum set) as a new version and makes it
    /// the active one. Order matters for a crash at any point: the version
    /// file, then the history, then the active file; readers only follow the
    /// active file. Returns the version.
    pub fn publish(&self, head: &LogisticHead) -> anyhow::Result<String> {
        self.publish_as(head, Publish { activate: true, replacing: None })
    }

    /// [`HeadStore::publish`], with what `how` says: whether the version
    /// becomes the active one (a head kept beside the served one does not),
    /// and which earlier version it takes the place of in the history (a head
    /// served before the comparison of graphs, republished with its outcome).
    pub fn publish_as(&self, head: &LogisticHead, how: Publish<'_>) -> anyhow::Result<String> {
        let name = HeadName::parse(&head.name)?;
        let _history = self.lock_history(&name)?;
        let version = version_of(head);
        let bytes = serde_json::to_vec_pretty(head)?;
        let dir = self.versions_dir(&name);
        let file = dir.join(format!("{version}.json"));
        if !file.is_file() {
            write_atomic(&file, &bytes)?;
        }
        let mut history = self.history(&name)?;
        let replaced = how.replacing.filter(|r| *r != version);
        let mut pruned: Vec<VersionEntry> =
            history.versions.iter().filter(|v| Some(v.version.as_str()) == replaced).cloned().collect();
        history.versions.retain(|v| v.version != version && Some(v.version.as_str()) != replaced);
        history.versions.push(VersionEntry {
            version: version.clone(),
            created_unix: head.created_unix,
            encoder: Some(head.encoder.fingerprint.clone()),
        });
        // Oldest first beyond `keep`, except each encoder's newest version:
        // switching encoders back and forth finds its own head again.
        let mut excess = history.versions.len().saturating_sub(self.keep);
        let mut i = 0;
        while excess > 0 && i < history.versions.len() {
            let entry = &history.versions[i];
            let newer_of_same_encoder = history.versions[i + 1..].iter().any(|v| v.encoder == entry.encoder);
            if newer_of_same_encoder {
                pruned.push(history.versions.remove(i));
                excess -= 1;
            } else {
                i += 1;
            }
        }
        self.write_history(&name, &history)?;
        if how.activate {
            write_atomic(&self.active_path(&name), &bytes)?;
        }
        for old in pruned {
            let _ = std::fs::remove_file(dir.join(format!("{}.json", old.version)));
        }
        Ok(version)
    }

    /// The newest version of `name` trained on the encoder `fingerprint`, if
    /// one is kept and valid: what a service running that encoder serves when
    /// the active file was made for another.
    pub fn newest_for_encoder(&self, name: &HeadName, fingerprint: &str) -> Option<LogisticHead> {
        let dir = self.versions_dir(name);
        let history = self.history(name).ok()?;
        history.versions.iter().rev().filter(|v| v.encoder.as_deref().is_none_or(|e| e == fingerprint)).find_map(|v| {
            let head = LogisticHead::load(&dir.join(format!("{}.json", v.version))).ok()?;
            (head.encoder.fingerprint == fingerprint && head.name == name.as_str()).then_some(head)
        })
    }

    /// Versions of `name`, oldest first (at most `keep`).
    pub fn versions(&self, name: &HeadName) -> anyhow::Result<Vec<VersionEntry>> {
        Ok(self.history(name)?.versions)
    }

    /// Whether `name` has an active file.
    pub fn has_head(&self, name: &HeadName) -> bool {
        self.active_path(name).is_file()
    }

    /// The version the active file holds, if there is one and it is valid.
    pub fn active_version(&self, name: &HeadName) -> Option<String> {
        let head = LogisticHead::load(&self.active_path(name)).ok()?;
        Some(version_of(&head))
    }

    /// Makes the version published before the active one active again, once
    /// it is checked (readable, this head's, made for `encoder`): nothing is
    /// switched when any check fails. Returns the version and the head, as
    /// checked (what the active file now holds).
    pub fn rollback(
        &self,
        name: &HeadName,
        encoder: &crate::model::ModelInfo,
    ) -> Result<(String, LogisticHead), RollbackError> {
        let io = |e: anyhow::Error| {
            RollbackError::Folder(format!("{e:#}").replace(&self.dir.display().to_string(), "<heads_dir>"))
        };
        let _history = self.lock_history(name).map_err(io)?;
        let active = self.active_version(name).ok_or(RollbackError::NoActive)?;
        let history = self.history(name).map_err(io)?;
        let position = history
            .versions
            .iter()
            .position(|v| v.version == active)
            .ok_or_else(|| RollbackError::NotInHistory { active: active.clone() })?;
        if position == 0 {
            return Err(RollbackError::NoPrevious { active });
        }
        let previous = history.versions[position - 1].version.clone();
        let file = self.versions_dir(name).join(format!("{previous}.json"));
        // Errors name the file relative to the folder, never its full path.
        let shown = Path::new("<heads_dir>").join(VERSIONS_DIR).join(name.as_str()).join(format!("{previous}.json"));
        let damaged = |message: String| RollbackError::Damaged { version: previous.clone(), message };
        let head = LogisticHead::load(&file)
            .map_err(|e| damaged(e.to_string().replace(&file.display().to_string(), &shown.display().to_string())))?;
        if head.name != name.as_str() {
            return Err(damaged(format!("it holds head {:?}", head.name)));
        }
        head.check_encoder(&shown, encoder).map_err(|e| RollbackError::OtherEncoder(e.to_string()))?;
        let bytes = std::fs::read(&file).map_err(|e| damaged(e.to_string()))?;
        write_atomic(&self.active_path(name), &bytes).map_err(io)?;
        Ok((previous, head))
    }

    /// Removes the head: its active file first (replicas stop serving it),
    /// then every version. True when there was an active file.
    pub fn delete(&self, name: &HeadName) -> anyhow::Result<bool> {
        let active = self.active_path(name);
        let existed = match std::fs::remove_file(&active) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", active.display())),
        };
        let versions = self.versions_dir(name);
        if versions.exists() {
            std::fs::remove_dir_all(&versions).with_context(|| format!("cannot remove {}", versions.display()))?;
        }
        Ok(existed)
    }

    /// Records the status of `name`'s training for every replica (atomic; best effort).
    pub fn write_job_status<T: Serialize>(&self, name: &HeadName, status: &T) {
        let path = name.file_in(&self.dir.join(JOBS_DIR), ".json");
        if let Err(e) = serde_json::to_vec(status).map_err(anyhow::Error::from).and_then(|b| write_atomic(&path, &b)) {
            tracing::warn!(head = %name, error = %format!("{e:#}"), "could not record the training status in the heads folder");
        }
    }

    /// The status a replica recorded for `name`'s training, if any.
    pub fn read_job_status<T: serde::de::DeserializeOwned>(&self, name: &HeadName) -> Option<T> {
        let path = name.file_in(&self.dir.join(JOBS_DIR), ".json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub fn remove_job_status(&self, name: &HeadName) {
        let _ = std::fs::remove_file(name.file_in(&self.dir.join(JOBS_DIR), ".json"));
    }

    /// Active head files in the folder: (name, path), names valid, sorted.
    /// A listing that fails, even part way, is an error: never a folder
    /// without heads (that would read as every head deleted).
    pub fn scan(&self) -> std::io::Result<Vec<(HeadName, PathBuf)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(file_name) = entry.file_name().into_string() else { continue };
            let Some(name) = file_name.strip_suffix(".json") else { continue };
            if let Ok(name) = HeadName::parse(name) {
                found.push((name, entry.path()));
            }
        }
        found.sort();
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> HeadName {
        HeadName::parse(s).unwrap()
    }
    use crate::heads::logistic::tests::tiny_head;

    /// The encoder `tiny_head` was made for.
    fn tiny_encoder() -> crate::model::ModelInfo {
        let mut info = crate::model::ModelInfo::synthetic("tiny", 2, 8);
        info.fingerprint = "f".repeat(64);
        info
    }

    #[test]
    fn publish_rollback_prune_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::new(dir.path(), 2);
        let mut heads = Vec::new();
        for bias in [0.0, 1.0, 2.0] {
            let mut h = tiny_head("topic");
            h.intercept[0] = bias;
            heads.push(h.sealed());
        }
        let v: Vec<String> = heads.iter().map(|h| store.publish(h).unwrap()).collect();
        assert_eq!(store.active_version(&name("topic")).as_deref(), Some(v[2].as_str()));
        // Kept: the last two; the first version's file is gone.
        let kept: Vec<String> = store.versions(&name("topic")).unwrap().into_iter().map(|e| e.version).collect();
        assert_eq!(kept, vec![v[1].clone(), v[2].clone()]);
        assert!(!dir.path().join(".versions/topic").join(format!("{}.json", v[0])).exists());

        let encoder = tiny_encoder();
        assert_eq!(store.rollback(&name("topic"), &encoder).unwrap().0, v[1]);
        assert_eq!(store.active_version(&name("topic")).as_deref(), Some(v[1].as_str()));
        assert_eq!(
            store.rollback(&name("topic"), &encoder).unwrap_err(),
            RollbackError::NoPrevious { active: v[1].clone() }
        );
        // Publishing again after a rollback makes the new version active.
        store.publish(&heads[2]).unwrap();
        assert_eq!(store.active_version(&name("topic")).as_deref(), Some(v[2].as_str()));

        assert_eq!(store.scan().unwrap().into_iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(), vec!["topic"]);
        assert!(store.delete(&name("topic")).unwrap());
        assert!(store.scan().unwrap().is_empty());
        assert!(!dir.path().join(".versions/topic").exists());
        assert!(!store.delete(&name("topic")).unwrap());
        // A name that would leave the folder cannot be made, so no store call can take one.
        assert!(HeadName::parse("../etc").is_err());
        // A folder that cannot be listed is an error, not an empty folder.
        assert!(HeadStore::new(dir.path().join("gone"), 2).scan().is_err());
    }

    #[test]
    fn a_damaged_version_is_not_rolled_back_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::new(dir.path(), 5);
        let first = tiny_head("t").sealed();
        let mut second = tiny_head("t");
        second.intercept[1] = 3.0;
        let second = second.sealed();
        let v1 = store.publish(&first).unwrap();
        let v2 = store.publish(&second).unwrap();
        std::fs::write(dir.path().join(".versions/t").join(format!("{v1}.json")), b"{\"broken\":").unwrap();
        let encoder = tiny_encoder();
        let err = store.rollback(&name("t"), &encoder).unwrap_err();
        assert!(matches!(err, RollbackError::Damaged { .. }), "{err}");
        // No path of this machine in what a client may be shown.
        assert!(!err.to_string().contains(&dir.path().display().to_string()), "{err}");
        assert_eq!(store.active_version(&name("t")).as_deref(), Some(v2.as_str()));
    }

    #[test]
    fn a_version_for_another_encoder_is_refused_before_anything_is_switched() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::new(dir.path(), 5);
        let mut first = tiny_head("t");
        first.encoder.fingerprint = "another encoder".into();
        let v1 = store.publish(&first.sealed()).unwrap();
        let encoder = tiny_encoder();
        let mut second = tiny_head("t");
        second.intercept[1] = 3.0;
        let v2 = store.publish(&second.sealed()).unwrap();
        assert_ne!(v1, v2);
        assert!(matches!(store.rollback(&name("t"), &encoder), Err(RollbackError::OtherEncoder(_))));
        assert_eq!(store.active_version(&name("t")).as_deref(), Some(v2.as_str()));
    }

    #[test]
    fn a_head_held_by_one_holder_is_refused_to_another_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = HeadStore::new(dir.path(), 5);
        let held = store.try_lock(&name("t")).unwrap();
        // Another open file description: what another process would have.
        assert!(matches!(store.try_lock(&name("t")), Err(LockError::Held)));
        assert!(store.is_locked(&name("t")));
        assert!(store.try_lock(&name("other")).is_ok());
        drop(held);
        assert!(!store.is_locked(&name("t")));
        assert!(store.try_lock(&name("t")).is_ok());
    }
}
