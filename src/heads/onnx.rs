//! A pre-trained ONNX sequence classifier (e.g. an export of
//! distilbert-base-uncased-finetuned-sst-2-english) served as a head: its own
//! model runtime (started and owned by [`Runtimes`]), logits mapped to our
//! label names.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{anyhow, bail};

use crate::config::{HeadSettings, ModelSettings};
use crate::inference::Inference;
use crate::model::Model;
use crate::pooling::softmax;
use crate::runtimes::Runtimes;

pub struct OnnxHead {
    pub name: String,
    /// Our label names, in output order.
    pub labels: Vec<String>,
    /// For each model output, the index of our label it counts towards.
    to_label: Vec<usize>,
    pub inference: Arc<Inference>,
}

impl OnnxHead {
    /// Loads the classifier with the main model's runtime settings but its own folder.
    pub fn load(
        name: &str,
        head: &HeadSettings,
        runtime: &ModelSettings,
        runtimes: &Runtimes,
    ) -> anyhow::Result<OnnxHead> {
        let dir = head.model_dir.clone().ok_or_else(|| anyhow!("heads.{name}.model_dir is required"))?;
        let settings =
            ModelSettings { dir, file: head.model_file.clone(), name: String::new(), max_tokens: 0, ..runtime.clone() };
        let model = Model::load(&settings, 1).map_err(|e| anyhow!("head {name}: {e:#}"))?;
        if model.info.output != "logits" {
            bail!("head {name}: {} has no `logits` output; is it a sequence classifier?", settings.dir.display());
        }
        let width = model.info.hidden_size;
        let model_labels =
            model.info.labels.clone().unwrap_or_else(|| (0..width).map(|i| format!("LABEL_{i}")).collect());
        if model_labels.len() != width {
            bail!(
                "head {name}: the model gives {width} logits but its manifest names {} labels {model_labels:?}",
                model_labels.len()
            );
        }
        let (labels, to_label) = map_labels(name, &model_labels, &head.label_map)?;
        let inference = runtimes.start_classifier(name, model);
        Ok(OnnxHead { name: name.to_string(), labels, to_label, inference })
    }

    /// Class probabilities of one text's logits, in our label order.
    pub fn probabilities(&self, logits: &[f32]) -> Vec<f32> {
        let scores: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        let mut out = vec![0f64; self.labels.len()];
        for (i, p) in softmax(&scores).into_iter().enumerate() {
            out[self.to_label[i]] += p;
        }
        out.into_iter().map(|p| p as f32).collect()
    }

    /// Per label a score whose softmax is [`OnnxHead::probabilities`]: the log
    /// of each probability (several model labels may map to one of ours).
    pub fn scores(&self, logits: &[f32]) -> Vec<f32> {
        self.probabilities(logits).into_iter().map(|p| p.max(f32::MIN_POSITIVE).ln()).collect()
    }
}

/// Our labels and the model-output-to-label mapping. With a map, every model
/// label must be mapped; our labels keep the order of first appearance.
pub fn map_labels(
    name: &str,
    model_labels: &[String],
    map: &BTreeMap<String, String>,
) -> anyhow::Result<(Vec<String>, Vec<usize>)> {
    if map.is_empty() {
        return Ok((model_labels.to_vec(), (0..model_labels.len()).collect()));
    }
    let mut labels: Vec<String> = Vec::new();
    let mut to_label = Vec::new();
    for l in model_labels {
        let ours = map.get(l).ok_or_else(|| {
            anyhow!("heads.{name}.label_map does not map the model's label {l:?} (model labels: {model_labels:?})")
        })?;
        let index = match labels.iter().position(|x| x == ours) {
            Some(i) => i,
            None => {
                labels.push(ours.clone());
                labels.len() - 1
            }
        };
        to_label.push(index);
    }
    Ok((labels, to_label))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_mapped_and_unmapped_ones_refused() {
        let model = vec!["NEGATIVE".to_string(), "POSITIVE".to_string()];
        let map: BTreeMap<String, String> =
            [("NEGATIVE", "neg"), ("POSITIVE", "pos")].into_iter().map(|(a, b)| (a.into(), b.into())).collect();
        assert_eq!(map_labels("h", &model, &map).unwrap(), (vec!["neg".into(), "pos".into()], vec![0, 1]));
        assert_eq!(map_labels("h", &model, &BTreeMap::new()).unwrap().0, model);
        let partial: BTreeMap<String, String> = [("NEGATIVE".to_string(), "neg".to_string())].into_iter().collect();
        assert!(map_labels("h", &model, &partial).unwrap_err().to_string().contains("POSITIVE"));
    }
}
