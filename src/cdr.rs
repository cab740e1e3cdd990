//! Call detail records: one JSON object per line in `cdr.path`, one line per finished call.
//!
//! The B2BUA describes each finished call as a [`Cdr`]; the control loop hands them to the
//! [`CdrWriter`], which appends them to the file, rotates it by size and reopens it on SIGHUP
//! (logrotate). Field names are chosen for `grep` and `jq`: every `*_in` field describes the
//! caller's leg (the trunk the INVITE came from, the numbers as received, the media on that
//! leg) and every `*_out` field the callee's leg. The format is documented in the README
//! ("Call detail records").

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

use crate::config::{CdrConfig, Endpoint};
use crate::media::StreamStats;

/// Permissions of a CDR file mediagate creates: records hold phone numbers, so they are not
/// world-readable; the group (e.g. `adm`, billing) may read them.
const FILE_MODE: u32 = 0o640;

/// The record of one finished call, serialised as one JSON line by [`CdrWriter::write`].
///
/// Fields are written in declaration order; the flattened [`CallTimes`] and [`Ending`] add
/// `start_time`, `answer_time`, `end_time`, `duration_s`, `ended_by` and `end_reason`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cdr {
    /// mediagate's label of the call (`c-17`), the same as the `call=` field of its log lines
    /// and `id` in `/status`, so one grep finds the call everywhere.
    pub call: String,
    /// The Call-ID of the caller's INVITE, to match the record with the caller's own CDR.
    pub sip_call_id: String,
    /// When the call started, was answered and ended, and the billable duration.
    #[serde(flatten)]
    pub times: CallTimes,
    /// The trunk the caller's INVITE came from (config `trunk.name`).
    pub trunk_in: String,
    /// The trunk that answered, else the last one tried; `None` when no trunk was tried (no
    /// route, capacity, rejected before routing).
    pub trunk_out: Option<String>,
    /// The calling number as received (user part of the caller's From).
    pub calling_in: String,
    /// The called number as received (user part of the Request-URI).
    pub called_in: String,
    /// The calling number sent toward `trunk_out` after translation; `None` when nothing was
    /// sent.
    pub calling_out: Option<String>,
    /// The called number sent toward `trunk_out` after translation; `None` when nothing was
    /// sent.
    pub called_out: Option<String>,
    /// The final SIP status code mediagate sent to the caller for its INVITE (200 for an
    /// answered call, 487 when cancelled, the callee's or mediagate's error otherwise).
    pub final_code: u16,
    /// Who ended the call and why.
    #[serde(flatten)]
    pub ending: Ending,
    /// Every INVITE sent toward a trunk, in order, including the one that answered: the
    /// failover history of the call.
    pub attempts: Vec<Attempt>,
    /// Media counters of the caller's leg.
    pub media_in: MediaCounters,
    /// Media counters of the callee's leg (the last trunk tried).
    pub media_out: MediaCounters,
}

/// A call's wall-clock times. Serialised as RFC 3339 UTC with milliseconds (`start_time`,
/// `answer_time`, `end_time`) plus `duration_s`, computed here from answer to end so that it can
/// never disagree with the two times it is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTimes {
    /// When the caller's INVITE arrived.
    pub start: SystemTime,
    /// When the 2xx was relayed to the caller; `None` when the call was never answered.
    pub answer: Option<SystemTime>,
    /// When the call ended (BYE, final error response, CANCEL, timeout).
    pub end: SystemTime,
}

impl CallTimes {
    /// Seconds from answer to end, to the millisecond; `None` for an unanswered call. A wall
    /// clock stepped backwards during the call gives 0, not a negative duration.
    pub fn duration_s(&self) -> Option<f64> {
        let answer = self.answer?;
        let d = self.end.duration_since(answer).unwrap_or(Duration::ZERO);
        Some(d.as_millis() as f64 / 1000.0)
    }
}

/// RFC 3339, UTC, milliseconds (`2026-11-26T12:00:00.123Z`). Clamped to the years 1970–9999,
/// which is all the formatter can print (outside it, it would panic).
fn rfc3339_ms(t: SystemTime) -> String {
    let last = UNIX_EPOCH + Duration::from_secs(253_402_300_799);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, last)).to_string()
}

impl Serialize for CallTimes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CallTimes", 4)?;
        st.serialize_field("start_time", &rfc3339_ms(self.start))?;
        st.serialize_field("answer_time", &self.answer.map(rfc3339_ms))?;
        st.serialize_field("end_time", &rfc3339_ms(self.end))?;
        st.serialize_field("duration_s", &self.duration_s())?;
        st.end()
    }
}

/// How a call ended. One enum rather than two fields, so that only meaningful pairs of
/// `ended_by` and `end_reason` can be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The caller sent BYE.
    CallerBye,
    /// The caller cancelled before the answer.
    CallerCancel,
    /// The callee sent BYE.
    CalleeBye,
    /// The callee's trunk answered with a final error that does not fail over (486, 404, …).
    CalleeRejected,
    /// No media in either direction for `media.timeout_s`: mediagate hung up both legs.
    MediaTimeout,
    /// The call reached its maximum duration: mediagate hung up both legs.
    MaxDuration,
    /// The caller never acknowledged the 2xx: mediagate hung up.
    NoAck,
    /// mediagate was stopping and ended the call.
    Shutdown,
    /// A session timer (RFC 4028) ran out: the refreshing peer sent no refresh in time, or
    /// mediagate's own refresh got 408/481 or no answer. mediagate hung up both legs.
    SessionTimer,
    /// mediagate could not connect the call: no route, no capacity, every trunk failed or
    /// timed out, media could not be anchored (`final_code` says which).
    Failed,
    /// The caller's dialog no longer exists: it answered a relayed mid-call request 481 or
    /// 408, or not at all (RFC 3261 §12.2.1.2, RFC 5057); mediagate hung up the callee.
    CallerDialogGone,
    /// The same on the callee's side; mediagate hung up the caller.
    CalleeDialogGone,
}

impl Ending {
    /// `ended_by`: `caller`, `callee` or `mediagate`.
    pub fn ended_by(self) -> &'static str {
        match self {
            Ending::CallerBye | Ending::CallerCancel | Ending::CallerDialogGone => "caller",
            Ending::CalleeBye | Ending::CalleeRejected | Ending::CalleeDialogGone => "callee",
            Ending::MediaTimeout
            | Ending::MaxDuration
            | Ending::NoAck
            | Ending::Shutdown
            | Ending::SessionTimer
            | Ending::Failed => "mediagate",
        }
    }

    /// `end_reason`: `bye`, `cancel`, `rejected`, `dialog-gone`, `media-timeout`,
    /// `max-duration`, `no-ack`, `shutdown`, `session-timer` or `failed`.
    pub fn reason(self) -> &'static str {
        match self {
            Ending::CallerBye | Ending::CalleeBye => "bye",
            Ending::CallerCancel => "cancel",
            Ending::CalleeRejected => "rejected",
            Ending::MediaTimeout => "media-timeout",
            Ending::MaxDuration => "max-duration",
            Ending::NoAck => "no-ack",
            Ending::Shutdown => "shutdown",
            Ending::SessionTimer => "session-timer",
            Ending::Failed => "failed",
            Ending::CallerDialogGone | Ending::CalleeDialogGone => "dialog-gone",
        }
    }
}

impl Serialize for Ending {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Ending", 2)?;
        st.serialize_field("ended_by", self.ended_by())?;
        st.serialize_field("end_reason", self.reason())?;
        st.end()
    }
}

/// One INVITE sent toward a trunk: `{"trunk": "itsp1", "peer": "udp:192.0.2.1:5060",
/// "code": 503}`, or `"code": "timeout"` when the peer never gave a final answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// The trunk's name.
    pub trunk: String,
    /// The peer the INVITE went to, written as in the config (`udp:IP:PORT`).
    #[serde(serialize_with = "display")]
    pub peer: Endpoint,
    /// The peer's final answer.
    pub code: AttemptResult,
}

fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// How an attempt ended: a final status code, or no final answer before the INVITE
/// transaction timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The final status code the peer sent (200 for the attempt that answered).
    Code(u16),
    /// No final answer (Timer B/C): written as the string `"timeout"`.
    Timeout,
}

impl Serialize for AttemptResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AttemptResult::Code(c) => s.serialize_u16(*c),
            AttemptResult::Timeout => s.serialize_str("timeout"),
        }
    }
}

/// Media totals of one leg over all its streams (RTP and RTCP of every media line). `rx` is
/// what mediagate received from that leg's peer, `tx` what it sent to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MediaCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets dropped on this leg's streams, every reason together (unknown or wrong source,
    /// no destination yet, send failed).
    pub drops: u64,
    /// RTP packets from this leg's peer that never arrived (RFC 3550 A.1: expected from the
    /// sequence numbers minus received, clamped at 0), over the leg's media lines; `None`
    /// (`null`) when no RTP was received.
    pub packets_lost: Option<u64>,
    /// Fraction (0.0–1.0) of the expected RTP packets from this leg's peer that never arrived:
    /// `packets_lost` over the packets expected; `None` (`null`) when no RTP was received.
    pub loss: Option<f64>,
    /// RFC 3550 A.8 interarrival jitter of the RTP from this leg's peer, in milliseconds (the
    /// largest of the leg's media lines); `None` (`null`) without RTP or when the payload's
    /// clock rate is unknown.
    pub jitter_ms: Option<f64>,
    /// Estimated MOS (1.0–4.5, [`crate::media::quality::mos`]) of `loss` and `jitter_ms`.
    pub mos: Option<f64>,
}

impl MediaCounters {
    /// Totals of a leg's streams, e.g. `MediaCounters::from_streams(call.media.streams(Side::A))`
    /// at the end of a call, before its media is released.
    pub fn from_streams<'a>(streams: impl IntoIterator<Item = &'a StreamStats>) -> Self {
        let mut c = MediaCounters::default();
        let (mut expected, mut lost) = (0u64, 0u64);
        for s in streams {
            c.rx_packets += s.rx_packets();
            c.rx_bytes += s.rx_bytes();
            c.tx_packets += s.tx_packets();
            c.tx_bytes += s.tx_bytes();
            c.drops += s.total_drops();
            if let Some(q) = s.quality() {
                expected += q.packets_expected;
                lost += q.packets_lost;
                if let Some(j) = q.jitter_ms {
                    c.jitter_ms = Some(c.jitter_ms.map_or(j, |m| m.max(j)));
                }
            }
        }
        if expected > 0 {
            let loss = lost as f64 / expected as f64;
            c.packets_lost = Some(lost);
            c.loss = Some(loss);
            c.mos = c.jitter_ms.map(|j| crate::media::quality::mos(loss, j));
        }
        c
    }
}

/// Appends [`Cdr`]s to the CDR file, one JSON line each.
///
/// Each record is one `write(2)` of the whole line on an unbuffered, `O_APPEND` file: when
/// [`CdrWriter::write`] returns, the record is in the kernel (flushed; not fsynced, so a power
/// cut may lose the last records, a crash of mediagate does not). A write that fails is logged
/// (`tracing::warn`) and counted in [`CdrWriter::failed`], and the B2BUA keeps running: a full
/// disk must not stop calls. Nothing here panics or waits for anything but the write itself.
#[derive(Debug)]
pub struct CdrWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// `None` only after a rotation moved the file away and the new one could not be created;
    /// the next write tries again.
    file: Option<File>,
    /// Bytes in the current file: its size when opened plus what was appended since.
    size: u64,
    /// The current file does not end with a newline (a write failed half-way, or someone else
    /// appended): the next record starts with one, so every record stays on its own line.
    torn: bool,
    failed: u64,
    /// The line being written, reused from record to record.
    line: Vec<u8>,
}

impl CdrWriter {
    /// Opens (creating with mode 0640, else appending to) `config.path`. The file is opened at
    /// start-up rather than at the first record so that a wrong path or a missing directory
    /// (which is not created) stops mediagate at start instead of losing the first calls'
    /// records, and so that the file exists again right after a SIGHUP (monitoring sees it).
    pub fn open(config: &CdrConfig) -> io::Result<CdrWriter> {
        let mut w = CdrWriter {
            path: config.path.clone(),
            max_bytes: config.max_bytes,
            keep: config.keep,
            file: None,
            size: 0,
            torn: false,
            failed: 0,
            line: Vec::with_capacity(1024),
        };
        w.open_file()?;
        Ok(w)
    }

    /// The CDR file's path, for log messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that could not be written since start, for monitoring (each was also logged).
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Opens the path again, for SIGHUP after logrotate moved the file away: later records go
    /// to a new file at the path. On error the previous file stays in use (records land in the
    /// moved file rather than nowhere) and the error is returned for the caller to log.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.open_file()
    }

    /// Appends `cdr` as one line, rotating the file first when the line would take it past
    /// `cdr.max_mb`. Failures are logged and counted, never returned: the caller is the call
    /// handling path, which has nothing better to do with them.
    pub fn write(&mut self, cdr: &Cdr) {
        self.line.clear();
        if self.torn {
            self.line.push(b'\n');
        }
        if let Err(e) = serde_json::to_writer(&mut self.line, cdr) {
            self.fail(&cdr.call, &io::Error::other(e));
            return;
        }
        self.line.push(b'\n');
        let len = self.line.len() as u64;
        if self.file.is_some() && self.size > 0 && self.size + len > self.max_bytes {
            if let Err(e) = self.rotate() {
                tracing::warn!(path = %self.path.display(), error = %e,
                    "cannot rotate the CDR file; still appending to it");
            }
        }
        if self.file.is_none() {
            if let Err(e) = self.open_file() {
                self.fail(&cdr.call, &e);
                return;
            }
        }
        let Some(file) = &mut self.file else { return };
        let (done, result) = write_line(file, &self.line);
        self.size += done as u64;
        match result {
            Ok(()) => self.torn = false,
            Err(e) => {
                self.torn |= done > 0;
                self.fail(&cdr.call, &e);
            }
        }
    }

    fn fail(&mut self, call: &str, e: &io::Error) {
        self.failed += 1;
        tracing::warn!(call, path = %self.path.display(), error = %e, failed = self.failed,
            "CDR not written");
    }

    /// Opens the path for appending and replaces the current file only on success.
    fn open_file(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&self.path)?;
        let size = file.metadata()?.len();
        let mut last = [0u8; 1];
        let torn = size > 0 && file.read_at(&mut last, size - 1)? == 1 && last[0] != b'\n';
        self.file = Some(file);
        self.size = size;
        self.torn = torn;
        Ok(())
    }

    /// `PATH.N`.
    fn numbered(&self, n: u32) -> PathBuf {
        let mut p: OsString = self.path.clone().into();
        p.push(format!(".{n}"));
        p.into()
    }

    /// Shifts `PATH.N` to `PATH.N+1` (the oldest kept one is overwritten), moves `PATH` to
    /// `PATH.1` and starts a new `PATH`.
    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            match fs::rename(self.numbered(n), self.numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(&self.path, self.numbered(1))?;
        // The old file is PATH.1 now: never append to it again, even if PATH cannot be created.
        self.file = None;
        self.open_file()
    }
}

/// Writes all of `line`, retrying short writes (which a regular file only gives on errors such
/// as a full disk); returns how many bytes reached the file, and the error if not all did.
fn write_line(file: &mut File, line: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < line.len() {
        match file.write(&line[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Transport;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "mediagate-cdr-{}-{}-{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
        fn join(&self, f: &str) -> PathBuf {
            self.0.join(f)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn at(secs: u64, ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
    }

    fn record(n: u32) -> Cdr {
        Cdr {
            call: format!("c-{n}"),
            sip_call_id: format!("{n}-abc@10.99.1.2"),
            times: CallTimes {
                start: at(1_795_000_000, 5),
                answer: Some(at(1_795_000_002, 250)),
                end: at(1_795_000_062, 750),
            },
            trunk_in: "pbx".into(),
            trunk_out: Some("itsp2".into()),
            calling_in: "200".into(),
            called_in: "0301234567".into(),
            calling_out: Some("+4940200".into()),
            called_out: Some("+49301234567".into()),
            final_code: 200,
            ending: Ending::CalleeBye,
            attempts: vec![
                Attempt {
                    trunk: "itsp1".into(),
                    peer: Endpoint {
                        transport: Transport::Udp,
                        addr: "192.0.2.1:5060".parse().unwrap(),
                    },
                    code: AttemptResult::Timeout,
                },
                Attempt {
                    trunk: "itsp2".into(),
                    peer: Endpoint {
                        transport: Transport::Tcp,
                        addr: "198.51.100.7:5060".parse().unwrap(),
                    },
                    code: AttemptResult::Code(200),
                },
            ],
            media_in: MediaCounters {
                rx_packets: 3000,
                rx_bytes: 516_000,
                tx_packets: 2990,
                tx_bytes: 514_280,
                drops: 1,
                ..MediaCounters::default()
            },
            media_out: MediaCounters::default(),
        }
    }

    fn config(path: PathBuf, max_bytes: u64, keep: u32) -> CdrConfig {
        CdrConfig {
            path,
            max_bytes,
            keep,
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn record_format() {
        let v = serde_json::to_value(record(17)).unwrap();
        assert_eq!(v["call"], "c-17");
        assert_eq!(v["sip_call_id"], "17-abc@10.99.1.2");
        assert_eq!(v["start_time"], "2026-11-18T11:06:40.005Z");
        assert_eq!(v["answer_time"], "2026-11-18T11:06:42.250Z");
        assert_eq!(v["end_time"], "2026-11-18T11:07:42.750Z");
        assert_eq!(v["duration_s"], 60.5);
        assert_eq!(v["trunk_in"], "pbx");
        assert_eq!(v["trunk_out"], "itsp2");
        assert_eq!(v["calling_out"], "+4940200");
        assert_eq!(v["final_code"], 200);
        assert_eq!(v["ended_by"], "callee");
        assert_eq!(v["end_reason"], "bye");
        assert_eq!(
            v["attempts"],
            serde_json::json!([
                {"trunk": "itsp1", "peer": "udp:192.0.2.1:5060", "code": "timeout"},
                {"trunk": "itsp2", "peer": "tcp:198.51.100.7:5060", "code": 200},
            ])
        );
        assert_eq!(v["media_in"]["rx_packets"], 3000);
        assert_eq!(v["media_in"]["loss"], serde_json::Value::Null);
        assert_eq!(v["media_in"]["jitter_ms"], serde_json::Value::Null);
        assert_eq!(v["media_out"]["tx_bytes"], 0);

        let mut unanswered = record(18);
        unanswered.times.answer = None;
        unanswered.ending = Ending::MediaTimeout;
        let v = serde_json::to_value(unanswered).unwrap();
        assert_eq!(v["answer_time"], serde_json::Value::Null);
        assert_eq!(v["duration_s"], serde_json::Value::Null);
        assert_eq!(
            (&v["ended_by"], &v["end_reason"]),
            (&"mediagate".into(), &"media-timeout".into())
        );

        // Out-of-range clocks are clamped, not a panic.
        let mut odd = record(19);
        odd.times.start = UNIX_EPOCH - Duration::from_secs(5);
        odd.times.end = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let v = serde_json::to_value(odd).unwrap();
        assert_eq!(v["start_time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["end_time"], "9999-12-31T23:59:59.000Z");
    }

    /// The README's example line has exactly the fields a record has, nested ones included.
    #[test]
    fn readme_example_matches_the_format() {
        fn keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
            if let Some(m) = v.as_object() {
                for (k, v) in m {
                    out.push(format!("{prefix}{k}"));
                    keys(v, &format!("{prefix}{k}."), out);
                }
            }
            if let Some(first) = v.as_array().and_then(|a| a.first()) {
                keys(first, &format!("{prefix}[]."), out);
            }
        }
        let readme = include_str!("../README.md");
        let line = readme
            .lines()
            .find(|l| l.starts_with("{\"call\":"))
            .expect("README has an example CDR line");
        let (mut documented, mut written) = (Vec::new(), Vec::new());
        keys(&serde_json::from_str(line).unwrap(), "", &mut documented);
        keys(&serde_json::to_value(record(1)).unwrap(), "", &mut written);
        documented.sort();
        written.sort();
        assert_eq!(documented, written);
    }

    #[test]
    fn one_json_line_per_record_in_a_0640_file() {
        let dir = TempDir::new("lines");
        let path = dir.join("cdr.jsonl");
        let mut w = CdrWriter::open(&config(path.clone(), 1 << 20, 5)).unwrap();
        assert!(path.exists(), "opened at start, before any record");
        // 0640, less whatever the umask takes away: never readable by others.
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777 & !0o640, 0, "mode {mode:o}");
        assert_ne!(mode & 0o600, 0, "mode {mode:o}");
        for n in 0..3 {
            w.write(&record(n));
        }
        let got = lines(&path);
        assert_eq!(got.len(), 3);
        for (n, v) in got.iter().enumerate() {
            assert_eq!(v, &serde_json::to_value(record(n as u32)).unwrap());
        }
        // A second writer (a restart) appends.
        drop(w);
        let mut w = CdrWriter::open(&config(path.clone(), 1 << 20, 5)).unwrap();
        w.write(&record(3));
        assert_eq!(lines(&path).len(), 4);
        assert_eq!(w.failed(), 0);
    }

    #[test]
    fn a_torn_last_line_is_terminated_before_the_next_record() {
        let dir = TempDir::new("torn");
        let path = dir.join("cdr.jsonl");
        fs::write(&path, "{\"call\":\"c-1\",\"sip_ca").unwrap();
        let mut w = CdrWriter::open(&config(path.clone(), 1 << 20, 5)).unwrap();
        w.write(&record(2));
        let text = fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(last).unwrap()["call"],
            "c-2"
        );
    }

    #[test]
    fn rotation_at_the_size_limit_keeps_keep_files() {
        let dir = TempDir::new("rotate");
        let path = dir.join("cdr.jsonl");
        let line_len = serde_json::to_vec(&record(0)).unwrap().len() as u64 + 1;
        // Two records fit in a file, the third rotates it.
        let mut w = CdrWriter::open(&config(path.clone(), 2 * line_len + 1, 3)).unwrap();
        for n in 0..11 {
            w.write(&record(n));
        }
        assert_eq!(w.failed(), 0);
        // 11 records: PATH holds c-10; PATH.1 c-8 c-9; PATH.2 c-6 c-7; PATH.3 c-4 c-5; older gone.
        let calls = |p: &Path| -> Vec<String> {
            lines(p)
                .iter()
                .map(|v| v["call"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(calls(&path), ["c-10"]);
        assert_eq!(calls(&w.numbered(1)), ["c-8", "c-9"]);
        assert_eq!(calls(&w.numbered(2)), ["c-6", "c-7"]);
        assert_eq!(calls(&w.numbered(3)), ["c-4", "c-5"]);
        assert!(!w.numbered(4).exists());
        let mut names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["cdr.jsonl", "cdr.jsonl.1", "cdr.jsonl.2", "cdr.jsonl.3"]
        );
        for f in &names {
            let size = fs::metadata(dir.join(f)).unwrap().len();
            assert!(size <= 2 * line_len + 1, "{f} is {size} bytes");
        }
    }

    #[test]
    fn a_record_larger_than_the_limit_still_gets_written() {
        let dir = TempDir::new("big");
        let path = dir.join("cdr.jsonl");
        let mut w = CdrWriter::open(&config(path.clone(), 10, 1)).unwrap();
        w.write(&record(1));
        w.write(&record(2));
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(lines(&w.numbered(1)).len(), 1);
        assert_eq!(w.failed(), 0);
    }

    #[test]
    fn reopen_after_the_file_was_moved_writes_a_new_file() {
        let dir = TempDir::new("reopen");
        let path = dir.join("cdr.jsonl");
        let moved = dir.join("cdr.jsonl-20261126");
        let mut w = CdrWriter::open(&config(path.clone(), 1 << 20, 5)).unwrap();
        w.write(&record(1));
        fs::rename(&path, &moved).unwrap();
        // Before the SIGHUP the open file is the moved one (logrotate's window).
        w.write(&record(2));
        assert!(!path.exists());
        w.reopen().unwrap();
        assert!(path.exists(), "reopen creates the file at once");
        w.write(&record(3));
        assert_eq!(lines(&moved).len(), 2);
        let now = lines(&path);
        assert_eq!(now.len(), 1);
        assert_eq!(now[0]["call"], "c-3");
    }

    #[test]
    fn a_missing_directory_is_an_error_at_open() {
        let dir = TempDir::new("nodir");
        let e = CdrWriter::open(&config(dir.join("no/such/cdr.jsonl"), 1 << 20, 5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!dir.join("no").exists(), "the directory is not created");
    }

    #[test]
    fn unwritable_file_counts_failures_without_panicking() {
        // /dev/full fails every write with ENOSPC, even for root (which ignores permissions).
        let mut w = CdrWriter::open(&config("/dev/full".into(), 1 << 20, 5)).unwrap();
        for n in 0..3 {
            w.write(&record(n));
        }
        assert_eq!(w.failed(), 3);
    }

    #[test]
    fn a_failed_reopen_keeps_the_old_file_and_later_records() {
        let dir = TempDir::new("gone");
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        let path = sub.join("cdr.jsonl");
        let mut w = CdrWriter::open(&config(path.clone(), 1 << 20, 5)).unwrap();
        let moved = dir.join("moved.jsonl");
        fs::rename(&path, &moved).unwrap();
        fs::remove_dir(&sub).unwrap();
        assert!(w.reopen().is_err());
        w.write(&record(1));
        assert_eq!(w.failed(), 0);
        assert_eq!(lines(&moved).len(), 1, "written to the file still open");
    }

    #[test]
    fn media_counters_sum_a_legs_streams() {
        let now = std::time::Instant::now();
        let (rtp, rtcp) = (StreamStats::new(now, None), StreamStats::new(now, None));
        rtp.record_rx(100, 17_200, now);
        rtp.record_tx(99, 17_028);
        rtcp.record_rx(2, 160, now);
        rtcp.record_drop(crate::media::stats::DropReason::StrictSource);
        let c = MediaCounters::from_streams([&rtp, &rtcp]);
        assert_eq!(
            c,
            MediaCounters {
                rx_packets: 102,
                rx_bytes: 17_360,
                tx_packets: 99,
                tx_bytes: 17_028,
                drops: 1,
                ..MediaCounters::default()
            }
        );
    }

    #[test]
    fn media_counters_carry_the_legs_rtp_quality() {
        use crate::media::QualityCounts;
        let now = std::time::Instant::now();
        let (audio, video, rtcp) = (
            StreamStats::new(now, None),
            StreamStats::new(now, None),
            StreamStats::new(now, None),
        );
        audio.set_clock_rate(8000);
        audio.store_quality(QualityCounts {
            expected: 300,
            lost: 15,
            jitter: 16 * 40, // 40 units = 5 ms
        });
        video.set_clock_rate(90000);
        video.store_kernel_quality(QualityCounts {
            expected: 100,
            lost: 5,
            jitter: 16 * 90, // 1 ms
        });
        let c = MediaCounters::from_streams([&audio, &rtcp, &video]);
        assert_eq!(c.packets_lost, Some(20));
        assert_eq!(c.loss, Some(0.05));
        assert_eq!(c.jitter_ms, Some(5.0), "the worst line");
        assert_eq!(c.mos, Some(crate::media::quality::mos(0.05, 5.0)));
        let none = MediaCounters::from_streams([&rtcp]);
        assert_eq!((none.loss, none.jitter_ms, none.mos), (None, None, None));
    }

    #[test]
    fn a_failed_rotation_keeps_appending() {
        let dir = TempDir::new("rotfail");
        let path = dir.join("cdr.jsonl");
        let mut w = CdrWriter::open(&config(path.clone(), 10, 1)).unwrap();
        w.write(&record(1));
        // PATH.1 is a non-empty directory: the file cannot be renamed onto it (root included).
        fs::create_dir_all(w.numbered(1).join("x")).unwrap();
        w.write(&record(2));
        assert_eq!(w.failed(), 0);
        assert_eq!(lines(&path).len(), 2, "both records in the oversized file");
        fs::remove_dir_all(w.numbered(1)).unwrap();
        w.write(&record(3));
        assert_eq!(lines(&path).len(), 1, "rotated once it could");
        assert_eq!(lines(&w.numbered(1)).len(), 2);
    }
}
