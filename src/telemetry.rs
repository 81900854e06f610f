//! Logging: structured JSON for machines, readable text on a terminal, both on
//! stderr so that stdout stays free for command output.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LoggingSettings};

/// Keeps the OTLP exporter alive; dropping it sends the spans still buffered.
#[must_use = "dropping it stops the trace export"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            if let Err(e) = tracer.shutdown() {
                eprintln!("warning: could not send the last trace spans: {e}");
            }
        }
    }
}

/// Installs the global subscriber once (later calls, in tests, change nothing):
/// logs on stderr, and with `logging.otlp_endpoint` every span (one per
/// request, joined to the caller's trace by its `traceparent` header) exported
/// over OTLP/HTTP in batches.
pub fn init(settings: &LoggingSettings) -> Telemetry {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|e| {
        eprintln!("warning: logging.filter {:?} is invalid ({e}); using \"info,ort=warn\"", settings.filter);
        EnvFilter::new("info,ort=warn")
    });
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let tracer = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        match otlp_tracer(settings) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("warning: tracing export to {} is off: {e:#}", settings.otlp_endpoint);
                None
            }
        }
    };
    let traces = tracer.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("distilserve")));
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let installed = tracing_subscriber::registry().with(logs).with(traces).with(filter).try_init().is_ok();
    Telemetry { tracer: if installed { tracer } else { None } }
}

fn otlp_tracer(settings: &LoggingSettings) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&settings.otlp_endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

/// Reads the W3C trace context (`traceparent`, `tracestate`) of a request.
pub struct HeaderExtractor<'a>(pub &'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the caller's trace, when the request carries one.
pub fn join_callers_trace(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if headers.contains_key("traceparent") {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let _ = span.set_parent(parent);
    }
}

/// The text of a caught panic, for the log (never for a client).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}
