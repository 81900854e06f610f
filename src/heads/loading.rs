//! Loading heads from disk: a logistic head file checked against the encoder
//! (kept per encoder), the ONNX classifiers, and what startup does with the
//! configured heads.

use std::path::Path;

use anyhow::bail;

use super::logistic::{self, head_path, LogisticHead};
use super::onnx::OnnxHead;
use super::{store, Head};
use crate::config::{HeadKind, HeadName, Settings};
use crate::model::ModelInfo;
use crate::runtimes::Runtimes;

/// What startup does with the configured heads: load what is on disk (any
/// damaged or mismatched file is an error), and list the missing logistic
/// heads to train because `train_on_startup` is set.
pub struct StartupHeads {
    pub loaded: Vec<Head>,
    pub to_train: Vec<String>,
}

/// Reads and checks `<heads_dir>/<name>.json` (None when there is no file):
/// a damaged file, one for another encoder or another head is an error naming it.
pub fn load_logistic(settings: &Settings, name: &str, info: &ModelInfo) -> anyhow::Result<Option<LogisticHead>> {
    load_logistic_as(settings, name, info, false)
}

/// As [`load_logistic`], but heads are kept per encoder: when the active file
/// was made for another encoder, the newest kept version made for this one
/// is served; without one, the head is missing (None) if it can be trained at
/// startup, else that is the error. What startup and `evaluate` use; an
/// explicit reload stays strict, so that it never answers with another file
/// than the one it was asked to load.
pub fn load_logistic_for_encoder(
    settings: &Settings,
    name: &str,
    info: &ModelInfo,
) -> anyhow::Result<Option<LogisticHead>> {
    load_logistic_as(settings, name, info, true)
}

/// Whether a head file may serve here: made for the graph new heads are
/// trained on, or for the exact graph (`model.file`) when its comparison of
/// the two graphs chose the exact one ([`logistic::GraphChoice`]).
pub fn check_served(head: &LogisticHead, path: &Path, runtimes: &Runtimes) -> Result<(), logistic::HeadFileError> {
    match head.check_encoder(path, &runtimes.training_graph().info) {
        Err(e @ logistic::HeadFileError::WrongEncoder { .. }) => {
            let chose_exact = head.training.graph_choice.as_ref().is_some_and(|c| !c.on_heads_graph());
            if chose_exact && head.check_encoder(path, &runtimes.encoder.info).is_ok() {
                Ok(())
            } else {
                Err(e)
            }
        }
        checked => checked,
    }
}

fn load_logistic_as(
    settings: &Settings,
    name: &str,
    info: &ModelInfo,
    per_encoder: bool,
) -> anyhow::Result<Option<LogisticHead>> {
    load_checked(settings, name, info, per_encoder, |h, path| h.check_encoder(path, info))
}

/// As [`load_logistic_as`] for the service's heads: the active file is
/// accepted where [`check_served`] accepts it (its own graph, or the exact
/// graph its comparison chose).
fn load_logistic_served(
    settings: &Settings,
    name: &str,
    runtimes: &Runtimes,
    per_encoder: bool,
) -> anyhow::Result<Option<LogisticHead>> {
    let info = &runtimes.training_graph().info;
    load_checked(settings, name, info, per_encoder, |h, path| check_served(h, path, runtimes))
}

/// The active file of head `name` when `check` accepts it; else, `per_encoder`,
/// the newest kept version made for `info`'s graph (None where the head can be
/// trained at startup instead).
fn load_checked(
    settings: &Settings,
    name: &str,
    info: &ModelInfo,
    per_encoder: bool,
    check: impl Fn(&LogisticHead, &Path) -> Result<(), logistic::HeadFileError>,
) -> anyhow::Result<Option<LogisticHead>> {
    let path = head_path(&settings.classify.heads_dir, name)?;
    if !path.exists() {
        return Ok(None);
    }
    let h = LogisticHead::load(&path)?;
    match check(&h, &path) {
        Ok(()) => {}
        Err(e @ logistic::HeadFileError::WrongEncoder { .. }) if per_encoder => {
            let own = HeadName::parse(name)
                .ok()
                .and_then(|n| store::HeadStore::of(settings).newest_for_encoder(&n, &info.fingerprint));
            if let Some(own) = own {
                tracing::info!(
                    head = %name,
                    version = %store::version_of(&own),
                    active_for = %h.encoder.name,
                    "serving this encoder's own version of the head (the active file was made for another encoder)"
                );
                return Ok(Some(own));
            }
            let trainable = settings.heads.get(name).is_some_and(|s| s.train_on_startup && s.data.is_some());
            if trainable {
                tracing::info!(head = %name, active_for = %h.encoder.name, "no version of the head for this encoder: training one");
                return Ok(None);
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    }
    if h.name != name {
        bail!("head file {} holds head {:?}, not {name:?}", path.display(), h.name);
    }
    tracing::info!(head = %name, path = %path.display(), pooling = %h.pooling, "head loaded");
    Ok(Some(h))
}

/// Loads head `name` as configured: a logistic head from its file (at
/// startup, `per_encoder`: see [`load_logistic_for_encoder`]), an ONNX
/// classifier from its model folder. Used at startup and by `POST /heads/{name}/reload`.
pub fn load_one(
    settings: &Settings,
    name: &str,
    runtimes: &Runtimes,
    per_encoder: bool,
) -> anyhow::Result<Option<Head>> {
    let head = &settings.heads[name];
    Ok(match head.kind {
        HeadKind::Logistic => load_logistic_served(settings, name, runtimes, per_encoder)?.map(Head::Logistic),
        HeadKind::Onnx => {
            let h = OnnxHead::load(name, head, &settings.model, runtimes)?;
            tracing::info!(head = %name, labels = ?h.labels, "ONNX classifier head loaded");
            Some(Head::Onnx(h))
        }
    })
}

pub fn load_configured(settings: &Settings, runtimes: &Runtimes) -> anyhow::Result<StartupHeads> {
    let mut loaded = Vec::new();
    let mut to_train = Vec::new();
    for name in &settings.classify.serve {
        let head = &settings.heads[name];
        match load_one(settings, name, runtimes, true)? {
            Some(h) => loaded.push(h),
            None => {
                let path = head_path(&settings.classify.heads_dir, name)?;
                if head.train_on_startup {
                    to_train.push(name.clone());
                } else {
                    bail!(
                        "head file {} is missing: run `distilserve train --head {name}`, or set heads.{name}.train_on_startup = true",
                        path.display()
                    );
                }
            }
        }
    }
    Ok(StartupHeads { loaded, to_train })
}
