//! The ONNX Runtime shared library: where it is found and the one process-wide
//! environment loaded from it (no CDN: `scripts/setup.sh` installs the file).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::anyhow;

/// The process-wide ONNX Runtime environment (ONNX Runtime allows one).
static ORT_ENV: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> = OnceLock::new();

/// Where to load ONNX Runtime from: the setting, `$ORT_DYLIB_PATH`, the copy the
/// set-up script installs, or a copy beside the executable.
pub fn onnxruntime_library_path(configured: &str) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let vendored = PathBuf::from("vendor/onnxruntime/libonnxruntime.so");
    if vendored.exists() {
        return vendored;
    }
    if let Some(beside) = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join("libonnxruntime.so"))) {
        if beside.exists() {
            return beside;
        }
    }
    vendored
}

/// The environment, loaded once from [`onnxruntime_library_path`]; a failure is
/// kept and returned to every later caller.
pub fn ort_environment(configured: &str) -> anyhow::Result<&'static ort::environment::Environment> {
    let result = ORT_ENV.get_or_init(|| {
        let path = onnxruntime_library_path(configured);
        if !path.exists() {
            return Err(format!(
                "ONNX Runtime library not found at {}: run scripts/setup.sh, or point model.onnxruntime_library \
                 (or ORT_DYLIB_PATH) at libonnxruntime.so",
                path.display()
            ));
        }
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load ONNX Runtime from {}: {e} (is it the ONNX Runtime 1.31 shared library for this platform? \
                 run scripts/setup.sh, or point model.onnxruntime_library at one)",
                path.display()
            )
        })?;
        let env = builder
            .with_name("distilserve")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        Ok((env, path))
    });
    match result {
        Ok((env, _)) => Ok(env),
        Err(message) => Err(anyhow!(message.clone())),
    }
}

/// The file the environment was loaded from, once it was.
pub(super) fn loaded_from() -> Option<PathBuf> {
    ORT_ENV.get().and_then(|r| r.as_ref().ok()).map(|(_, p)| p.clone())
}
