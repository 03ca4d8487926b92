//! The process's metrics, through the OpenTelemetry metrics API.
//!
//! One [`SdkMeterProvider`] per process reads every instrument into the Prometheus
//! [`registry`] (opentelemetry-prometheus), which `GET /metrics` encodes, and — when the
//! daemon adds one before the first instrument is made ([`add_reader`]) — pushes the same
//! instruments over OTLP. The exporter is told to rename nothing (no `_total` or unit
//! suffix, no scope labels, no `target_info`), so the names are the seeds' exactly.
//!
//! The instruments below wrap the OpenTelemetry ones in the shape the code had used with
//! the `prometheus` crate: a family with label names, `with_label_values(&[…])` for one
//! series, `inc`/`set`/`observe` on it. Label values are bounded by their callers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::{MeterProviderBuilder, SdkMeterProvider};
use prometheus::Registry;

static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// The Prometheus registry `GET /metrics` encodes.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

type AddReader = Box<dyn FnOnce(MeterProviderBuilder) -> MeterProviderBuilder + Send>;

/// Readers to add to the provider when it is made (the OTLP push).
static READERS: Mutex<Vec<AddReader>> = Mutex::new(Vec::new());
static MADE: AtomicBool = AtomicBool::new(false);

/// Adds a reader (e.g. an OTLP periodic reader) to the provider. False when the provider
/// was already made: call it before any instrument is touched.
pub fn add_reader(
    add: impl FnOnce(MeterProviderBuilder) -> MeterProviderBuilder + Send + 'static,
) -> bool {
    if MADE.load(Ordering::SeqCst) {
        return false;
    }
    match READERS.lock() {
        Ok(mut readers) => {
            readers.push(Box::new(add));
            true
        }
        Err(_) => false,
    }
}

static PROVIDER: LazyLock<SdkMeterProvider> = LazyLock::new(|| {
    MADE.store(true, Ordering::SeqCst);
    let mut builder = SdkMeterProvider::builder();
    match opentelemetry_prometheus::exporter()
        .with_registry(REGISTRY.clone())
        .without_counter_suffixes()
        .without_units()
        .without_target_info()
        .scope_info_enabled(false)
        .build()
    {
        Ok(exporter) => builder = builder.with_reader(exporter),
        Err(e) => tracing::error!(error = %e, "cannot serve the metrics on /metrics"),
    }
    let readers = READERS
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    for add in readers {
        builder = add(builder);
    }
    builder.build()
});

/// The meter every instrument of the process is made from.
pub fn meter() -> Meter {
    PROVIDER.meter("primed")
}

/// Pushes what the OTLP reader holds and stops it (at exit).
pub fn shutdown() {
    if MADE.load(Ordering::SeqCst)
        && let Err(e) = PROVIDER.shutdown()
    {
        tracing::debug!(error = %e, "metrics provider shutdown");
    }
}

fn attributes(keys: &[&'static str], values: &[&str]) -> Vec<KeyValue> {
    keys.iter()
        .zip(values)
        .map(|(k, v)| KeyValue::new(*k, (*v).to_string()))
        .collect()
}

/// A counter family with labels.
#[derive(Clone)]
pub struct CounterVec {
    counter: opentelemetry::metrics::Counter<u64>,
    keys: &'static [&'static str],
}

impl CounterVec {
    /// A counter `name` with the label names `keys`.
    pub fn new(name: &'static str, help: &'static str, keys: &'static [&'static str]) -> Self {
        Self {
            counter: meter().u64_counter(name).with_description(help).build(),
            keys,
        }
    }

    /// The series of these label values (in the order of the names).
    pub fn with_label_values(&self, values: &[&str]) -> Counter {
        Counter {
            counter: self.counter.clone(),
            attributes: attributes(self.keys, values),
        }
    }
}

/// One counter series.
#[derive(Clone)]
pub struct Counter {
    counter: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
}

impl Counter {
    /// A counter `name` without labels, shown at 0 from the start.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        let c = Self {
            counter: meter().u64_counter(name).with_description(help).build(),
            attributes: Vec::new(),
        };
        c.inc_by(0);
        c
    }

    /// Adds one.
    pub fn inc(&self) {
        self.inc_by(1);
    }

    /// Adds `n` (0 makes the series appear).
    pub fn inc_by(&self, n: u64) {
        self.counter.add(n, &self.attributes);
    }
}

/// A gauge family with labels (`i64` or `f64` values).
pub struct GaugeVec<T> {
    gauge: opentelemetry::metrics::Gauge<T>,
    keys: &'static [&'static str],
}

impl GaugeVec<i64> {
    /// A whole-number gauge `name` with the label names `keys`.
    pub fn new(name: &'static str, help: &'static str, keys: &'static [&'static str]) -> Self {
        Self {
            gauge: meter().i64_gauge(name).with_description(help).build(),
            keys,
        }
    }
}

impl GaugeVec<f64> {
    /// A gauge `name` with the label names `keys`.
    pub fn new_f64(name: &'static str, help: &'static str, keys: &'static [&'static str]) -> Self {
        Self {
            gauge: meter().f64_gauge(name).with_description(help).build(),
            keys,
        }
    }
}

impl<T: Clone> GaugeVec<T> {
    /// The series of these label values.
    pub fn with_label_values(&self, values: &[&str]) -> Gauge<T> {
        Gauge {
            gauge: self.gauge.clone(),
            attributes: attributes(self.keys, values),
        }
    }
}

/// One gauge series.
pub struct Gauge<T> {
    gauge: opentelemetry::metrics::Gauge<T>,
    attributes: Vec<KeyValue>,
}

impl Gauge<i64> {
    /// A whole-number gauge `name` without labels, at 0 from the start.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        let g = Self {
            gauge: meter().i64_gauge(name).with_description(help).build(),
            attributes: Vec::new(),
        };
        g.set(0);
        g
    }
}

impl Gauge<f64> {
    /// A gauge `name` without labels, at 0 from the start.
    pub fn new_f64(name: &'static str, help: &'static str) -> Self {
        let g = Self {
            gauge: meter().f64_gauge(name).with_description(help).build(),
            attributes: Vec::new(),
        };
        g.set(0.0);
        g
    }
}

impl<T: Copy> Gauge<T> {
    /// Sets the value.
    pub fn set(&self, value: T) {
        self.gauge.record(value, &self.attributes);
    }
}

/// A whole-number gauge moved up and down (connections held), at 0 from the start.
#[derive(Clone)]
pub struct UpDown {
    counter: opentelemetry::metrics::UpDownCounter<i64>,
}

impl UpDown {
    /// An up-down counter `name` without labels.
    pub fn new(name: &'static str, help: &'static str) -> Self {
        let c = Self {
            counter: meter()
                .i64_up_down_counter(name)
                .with_description(help)
                .build(),
        };
        c.counter.add(0, &[]);
        c
    }

    /// One more.
    pub fn inc(&self) {
        self.counter.add(1, &[]);
    }

    /// One fewer.
    pub fn dec(&self) {
        self.counter.add(-1, &[]);
    }
}

/// A histogram family with labels and bucket bounds.
#[derive(Clone)]
pub struct HistogramVec {
    histogram: opentelemetry::metrics::Histogram<f64>,
    keys: &'static [&'static str],
}

/// The `prometheus` crate's default buckets (seconds), kept for the histograms that used
/// them.
pub const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl HistogramVec {
    /// A histogram `name` with the label names `keys` and these bucket upper bounds.
    pub fn new(
        name: &'static str,
        help: &'static str,
        keys: &'static [&'static str],
        buckets: &[f64],
    ) -> Self {
        Self {
            histogram: meter()
                .f64_histogram(name)
                .with_description(help)
                .with_boundaries(buckets.to_vec())
                .build(),
            keys,
        }
    }

    /// The series of these label values.
    pub fn with_label_values(&self, values: &[&str]) -> Histogram {
        Histogram {
            histogram: self.histogram.clone(),
            attributes: attributes(self.keys, values),
        }
    }
}

/// One histogram series.
#[derive(Clone)]
pub struct Histogram {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl Histogram {
    /// A histogram `name` without labels.
    pub fn new(name: &'static str, help: &'static str, buckets: &[f64]) -> Self {
        Self {
            histogram: meter()
                .f64_histogram(name)
                .with_description(help)
                .with_boundaries(buckets.to_vec())
                .build(),
            attributes: Vec::new(),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        self.histogram.record(value, &self.attributes);
    }
}
