//! An ordered queue of the answer lines of one streamed response (an NDJSON batch), with
//! bounded memory: lines wait in memory up to [`MEMORY_LIMIT`] bytes, then in an anonymous
//! temporary file, each record sealed (AES-256-GCM, [`crate::seal::aead_seal`]) under a key
//! that only this queue holds — answers carry device keys, and a file outlives nothing but the
//! queue's own descriptor. The writer never waits: a client that sends its whole batch before
//! it reads the answer (most HTTP libraries) is never stalled by answers it has not read yet,
//! so the server keeps reading its body (API.md A30).
//!
//! One writer, one reader. Order is kept: once a line went to the file, every later line does
//! too until the reader has drained the file.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt as _;
use std::sync::Mutex;

use actix_web::web::Bytes;
use zeroize::Zeroizing;

/// Bytes of answers kept in memory per response before they go to the sealed file.
pub const MEMORY_LIMIT: usize = 4 * 1024 * 1024;

/// The queue.
#[derive(Default)]
pub struct Spool {
    inner: Mutex<Inner>,
    ready: tokio::sync::Notify,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spool([answers elided])")
    }
}

#[derive(Default)]
struct Inner {
    memory: VecDeque<Bytes>,
    memory_bytes: usize,
    file: Option<SpillFile>,
    closed: bool,
    abandoned: bool,
}

/// Records `[u32 length][nonce ‖ ciphertext]`, written and read at offsets; the record number
/// is the AEAD's associated data, so records cannot be reordered or replayed.
struct SpillFile {
    file: std::fs::File,
    key: Zeroizing<[u8; 32]>,
    write_at: u64,
    read_at: u64,
    written: u64,
    read: u64,
}

/// Why a line could not be queued or read back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// the temporary file could not be created, written or read
    #[error("answer spool I/O failed")]
    Io(#[from] std::io::Error),
    /// a record did not open (the file was changed under us)
    #[error("answer spool record is corrupt")]
    Corrupt,
}

impl Spool {
    /// Queues a line; never waits.
    pub fn push(&self, line: Bytes) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        if inner.file.is_none() && inner.memory_bytes + line.len() <= MEMORY_LIMIT {
            inner.memory_bytes += line.len();
            inner.memory.push_back(line);
        } else {
            if inner.file.is_none() {
                inner.file = Some(SpillFile::create()?);
            }
            if let Some(file) = inner.file.as_mut() {
                file.append(&line)?;
            }
        }
        drop(inner);
        self.ready.notify_one();
        Ok(())
    }

    /// No more lines will come.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Whether the reader is gone (the client went away): the writer may stop.
    pub fn abandoned(&self) -> bool {
        self.lock().abandoned
    }

    /// The reader is gone.
    pub fn abandon(&self) {
        let mut inner = self.lock();
        inner.abandoned = true;
        inner.memory.clear();
        inner.memory_bytes = 0;
        inner.file = None;
    }

    /// The next line in order; `None` once closed and drained.
    pub async fn pop(&self) -> Option<Result<Bytes, SpoolError>> {
        loop {
            {
                let mut inner = self.lock();
                if let Some(line) = inner.memory.pop_front() {
                    inner.memory_bytes -= line.len();
                    return Some(Ok(line));
                }
                if let Some(file) = inner.file.as_mut() {
                    if file.read < file.written {
                        let line = file.next();
                        if file.read == file.written {
                            inner.file = None; // drained: back to memory
                        }
                        return Some(line);
                    }
                }
                if inner.closed {
                    return None;
                }
            }
            self.ready.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl SpillFile {
    fn create() -> Result<Self, SpoolError> {
        use rand::RngCore as _;
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut *key);
        Ok(Self { file: tempfile::tempfile()?, key, write_at: 0, read_at: 0, written: 0, read: 0 })
    }

    fn append(&mut self, line: &[u8]) -> Result<(), SpoolError> {
        let blob = crate::seal::aead_seal(&self.key, &self.written.to_be_bytes(), line);
        let len = u32::try_from(blob.len()).map_err(|_| SpoolError::Corrupt)?;
        let mut record = Vec::with_capacity(4 + blob.len());
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(&blob);
        self.file.write_all_at(&record, self.write_at)?;
        self.write_at += record.len() as u64;
        self.written += 1;
        Ok(())
    }

    fn next(&mut self) -> Result<Bytes, SpoolError> {
        let mut len = [0u8; 4];
        self.file.read_exact_at(&mut len, self.read_at)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut blob = vec![0u8; len];
        self.file.read_exact_at(&mut blob, self.read_at + 4)?;
        let line = crate::seal::aead_open(&self.key, &self.read.to_be_bytes(), &blob)
            .ok_or(SpoolError::Corrupt)?;
        self.read_at += 4 + len as u64;
        self.read += 1;
        Ok(Bytes::from(line.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_come_back_in_order_across_memory_and_the_sealed_file() {
        let spool = Spool::default();
        let line = |i: usize| Bytes::from(format!("{i:08}{}\n", "k".repeat(1000)));
        let n = 2 * MEMORY_LIMIT / 1000 + 50;
        for i in 0..n {
            spool.push(line(i)).unwrap();
        }
        assert!(spool.lock().file.is_some(), "past the memory limit lines go to the file");
        assert!(spool.lock().memory_bytes <= MEMORY_LIMIT);
        spool.close();
        for i in 0..n {
            assert_eq!(spool.pop().await.unwrap().unwrap(), line(i), "line {i}");
        }
        assert!(spool.pop().await.is_none());
    }

    #[tokio::test]
    async fn the_file_holds_no_plaintext() {
        let spool = Spool::default();
        let secret = "SECRETKEYMATERIAL";
        for _ in 0..(MEMORY_LIMIT / 100 + 10) {
            spool.push(Bytes::from(format!("{secret}{}", "x".repeat(100)))).unwrap();
        }
        let mut inner = spool.lock();
        let file = inner.file.as_mut().unwrap();
        let mut all = vec![0u8; file.write_at as usize];
        file.file.read_exact_at(&mut all, 0).unwrap();
        assert!(!all.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }

    #[tokio::test]
    async fn a_reader_waits_for_the_writer() {
        let spool = std::sync::Arc::new(Spool::default());
        let reader = spool.clone();
        let got = tokio::spawn(async move { reader.pop().await.unwrap().unwrap() });
        tokio::task::yield_now().await;
        spool.push(Bytes::from_static(b"late\n")).unwrap();
        assert_eq!(got.await.unwrap(), Bytes::from_static(b"late\n"));
    }
}
