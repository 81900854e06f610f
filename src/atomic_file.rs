//! Files the service writes (heads, feature cache, reports) appear whole or
//! not at all: a temporary file in the target folder, synced, then renamed.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// Writes `bytes` to `path` atomically: readers see the old file or the whole
/// new one, never a part, even if the process dies mid-write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let write = || -> std::io::Result<()> {
        // In the target folder, so that the rename never crosses file systems;
        // a leftover from a killed process has a `.tmp` prefix and is never read.
        let mut file = tempfile::Builder::new().prefix(".tmp").tempfile_in(dir)?;
        // tempfile makes its files 0600; ours are read by other processes that
        // may run as other users (replicas sharing a heads volume, a container
        // whose image was built as root), as a plain create would allow.
        #[cfg(unix)]
        file.as_file().set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        pause_for_fault_injection();
        file.persist(path).map_err(|e| e.error)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// `DISTILSERVE_FAULT_PAUSE_BEFORE_RENAME_MS`: wait that long between writing
/// the temporary file and renaming it, so that tests/suite/heads_folder.rs can kill
/// the process for certain inside a write. Unset in normal runs.
fn pause_for_fault_injection() {
    if let Some(ms) = std::env::var("DISTILSERVE_FAULT_PAUSE_BEFORE_RENAME_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.json")]);
    }

    #[cfg(unix)]
    #[test]
    fn written_files_are_readable_by_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("head.json");
        write_atomic(&path, b"{}").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
