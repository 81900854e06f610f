//! Labelled text data sets on disk: a folder with `<split>.jsonl` (one
//! `{"text": ..., "label": ...}` per line) or `<split>.csv` (header with `text`
//! and `label` columns), and optionally `meta.json` naming the labels in order.
//! Labels may be indices into those names or the names themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct Split {
    pub name: String,
    pub texts: Vec<String>,
    /// Index into [`Dataset::labels`] for each text.
    pub labels: Vec<usize>,
    /// sha256 of the split file and the label names: keys feature caches.
    pub fingerprint: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub labels: Vec<String>,
}

#[derive(Deserialize)]
struct Meta {
    labels: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLabel {
    Index(usize),
    Name(String),
    /// Several labels (JSONL rows of a multi-label upload).
    Names(Vec<String>),
}

impl RawLabel {
    /// The labels as the file wrote them: names, or indices as digits.
    fn written(self) -> Vec<String> {
        match self {
            RawLabel::Index(i) => vec![i.to_string()],
            RawLabel::Name(n) => vec![n],
            RawLabel::Names(names) => names,
        }
    }
}

struct RawRow {
    text: String,
    label: RawLabel,
    /// `split` column or field, when the file has one (uploads: `train`/`test`).
    split: Option<String>,
    /// Other classifiers' labels for the text, by name (`POST
    /// /heads/{name}/evaluate`): a CSV's other columns, a JSONL row's `predictions`.
    predictions: BTreeMap<String, String>,
    /// The second text of a pair (`text_pair` column or field).
    text_pair: Option<String>,
}

/// How uploaded examples are written: the two formats of a split file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowFormat {
    Jsonl,
    Csv,
}

/// One uploaded example: the label as written (a name, or an index as digits),
/// and its `split` when given.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledRow {
    pub text: String,
    /// One label, or several (a JSONL list); a CSV cell is one string.
    pub labels: Vec<String>,
    pub split: Option<String>,
    /// See `RawRow::predictions`.
    pub predictions: BTreeMap<String, String>,
    pub text_pair: Option<String>,
}

/// How a prediction given as a list is written (it is then no label of the
/// head, and refused as such).
const PREDICTION_LIST_SEPARATOR: &str = "|";

/// Why uploaded rows were not read.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    /// More than the most rows allowed: reading stopped at the first one over.
    #[error("more than {0} rows")]
    TooMany(usize),
    #[error(transparent)]
    Invalid(#[from] anyhow::Error),
}

/// Parses uploaded rows in the formats of a split file (see the module doc);
/// errors name the line or row. Read one at a time and stopped at the first
/// row past `max_rows`: a body of many tiny rows never becomes more than `max_rows` rows.
pub fn parse_rows(text: &str, format: RowFormat, max_rows: usize) -> Result<Vec<LabelledRow>, RowsError> {
    let rows = match format {
        RowFormat::Jsonl => read_jsonl("upload", text, max_rows)?,
        RowFormat::Csv => read_csv("upload", text, max_rows)?,
    };
    Ok(rows
        .into_iter()
        .map(|r| LabelledRow {
            text: r.text,
            labels: r.label.written(),
            split: r.split,
            predictions: r.predictions,
            text_pair: r.text_pair,
        })
        .collect())
}

impl Dataset {
    /// Opens a data set folder. Label names come from `meta.json`, else from the
    /// string labels of the train split (sorted), else from the largest index.
    pub fn open(dir: &Path) -> anyhow::Result<Dataset> {
        if !dir.is_dir() {
            bail!("data set folder {} does not exist (for Rotten Tomatoes: scripts/setup.sh)", dir.display());
        }
        let meta = dir.join("meta.json");
        let labels = if meta.is_file() {
            let text = std::fs::read_to_string(&meta).with_context(|| format!("cannot read {}", meta.display()))?;
            let meta: Meta = serde_json::from_str(&text).with_context(|| format!("{} is not valid", meta.display()))?;
            meta.labels
        } else {
            let rows = read_rows(&split_path(dir, "train")?)?;
            let names: BTreeSet<String> = rows
                .iter()
                .filter_map(|r| match &r.label {
                    RawLabel::Name(n) => Some(n.clone()),
                    RawLabel::Index(_) | RawLabel::Names(_) => None,
                })
                .collect();
            if !names.is_empty() {
                names.into_iter().collect()
            } else {
                let max =
                    rows.iter().filter_map(|r| if let RawLabel::Index(i) = r.label { Some(i) } else { None }).max();
                (0..=max.unwrap_or(0)).map(|i| i.to_string()).collect()
            }
        };
        if labels.len() < 2 {
            bail!("{}: a classification data set needs at least 2 labels, found {:?}", dir.display(), labels);
        }
        Ok(Dataset { dir: dir.to_path_buf(), labels })
    }

    pub fn has_split(&self, name: &str) -> bool {
        split_path(&self.dir, name).is_ok()
    }

    /// The splits `asked` for, or when none are, train, validation and test where present.
    pub fn splits_or_all(&self, asked: &[String]) -> Vec<String> {
        if asked.is_empty() {
            ["train", "validation", "test"].iter().filter(|s| self.has_split(s)).map(|s| s.to_string()).collect()
        } else {
            asked.to_vec()
        }
    }

    pub fn split(&self, name: &str) -> anyhow::Result<Split> {
        let path = split_path(&self.dir, name)?;
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut hasher = Sha256::new();
        hasher.update(&bytes);
        hasher.update(self.labels.join("\n").as_bytes());
        let fingerprint = format!("{:x}", hasher.finalize());
        let rows = read_rows(&path)?;
        let mut texts = Vec::with_capacity(rows.len());
        let mut labels = Vec::with_capacity(rows.len());
        for (line, row) in rows.into_iter().enumerate() {
            let index = match &row.label {
                RawLabel::Index(i) if *i < self.labels.len() => *i,
                RawLabel::Names(_) => {
                    bail!("{} row {}: several labels; a data set split has one per row", path.display(), line + 1)
                }
                RawLabel::Name(n) => self.labels.iter().position(|l| l == n).ok_or_else(|| {
                    anyhow!("{} row {}: label {n:?} is not one of {:?}", path.display(), line + 1, self.labels)
                })?,
                RawLabel::Index(i) => {
                    bail!(
                        "{} row {}: label {i} is out of range for {} labels",
                        path.display(),
                        line + 1,
                        self.labels.len()
                    )
                }
            };
            texts.push(row.text);
            labels.push(index);
        }
        if texts.is_empty() {
            bail!("{} has no rows", path.display());
        }
        Ok(Split { name: name.to_string(), texts, labels, fingerprint, path })
    }
}

fn split_path(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        bail!("invalid split name {name:?}");
    }
    for ext in ["jsonl", "csv"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no split {name:?} in {} (expected {name}.jsonl or {name}.csv)", dir.display())
}

fn read_rows(path: &Path) -> anyhow::Result<Vec<RawRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8", path.display()))?;
    let shown = path.display().to_string();
    if path.extension().is_some_and(|e| e == "csv") {
        read_csv(&shown, &text, usize::MAX).map_err(anyhow::Error::from)
    } else {
        read_jsonl(&shown, &text, usize::MAX).map_err(anyhow::Error::from)
    }
}

fn read_jsonl(shown: &str, text: &str, max_rows: usize) -> Result<Vec<RawRow>, RowsError> {
    #[derive(Deserialize)]
    struct Row {
        text: String,
        label: RawLabel,
        #[serde(default)]
        split: Option<String>,
        #[serde(default)]
        predictions: BTreeMap<String, RawLabel>,
        #[serde(default)]
        text_pair: Option<String>,
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if rows.len() == max_rows {
            return Err(RowsError::TooMany(max_rows));
        }
        let row: Row = serde_json::from_str(line).with_context(|| {
            format!("{shown} line {}: expected {{\"text\": string, \"label\": int or string}}", i + 1)
        })?;
        let predictions = row
            .predictions
            .into_iter()
            .map(|(name, label)| (name, label.written().join(PREDICTION_LIST_SEPARATOR)))
            .collect();
        rows.push(RawRow { text: row.text, label: row.label, split: row.split, predictions, text_pair: row.text_pair });
    }
    Ok(rows)
}

fn read_csv(shown: &str, text: &str, max_rows: usize) -> Result<Vec<RawRow>, RowsError> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().with_context(|| format!("{shown}: no header row"))?.clone();
    let position = |name: &str| headers.iter().position(|h| h.trim() == name);
    let column = |name: &str| position(name).ok_or_else(|| anyhow!("{shown}: no `{name}` column in the header"));
    let (text_col, label_col, split_col) = (column("text")?, column("label")?, position("split"));
    let pair_col = position("text_pair");
    let others: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(i, _)| ![Some(text_col), Some(label_col), split_col, pair_col].contains(&Some(*i)))
        .map(|(i, h)| (i, h.trim().to_string()))
        .collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        if rows.len() == max_rows {
            return Err(RowsError::TooMany(max_rows));
        }
        let record = record.with_context(|| format!("{shown} row {}", i + 2))?;
        let text = record.get(text_col).unwrap_or_default().to_string();
        let raw = record.get(label_col).unwrap_or_default().trim();
        let label = raw.parse::<usize>().map(RawLabel::Index).unwrap_or_else(|_| RawLabel::Name(raw.to_string()));
        let split = split_col.and_then(|c| record.get(c)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let predictions = others
            .iter()
            .map(|(c, name)| (name.clone(), record.get(*c).unwrap_or_default().trim().to_string()))
            .collect();
        let text_pair = pair_col.and_then(|c| record.get(c)).map(str::to_string);
        rows.push(RawRow { text, label, split, predictions, text_pair });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_stop_at_the_first_row_past_the_limit() {
        let csv = format!("text,label\n{}", "x,a\n".repeat(10));
        assert_eq!(parse_rows(&csv, RowFormat::Csv, 10).unwrap().len(), 10);
        assert!(matches!(parse_rows(&csv, RowFormat::Csv, 9), Err(RowsError::TooMany(9))));
        let jsonl = "{\"text\": \"x\", \"label\": \"a\"}\n".repeat(10);
        assert_eq!(parse_rows(&jsonl, RowFormat::Jsonl, 10).unwrap().len(), 10);
        assert!(matches!(parse_rows(&jsonl, RowFormat::Jsonl, 3), Err(RowsError::TooMany(3))));
        // A bad row past the limit is never read: the limit answers first.
        let broken = format!("{jsonl}not json\n");
        assert!(matches!(parse_rows(&broken, RowFormat::Jsonl, 5), Err(RowsError::TooMany(5))));
        assert!(matches!(parse_rows(&broken, RowFormat::Jsonl, 50), Err(RowsError::Invalid(_))));
    }

    #[test]
    fn jsonl_with_meta_and_csv_with_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("meta.json"), r#"{"labels": ["neg", "pos"]}"#).unwrap();
        std::fs::write(
            dir.path().join("train.jsonl"),
            "{\"text\": \"good\", \"label\": 1}\n{\"text\": \"bad\", \"label\": \"neg\"}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("test.csv"), "label,text\npos,\"great, really\"\n0,awful\n").unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        assert_eq!(ds.labels, vec!["neg", "pos"]);
        let train = ds.split("train").unwrap();
        assert_eq!(
            (train.texts.clone(), train.labels.clone()),
            (vec!["good".to_string(), "bad".to_string()], vec![1, 0])
        );
        let test = ds.split("test").unwrap();
        assert_eq!(test.texts, vec!["great, really", "awful"]);
        assert_eq!(test.labels, vec![1, 0]);
        assert!(!ds.has_split("validation"));
    }

    #[test]
    fn label_names_from_strings_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("train.jsonl"),
            "{\"text\": \"a\", \"label\": \"b\"}\n{\"text\": \"c\", \"label\": \"a\"}\n",
        )
        .unwrap();
        let ds = Dataset::open(dir.path()).unwrap();
        assert_eq!(ds.labels, vec!["a", "b"]);
        std::fs::write(dir.path().join("bad.jsonl"), "{\"text\": \"a\", \"label\": \"zzz\"}\n").unwrap();
        let err = ds.split("bad").unwrap_err().to_string();
        assert!(err.contains("zzz") && err.contains("row 1"), "{err}");
        std::fs::write(dir.path().join("broken.jsonl"), "{\"text\": 1}\n").unwrap();
        let err = format!("{:#}", ds.split("broken").unwrap_err());
        assert!(err.contains("line 1"), "{err}");
        assert!(ds.split("../etc").is_err());
    }
}
