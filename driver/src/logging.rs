//! hclog-style JSON logging on stderr, the format go-plugin's host parses
//! (one object per line, string `@level`, `@message`, `@timestamp` with
//! exactly six fractional digits and `Z`, plus `@module` and the event's
//! fields).
//!
//! Write errors are swallowed: once the Nomad agent is gone, stderr is a
//! broken pipe and a logger that panicked on `EPIPE` would kill the tasks'
//! supervisor with it.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// Longest `@message` written; the host splits lines over 64 KiB and logs
/// the pieces as raw DEBUG text.
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// The `@timestamp` layout: Go's `2006-01-02T15:04:05.000000Z07:00` in UTC.
const TIMESTAMP_FORMAT: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
);

/// Installs the hclog JSON layer on stderr as the global subscriber: this
/// crate logs from DEBUG, its dependencies from INFO.
pub fn init_stderr(module: &'static str) {
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("elide_driver", Level::DEBUG)
        .with_target("nomad_driver_elide", Level::DEBUG);
    // Fails only if a subscriber is already installed, which is harmless.
    let _ = tracing_subscriber::registry()
        .with(HclogLayer::new(module, std::io::stderr).with_filter(filter))
        .try_init();
}

/// A `tracing` layer writing hclog JSON lines to whatever `make_writer` gives.
pub struct HclogLayer<W> {
    module: &'static str,
    make_writer: W,
}

impl<W> HclogLayer<W> {
    /// A layer tagging every line with `@module = module`.
    pub fn new(module: &'static str, make_writer: W) -> Self {
        HclogLayer {
            module,
            make_writer,
        }
    }
}

impl<S, W> Layer<S> for HclogLayer<W>
where
    S: Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        let timestamp = time::OffsetDateTime::now_utc()
            .format(TIMESTAMP_FORMAT)
            .unwrap_or_default();
        let line = hclog_line(
            *event.metadata().level(),
            &fields.message,
            self.module,
            &timestamp,
            fields.fields,
        );
        let _ = self.make_writer.make_writer().write_all(line.as_bytes());
    }
}

/// One hclog JSON line (with the trailing newline). `fields` never override
/// the `@` keys.
pub fn hclog_line(
    level: Level,
    message: &str,
    module: &str,
    timestamp: &str,
    fields: Map<String, Value>,
) -> String {
    let mut object = fields;
    object.insert("@level".into(), Value::String(level_name(level).into()));
    object.insert("@message".into(), Value::String(truncate(message).into()));
    object.insert("@module".into(), Value::String(module.into()));
    object.insert("@timestamp".into(), Value::String(timestamp.into()));
    let mut line = Value::Object(object).to_string();
    line.push('\n');
    line
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

fn truncate(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Collects an event's `message` and its other fields as JSON values.
#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: Map<String, Value>,
}

impl FieldCollector {
    fn insert(&mut self, field: &Field, value: Value) {
        if field.name() == "message" {
            self.message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
        } else {
            self.fields.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for FieldCollector {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.insert(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.insert(field, Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    /// A writer that always fails, like stderr after the agent died, and
    /// counts the writes it was asked for.
    #[derive(Clone, Default)]
    struct BrokenPipe(Arc<std::sync::atomic::AtomicUsize>);

    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_become_hclog_json_lines() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::registry().with(HclogLayer::new("elide", move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(task_id = "a/b/c", attempt = 3, "daemon \"slow\"");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = text
            .strip_suffix('\n')
            .expect("one newline-terminated line");
        assert!(!line.contains('\n'));
        let json: Value = serde_json::from_str(line).unwrap();
        assert_eq!(json["@level"], "warn");
        assert_eq!(json["@message"], "daemon \"slow\"");
        assert_eq!(json["@module"], "elide");
        assert_eq!(json["task_id"], "a/b/c");
        assert_eq!(json["attempt"], 3);
        let ts = json["@timestamp"].as_str().unwrap();
        // 2026-05-04T10:11:12.123456Z
        assert_eq!(ts.len(), 27, "{ts}");
        assert_eq!(&ts[19..20], ".");
        assert!(ts[20..26].chars().all(|c| c.is_ascii_digit()), "{ts}");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn write_errors_are_swallowed() {
        let pipe = BrokenPipe::default();
        let writer = pipe.clone();
        let subscriber =
            tracing_subscriber::registry().with(HclogLayer::new("elide", move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("nobody is listening");
            // The failed write neither panicked nor stopped logging.
            tracing::error!("still nobody");
        });
        assert_eq!(
            pipe.0.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "each event was offered to the writer once"
        );
    }

    #[test]
    fn fields_cannot_replace_the_reserved_keys() {
        let mut fields = Map::new();
        fields.insert("@level".into(), Value::from(7));
        let line = hclog_line(Level::INFO, "m", "elide", "t", fields);
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["@level"], "info");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let message = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = truncate(&message);
        assert!(cut.len() <= MAX_MESSAGE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
