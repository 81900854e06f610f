//! A head's examples as uploaded (`POST /heads`), checked against
//! `[training]` and split into the part the head is chosen and fitted on and
//! the held-out part it is judged on.
//!
//! The held-out part is the rows marked `"split": "test"` when there are any;
//! otherwise `training.test_fraction` of each label, chosen by the sha256 of
//! the text (the same examples give the same split in any order). The rest is
//! ordered by label, so that the folds of the cross-validation (position
//! modulo k) are stratified too.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::logistic::LabelCount;
use super::search::{ClassWeight, MAX_WEIGHT_RATIO};
use super::ABSTAIN;
use crate::config::{ClassWeightOption, Examples, ResolvedOptions, TrainingOptions, TrainingSettings};
use crate::error_code::ErrorCode;

/// One uploaded example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// One label; any number (none included) for a multi-label head.
    pub labels: Vec<String>,
    /// The second text of a pair (a pair head: every example has one).
    pub text_pair: Option<String>,
    /// `train` (also `validation`), `test`, or none.
    pub split: Option<String>,
}

/// Why an upload is refused: a stable code and a message naming the problem.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct UploadError {
    /// Its status says whether too much of something (413) or something wrong (422).
    pub code: ErrorCode,
    pub message: String,
}

fn invalid(code: ErrorCode, message: String) -> UploadError {
    UploadError { code, message }
}

/// Examples ready for training: texts and label indices of both parts.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    /// Sorted label names; a label's index is its position.
    pub labels: Vec<String>,
    pub train_texts: Vec<String>,
    pub train_labels: Vec<usize>,
    pub test_texts: Vec<String>,
    pub test_labels: Vec<usize>,
    pub label_counts: Vec<LabelCount>,
    pub test_source: String,
    pub options: ResolvedOptions,
    /// sha256 of every example, label and split: recorded in the head file.
    pub fingerprint: String,
    /// `options.class_weight` by label index.
    pub class_weight: ClassWeight,
    /// Positions in the upload of the training rows (`train_texts`' order).
    pub train_rows: Vec<usize>,
    /// Labels too rare to evaluate, and the like: answered with the upload.
    pub warnings: Vec<String>,
    /// A multi-label upload's label sets (`train_labels` and `test_labels` are then empty).
    pub label_sets: Option<LabelSets>,
    /// A pair upload's second texts, in the order of `train_texts` and `test_texts`.
    pub pairs: Option<(Vec<String>, Vec<String>)>,
}

/// Each example's label indices, in the order of `train_texts` and `test_texts`.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelSets {
    pub train: Vec<Vec<usize>>,
    pub test: Vec<Vec<usize>>,
}

impl TrainingSet {
    pub fn examples(&self) -> usize {
        self.train_texts.len() + self.test_texts.len()
    }
}

/// Checks `examples` against `limits` and splits them; every refusal is an
/// [`UploadError`] naming what to change.
pub fn prepare(
    examples: Vec<Example>,
    options: &TrainingOptions,
    limits: &TrainingSettings,
) -> Result<TrainingSet, UploadError> {
    let options =
        options.resolve(limits, Examples::Upload).map_err(|e| invalid(ErrorCode::InvalidOption, e.problem))?;
    if examples.len() > limits.max_examples {
        return Err(UploadError {
            code: ErrorCode::TooManyExamples,
            message: format!("{} examples, more than training.max_examples ({})", examples.len(), limits.max_examples),
        });
    }
    let mut hasher = Sha256::new();
    let mut test_marked = Vec::with_capacity(examples.len());
    for (i, e) in examples.iter().enumerate() {
        if e.text.trim().is_empty() {
            return Err(invalid(ErrorCode::EmptyText, format!("example {i} has an empty text")));
        }
        if e.text.len() > limits.max_text_bytes {
            return Err(invalid(
                ErrorCode::TextTooLong,
                format!(
                    "example {i} has {} bytes of text, more than training.max_text_bytes ({})",
                    e.text.len(),
                    limits.max_text_bytes
                ),
            ));
        }
        if e.labels.iter().any(|l| l.trim().is_empty() || l.len() > 200 || l == ABSTAIN) {
            return Err(invalid(ErrorCode::InvalidLabel,
                format!("example {i} has an empty label, one over 200 bytes, or {ABSTAIN:?} (what /classify answers below min_probability)"),
            ));
        }
        if e.text_pair.is_some() != examples[0].text_pair.is_some() {
            return Err(invalid(
                ErrorCode::InvalidPair,
                format!(
                    "example {i} and example 0 differ in having a text_pair: a pair head needs one on every example"
                ),
            ));
        }
        if let Some(pair) = &e.text_pair {
            if pair.trim().is_empty() || pair.len() > limits.max_text_bytes {
                return Err(invalid(
                    ErrorCode::InvalidPair,
                    format!("example {i} has an empty text_pair or one over training.max_text_bytes"),
                ));
            }
        }
        if !options.multi_label && e.labels.len() != 1 {
            return Err(invalid(
                ErrorCode::InvalidLabel,
                format!(
                    "example {i} has {} labels; one per example, or set options.multi_label (multi_label=true)",
                    e.labels.len()
                ),
            ));
        }
        let test = match e.split.as_deref() {
            None | Some("train") | Some("validation") => false,
            Some("test") => true,
            Some(other) => {
                return Err(invalid(
                    ErrorCode::InvalidSplit,
                    format!("example {i} has split {other:?}; use \"train\" or \"test\" (or leave it out)"),
                ))
            }
        };
        test_marked.push(test);
        let labels = e.labels.join("\u{1d}");
        for part in [e.text.as_str(), "\u{1f}", labels.as_str(), "\u{1f}", e.split.as_deref().unwrap_or(""), "\u{1e}"] {
            hasher.update(part.as_bytes());
        }
        if let Some(pair) = &e.text_pair {
            hasher.update(b"\x1d");
            hasher.update(pair.as_bytes());
        }
    }
    let paired = examples.first().is_some_and(|e| e.text_pair.is_some());
    if paired && options.multi_label {
        return Err(invalid(ErrorCode::InvalidOption, "a pair head takes one label per pair, not multi_label".into()));
    }
    let fingerprint = format!("{:x}", hasher.finalize());
    if options.multi_label {
        return prepare_multi_label(examples, &test_marked, options, limits, fingerprint);
    }
    let mut by_label: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in examples.iter().enumerate() {
        by_label.entry(e.labels[0].as_str()).or_default().push(i);
    }
    if by_label.len() < 2 {
        return Err(invalid(
            ErrorCode::TooFewLabels,
            format!("a classifier needs at least 2 labels, the examples have {}", by_label.len()),
        ));
    }
    if by_label.len() > limits.max_labels {
        return Err(UploadError {
            code: ErrorCode::TooManyLabels,
            message: format!("{} labels, more than training.max_labels ({})", by_label.len(), limits.max_labels),
        });
    }
    let minimum = limits.min_examples_per_label.max(options.cv_folds + 1);
    let scarce: Vec<String> = by_label
        .iter()
        .filter(|(_, rows)| rows.len() < minimum)
        .map(|(l, rows)| format!("{l:?} ({})", rows.len()))
        .collect();
    if !scarce.is_empty() {
        return Err(invalid(
            ErrorCode::TooFewExamples,
            format!("each label needs at least {minimum} examples; these have fewer: {}", scarce.join(", ")),
        ));
    }

    let labels: Vec<String> = by_label.keys().map(|l| l.to_string()).collect();
    let any_marked = test_marked.iter().any(|&t| t);
    let mut train_rows = Vec::new();
    let mut test_rows = Vec::new();
    let mut label_counts = Vec::new();
    for (index, (label, rows)) in by_label.iter().enumerate() {
        let (test, train): (Vec<usize>, Vec<usize>) = if any_marked {
            rows.iter().partition(|&&i| test_marked[i])
        } else {
            let mut ordered = rows.clone();
            ordered.sort_by_cached_key(|&i| split_key(&examples[i]));
            let held =
                ((rows.len() as f64 * options.test_fraction).round() as usize).clamp(1, rows.len() - options.cv_folds);
            let train = ordered.split_off(held);
            (ordered, train)
        };
        if train.len() < options.cv_folds {
            return Err(invalid(
                ErrorCode::TooFewExamples,
                format!(
                    "label {label:?} has {} examples outside the test split; cv_folds needs {}",
                    train.len(),
                    options.cv_folds
                ),
            ));
        }
        label_counts.push(LabelCount { label: label.to_string(), train: train.len(), test: test.len() });
        train_rows.extend(train.into_iter().map(|i| (i, index)));
        test_rows.extend(test.into_iter().map(|i| (i, index)));
    }
    if any_marked && test_rows.is_empty() {
        return Err(invalid(ErrorCode::InvalidSplit, "no example is in the test split".into()));
    }
    let test_source = if any_marked {
        "upload".to_string()
    } else {
        format!("stratified split of {} per label, by sha256 of the text", options.test_fraction)
    };
    let class_weight = class_weight_of(&options.class_weight, &labels)?;
    let warnings = label_count_warnings(&label_counts);
    let (train_texts, train_labels) = train_rows.iter().map(|&(i, l)| (examples[i].text.clone(), l)).unzip();
    let (test_texts, test_labels) = test_rows.iter().map(|&(i, l)| (examples[i].text.clone(), l)).unzip();
    Ok(TrainingSet {
        labels,
        train_texts,
        train_labels,
        test_texts,
        test_labels,
        label_counts,
        test_source,
        options,
        fingerprint,
        class_weight,
        pairs: paired.then(|| {
            let pair = |rows: &[(usize, usize)]| -> Vec<String> {
                rows.iter().map(|&(i, _)| examples[i].text_pair.clone().unwrap_or_default()).collect()
            };
            (pair(&train_rows), pair(&test_rows))
        }),
        train_rows: train_rows.iter().map(|&(i, _)| i).collect(),
        warnings,
        label_sets: None,
    })
}

/// What orders examples for the held-out split: the sha256 of the text (and
/// of its pair's second text), the same for the same examples in any order.
fn split_key(e: &Example) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(e.text.as_bytes());
    if let Some(pair) = &e.text_pair {
        hasher.update(b"\x1d");
        hasher.update(pair.as_bytes());
    }
    hasher.finalize().into()
}

/// The multi-label part of [`prepare`]: every label of the union needs
/// `training.min_examples_per_label` examples that carry it; the held-out part
/// is the rows marked `test`, else `test_fraction` of all rows by the sha256 of
/// the text (not stratified: a row has several labels); the rest is ordered the
/// same way, its folds by position.
fn prepare_multi_label(
    examples: Vec<Example>,
    test_marked: &[bool],
    options: ResolvedOptions,
    limits: &TrainingSettings,
    fingerprint: String,
) -> Result<TrainingSet, UploadError> {
    if options.class_weight != ClassWeightOption::None || options.time_budget.is_some() {
        return Err(invalid(
            ErrorCode::InvalidOption,
            "class_weight and time_budget_s apply to single-label heads".into(),
        ));
    }
    let names: std::collections::BTreeSet<&str> =
        examples.iter().flat_map(|e| e.labels.iter().map(String::as_str)).collect();
    let labels: Vec<String> = names.iter().map(|l| l.to_string()).collect();
    if labels.len() < 2 {
        return Err(invalid(
            ErrorCode::TooFewLabels,
            format!("a multi-label head needs at least 2 labels, the examples have {}", labels.len()),
        ));
    }
    if labels.len() > limits.max_labels {
        return Err(UploadError {
            code: ErrorCode::TooManyLabels,
            message: format!("{} labels, more than training.max_labels ({})", labels.len(), limits.max_labels),
        });
    }
    let sets: Vec<Vec<usize>> = examples
        .iter()
        .map(|e| {
            let mut set: Vec<usize> =
                e.labels.iter().map(|l| labels.binary_search(l).expect("a label of the union")).collect();
            set.sort_unstable();
            set.dedup();
            set
        })
        .collect();
    let minimum = limits.min_examples_per_label.max(options.cv_folds + 1);
    let count = |l: usize| sets.iter().filter(|s| s.contains(&l)).count();
    let scarce: Vec<String> =
        (0..labels.len()).filter(|&l| count(l) < minimum).map(|l| format!("{:?} ({})", labels[l], count(l))).collect();
    if !scarce.is_empty() {
        return Err(invalid(
            ErrorCode::TooFewExamples,
            format!(
                "each label needs at least {minimum} examples that carry it; these have fewer: {}",
                scarce.join(", ")
            ),
        ));
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_cached_key(|&i| Sha256::digest(examples[i].text.as_bytes()));
    let any_marked = test_marked.iter().any(|&t| t);
    let (test, train): (Vec<usize>, Vec<usize>) = if any_marked {
        order.iter().partition(|&&i| test_marked[i])
    } else {
        let held = ((examples.len() as f64 * options.test_fraction).round() as usize)
            .clamp(1, examples.len() - options.cv_folds);
        let train = order.split_off(held);
        (order, train)
    };
    if train.len() < options.cv_folds || test.is_empty() {
        return Err(invalid(
            ErrorCode::InvalidSplit,
            format!("{} examples to train on and {} held out", train.len(), test.len()),
        ));
    }
    let label_counts: Vec<LabelCount> = (0..labels.len())
        .map(|l| LabelCount {
            label: labels[l].clone(),
            train: train.iter().filter(|&&i| sets[i].contains(&l)).count(),
            test: test.iter().filter(|&&i| sets[i].contains(&l)).count(),
        })
        .collect();
    let test_source = if any_marked {
        "upload".to_string()
    } else {
        format!("{} of the examples, by sha256 of the text", options.test_fraction)
    };
    Ok(TrainingSet {
        warnings: label_count_warnings(&label_counts),
        train_texts: train.iter().map(|&i| examples[i].text.clone()).collect(),
        test_texts: test.iter().map(|&i| examples[i].text.clone()).collect(),
        label_sets: Some(LabelSets {
            train: train.iter().map(|&i| sets[i].clone()).collect(),
            test: test.iter().map(|&i| sets[i].clone()).collect(),
        }),
        train_labels: Vec::new(),
        test_labels: Vec::new(),
        labels,
        label_counts,
        test_source,
        options,
        fingerprint,
        class_weight: ClassWeight::None,
        train_rows: train,
        pairs: None,
    })
}

/// Held-out examples below which a label's precision and recall on them are
/// too uncertain to read (one example moves its recall by 10 points or more).
const MIN_HELD_OUT_PER_LABEL: usize = 10;

fn label_count_warnings(counts: &[LabelCount]) -> Vec<String> {
    counts
        .iter()
        .filter(|c| c.test < MIN_HELD_OUT_PER_LABEL)
        .map(|c| {
            format!(
                "label {:?} has {} held-out examples (fewer than {MIN_HELD_OUT_PER_LABEL}): its precision and recall \
                 on them are too uncertain to read; send more examples of it",
                c.label, c.test
            )
        })
        .collect()
}

/// The weights `option` asks for, by label index: per-label weights must
/// name labels of the upload and be positive, within [`MAX_WEIGHT_RATIO`] of each other.
pub fn class_weight_of(option: &ClassWeightOption, labels: &[String]) -> Result<ClassWeight, UploadError> {
    Ok(match option {
        ClassWeightOption::None => ClassWeight::None,
        ClassWeightOption::Balanced => ClassWeight::Balanced,
        ClassWeightOption::Auto => ClassWeight::Auto,
        ClassWeightOption::PerLabel(given) => {
            if let Some(unknown) = given.keys().find(|l| !labels.contains(l)) {
                return Err(invalid(
                    ErrorCode::InvalidOption,
                    format!("class_weight names label {unknown:?}, which no example has (labels: {labels:?})"),
                ));
            }
            let weights: Vec<f64> = labels.iter().map(|l| given.get(l).copied().unwrap_or(1.0)).collect();
            let (lightest, heaviest) =
                weights.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &w| (lo.min(w), hi.max(w)));
            if weights.iter().any(|w| !w.is_finite() || *w <= 0.0) || heaviest / lightest > MAX_WEIGHT_RATIO {
                return Err(invalid(
                    ErrorCode::InvalidOption,
                    format!(
                        "class_weight: weights must be positive numbers within {MAX_WEIGHT_RATIO}x of each other \
                         (labels left out weigh 1), got {given:?}"
                    ),
                ));
            }
            ClassWeight::Given(weights)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn examples(per_label: &[(&str, usize)]) -> Vec<Example> {
        per_label
            .iter()
            .flat_map(|&(label, n)| {
                (0..n).map(move |i| Example {
                    text: format!("{label} text {i}"),
                    labels: vec![label.into()],
                    split: None,
                    text_pair: None,
                })
            })
            .collect()
    }

    fn limits() -> TrainingSettings {
        Settings::defaults().training
    }

    #[test]
    fn stratified_split_independent_of_order_with_label_ordered_training_rows() {
        let all = examples(&[("a", 20), ("b", 10), ("c", 30)]);
        let p = prepare(all.clone(), &TrainingOptions::default(), &limits()).unwrap();
        assert_eq!(p.labels, vec!["a", "b", "c"]);
        let counts: Vec<(usize, usize)> = p.label_counts.iter().map(|c| (c.train, c.test)).collect();
        assert_eq!(counts, vec![(16, 4), (8, 2), (24, 6)]);
        assert!(p.train_labels.windows(2).all(|w| w[0] <= w[1]), "training rows ordered by label");
        let mut reversed = all;
        reversed.reverse();
        let q = prepare(reversed, &TrainingOptions::default(), &limits()).unwrap();
        let set = |v: &[String]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(set(&p.test_texts), set(&q.test_texts));
        assert!(p.test_source.contains("stratified"));
    }

    #[test]
    fn rows_marked_test_are_the_held_out_part() {
        let mut all = examples(&[("a", 10), ("b", 10)]);
        all[0].split = Some("test".into());
        all[15].split = Some("test".into());
        let p = prepare(all, &TrainingOptions::default(), &limits()).unwrap();
        assert_eq!(p.test_texts, vec!["a text 0", "b text 5"]);
        assert_eq!(p.train_texts.len(), 18);
        assert_eq!(p.test_source, "upload");
    }

    #[test]
    fn every_refusal_names_its_problem() {
        let code = |examples: Vec<Example>, options: TrainingOptions| {
            prepare(examples, &options, &limits()).unwrap_err().code.as_str()
        };
        assert_eq!(code(examples(&[("a", 10)]), TrainingOptions::default()), "too_few_labels");
        assert_eq!(code(examples(&[("a", 10), ("b", 3)]), TrainingOptions::default()), "too_few_examples");
        let mut blank = examples(&[("a", 10), ("b", 10)]);
        blank[3].text = "  ".into();
        assert_eq!(code(blank, TrainingOptions::default()), "empty_text");
        let mut odd = examples(&[("a", 10), ("b", 10)]);
        odd[1].split = Some("dev".into());
        assert_eq!(code(odd, TrainingOptions::default()), "invalid_split");
        let bad_alpha = TrainingOptions { alphas: Some(vec![f64::NAN]), ..TrainingOptions::default() };
        assert_eq!(code(examples(&[("a", 10), ("b", 10)]), bad_alpha), "invalid_option");
        let mut small = limits();
        small.max_examples = 5;
        let err = prepare(examples(&[("a", 10), ("b", 10)]), &TrainingOptions::default(), &small).unwrap_err();
        assert_eq!((err.code, err.code.status().as_u16()), (ErrorCode::TooManyExamples, 413));
        small = limits();
        small.max_labels = 2;
        let err =
            prepare(examples(&[("a", 10), ("b", 10), ("c", 10)]), &TrainingOptions::default(), &small).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyLabels);
    }
}
