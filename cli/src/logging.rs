//! Logs through tracing to stderr. Under systemd (JOURNAL_STREAM set) each line starts with a syslog
//! priority prefix (`<3>` … `<7>`) and carries no timestamp or colour, so journald files it at the right
//! level; on a terminal it is the usual human format. The level comes from `RUST_LOG` when set, else
//! from the config's `[logging] level`, else `info`.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `config_level` is the config file's level, if any. The format
/// follows the environment (journald when JOURNAL_STREAM is set); see [`init_with`] to force one.
pub fn init(config_level: Option<&str>) {
    init_with(config_level, None)
}

/// Like [`init`], with the config's `[logging] format` when it sets one.
pub fn init_with(config_level: Option<&str>, format: Option<crate::config::LogFormat>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.is_empty() => EnvFilter::new(s),
        _ => EnvFilter::new(config_level.unwrap_or("info")),
    };
    use crate::config::LogFormat;
    let format = format.unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal());
    // A second init (tests calling commands twice) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Journald => builder.event_format(JournaldFormat).try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// `<prio>target: message key=value` — what journald's SyslogLevelPrefix parsing expects.
struct JournaldFormat;

fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

impl<S, N> FormatEvent<S, N> for JournaldFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        write!(w, "<{}>{}: ", syslog_priority(meta.level()), meta.target())?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                write!(w, "{}", span.name())?;
                if let Some(fields) = span.extensions().get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                    if !fields.is_empty() {
                        write!(w, "{{{fields}}}")?;
                    }
                }
                w.write_str(": ")?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
