//! Structured logs: JSON lines when stdout is not a terminal (systemd, containers, files),
//! human-readable lines on a terminal. The level comes from `RUST_LOG` (default `info`).
//! Panics are logged as events too, so a panicking actor shows up in the same stream.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber and the panic hook. Call once, early.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = if std::io::stdout().is_terminal() {
        builder.compact().try_init()
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    };
    if installed.is_err() {
        // A subscriber is already installed (tests): keep it.
        return;
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
}
