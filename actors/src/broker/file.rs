//! The `file://` adapter: one JSON document per line.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::Publisher;
use crate::stage::StageError;

pub struct JsonLinesFile {
    path: PathBuf,
    writer: BufWriter<File>,
}

impl JsonLinesFile {
    /// Creates (truncates) the file, making its directory if needed.
    pub fn create(path: &Path) -> Result<Self, StageError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageError::runtime(format!("cannot create {}", dir.display()), e))?;
        }
        let file = File::create(path)
            .map_err(|e| StageError::runtime(format!("cannot create {}", path.display()), e))?;
        Ok(Self {
            path: path.to_path_buf(),
            writer: BufWriter::new(file),
        })
    }
}

impl Publisher for JsonLinesFile {
    fn publish(&mut self, _key: &str, payload: &str) -> Result<(), StageError> {
        self.writer
            .write_all(payload.as_bytes())
            .and_then(|_| self.writer.write_all(b"\n"))
            .map_err(|e| StageError::runtime(format!("cannot write {}", self.path.display()), e))
    }

    fn flush(&mut self) -> Result<(), StageError> {
        self.writer
            .flush()
            .and_then(|_| self.writer.get_ref().sync_data())
            .map_err(|e| StageError::runtime(format!("cannot flush {}", self.path.display()), e))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
