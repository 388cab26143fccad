//! The `file://` adapter: one JSON document per line.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::adapter::Message;
use crate::stage::StageError;

pub struct JsonLinesFile {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl JsonLinesFile {
    /// Creates (truncates) the file, making its directory if needed.
    pub fn create(path: &Path) -> Result<Self, StageError> {
        create_dir_for(path)?;
        let file = File::create(path)
            .map_err(|e| StageError::runtime(format!("cannot create {}", path.display()), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        })
    }

    /// Opens the file for appending, for a stage that replaces one that stopped mid-stream:
    /// the lines already written stay (the reader deduplicates what is published again). An
    /// incomplete last line, torn by the previous instance's death, is cut off so the new lines
    /// start on a line of their own.
    pub fn append(path: &Path) -> Result<Self, StageError> {
        create_dir_for(path)?;
        let failed = |e| StageError::runtime(format!("cannot append to {}", path.display()), e);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(failed)?;
        let len = file.metadata().map_err(failed)?.len();
        let complete = complete_lines_len(&mut file, len).map_err(failed)?;
        if complete < len {
            tracing::warn!(
                path = %path.display(),
                bytes = len - complete,
                "dropping the incomplete last line left by the stopped instance"
            );
            file.set_len(complete).map_err(failed)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        })
    }
}

fn create_dir_for(path: &Path) -> Result<(), StageError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| StageError::runtime(format!("cannot create {}", dir.display()), e))?;
    }
    Ok(())
}

/// The length of `file` (`len` bytes) up to and including its last newline: reads backwards,
/// so a large file costs one block when it ends cleanly.
fn complete_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 * 1024;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(BLOCK);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl JsonLinesFile {
    /// Writes each payload as a line (buffered; [`JsonLinesFile::flush`] makes them durable).
    pub fn write(&mut self, messages: &[Message]) -> Result<(), StageError> {
        for m in messages {
            self.writer
                .write_all(&m.payload)
                .and_then(|_| self.writer.write_all(b"\n"))
                .map_err(|e| {
                    StageError::runtime(format!("cannot write {}", self.path.display()), e)
                })?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), StageError> {
        self.writer
            .flush()
            .and_then(|_| self.writer.get_ref().sync_data())
            .map_err(|e| StageError::runtime(format!("cannot flush {}", self.path.display()), e))
    }

    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_and_flush(mut file: JsonLinesFile, payloads: &[&str]) {
        let messages: Vec<Message> = payloads
            .iter()
            .map(|p| Message {
                key: "cam".into(),
                id: String::new(),
                payload: p.as_bytes().to_vec(),
            })
            .collect();
        file.write(&messages).unwrap();
        file.flush().unwrap();
    }

    #[test]
    fn create_truncates_and_append_keeps_earlier_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/events.jsonl");
        publish_and_flush(JsonLinesFile::create(&path).unwrap(), &["{\"n\":0}"]);
        publish_and_flush(JsonLinesFile::append(&path).unwrap(), &["{\"n\":1}"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n"
        );
        publish_and_flush(JsonLinesFile::create(&path).unwrap(), &["{\"n\":2}"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
    }

    #[test]
    fn append_creates_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.jsonl");
        publish_and_flush(JsonLinesFile::append(&path).unwrap(), &["{}"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }

    #[test]
    fn append_cuts_off_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        // The torn tail is longer than a read block, so the backwards scan crosses blocks.
        let torn = format!("{{\"n\":1,\"pad\":\"{}", "x".repeat(100_000));
        std::fs::write(&path, format!("{{\"n\":0}}\n{torn}")).unwrap();
        publish_and_flush(JsonLinesFile::append(&path).unwrap(), &["{\"n\":1}"]);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"n\":0}\n{\"n\":1}\n"
        );

        // Nothing but a torn line: the file starts over.
        std::fs::write(&path, "{\"n\":").unwrap();
        publish_and_flush(JsonLinesFile::append(&path).unwrap(), &["{\"n\":0}"]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":0}\n");
    }
}
