//! Logging set-up (tracing-subscriber, to standard error): level filter from `CALLFABRIC_LOG`
//! (default `info`), text or JSON (`--log-format json`, or `CALLFABRIC_LOG_FORMAT=json`: one
//! object per line for a log shipper), ANSI colours only when standard error is a terminal
//! (and `NO_COLOR` is unset), so log files never carry escape codes.
//!
//! Security events (failed authentications, bans) are WARN lines of target `security` whose
//! message starts with `SECURITY ` (docs/SECURITY.md; `examples/fail2ban/`).

use std::io::IsTerminal as _;

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-12-06T21:30:50.123456Z  WARN security: SECURITY auth-failed src=…`
    #[default]
    Text,
    /// `{"timestamp":"…","level":"WARN","fields":{"message":"SECURITY auth-failed …"},…}`
    Json,
}

/// The format asked for: the command line's, else `CALLFABRIC_LOG_FORMAT`, else text.
fn format(cli: Option<LogFormat>) -> LogFormat {
    cli.or_else(
        || match std::env::var("CALLFABRIC_LOG_FORMAT").ok()?.as_str() {
            "json" => Some(LogFormat::Json),
            "text" => Some(LogFormat::Text),
            _ => None,
        },
    )
    .unwrap_or_default()
}

/// Installs the global subscriber.
pub fn init(cli: Option<LogFormat>) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALLFABRIC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format(cli) {
        LogFormat::Json => builder.json().with_ansi(false).init(),
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init()
        }
    }
}
