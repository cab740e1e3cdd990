//! The call-state file (`media.state_file`) that lets calls survive a restart
//! (`media.handover`): an append-only journal of JSON lines written by the control thread, one
//! `write(2)` per entry and no fsync (a killed process leaves its writes in the page cache; a
//! host crash may lose the last ones). At start-up [`read`] replays it into the calls still up
//! (a torn or unreadable line, as SIGKILL in the middle of a write leaves, is skipped with a
//! warning) and [`Journal::compact`] replaces it with just the calls adopted.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::sip::b2bua::journal::{CallRecord, JournalEntry};

/// The open journal, appended to by the control loop.
pub struct Journal {
    file: File,
    path: PathBuf,
    /// Entries that could not be written (logged as they happen).
    failed: u64,
}

/// The calls a journal's text leaves up, in label order, and how many lines were skipped as
/// torn or unreadable.
pub fn replay(text: &[u8]) -> (Vec<CallRecord>, usize) {
    let mut up: BTreeMap<String, CallRecord> = BTreeMap::new();
    let mut skipped = 0;
    for (n, line) in text.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<JournalEntry>(line) {
            Ok(JournalEntry::Up(rec)) => {
                up.insert(rec.call.clone(), *rec);
            }
            Ok(JournalEntry::End { call }) => {
                up.remove(&call);
            }
            Err(e) => {
                skipped += 1;
                tracing::warn!(line = n + 1, error = %e, "call-state journal: torn or unreadable line skipped");
            }
        }
    }
    (up.into_values().collect(), skipped)
}

/// The calls the journal at `path` leaves up; none when the file does not exist.
pub fn read(path: &Path) -> io::Result<Vec<CallRecord>> {
    match std::fs::read(path) {
        Ok(text) => Ok(replay(&text).0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// One entry as a line.
fn line_of(entry: &JournalEntry) -> Vec<u8> {
    let mut line = serde_json::to_vec(entry).expect("journal entries always serialise");
    line.push(b'\n');
    line
}

impl Journal {
    /// Replaces the journal at `path` with `entries` (the calls adopted at start-up): written
    /// to `PATH.tmp`, synced and renamed over the old file, so a crash during compaction
    /// leaves the old journal or the new one, never half of either. Then opened for appending.
    pub fn compact(path: &Path, entries: &[JournalEntry]) -> io::Result<Journal> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            let mut f = File::create(&tmp)?;
            let text: Vec<u8> = entries.iter().flat_map(line_of).collect();
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            failed: 0,
        })
    }

    /// Appends `entries`, one `write(2)` each (O_APPEND: a line is never interleaved, and a
    /// SIGKILL can tear only the last). Errors are logged and counted, never fatal: the calls
    /// go on, only their adoption by a next start is at risk.
    pub fn append(&mut self, entries: &[JournalEntry]) {
        for entry in entries {
            if let Err(e) = self.file.write_all(&line_of(entry)) {
                self.failed += 1;
                tracing::warn!(path = %self.path.display(), error = %e, failed = self.failed,
                    "call-state journal: entry not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A journal line of call `label` from the B2BUA's record format, kept as text so the
    /// test reads like the file.
    fn up(label: &str) -> String {
        let media = r#"{"line_ids":[1],"kinds":["audio"],"enabled":[true],"latch":"symmetric","legs":[{"local_ip":"10.99.1.1","advertised":null,"signalling_ip":"10.99.1.2","session_id":7,"session_version":1,"last_sdp":null,"pairs":[{"port":30000,"rtp":"10.99.1.2:6000","rtcp":"10.99.1.2:6001","clock_rate":8000}]},{"local_ip":"10.99.2.1","advertised":null,"signalling_ip":"10.99.2.2","session_id":9,"session_version":1,"last_sdp":null,"pairs":[{"port":30002,"rtp":"10.99.2.2:7000","rtcp":"10.99.2.2:7001","clock_rate":8000}]}]}"#;
        let leg = |id: &str| {
            format!(
                r#"{{"peer":"udp:10.99.1.2:5060","local_addr":"10.99.1.1:5060","call_id":"{id}","local":"<sip:a@x>;tag=1","remote":"<sip:b@y>;tag=2","remote_target":"sip:b@10.99.1.2","route_set":[],"local_cseq":1,"signalling_ip":"10.99.1.2"}}"#
            )
        };
        format!(
            r#"{{"entry":"up","call":"{label}","a":{},"b":{},"a_trunk":"pbx","b_trunk":"itsp","a_invite":"INVITE sip:1@x SIP/2.0\r\n\r\n","called":"1","calling":"2","emergency":false,"b_invite_cseq":1,"started_ms":1,"answered_ms":2,"final_code":200,"attempts":[],"held":false,"timers":[{{"interval":0,"ours":false,"supports":false,"update":false}},{{"interval":0,"ours":false,"supports":false,"update":false}}],"media":{media}}}"#,
            leg(&format!("{label}-a")),
            leg(&format!("{label}-b")),
        )
    }

    fn end(label: &str) -> String {
        format!(r#"{{"entry":"end","call":"{label}"}}"#)
    }

    fn labels(records: &[CallRecord]) -> Vec<&str> {
        records.iter().map(|r| r.call.as_str()).collect()
    }

    #[test]
    fn ended_calls_drop_out_and_a_later_record_replaces_an_earlier_one() {
        let text = [up("c-1"), up("c-2"), end("c-1"), up("c-3"), up("c-2")].join("\n") + "\n";
        let (calls, skipped) = replay(text.as_bytes());
        assert_eq!(labels(&calls), ["c-2", "c-3"]);
        assert_eq!(skipped, 0);
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let whole = up("c-2");
        let text = format!("{}\n{}", up("c-1"), &whole[..whole.len() / 2]);
        let (calls, skipped) = replay(text.as_bytes());
        assert_eq!(labels(&calls), ["c-1"]);
        assert_eq!(skipped, 1);
    }

    #[test]
    fn compaction_keeps_only_what_it_is_given_and_appends_after_it() {
        let dir = std::env::temp_dir().join(format!("mg-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("calls.state");
        let torn = up("c-9");
        std::fs::write(
            &path,
            format!("{}\n{}\n{}", up("c-1"), end("c-1"), &torn[..40]),
        )
        .unwrap();
        assert!(read(&path).unwrap().is_empty());
        let (kept, _) = replay(format!("{}\n", up("c-5")).as_bytes());
        let entries: Vec<JournalEntry> = kept
            .into_iter()
            .map(|r| JournalEntry::Up(Box::new(r)))
            .collect();
        let mut journal = Journal::compact(&path, &entries).unwrap();
        assert_eq!(labels(&read(&path).unwrap()), ["c-5"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "the old lines are gone");
        journal.append(&[JournalEntry::End { call: "c-5".into() }]);
        assert!(read(&path).unwrap().is_empty());
        assert!(read(&dir.join("absent")).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
