//! The broker stage's durable spool: an append-only log of messages on local disk, so events
//! accepted by the stage survive a broker outage, a slow broker and a SIGKILL of the stage.
//!
//! Layout of a spool directory:
//! * `<first seq, 20 digits>.seg`: segments of records `[len u32 LE][crc32 u32 LE][body]`, the
//!   body a postcard [`Record`] (its sequence number and the [`Message`]). Segments rotate at
//!   [`SpoolSettings::segment_bytes`]; a segment goes once every message in it is confirmed.
//! * `cursor`: the sequence number of the first message the broker has not confirmed, written
//!   to a temporary file and renamed, so it is always whole.
//! * `lock`: held (`flock`) by the one process using the spool.
//!
//! A message counts as accepted once [`Spool::append`] has written it to the kernel: a killed
//! process loses nothing; [`Spool::sync`] (end of stream, the runtime's flush before it
//! acknowledges frames upstream) also makes it survive a power cut. On open, a torn record at
//! the end of the last segment (the previous process died mid-write) is cut off with a warning.
//!
//! The spool is bounded ([`SpoolSettings::max_bytes`]); what happens when it is full is the
//! user's choice ([`WhenFull`]).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, ErrorKind as IoErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::adapter::Message;
use crate::stage::StageError;

/// What [`Spool::append`] does when the spool has no room for more messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait until the broker confirms enough to make room: the pipeline slows down to the
    /// broker's pace, nothing is lost.
    #[default]
    Block,
    /// Delete the oldest unconfirmed segment to make room; the lost messages are counted
    /// and logged.
    DropOldest,
    /// Fail the stage with a clear error.
    Fail,
}

#[derive(Debug, Clone)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    /// Upper bound of the segments' total size on disk.
    pub max_bytes: u64,
    /// Size at which a segment is closed and the next one started.
    pub segment_bytes: u64,
    pub when_full: WhenFull,
}

impl SpoolSettings {
    /// Segments a quarter of the bound (at most 16 MiB), so confirmed segments free space well
    /// before the spool is full.
    pub fn new(dir: PathBuf, max_bytes: u64, when_full: WhenFull) -> Self {
        Self {
            dir,
            max_bytes,
            segment_bytes: (max_bytes / 4).clamp(4096, 16 << 20),
            when_full,
        }
    }
}

/// A message with its place in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub message: Message,
}

const HEADER: u64 = 8;
/// A record longer than this is corruption, not data (messages are far smaller).
const MAX_RECORD: u32 = 256 << 20;

/// Counters for reports and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages appended and not yet confirmed.
    pub pending: u64,
    pub bytes: u64,
    /// Messages deleted unconfirmed by [`WhenFull::DropOldest`].
    pub dropped: u64,
    /// Messages recovered from disk when the spool was opened (left by an earlier process).
    pub recovered: u64,
}

pub struct Spool {
    inner: Mutex<Inner>,
    /// Signalled when messages are appended (the reader waits on it).
    appended: Condvar,
    /// Signalled when confirmed segments are deleted (a blocked writer waits on it).
    freed: Condvar,
}

struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

struct Inner {
    settings: SpoolSettings,
    segments: VecDeque<Segment>,
    writer: BufWriter<File>,
    /// The next sequence number to write.
    write_seq: u64,
    /// The first unconfirmed sequence number.
    cursor: u64,
    /// The next sequence number the reader hands out.
    read_seq: u64,
    reader: Option<SegmentReader>,
    stats: SpoolStats,
    _lock: File,
}

/// An open segment positioned at `next_seq`.
struct SegmentReader {
    first_seq: u64,
    file: BufReader<File>,
    next_seq: u64,
}

fn io_error(context: impl std::fmt::Display, e: std::io::Error) -> StageError {
    StageError::runtime(context, e)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.seg"))
}

impl Spool {
    /// Opens (creating if needed) the spool in `settings.dir`, recovering what an earlier
    /// process left: unconfirmed messages are handed out again first.
    pub fn open(settings: SpoolSettings) -> Result<Self, StageError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_error(format!("cannot create spool {}", dir.display()), e))?;
        let lock = File::create(dir.join("lock"))
            .map_err(|e| io_error(format!("cannot create {}/lock", dir.display()), e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StageError::Runtime(format!(
                    "spool {} is in use by another process; give each broker stage its own `spool`",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(format!("cannot lock {}/lock", dir.display()), e))
            }
        }

        let mut segments = list_segments(&dir)?;
        let cursor = read_cursor(&dir)?
            .or_else(|| segments.front().map(|s| s.first_seq))
            .unwrap_or(0);
        // Validate the last segment record by record: only it can end in a torn write.
        let write_seq = match segments.back_mut() {
            Some(last) => recover_tail(last)?,
            None => cursor,
        };
        if segments.is_empty() || write_seq < cursor {
            // Nothing on disk, or a cursor ahead of the data (segments deleted by hand):
            // start a fresh segment at the cursor.
            for s in segments.drain(..) {
                remove(&s.path)?;
            }
            let first_seq = cursor.max(write_seq);
            segments.push_back(Segment {
                first_seq,
                path: segment_path(&dir, first_seq),
                bytes: 0,
            });
        }
        let write_seq = write_seq.max(cursor);
        let last = segments.back().expect("at least one segment");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&last.path)
            .map_err(|e| io_error(format!("cannot open {}", last.path.display()), e))?;
        let mut inner = Inner {
            settings,
            segments,
            writer: BufWriter::new(file),
            write_seq,
            cursor,
            read_seq: cursor,
            reader: None,
            stats: SpoolStats::default(),
            _lock: lock,
        };
        inner.delete_confirmed_segments()?;
        inner.read_seq = inner.read_seq.max(inner.first_seq());
        inner.cursor = inner.cursor.max(inner.first_seq());
        inner.stats.recovered = inner.write_seq - inner.cursor;
        inner.update_stats();
        if inner.stats.recovered > 0 {
            tracing::info!(
                spool = %inner.settings.dir.display(),
                messages = inner.stats.recovered,
                "recovered unconfirmed messages from the spool; they are delivered first"
            );
        }
        Ok(Self {
            inner: Mutex::new(inner),
            appended: Condvar::new(),
            freed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug elsewhere; the data is still consistent
        // enough to keep delivering, so carry on with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `messages` and hands them to the kernel. When the spool is full, behaves as
    /// [`WhenFull`] says; `waiting` is called (about every 10 s) while blocked, to report.
    pub fn append(
        &self,
        messages: &[Message],
        mut waiting: impl FnMut(&SpoolStats),
    ) -> Result<(), StageError> {
        let mut inner = self.lock();
        for message in messages {
            let body = postcard::to_stdvec(&Record {
                seq: inner.write_seq,
                message: message.clone(),
            })
            .map_err(|e| StageError::Runtime(format!("cannot encode a spool record: {e}")))?;
            let len = HEADER + body.len() as u64;
            if len > inner.settings.max_bytes {
                return Err(StageError::Runtime(format!(
                    "message {} is {len} bytes, more than the whole spool ({} bytes, `spool_max_mb`)",
                    message.id, inner.settings.max_bytes
                )));
            }
            let mut last_report = Instant::now();
            while inner.stats.bytes + len > inner.settings.max_bytes {
                match inner.settings.when_full {
                    WhenFull::Fail => {
                        return Err(StageError::Runtime(format!(
                            "spool {} is full ({} messages, {} of {} bytes) because the broker \
                             has not confirmed them; raise `spool_max_mb` or choose another \
                             `when_full`",
                            inner.settings.dir.display(),
                            inner.stats.pending,
                            inner.stats.bytes,
                            inner.settings.max_bytes
                        )))
                    }
                    WhenFull::DropOldest => inner.drop_oldest_segment()?,
                    WhenFull::Block => {
                        // Let the reader see what is written so far, then wait for room.
                        inner.flush()?;
                        self.appended.notify_all();
                        inner = self
                            .freed
                            .wait_timeout(inner, Duration::from_millis(500))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        inner.reclaim()?;
                        if last_report.elapsed() >= Duration::from_secs(10) {
                            waiting(&inner.stats);
                            last_report = Instant::now();
                        }
                    }
                }
            }
            inner.write_record(&body)?;
        }
        inner.flush()?;
        inner.update_stats();
        drop(inner);
        self.appended.notify_all();
        Ok(())
    }

    /// Makes everything appended so far durable on disk (fdatasync).
    pub fn sync(&self) -> Result<(), StageError> {
        let mut inner = self.lock();
        inner.flush()?;
        let path = &inner.segments.back().expect("a segment").path;
        inner
            .writer
            .get_ref()
            .sync_data()
            .map_err(|e| io_error(format!("cannot sync {}", path.display()), e))
    }

    /// Hands out the next unread records (at most `max` messages or about `max_bytes`),
    /// waiting up to `wait` for one to arrive; empty when none did.
    pub fn read(
        &self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, StageError> {
        let mut inner = self.lock();
        if inner.read_seq >= inner.write_seq {
            inner = self
                .appended
                .wait_timeout(inner, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < max && bytes < max_bytes && inner.read_seq < inner.write_seq {
            let record = inner.read_next()?;
            bytes += record.message.payload.len();
            records.push(record);
        }
        Ok(records)
    }

    /// Records that the broker confirmed every message before `seq`: advances the cursor
    /// (on disk too) and deletes segments no longer needed.
    pub fn commit(&self, seq: u64) -> Result<(), StageError> {
        let mut inner = self.lock();
        if seq <= inner.cursor {
            return Ok(());
        }
        inner.cursor = seq.min(inner.write_seq);
        write_cursor(&inner.settings.dir, inner.cursor)?;
        inner.reclaim()?;
        inner.update_stats();
        drop(inner);
        self.freed.notify_all();
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        self.lock().stats
    }

    pub fn dir(&self) -> PathBuf {
        self.lock().settings.dir.clone()
    }
}

impl Inner {
    fn first_seq(&self) -> u64 {
        self.segments
            .front()
            .map_or(self.write_seq, |s| s.first_seq)
    }

    fn update_stats(&mut self) {
        self.stats.pending = self.write_seq - self.cursor;
        self.stats.bytes = self.segments.iter().map(|s| s.bytes).sum();
    }

    fn flush(&mut self) -> Result<(), StageError> {
        let path = &self.segments.back().expect("a segment").path;
        self.writer
            .flush()
            .map_err(|e| io_error(format!("cannot write {}", path.display()), e))
    }

    fn write_record(&mut self, body: &[u8]) -> Result<(), StageError> {
        let last = self.segments.back().expect("a segment");
        if last.bytes >= self.settings.segment_bytes {
            self.rotate()?;
        }
        let mut header = [0u8; HEADER as usize];
        header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
        header[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
        let last = self.segments.back_mut().expect("a segment");
        self.writer
            .write_all(&header)
            .and_then(|_| self.writer.write_all(body))
            .map_err(|e| io_error(format!("cannot write {}", last.path.display()), e))?;
        last.bytes += HEADER + body.len() as u64;
        self.stats.bytes += HEADER + body.len() as u64;
        self.write_seq += 1;
        Ok(())
    }

    /// Closes the current segment (synced) and starts the next at `write_seq`.
    fn rotate(&mut self) -> Result<(), StageError> {
        self.flush()?;
        let _ = self.writer.get_ref().sync_data();
        let path = segment_path(&self.settings.dir, self.write_seq);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error(format!("cannot create {}", path.display()), e))?;
        self.writer = BufWriter::new(file);
        self.segments.push_back(Segment {
            first_seq: self.write_seq,
            path,
            bytes: 0,
        });
        Ok(())
    }

    /// Deletes segments whose every message is confirmed. When everything is confirmed and
    /// the current segment holds a good part of a segment's worth, starts a new one so the old
    /// one can go too.
    fn reclaim(&mut self) -> Result<(), StageError> {
        let last = self.segments.back().expect("a segment");
        if self.cursor == self.write_seq && last.bytes >= self.settings.segment_bytes / 4 {
            self.rotate()?;
        }
        self.delete_confirmed_segments()?;
        self.update_stats();
        Ok(())
    }

    fn delete_confirmed_segments(&mut self) -> Result<(), StageError> {
        while self.segments.len() > 1 && self.segments[1].first_seq <= self.cursor {
            self.remove_oldest_segment()?;
        }
        Ok(())
    }

    /// Deletes the oldest segment (never the one being written: callers keep two or more),
    /// closing the reader if it was reading it; returns its first sequence number.
    fn remove_oldest_segment(&mut self) -> Result<u64, StageError> {
        let s = self
            .segments
            .pop_front()
            .expect("callers keep two segments or more");
        if self
            .reader
            .as_ref()
            .is_some_and(|r| r.first_seq == s.first_seq)
        {
            self.reader = None;
        }
        remove(&s.path)?;
        Ok(s.first_seq)
    }

    /// [`WhenFull::DropOldest`]: deletes the oldest segment, confirmed or not.
    fn drop_oldest_segment(&mut self) -> Result<(), StageError> {
        if self.segments.len() == 1 {
            self.rotate()?;
        }
        let first_seq = self.remove_oldest_segment()?;
        let next = self.segments.front().expect("one left").first_seq;
        let lost = next.saturating_sub(self.cursor.max(first_seq));
        self.cursor = self.cursor.max(next);
        self.read_seq = self.read_seq.max(next);
        write_cursor(&self.settings.dir, self.cursor)?;
        self.stats.dropped += lost;
        self.update_stats();
        tracing::warn!(
            spool = %self.settings.dir.display(),
            lost,
            "spool full: dropped its oldest unconfirmed messages (when_full = \"drop_oldest\")"
        );
        Ok(())
    }

    /// The record at `read_seq`, from the segment holding it.
    fn read_next(&mut self) -> Result<Record, StageError> {
        let seq = self.read_seq;
        let index = self
            .segments
            .iter()
            .rposition(|s| s.first_seq <= seq)
            .expect("read_seq is never below the first segment");
        let segment = &self.segments[index];
        let positioned = self
            .reader
            .as_ref()
            .is_some_and(|r| r.first_seq == segment.first_seq && r.next_seq == seq);
        if !positioned {
            let file = File::open(&segment.path)
                .map_err(|e| io_error(format!("cannot read {}", segment.path.display()), e))?;
            let mut reader = SegmentReader {
                first_seq: segment.first_seq,
                file: BufReader::new(file),
                next_seq: segment.first_seq,
            };
            while reader.next_seq < seq {
                read_record(&mut reader.file, &segment.path)?;
                reader.next_seq += 1;
            }
            self.reader = Some(reader);
        }
        let path = segment.path.clone();
        let reader = self.reader.as_mut().expect("positioned above");
        let record = read_record(&mut reader.file, &path)?;
        if record.seq != seq {
            return Err(StageError::Runtime(format!(
                "spool {} is corrupt: expected message {seq}, found {}",
                path.display(),
                record.seq
            )));
        }
        reader.next_seq += 1;
        self.read_seq += 1;
        Ok(record)
    }
}

fn remove(path: &Path) -> Result<(), StageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == IoErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("cannot delete {}", path.display()), e)),
    }
}

fn list_segments(dir: &Path) -> Result<VecDeque<Segment>, StageError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| io_error(format!("cannot list spool {}", dir.display()), e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(format!("cannot list {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(first_seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let bytes = entry
            .metadata()
            .map_err(|e| io_error(format!("cannot stat {}", entry.path().display()), e))?
            .len();
        segments.push(Segment {
            first_seq,
            path: entry.path(),
            bytes,
        });
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments.into())
}

fn read_cursor(dir: &Path) -> Result<Option<u64>, StageError> {
    let path = dir.join("cursor");
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            StageError::Runtime(format!(
                "spool cursor {} is not a number: `{}`",
                path.display(),
                text.trim()
            ))
        }),
        Err(e) if e.kind() == IoErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(format!("cannot read {}", path.display()), e)),
    }
}

fn write_cursor(dir: &Path, cursor: u64) -> Result<(), StageError> {
    let tmp = dir.join("cursor.tmp");
    std::fs::write(&tmp, format!("{cursor}\n"))
        .and_then(|_| std::fs::rename(&tmp, dir.join("cursor")))
        .map_err(|e| io_error(format!("cannot write the cursor in {}", dir.display()), e))
}

/// Reads one record; a short or damaged one is an error naming the file.
fn read_record(file: &mut impl Read, path: &Path) -> Result<Record, StageError> {
    let corrupt = |what: &str| {
        StageError::Runtime(format!(
            "spool segment {} is corrupt: {what}",
            path.display()
        ))
    };
    let mut header = [0u8; HEADER as usize];
    file.read_exact(&mut header)
        .map_err(|e| io_error(format!("cannot read {}", path.display()), e))?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(corrupt(&format!("record length {len}")));
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact(&mut body)
        .map_err(|e| io_error(format!("cannot read {}", path.display()), e))?;
    if crc32fast::hash(&body) != crc {
        return Err(corrupt("checksum mismatch"));
    }
    postcard::from_bytes(&body).map_err(|e| corrupt(&format!("undecodable record: {e}")))
}

/// Scans the last segment, cuts off a torn or damaged tail, and returns the next sequence
/// number to write.
fn recover_tail(segment: &mut Segment) -> Result<u64, StageError> {
    let path = segment.path.clone();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io_error(format!("cannot open {}", path.display()), e))?;
    let len = segment.bytes;
    let mut reader = BufReader::new(&mut file);
    let mut good = 0u64;
    let mut next_seq = segment.first_seq;
    while good < len {
        match read_record(&mut reader, &path) {
            Ok(record) if record.seq == next_seq => {
                good = reader
                    .stream_position()
                    .map_err(|e| io_error(format!("cannot read {}", path.display()), e))?;
                next_seq += 1;
            }
            _ => break,
        }
    }
    drop(reader);
    if good < len {
        tracing::warn!(
            segment = %path.display(),
            bytes = len - good,
            "cutting off a torn or damaged end of the spool (left by a process that stopped mid-write)"
        );
        file.set_len(good)
            .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()))
            .map_err(|e| io_error(format!("cannot truncate {}", path.display()), e))?;
        segment.bytes = good;
    }
    Ok(next_seq)
}

#[cfg(test)]
mod tests;
