//! A head's training options, one type whatever the door: the JSON body and
//! the query string of `POST /heads`, a `[heads.<name>]` table and the flags
//! of `distilserve train` each give a [`TrainingOptions`] (what was asked);
//! [`TrainingOptions::resolve`] fills the rest from `[training]` and checks
//! every bound, in the one table below. `[training]` itself is checked at
//! start by resolving an empty request (`Settings::validate`): a default that
//! the API would refuse stops the service instead of failing every upload.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{LayerSpec, PoolingChoice, TrainingSettings};

pub const MAX_ALPHAS: usize = 20;
pub const MIN_FOLDS: usize = 2;
pub const MAX_FOLDS: usize = 20;
/// At most half of an upload is held out for the test report.
pub const MAX_TEST_FRACTION: f64 = 0.5;
/// Most hidden-state options one training may search.
pub const MAX_LAYER_OPTIONS: usize = 8;
pub const MAX_TIME_BUDGET_S: f64 = 3600.0;

/// Training options as asked for; `None` takes the `[training]` setting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingOptions {
    pub pooling: Option<PoolingChoice>,
    /// Hidden states tried, each with every pooling.
    pub layers: Option<Vec<LayerSpec>>,
    pub alphas: Option<Vec<f64>>,
    /// This many alphas, log-spaced over the range of `[training] alphas` (instead of `alphas`).
    pub alpha_grid: Option<usize>,
    pub cv_folds: Option<usize>,
    pub test_fraction: Option<f64>,
    pub max_iterations: Option<u64>,
    /// The head's default `min_probability` on `/classify`.
    pub min_probability: Option<f32>,
    pub class_weight: Option<ClassWeightOption>,
    /// Several labels per example, one logistic regression per label.
    pub multi_label: Option<bool>,
    /// Seconds the search may take (see `TrainConfig::time_budget`).
    pub time_budget_s: Option<f64>,
}

/// Where the examples come from, which decides how a head may be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Examples {
    /// An upload: no validation split, so candidates are chosen by
    /// cross-validation (`cv_folds` >= 2) and `test_fraction` is held out.
    Upload,
    /// A data set folder with its own splits: `cv_folds` 0 chooses on its
    /// validation split instead.
    DataSet,
}

/// A head's label weights as a setting: `none`, `balanced` (label c weighs
/// n / (labels x n_c)) or `auto` (both tried; chosen by held-out macro-F1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelWeighting {
    #[default]
    None,
    Balanced,
    Auto,
}

/// `class_weight`: by name, or a weight per label (labels left out weigh 1).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ClassWeightOption {
    #[default]
    None,
    Balanced,
    Auto,
    PerLabel(BTreeMap<String, f64>),
}

impl From<LabelWeighting> for ClassWeightOption {
    fn from(weighting: LabelWeighting) -> Self {
        match weighting {
            LabelWeighting::None => ClassWeightOption::None,
            LabelWeighting::Balanced => ClassWeightOption::Balanced,
            LabelWeighting::Auto => ClassWeightOption::Auto,
        }
    }
}

impl std::str::FromStr for ClassWeightOption {
    type Err = OptionError;

    /// `none`, `balanced`, `auto`, or `label:weight` pairs separated by `;`
    /// (the query form of a CSV or JSONL upload).
    fn from_str(s: &str) -> Result<Self, OptionError> {
        match s.trim() {
            "none" => Ok(ClassWeightOption::None),
            "balanced" => Ok(ClassWeightOption::Balanced),
            "auto" => Ok(ClassWeightOption::Auto),
            pairs => pairs
                .split(';')
                .map(|pair| {
                    let (label, weight) = pair.rsplit_once(':').ok_or(())?;
                    Ok((label.trim().to_string(), weight.trim().parse::<f64>().map_err(|_| ())?))
                })
                .collect::<Result<BTreeMap<_, _>, ()>>()
                .map(ClassWeightOption::PerLabel)
                .map_err(|()| OptionError {
                    option: "class_weight",
                    problem: format!(
                        "class_weight is none, balanced, auto or label:weight pairs separated by ';', got {s:?}"
                    ),
                }),
        }
    }
}

/// The options with every default filled in and every bound checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedOptions {
    pub pooling: PoolingChoice,
    pub layers: Vec<LayerSpec>,
    pub alphas: Vec<f64>,
    /// 0: chosen on the data set's validation split ([`Examples::DataSet`] only).
    pub cv_folds: usize,
    pub test_fraction: f64,
    pub max_iterations: u64,
    pub min_probability: Option<f32>,
    pub class_weight: ClassWeightOption,
    pub multi_label: bool,
    pub time_budget: Option<Duration>,
}

/// An option out of its bounds: which one, and the bound in words.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{problem}")]
pub struct OptionError {
    /// The option's name, as the JSON body, the query and the settings spell it.
    pub option: &'static str,
    pub problem: String,
}

fn out_of_bounds(option: &'static str, problem: String) -> OptionError {
    OptionError { option, problem }
}

impl TrainingOptions {
    /// These options, with those not given taken from `base` (flags over a `[heads.<name>]` table).
    pub fn over(self, base: TrainingOptions) -> TrainingOptions {
        TrainingOptions {
            pooling: self.pooling.or(base.pooling),
            layers: self.layers.or(base.layers),
            alphas: self.alphas.or(base.alphas),
            alpha_grid: self.alpha_grid.or(base.alpha_grid),
            cv_folds: self.cv_folds.or(base.cv_folds),
            test_fraction: self.test_fraction.or(base.test_fraction),
            max_iterations: self.max_iterations.or(base.max_iterations),
            min_probability: self.min_probability.or(base.min_probability),
            class_weight: self.class_weight.or(base.class_weight),
            multi_label: self.multi_label.or(base.multi_label),
            time_budget_s: self.time_budget_s.or(base.time_budget_s),
        }
    }

    /// Every option given or taken from `defaults`, each checked against its bound.
    pub fn resolve(&self, defaults: &TrainingSettings, examples: Examples) -> Result<ResolvedOptions, OptionError> {
        let alphas = match (&self.alphas, self.alpha_grid) {
            (Some(_), Some(_)) => return Err(out_of_bounds("alphas", "send alphas or alpha_grid, not both".into())),
            (Some(alphas), None) => alphas.clone(),
            (None, Some(n)) => alpha_grid(&defaults.alphas, n)?,
            (None, None) => defaults.alphas.clone(),
        };
        if alphas.is_empty() || alphas.len() > MAX_ALPHAS || alphas.iter().any(|a| !a.is_finite() || *a < 0.0) {
            return Err(out_of_bounds(
                "alphas",
                format!("alphas must be 1 to {MAX_ALPHAS} finite non-negative numbers, got {alphas:?}"),
            ));
        }
        let layers = self.layers.clone().unwrap_or_else(|| defaults.layers.clone());
        if layers.is_empty() || layers.len() > MAX_LAYER_OPTIONS {
            return Err(out_of_bounds(
                "layers",
                format!("layers lists 1 to {MAX_LAYER_OPTIONS} options, got {}", layers.len()),
            ));
        }
        let cv_folds = self.cv_folds.unwrap_or(defaults.cv_folds);
        let on_validation_split = cv_folds == 0 && examples == Examples::DataSet;
        if !(on_validation_split || (MIN_FOLDS..=MAX_FOLDS).contains(&cv_folds)) {
            let zero = if examples == Examples::DataSet { "0 (choose on the validation split) or " } else { "" };
            return Err(out_of_bounds(
                "cv_folds",
                format!("cv_folds must be {zero}{MIN_FOLDS} to {MAX_FOLDS}, got {cv_folds}"),
            ));
        }
        let test_fraction = self.test_fraction.unwrap_or(defaults.test_fraction);
        if !(test_fraction > 0.0 && test_fraction <= MAX_TEST_FRACTION) {
            return Err(out_of_bounds(
                "test_fraction",
                format!("test_fraction must be more than 0 and at most {MAX_TEST_FRACTION}, got {test_fraction}"),
            ));
        }
        let max_iterations = self.max_iterations.unwrap_or(defaults.max_iterations);
        if max_iterations == 0 {
            return Err(out_of_bounds("max_iterations", "max_iterations must be at least 1".into()));
        }
        if let Some(p) = self.min_probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(out_of_bounds(
                    "min_probability",
                    format!("min_probability must be between 0 and 1, got {p}"),
                ));
            }
        }
        let time_budget = match self.time_budget_s {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIME_BUDGET_S => Some(Duration::from_secs_f64(s)),
            Some(s) => {
                return Err(out_of_bounds(
                    "time_budget_s",
                    format!("time_budget_s must be more than 0 and at most {MAX_TIME_BUDGET_S}, got {s}"),
                ))
            }
        };
        Ok(ResolvedOptions {
            pooling: self.pooling.unwrap_or(PoolingChoice::Auto),
            layers,
            alphas,
            cv_folds,
            test_fraction,
            max_iterations,
            min_probability: self.min_probability,
            class_weight: self.class_weight.clone().unwrap_or_default(),
            multi_label: self.multi_label.unwrap_or(false),
            time_budget,
        })
    }
}

/// `n` alphas spaced evenly in log scale from the smallest positive to the
/// largest of `configured` (`[training] alphas`).
fn alpha_grid(configured: &[f64], n: usize) -> Result<Vec<f64>, OptionError> {
    if !(2..=MAX_ALPHAS).contains(&n) {
        return Err(out_of_bounds("alpha_grid", format!("alpha_grid must be 2 to {MAX_ALPHAS}, got {n}")));
    }
    let positive = configured.iter().copied().filter(|a| *a > 0.0);
    let (lo, hi) = positive.fold((f64::INFINITY, 0.0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
    if !(lo.is_finite() && hi > lo) {
        return Err(out_of_bounds(
            "alpha_grid",
            format!("alpha_grid needs [training] alphas to span a range, they are {configured:?}"),
        ));
    }
    let step = (hi / lo).ln() / (n - 1) as f64;
    Ok((0..n).map(|i| if i == n - 1 { hi } else { lo * (step * i as f64).exp() }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> TrainingSettings {
        crate::config::Settings::defaults().training
    }

    #[test]
    fn an_empty_request_takes_every_default() {
        let d = defaults();
        let r = TrainingOptions::default().resolve(&d, Examples::Upload).unwrap();
        assert_eq!((r.alphas, r.layers, r.cv_folds), (d.alphas, d.layers, d.cv_folds));
        assert_eq!((r.test_fraction, r.max_iterations), (d.test_fraction, d.max_iterations));
        assert_eq!((r.pooling, r.class_weight, r.multi_label), (PoolingChoice::Auto, ClassWeightOption::None, false));
    }

    #[test]
    fn each_bound_names_its_option() {
        let d = defaults();
        let refused = |o: TrainingOptions, examples| o.resolve(&d, examples).unwrap_err().option;
        let upload = Examples::Upload;
        assert_eq!(refused(TrainingOptions { cv_folds: Some(0), ..Default::default() }, upload), "cv_folds");
        assert_eq!(
            refused(TrainingOptions { cv_folds: Some(21), ..Default::default() }, Examples::DataSet),
            "cv_folds"
        );
        assert_eq!(
            refused(TrainingOptions { test_fraction: Some(0.6), ..Default::default() }, upload),
            "test_fraction"
        );
        assert_eq!(refused(TrainingOptions { alphas: Some(vec![f64::NAN]), ..Default::default() }, upload), "alphas");
        assert_eq!(refused(TrainingOptions { alphas: Some(vec![1.0; 21]), ..Default::default() }, upload), "alphas");
        let both = TrainingOptions { alphas: Some(vec![1.0]), alpha_grid: Some(4), ..Default::default() };
        assert_eq!(refused(both, upload), "alphas");
        assert_eq!(refused(TrainingOptions { alpha_grid: Some(1), ..Default::default() }, upload), "alpha_grid");
        assert_eq!(refused(TrainingOptions { layers: Some(vec![]), ..Default::default() }, upload), "layers");
        assert_eq!(
            refused(TrainingOptions { min_probability: Some(1.5), ..Default::default() }, upload),
            "min_probability"
        );
        assert_eq!(
            refused(TrainingOptions { time_budget_s: Some(0.0), ..Default::default() }, upload),
            "time_budget_s"
        );
        assert_eq!(
            refused(TrainingOptions { max_iterations: Some(0), ..Default::default() }, upload),
            "max_iterations"
        );
        // A data set chooses on its validation split with 0 folds; an upload has none.
        let zero = TrainingOptions { cv_folds: Some(0), ..Default::default() };
        assert_eq!(zero.resolve(&d, Examples::DataSet).unwrap().cv_folds, 0);
    }

    #[test]
    fn an_alpha_grid_spans_the_configured_range() {
        let d = defaults();
        let grid = TrainingOptions { alpha_grid: Some(5), ..Default::default() }.resolve(&d, Examples::Upload).unwrap();
        let (lo, hi) =
            (d.alphas.iter().cloned().fold(f64::INFINITY, f64::min), d.alphas.iter().cloned().fold(0.0, f64::max));
        assert_eq!(grid.alphas.len(), 5);
        assert!((grid.alphas[0] - lo).abs() < 1e-9 && grid.alphas[4] == hi, "{:?}", grid.alphas);
        assert!(grid.alphas.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn flags_override_a_table_option_by_option() {
        let table = TrainingOptions { alphas: Some(vec![1.0]), cv_folds: Some(5), ..Default::default() };
        let flags = TrainingOptions { cv_folds: Some(0), ..Default::default() };
        let merged = flags.over(table);
        assert_eq!((merged.alphas, merged.cv_folds), (Some(vec![1.0]), Some(0)));
    }

    #[test]
    fn class_weight_reads_names_and_pairs() {
        assert_eq!("balanced".parse::<ClassWeightOption>().unwrap(), ClassWeightOption::Balanced);
        let pairs: ClassWeightOption = "spam: 5; ham:1".parse().unwrap();
        assert_eq!(pairs, ClassWeightOption::PerLabel([("spam".into(), 5.0), ("ham".into(), 1.0)].into()));
        assert_eq!("spam=5".parse::<ClassWeightOption>().unwrap_err().option, "class_weight");
    }
}
