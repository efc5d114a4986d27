//! Logs go to stderr or to the file the config names, never to stdout.

use std::path::Path;

use tracing_subscriber::EnvFilter;

/// Sets up `tracing` once. A log file that cannot be opened is not a reason to
/// fail a container's networking, so we fall back to stderr and say so.
pub fn init(log_file: Option<&Path>, level: Option<&str>) {
    let filter =
        EnvFilter::try_new(level.unwrap_or("warn")).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    // Logs name containers, addresses and paths: not for every local user.
    let opened = log_file.map(|p| {
        std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create(true).append(true),
            0o600,
        )
        .open(p)
    });
    match opened {
        Some(Ok(file)) => {
            let _ = builder.with_writer(std::sync::Mutex::new(file)).try_init();
        }
        Some(Err(e)) => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            tracing::warn!(error = %e, "cannot open log file; logging to stderr");
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
        }
    }
}
