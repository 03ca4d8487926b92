//! Structured logs and traces.
//!
//! Logs: JSON lines when stdout is not a terminal (systemd, containers, files),
//! human-readable lines on a terminal. The level comes from `RUST_LOG` (default `info`).
//! Panics are logged as events too, so a panicking actor shows up in the same stream.
//!
//! Traces: every span of the pipeline (HTTP request, prime check, email) belongs to the
//! W3C trace its request started (see `actors::trace`); its `trace_id` and `span_id` are
//! fields of the span, so JSON log lines inside it carry them under `span`. With an OTLP
//! endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `JAEGER_HOST`), the spans are exported in
//! batches over `OTEL_EXPORTER_OTLP_PROTOCOL`: OTLP/HTTP (protobuf) to
//! `<endpoint>/v1/traces`, or OTLP/gRPC to the endpoint. The gRPC client needs a tokio
//! runtime where the batch processor's own thread has none: it gets a small one of its own
//! ([`OnRuntime`]).

use std::sync::Arc;

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

use crate::config::OtlpProtocol;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The installed tracing pipeline; [`Telemetry::shutdown`] flushes the spans not yet
/// exported.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporters (spans, and the last metrics
    /// push).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "could not flush the last traces");
        }
        actors::instruments::shutdown();
    }
}

/// The OTLP/HTTP traces URL for an endpoint given as `http://host:port`.
pub fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_string()
    } else {
        format!("{endpoint}/v1/traces")
    }
}

/// An exporter whose calls run on a tokio runtime of its own: the batch processor drives
/// exports from a plain thread, and the gRPC client (tonic, hyper) needs a reactor.
#[derive(Debug)]
pub struct OnRuntime<E> {
    inner: E,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl<E: SpanExporter> SpanExporter for OnRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let handle = self.runtime.handle().clone();
        handle.block_on(self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        let _entered = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _entered = self.runtime.enter();
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: opentelemetry_sdk::metrics::exporter::PushMetricExporter>
    opentelemetry_sdk::metrics::exporter::PushMetricExporter for OnRuntime<E>
{
    async fn export(
        &self,
        metrics: &opentelemetry_sdk::metrics::data::ResourceMetrics,
    ) -> OTelSdkResult {
        let handle = self.runtime.handle().clone();
        handle.block_on(self.inner.export(metrics))
    }

    fn force_flush(&self) -> OTelSdkResult {
        let _entered = self.runtime.enter();
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        let _entered = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
        self.inner.temporality()
    }
}

/// A gRPC exporter made by `build`, on a one-thread tokio runtime of its own.
fn on_grpc_runtime<E>(build: impl FnOnce() -> Result<E, String>) -> Result<OnRuntime<E>, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-grpc")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the gRPC exporter's runtime: {e}"))?;
    let inner = {
        let _entered = runtime.enter();
        build()?
    };
    Ok(OnRuntime {
        inner,
        runtime: Arc::new(runtime),
    })
}

/// Pushes every instrument to `endpoint` over OTLP every `interval`, beside `/metrics`.
/// Before any instrument is made.
pub fn push_metrics(
    endpoint: &str,
    protocol: OtlpProtocol,
    interval: std::time::Duration,
) -> Result<(), String> {
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::metrics::PeriodicReader;
    let added = match protocol {
        OtlpProtocol::HttpProtobuf => {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .build()
                .map_err(|e| e.to_string())?;
            let reader = PeriodicReader::builder(exporter)
                .with_interval(interval)
                .build();
            actors::instruments::add_reader(move |b| b.with_reader(reader))
        }
        OtlpProtocol::Grpc => {
            let exporter = on_grpc_runtime(|| {
                opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.trim_end_matches('/'))
                    .build()
                    .map_err(|e| e.to_string())
            })?;
            let reader = PeriodicReader::builder(exporter)
                .with_interval(interval)
                .build();
            actors::instruments::add_reader(move |b| b.with_reader(reader))
        }
    };
    if added {
        Ok(())
    } else {
        Err("the metrics were already in use; push them from the start".into())
    }
}

/// `builder` with the OTLP exporter for `endpoint` over `protocol`, or unchanged with why
/// that exporter cannot be made.
fn with_exporter(
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    endpoint: &str,
    protocol: OtlpProtocol,
) -> (
    opentelemetry_sdk::trace::TracerProviderBuilder,
    Option<String>,
) {
    use opentelemetry_otlp::WithExportConfig;
    match protocol {
        OtlpProtocol::HttpProtobuf => match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url(endpoint))
            .build()
        {
            Ok(exporter) => (builder.with_batch_exporter(exporter), None),
            Err(e) => (builder, Some(e.to_string())),
        },
        OtlpProtocol::Grpc => match on_grpc_runtime(|| {
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.trim_end_matches('/'))
                .build()
                .map_err(|e| e.to_string())
        }) {
            Ok(exporter) => (builder.with_batch_exporter(exporter), None),
            Err(e) => (builder, Some(e)),
        },
    }
}

/// Where spans go, as the start-up log says it.
fn destination(endpoint: &str, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::HttpProtobuf => traces_url(endpoint),
        OtlpProtocol::Grpc => endpoint.trim_end_matches('/').to_string(),
    }
}

/// Installs the global subscriber (logs, and spans for `otlp_endpoint` when given, sent
/// over `protocol`) and the panic hook. Call once, early, outside any tokio runtime.
pub fn init(otlp_endpoint: Option<&str>, protocol: OtlpProtocol) -> Telemetry {
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name("primed").build());
    let mut export_error = None;
    if let Some(endpoint) = otlp_endpoint {
        (builder, export_error) = with_exporter(builder, endpoint, protocol);
    }
    let provider = builder.build();
    // Without an exporter the spans still get ids (for the logs) and are then dropped.
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("primed"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = if std::io::stdout().is_terminal() {
        registry
            .with(tracing_subscriber::fmt::layer().compact())
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init()
    };
    let telemetry = Telemetry { provider };
    if installed.is_err() {
        // A subscriber is already installed (tests): keep it.
        return telemetry;
    }
    match (otlp_endpoint, export_error) {
        (Some(endpoint), None) => tracing::info!(
            url = %destination(endpoint, protocol),
            protocol = protocol.name(),
            "exporting traces over OTLP"
        ),
        (Some(endpoint), Some(e)) => {
            tracing::warn!(endpoint, error = %e, "cannot export traces; continuing without")
        }
        (None, _) => {}
    }
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(panic = %payload, location = location.as_deref(), "panic");
    }));
    telemetry
}
