//! The email workers' send journal: a note of each email the moment the SMTP server accepted
//! it, kept in the daemon's data directory until the email's `sent_emails` record commits.
//!
//! A daemon killed between the server's `250` and that commit would otherwise send the email
//! again when its message is redelivered (the duplicate window, docs/DECISIONS.md). A write
//! to a file survives the death of the process that made it, and takes microseconds where
//! the commit takes milliseconds, so the window shrinks to the time the `250` spends on the
//! wire. When the daemon starts again it records every note it finds before it takes any
//! message ([`Leftover::replay`]); a record that failed while the daemon ran is written again
//! instead of the email being sent again ([`SendJournal::noted`]).
//!
//! The notes are JSON lines in numbered segments (`<n>.log`). A segment whose notes are all
//! recorded is deleted, or emptied when it is the one being written; a segment grows to
//! [`ROTATE_BYTES`] at most before the next one starts. The journal protects against a
//! killed process, not a lost machine: there the record in the database is the only truth,
//! as before. One daemon per directory (an exclusive lock on `lock`).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use actors::model::SentEmail;
use actors::ports::SendJournal;
use actors::{StoreError, WorkerStore};
use serde::{Deserialize, Serialize};

/// A segment this long starts the next one.
pub const ROTATE_BYTES: u64 = 1 << 20;

/// The segment being written is emptied once nothing in it waits and it is this long.
pub const EMPTY_AT_BYTES: u64 = 64 << 10;

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file of the journal could not be read or written.
    #[error(
        "the send journal at {path} cannot be used: {source} (check the permissions and free space of PRIMED_DATA_DIR)"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the journal.
    #[error(
        "the send journal at {path} is in use by another primed process: give each daemon its own PRIMED_DATA_DIR"
    )]
    Busy {
        /// The directory.
        path: PathBuf,
    },
}

/// One note, one line.
#[derive(Serialize, Deserialize)]
struct Note {
    event_id: String,
    request_id: String,
    recipient: String,
    message_id: String,
}

/// The journal of one daemon.
pub struct FileJournal {
    dir: PathBuf,
    state: Mutex<State>,
    /// Held open: the directory's lock.
    _lock: File,
}

impl std::fmt::Debug for FileJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileJournal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct State {
    /// The segment being written.
    file: File,
    segment: u64,
    size: u64,
    /// Notes not yet recorded, by event, and the segment each is in.
    notes: HashMap<String, u64>,
    /// Per segment, how many of its notes are not yet recorded.
    waiting: BTreeMap<u64, usize>,
    /// A write failed and was logged (logged once, until one succeeds).
    failing: bool,
}

/// What a previous run of the daemon noted: emails it sent, some maybe never recorded.
#[derive(Debug, Default)]
pub struct Leftover {
    /// The notes found, in order.
    pub sent: Vec<SentEmail>,
    files: Vec<PathBuf>,
}

impl Leftover {
    /// Records every note (an email already recorded stays as it was), then deletes the
    /// segments; returns how many were not recorded before. On an error the segments stay,
    /// for the next start.
    pub async fn replay(self, store: &dyn WorkerStore) -> Result<usize, StoreError> {
        let results =
            futures::future::join_all(self.sent.into_iter().map(|s| store.record_email(s))).await;
        let mut recorded_now = 0;
        for result in results {
            if result? {
                recorded_now += 1;
            }
        }
        for file in &self.files {
            let _ = std::fs::remove_file(file);
        }
        Ok(recorded_now)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:08}.log"))
}

fn open_segment(dir: &Path, segment: u64) -> Result<File, JournalError> {
    let path = segment_path(dir, segment);
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))
}

impl FileJournal {
    /// Opens the journal in `dir` (created if missing) for this process alone, and returns
    /// what earlier runs left in it.
    pub fn open(dir: &Path) -> Result<(Self, Leftover), JournalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Busy {
                    path: dir.to_path_buf(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let mut segments = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            let number = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = number {
                segments.push((n, path));
            }
        }
        segments.sort();
        let mut leftover = Leftover::default();
        for (_, path) in &segments {
            let file = File::open(path).map_err(io(path))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(io(path))?;
                // A line cut short by the kill is not a note: its email's record decides.
                if let Ok(note) = serde_json::from_str::<Note>(&line) {
                    leftover.sent.push(SentEmail {
                        event_id: note.event_id,
                        request_id: note.request_id,
                        recipient: note.recipient,
                        message_id: note.message_id,
                    });
                }
            }
            leftover.files.push(path.clone());
        }
        let segment = segments.last().map_or(1, |(n, _)| n + 1);
        let file = open_segment(dir, segment)?;
        Ok((
            Self {
                dir: dir.to_path_buf(),
                state: Mutex::new(State {
                    file,
                    segment,
                    size: 0,
                    notes: HashMap::new(),
                    waiting: BTreeMap::new(),
                    failing: false,
                }),
                _lock: lock,
            },
            leftover,
        ))
    }

    /// The segments on disk now, for tests and tools.
    pub fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    fn write(&self, state: &mut State, line: &[u8]) -> Result<(), JournalError> {
        if state.size >= ROTATE_BYTES {
            let next = state.segment + 1;
            state.file = open_segment(&self.dir, next)?;
            if state.waiting.get(&state.segment).is_none_or(|n| *n == 0) {
                let old = segment_path(&self.dir, state.segment);
                let _ = std::fs::remove_file(old);
            }
            state.segment = next;
            state.size = 0;
        }
        let path = segment_path(&self.dir, state.segment);
        state.file.write_all(line).map_err(io(&path))?;
        state.size += line.len() as u64;
        Ok(())
    }
}

impl SendJournal for FileJournal {
    fn note(&self, sent: &SentEmail) {
        let note = Note {
            event_id: sent.event_id.clone(),
            request_id: sent.request_id.clone(),
            recipient: sent.recipient.clone(),
            message_id: sent.message_id.clone(),
        };
        let Ok(mut line) = serde_json::to_vec(&note) else {
            return;
        };
        line.push(b'\n');
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match self.write(&mut state, &line) {
            Ok(()) => {
                state.failing = false;
                let segment = state.segment;
                // Noted twice (two deliveries of one event at once): the first note, and its
                // segment's count, stand for both.
                if let std::collections::hash_map::Entry::Vacant(e) =
                    state.notes.entry(sent.event_id.clone())
                {
                    e.insert(segment);
                    *state.waiting.entry(segment).or_default() += 1;
                }
            }
            Err(err) => {
                if !state.failing {
                    state.failing = true;
                    tracing::warn!(error = %err, "could not note a sent email in the send journal; a kill before its record commits would send it again");
                }
            }
        }
    }

    fn noted(&self, event_id: &str) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.notes.contains_key(event_id)
    }

    fn recorded(&self, event_id: &str) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(segment) = state.notes.remove(event_id) else {
            return;
        };
        let left = match state.waiting.get_mut(&segment) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => return,
        };
        if left > 0 {
            return;
        }
        state.waiting.remove(&segment);
        if segment != state.segment {
            let _ = std::fs::remove_file(segment_path(&self.dir, segment));
        } else if state.size >= EMPTY_AT_BYTES && state.file.set_len(0).is_ok() {
            state.size = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn sent(i: usize) -> SentEmail {
        SentEmail {
            event_id: format!("event-{i}"),
            request_id: format!("request-{i}"),
            recipient: format!("user{i}@example.com"),
            message_id: format!("<event-{i}@primed>"),
        }
    }

    #[test]
    fn notes_not_recorded_are_found_by_the_next_run_and_recorded_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, leftover) = FileJournal::open(dir.path()).unwrap();
        assert!(leftover.sent.is_empty());
        journal.note(&sent(1));
        journal.note(&sent(2));
        journal.note(&sent(3));
        assert!(journal.noted("event-2"));
        journal.recorded("event-2");
        assert!(!journal.noted("event-2"));
        // The process dies here. The journal has no clean-up on drop and buffers nothing,
        // so dropping it leaves the files as a kill would (and releases the lock as the
        // kernel does for a killed process).
        drop(journal);

        let (_journal, leftover) = FileJournal::open(dir.path()).unwrap();
        let ids: Vec<&str> = leftover.sent.iter().map(|s| s.event_id.as_str()).collect();
        // Every line of the segment: the recorded one too (it is harmless to record again).
        assert_eq!(ids, ["event-1", "event-2", "event-3"]);
        assert_eq!(leftover.sent[0], sent(1));
    }

    #[test]
    fn an_event_noted_twice_keeps_its_first_segment_until_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = FileJournal::open(dir.path()).unwrap();
        journal.note(&sent(0));
        journal.note(&sent(1));
        let line = std::fs::metadata(&FileJournal::segments(dir.path())[0])
            .unwrap()
            .len()
            / 2;
        // Fill the first segment so that the next note starts a second one.
        for i in 2..(ROTATE_BYTES / line + 2) as usize {
            journal.note(&sent(i));
            journal.recorded(&format!("event-{i}"));
        }
        assert_eq!(FileJournal::segments(dir.path()).len(), 2);
        // event-1 again, in the second segment. The first segment keeps standing for it: it
        // stays after event-0 is recorded and goes once event-1 is (noted twice, it used to
        // move to a segment that did not count it, and the first one stayed for good).
        journal.note(&sent(1));
        journal.recorded("event-0");
        assert_eq!(FileJournal::segments(dir.path()).len(), 2);
        journal.recorded("event-1");
        assert_eq!(FileJournal::segments(dir.path()).len(), 1);
    }

    #[test]
    fn a_line_cut_short_by_the_kill_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("00000007.log"),
            "{\"event_id\":\"a\",\"request_id\":\"r\",\"recipient\":\"x@y\",\"message_id\":\"<a@primed>\"}\n{\"event_id\":\"b\",\"requ",
        )
        .unwrap();
        let (journal, leftover) = FileJournal::open(dir.path()).unwrap();
        assert_eq!(leftover.sent.len(), 1);
        assert_eq!(leftover.sent[0].event_id, "a");
        // The new run writes after the segments it found.
        journal.note(&sent(1));
        assert!(
            FileJournal::segments(dir.path())
                .iter()
                .any(|p| p.ends_with("00000008.log"))
        );
    }

    #[test]
    fn a_second_process_cannot_open_the_same_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (_first, _) = FileJournal::open(dir.path()).unwrap();
        let second = FileJournal::open(dir.path());
        assert!(
            matches!(second, Err(JournalError::Busy { .. })),
            "{second:?}"
        );
        let message = second.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("PRIMED_DATA_DIR"), "{message}");
    }

    #[test]
    fn segments_whose_notes_are_all_recorded_go_away_and_the_journal_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = FileJournal::open(dir.path()).unwrap();
        // Far more than a segment's worth, recorded as they go, one kept waiting.
        journal.note(&sent(0));
        let line = serde_json::to_vec(&Note {
            event_id: "event-1".into(),
            request_id: "request-1".into(),
            recipient: "user1@example.com".into(),
            message_id: "<event-1@primed>".into(),
        })
        .unwrap()
        .len() as u64;
        let many = (3 * ROTATE_BYTES / line) as usize;
        for i in 1..many {
            journal.note(&sent(i));
            journal.recorded(&format!("event-{i}"));
        }
        let on_disk: u64 = FileJournal::segments(dir.path())
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        // The first segment stays (event-0 waits in it), the last is being written: at most
        // two segments' worth, not three.
        assert!(on_disk <= 2 * ROTATE_BYTES, "{on_disk} bytes on disk");
        assert_eq!(FileJournal::segments(dir.path()).len(), 2);
        journal.recorded("event-0");
        assert_eq!(FileJournal::segments(dir.path()).len(), 1);
        // With nothing waiting, the segment being written is emptied past its threshold.
        for i in 0..(2 * EMPTY_AT_BYTES / line) as usize {
            journal.note(&sent(i));
            journal.recorded(&format!("event-{i}"));
        }
        let size = std::fs::metadata(&FileJournal::segments(dir.path())[0])
            .unwrap()
            .len();
        assert!(size < EMPTY_AT_BYTES, "{size}");
    }
}
