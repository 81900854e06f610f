//! The batching queue on the tiny DistilBERT graph: refusal when full, work
//! whose deadline passed or whose caller left is not computed, and 503 with
//! Retry-After over HTTP.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{error_of, fixture, settings_for, TestServer};
use distilserve::batching::{BatchError, Batcher, BatcherConfig};
use distilserve::model::Model;
use distilserve::tokenize::Tokenized;
use serde_json::json;

fn batcher(config: BatcherConfig) -> (Arc<Batcher>, Vec<Tokenized>) {
    let model = Model::load(&settings_for(&fixture("tiny-distilbert")).model, 1).unwrap();
    let seqs = model.tokenizer.encode_all(&["a gripping, funny film", "dull", "the plot is too slow"], true).unwrap();
    (Arc::new(Batcher::start(model.sessions, model.info, config)), seqs)
}

fn config() -> BatcherConfig {
    BatcherConfig {
        max_batch_size: 8,
        max_batch_tokens: 512,
        max_wait: Duration::ZERO,
        queue_capacity: 16,
        call_overhead_tokens: 32,
    }
}

#[tokio::test]
async fn results_come_back_in_order_and_are_counted() {
    let (batcher, seqs) = batcher(config());
    let deadline = Instant::now() + Duration::from_secs(10);
    let rows = batcher.run(seqs.clone(), deadline).await.unwrap().rows;
    assert_eq!(rows.iter().map(|r| r.rows).collect::<Vec<_>>(), seqs.iter().map(|s| s.len()).collect::<Vec<_>>());
    let stats = batcher.stats();
    assert_eq!((stats.sequences, stats.skipped), (3, 0));
    assert!(stats.batches >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_each_get_their_own_rows_in_order() {
    // Texts of many lengths from 40 callers at once, batched together and
    // regrouped by length: each caller must get exactly what it gets alone.
    let model = Model::load(&settings_for(&fixture("tiny-distilbert")).model, 2).unwrap();
    let tokenizer = model.tokenizer.clone();
    let batcher =
        Arc::new(Batcher::start(model.sessions, model.info, BatcherConfig { queue_capacity: 1000, ..config() }));
    let words =
        ["good", "a long and winding story about nothing much", "bad", "the plot is slow but the cast is great"];
    let requests: Vec<Vec<Tokenized>> = (0..40)
        .map(|i| {
            let texts: Vec<String> = (0..1 + i % 5).map(|j| words[(i + j) % 4].repeat(1 + (i * j) % 3)).collect();
            tokenizer.encode_all(&texts, true).unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut alone = Vec::new();
    for seqs in &requests {
        alone.push(batcher.run(seqs.clone(), deadline).await.unwrap().rows);
    }
    let calls_alone = batcher.stats().batches;
    let handles: Vec<_> = requests
        .iter()
        .cloned()
        .map(|seqs| {
            let b = batcher.clone();
            tokio::spawn(async move { b.run(seqs, deadline).await.unwrap().rows })
        })
        .collect();
    for (handle, expected) in handles.into_iter().zip(&alone) {
        let got = handle.await.unwrap();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(expected) {
            assert_eq!((g.rows, g.cols), (e.rows, e.cols));
            let diff = g.data.iter().zip(&e.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-4, "rows differ by {diff}");
        }
    }
    // Concurrency really did batch: fewer calls than the requests made alone.
    let calls_together = batcher.stats().batches - calls_alone;
    assert!(calls_together < calls_alone, "{calls_together} calls together vs {calls_alone} alone");
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let (batcher, seqs) = batcher(BatcherConfig { queue_capacity: 2, ..config() });
    let started = Instant::now();
    let err = batcher.run(seqs, Instant::now() + Duration::from_secs(10)).await.unwrap_err();
    assert_eq!(err, BatchError::QueueFull { capacity: 2 });
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(batcher.stats().sequences, 0);
}

#[tokio::test]
async fn work_past_its_deadline_is_not_computed() {
    // The worker waits 300 ms to fill a batch, so the 50 ms deadline passes first.
    let (batcher, seqs) = batcher(BatcherConfig { max_wait: Duration::from_millis(300), ..config() });
    let err = batcher.run(seqs, Instant::now() + Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(err, BatchError::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = batcher.stats();
    assert_eq!((stats.sequences, stats.skipped), (0, 3));
}

#[tokio::test]
async fn work_of_a_caller_that_left_is_dropped() {
    let (batcher, seqs) = batcher(BatcherConfig { max_wait: Duration::from_millis(300), ..config() });
    let b = batcher.clone();
    let caller = tokio::spawn(async move { b.run(seqs, Instant::now() + Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller.abort(); // what axum does to a handler whose client disconnected
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stats = batcher.stats();
    assert_eq!((stats.sequences, stats.skipped), (0, 3));
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.batching.queue_capacity = 2;
    let server = TestServer::start(settings).await;
    let response = server.post_json("/embed", json!({"inputs": ["a", "b", "c"]})).await;
    assert_eq!(response.headers()["retry-after"], "1");
    let (status, code, _) = error_of(response).await;
    assert_eq!((status, code.as_str()), (503, "overloaded"));
    // Work that fits is still served.
    assert_eq!(server.post_json("/embed", json!({"inputs": ["a", "b"]})).await.status(), 200);
    let metrics = server.get("/metrics").await.text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "distilserve_refused_requests_total 1"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn a_passed_deadline_answers_504() {
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.server.request_timeout_ms = 20;
    settings.batching.max_wait_ms = 300;
    let server = TestServer::start(settings).await;
    let (status, code, _) = error_of(server.post_json("/embed", json!({"inputs": "a"})).await).await;
    assert_eq!((status, code.as_str()), (504, "deadline_exceeded"));
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_is_not_computed() {
    use tokio::io::AsyncWriteExt;
    // The worker waits 400 ms to fill a batch; the client hangs up after 50 ms.
    let mut settings = settings_for(&fixture("tiny-distilbert"));
    settings.batching.max_wait_ms = 400;
    let server = TestServer::start(settings).await;
    let body = json!({"inputs": ["one", "two", "three"]}).to_string();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "POST /embed HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let metrics = server.get("/metrics").await.text().await.unwrap();
    let value = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} missing"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("distilserve_skipped_sequences_total"), 3, "{metrics}");
    assert_eq!(value("distilserve_sequences_total"), 0);
    server.stop().await;
}
