//! Prometheus metrics, served at `GET /metrics`.
//!
//! One process-wide registry. The instruments are named exactly as the seeds name them
//! (§4.4.1, §5.2), with no exporter renaming in between.

use std::sync::LazyLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The daemon's instruments.
pub struct Metrics {
    registry: Registry,
    /// `rate_limit_hits_total{endpoint,result,policy}`: decisions; result is `allowed`,
    /// `limited`, `bypass` (policy = the bypass kind), `unavailable` (fail-closed while Redis
    /// is down) or `rejected` (invalid credentials).
    pub rate_limit_hits: IntCounterVec,
    /// `rate_limit_check_duration_seconds{endpoint}`: time to decide.
    pub rate_limit_check_duration: HistogramVec,
    /// `rate_limit_fallback_active`: 1 while Redis is configured but unreachable and the
    /// in-process fallback decides.
    pub rate_limit_fallback_active: IntGauge,
    /// `rate_limit_backend_switches_total{to}`: switches to `fallback` and back to `redis`.
    pub rate_limit_backend_switches: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let rate_limit_hits = IntCounterVec::new(
        Opts::new(
            "rate_limit_hits_total",
            "Rate limit decisions by endpoint, result and policy",
        ),
        &["endpoint", "result", "policy"],
    )?;
    let rate_limit_check_duration = HistogramVec::new(
        HistogramOpts::new(
            "rate_limit_check_duration_seconds",
            "Time to take a rate limit decision",
        )
        .buckets(vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
        ]),
        &["endpoint"],
    )?;
    let rate_limit_fallback_active = IntGauge::new(
        "rate_limit_fallback_active",
        "1 while Redis does not answer and the in-process fallback limits requests",
    )?;
    let rate_limit_backend_switches = IntCounterVec::new(
        Opts::new(
            "rate_limit_backend_switches_total",
            "Switches of the rate limiter between Redis and the in-process fallback",
        ),
        &["to"],
    )?;
    registry.register(Box::new(rate_limit_hits.clone()))?;
    registry.register(Box::new(rate_limit_check_duration.clone()))?;
    registry.register(Box::new(rate_limit_fallback_active.clone()))?;
    registry.register(Box::new(rate_limit_backend_switches.clone()))?;
    Ok(Metrics {
        registry,
        rate_limit_hits,
        rate_limit_check_duration,
        rate_limit_fallback_active,
        rate_limit_backend_switches,
    })
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| match build() {
    Ok(m) => m,
    // The names and labels above are constants; a failure here is a programming error
    // that every test run would show.
    Err(e) => panic!("metric definitions are invalid: {e}"),
});

/// The process-wide instruments.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The registry in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on invalid metric families, which `build` prevents.
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_seed_names() {
        let m = metrics();
        m.rate_limit_hits
            .with_label_values(&["prime-check", "allowed", "per-ip"])
            .inc();
        m.rate_limit_check_duration
            .with_label_values(&["prime-check"])
            .observe(0.0001);
        let text = render();
        assert!(text.contains(
            r#"rate_limit_hits_total{endpoint="prime-check",policy="per-ip",result="allowed"}"#
        ));
        assert!(
            text.contains(r#"rate_limit_check_duration_seconds_bucket{endpoint="prime-check""#)
        );
        assert!(text.contains("rate_limit_fallback_active 0"));
    }
}
