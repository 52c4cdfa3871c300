//! The audit trail's writer: one line per state-changing call, written by a
//! thread of its own so that a slow or stalled log pipe never stalls a Tokio
//! worker (and with it every call on that worker).
//!
//! "An answered call is an audited call" is kept by reserving the line's
//! place in a bounded queue when the call starts ([`Trail::reserve`]), before
//! anything can be sent to Feishu, and queueing the line before the answer
//! goes back ([`Slot::send`] never waits: its place is already held). When
//! the queue is full the call is refused at once, with nothing sent.
//!
//! The binary (whose subscriber `telemetry::init` installs) writes the line
//! itself, as the JSON subscriber would have written it, without the general
//! JSON formatter: the audit line is on every call's path (issue 16). Used as
//! a library, under a subscriber of its embedder's, the writer thread emits
//! the line through that subscriber instead, inside the call's span.

use std::{
    io::Write as _,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use opentelemetry::trace::TraceId;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot};

use crate::telemetry::AUDIT_TARGET;

/// Where the writer thread puts the lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Hand-built JSON lines on stderr, the stream (and the shape) of the
    /// binary's other log lines.
    Stderr,
    /// The process's `tracing` subscriber, as an INFO event on target
    /// `audit` inside the call's span.
    Subscriber,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Chooses the sink of every trail started afterwards (`telemetry::init`
/// chooses stderr, since its subscriber writes JSON lines there). Only the
/// first choice counts.
pub fn use_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

fn sink() -> Sink {
    SINK.get().copied().unwrap_or(Sink::Subscriber)
}

/// One call's audit record, every field as the trail has always had it.
#[derive(Debug)]
pub struct Line {
    /// When the call ended (not when the line was written).
    pub at: SystemTime,
    pub caller: Arc<str>,
    pub method: &'static str,
    pub subject: String,
    pub related: String,
    pub text_chars: Option<usize>,
    pub outcome: &'static str,
    pub reason: String,
    pub feishu_log_id: String,
    pub caller_left: bool,
    pub idempotency_key: String,
    pub idempotent: &'static str,
    pub elapsed_ms: i64,
    /// The rpc span's fields, for the span list of a hand-built line (the
    /// span itself is not kept alive for it).
    pub rpc: RpcSpan,
    /// The call's span, kept only for [`Sink::Subscriber`].
    pub span: Option<tracing::Span>,
}

/// What the `rpc` span of the call holds, as the JSON subscriber lists it.
#[derive(Debug, Clone, Copy)]
pub struct RpcSpan {
    /// `None` when the span was recorded by no one (no trace id was made).
    pub trace_id: Option<TraceId>,
    pub status_code: i32,
}

enum Entry {
    Line(Box<Line>),
    /// Acknowledged once every line queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// The sending side of the audit queue; cheap to clone.
#[derive(Clone)]
pub struct Trail {
    tx: mpsc::Sender<Entry>,
    /// Lines reserved or waiting for the writer.
    queued: Gauge,
    sink: Sink,
    waker: Arc<Waker>,
}

/// Wakes the writer early, before its gathering window ends, once a
/// quarter of the queue waits: a burst must not fill the queue (and refuse
/// calls) while a healthy writer sleeps.
struct Waker {
    writer: std::thread::Thread,
    /// Lines sent and not yet taken by the writer.
    waiting: AtomicUsize,
    wake_at: usize,
}

impl Waker {
    fn sent(&self) {
        if self.waiting.fetch_add(1, Ordering::Relaxed) + 1 >= self.wake_at {
            self.writer.unpark();
        }
    }
}

impl std::fmt::Debug for Trail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trail")
            .field("queued", &self.queued.get())
            .field("sink", &self.sink)
            .finish()
    }
}

/// A reserved place in the queue for one call's line.
pub struct Slot {
    permit: Option<mpsc::OwnedPermit<Entry>>,
    queued: Gauge,
    waker: Arc<Waker>,
}

impl Trail {
    /// Starts the writer thread (`audit-writer`) behind a queue of
    /// `capacity` lines (at least one). `queued` is the gauge of lines
    /// reserved or waiting.
    pub fn start(capacity: usize, queued: Gauge) -> std::io::Result<Self> {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let sink = sink();
        let gauge = queued.clone();
        let (started, writer) = std::sync::mpsc::channel::<Arc<Waker>>();
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                if let Ok(waker) = writer.recv() {
                    write_lines(rx, sink, &gauge, &waker);
                }
            })?;
        let waker = Arc::new(Waker {
            writer: thread.thread().clone(),
            waiting: AtomicUsize::new(0),
            wake_at: (capacity / 4).max(1),
        });
        started
            .send(waker.clone())
            .map_err(|_| std::io::Error::other("the audit writer ended at start"))?;
        Ok(Self {
            tx,
            queued,
            sink,
            waker,
        })
    }

    /// Holds a place for one line, or `None` when the queue is full (the
    /// writer is behind: the call must be refused before it sends anything).
    pub fn reserve(&self) -> Option<Slot> {
        let permit = self.tx.clone().try_reserve_owned().ok()?;
        self.queued.inc();
        Some(Slot {
            permit: Some(permit),
            queued: self.queued.clone(),
            waker: self.waker.clone(),
        })
    }

    /// Whether lines must carry the call's span (the subscriber lists it).
    pub fn keeps_span(&self) -> bool {
        self.sink == Sink::Subscriber
    }

    /// Waits until every line queued so far is written, or `until`. At
    /// shutdown, so that no audited call's line is lost when the process exits.
    /// Answers whether the lines were written in time.
    pub async fn flush(&self, until: tokio::time::Instant) -> bool {
        let (ack, written) = oneshot::channel();
        let flushed = async {
            self.tx.send(Entry::Flush(ack)).await.ok()?;
            written.await.ok()
        };
        matches!(tokio::time::timeout_at(until, flushed).await, Ok(Some(())))
    }
}

impl Slot {
    /// Queues the line in the place held for it; never waits.
    pub fn send(mut self, line: Line) {
        if let Some(permit) = self.permit.take() {
            permit.send(Entry::Line(Box::new(line)));
            self.waker.sent();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Unused: its place goes back (dropping the permit frees it).
        if self.permit.is_some() {
            self.queued.dec();
        }
    }
}

/// How long the writer lets lines gather after the first of a batch: a
/// line waits at most this long, and a busy writer wakes about once per
/// window (or when a quarter of the queue waits, see [`Waker`]). Waking it
/// for every line cost the worker that queued it a context switch per
/// call, about a tenth of a call's CPU on one core (issue 16).
const GATHER: Duration = Duration::from_millis(2);

/// The most lines in one write.
const BATCH: i64 = 1024;

/// The writer thread: lines in queue order, each batch in one write and
/// flushed; ends when every sender is gone.
fn write_lines(mut rx: mpsc::Receiver<Entry>, sink: Sink, queued: &Gauge, waker: &Waker) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut acks = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        if waker.waiting.load(Ordering::Relaxed) < waker.wake_at {
            std::thread::park_timeout(GATHER);
        }
        buf.clear();
        let mut lines: i64 = 0;
        let mut next = Some(first);
        // Whatever else is already queued goes in the same write.
        while let Some(entry) = next.take() {
            match entry {
                Entry::Line(line) => {
                    lines += 1;
                    match sink {
                        Sink::Stderr => render(&line, &mut buf),
                        Sink::Subscriber => emit(&line),
                    }
                }
                Entry::Flush(ack) => acks.push(ack),
            }
            if lines < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            // Nowhere to report a failed write to (stderr is the report).
            let mut out = std::io::stderr().lock();
            let _ = out.write_all(&buf);
            let _ = out.flush();
        }
        queued.dec_by(lines);
        let _ = waker
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(usize::try_from(lines).unwrap_or(usize::MAX)))
            });
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

/// The line through the process's subscriber, inside the call's span
/// (entered on this thread: the JSON formatter lists the current spans, not
/// an event's explicit parent).
fn emit(line: &Line) {
    match &line.span {
        Some(span) => span.in_scope(|| event(line)),
        None => event(line),
    }
}

fn event(line: &Line) {
    tracing::info!(
        target: AUDIT_TARGET,
        caller = %line.caller,
        method = line.method,
        subject = %line.subject,
        related = %line.related,
        text_chars = line.text_chars,
        outcome = line.outcome,
        reason = line.reason.as_str(),
        feishu_log_id = line.feishu_log_id.as_str(),
        caller_left = line.caller_left,
        idempotency_key = %line.idempotency_key,
        idempotent = line.idempotent,
        elapsed_ms = line.elapsed_ms,
        "audit"
    );
}

/// Appends `line` as the JSON subscriber (`telemetry::init`: JSON, span list,
/// no current span) writes an event, newline included.
pub fn render(line: &Line, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(line.at, out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"audit\",\"caller\":");
    string(&line.caller, out);
    out.extend_from_slice(b",\"method\":");
    string(line.method, out);
    out.extend_from_slice(b",\"subject\":");
    string(&line.subject, out);
    out.extend_from_slice(b",\"related\":");
    string(&line.related, out);
    if let Some(n) = line.text_chars {
        out.extend_from_slice(b",\"text_chars\":");
        number(n as u64, out);
    }
    out.extend_from_slice(b",\"outcome\":");
    string(line.outcome, out);
    out.extend_from_slice(b",\"reason\":");
    string(&line.reason, out);
    out.extend_from_slice(b",\"feishu_log_id\":");
    string(&line.feishu_log_id, out);
    out.extend_from_slice(b",\"caller_left\":");
    out.extend_from_slice(if line.caller_left { b"true" } else { b"false" });
    out.extend_from_slice(b",\"idempotency_key\":");
    string(&line.idempotency_key, out);
    out.extend_from_slice(b",\"idempotent\":");
    string(line.idempotent, out);
    out.extend_from_slice(b",\"elapsed_ms\":");
    if line.elapsed_ms < 0 {
        out.push(b'-');
    }
    number(line.elapsed_ms.unsigned_abs(), out);
    out.extend_from_slice(b"},\"target\":\"audit\"");
    // Without a span (no one records it) the subscriber writes no list.
    if let Some(trace_id) = line.rpc.trace_id {
        out.extend_from_slice(b",\"spans\":[{\"caller\":");
        string(&line.caller, out);
        out.extend_from_slice(b",\"otel.kind\":\"server\",\"otel.name\":");
        string(line.method, out);
        out.extend_from_slice(b",\"rpc.grpc.status_code\":");
        if line.rpc.status_code < 0 {
            out.push(b'-');
        }
        number(u64::from(line.rpc.status_code.unsigned_abs()), out);
        out.extend_from_slice(b",\"rpc.method\":");
        string(line.method, out);
        out.extend_from_slice(b",\"rpc.system\":\"grpc\",\"trace_id\":\"");
        // 32 lowercase hex digits, as `TraceId`'s `Display`.
        let _ = write!(out, "{trace_id}");
        out.extend_from_slice(b"\",\"name\":\"rpc\"}]");
    }
    out.extend_from_slice(b"}\n");
}

/// A JSON string, escaped as serde_json escapes it (see
/// [`crate::telemetry::json_escape`]).
fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    crate::telemetry::json_escape(s, |piece| out.extend_from_slice(piece.as_bytes()));
    out.push(b'"');
}

fn number(n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// RFC 3339 in UTC with microseconds (`2025-01-02T03:04:05.678901Z`), as
/// tracing-subscriber's default timer writes it.
fn timestamp(at: SystemTime, out: &mut Vec<u8>) {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since.subsec_micros()
    );
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing_subscriber::{layer::SubscriberExt, Layer};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(text_chars: Option<usize>, trace_id: Option<TraceId>) -> Line {
        Line {
            at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            caller: Arc::from("anonymous@127.0.0.1:4242"),
            method: "feishu.corehr.v2.PreHireService/WithdrawOnboarding",
            subject: "pre_hires/a \"b\"\\c\n\u{1}\u{7f}候选人".into(),
            related: "operator:1,x\ty".into(),
            text_chars,
            outcome: "FAILED_PRECONDITION",
            reason: "PRE_HIRE_STAGE_NOT_ALLOWED".into(),
            feishu_log_id: "20240101abc".into(),
            caller_left: true,
            idempotency_key: "k-\u{8}\u{c}\r".into(),
            idempotent: "replayed",
            elapsed_ms: 1234,
            rpc: RpcSpan {
                trace_id,
                status_code: 9,
            },
            span: None,
        }
    }

    /// What `telemetry::init`'s JSON layer writes for the same record,
    /// emitted as the audit record was before it had a writer of its own.
    fn by_the_subscriber(line: &Line) -> serde_json::Value {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(move || writer.clone())
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let subscriber = tracing_subscriber::registry().with(json);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                otel.name = line.method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = line.method,
                caller = %line.caller,
                trace_id = tracing::field::Empty,
                rpc.grpc.status_code = tracing::field::Empty,
            );
            if let Some(id) = line.rpc.trace_id {
                span.record("trace_id", id.to_string());
            }
            span.record("rpc.grpc.status_code", line.rpc.status_code);
            let line = Line {
                span: line.rpc.trace_id.map(|_| span.clone()),
                ..line.shallow()
            };
            emit(&line);
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        serde_json::from_str(text.trim_end()).unwrap()
    }

    impl Line {
        fn shallow(&self) -> Line {
            Line {
                at: self.at,
                caller: self.caller.clone(),
                method: self.method,
                subject: self.subject.clone(),
                related: self.related.clone(),
                text_chars: self.text_chars,
                outcome: self.outcome,
                reason: self.reason.clone(),
                feishu_log_id: self.feishu_log_id.clone(),
                caller_left: self.caller_left,
                idempotency_key: self.idempotency_key.clone(),
                idempotent: self.idempotent,
                elapsed_ms: self.elapsed_ms,
                rpc: self.rpc,
                span: None,
            }
        }
    }

    #[test]
    fn the_hand_built_line_is_the_subscribers_line() {
        let trace = TraceId::from(0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c_u128);
        for (chars, trace_id) in [(Some(7), Some(trace)), (None, Some(trace)), (Some(0), None)] {
            let line = line(chars, trace_id);
            let mut out = Vec::new();
            render(&line, &mut out);
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
            let mut ours: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let mut theirs = by_the_subscriber(&line);
            let stamp = ours["timestamp"].as_str().unwrap().to_owned();
            assert_eq!(stamp, "2023-11-14T22:13:20.123456Z");
            assert_eq!(
                theirs["timestamp"].as_str().map(str::len),
                Some(stamp.len()),
                "{theirs}"
            );
            ours["timestamp"] = serde_json::Value::Null;
            theirs["timestamp"] = serde_json::Value::Null;
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn timestamps_are_civil_dates() {
        let mut out = Vec::new();
        timestamp(UNIX_EPOCH, &mut out);
        timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400), &mut out); // 2000-02-29
        timestamp(UNIX_EPOCH + Duration::from_secs(4_107_542_399), &mut out); // 2100-02-28 23:59:59
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000Z2000-02-29T00:00:00.000000Z2100-02-28T23:59:59.000000Z"
        );
    }

    #[test]
    fn every_control_character_is_escaped_as_serde_json_does() {
        let all: String = (0u8..0x80)
            .map(char::from)
            .chain("候选人😀".chars())
            .collect();
        let mut ours = Vec::new();
        string(&all, &mut ours);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(&all).unwrap()
        );
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        for n in [0, 9, 10, 1234, u64::MAX] {
            number(n, &mut out);
            out.push(b' ');
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("0 9 10 1234 {} ", u64::MAX)
        );
    }

    #[test]
    fn a_full_queue_refuses_and_a_used_place_comes_back() {
        let queued = Gauge::default();
        let trail = Trail::start(2, queued.clone()).unwrap();
        let a = trail.reserve().expect("room");
        let b = trail.reserve().expect("room");
        assert!(trail.reserve().is_none(), "two places, both held");
        assert_eq!(queued.get(), 2);
        drop(a);
        assert_eq!(queued.get(), 1);
        let c = trail.reserve().expect("a dropped place comes back");
        b.send(line(None, None));
        c.send(line(None, None));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        assert!(runtime.block_on(trail.flush(until)));
        assert_eq!(queued.get(), 0);
    }
}
