//! The content-addressed artifact store: model artifacts named by the
//! SHA-256 of their bytes.
//!
//! Layout under the root directory:
//!
//! ```text
//! root/sha256/<64 lowercase hex>   complete, fsynced artifacts, named by digest
//! root/tmp/<random>.part           uploads in progress
//! ```
//!
//! An upload is written and hashed into `tmp/`, fsynced, then renamed into
//! `sha256/` (one atomic step; `tmp/` sits under the same root so the rename
//! never crosses file systems) and the directory is fsynced. A file under
//! `sha256/` is therefore always complete and durable; a crash leaves at
//! most a stray file in `tmp/`, which [`ArtifactStore::open`] removes. One
//! process owns a root: opening it from a second process while the first
//! is uploading removes the first one's temp files, and those uploads then
//! fail (cleanly, nothing half-written is published).
//!
//! The API is synchronous where the work is a few metadata calls or meant
//! to run on the blocking pool anyway ([`ArtifactStore::verify`] reads every
//! artifact), and async where bytes arrive from the network.
//!
//! S3-compatible storage later: the same names become object keys
//! (`sha256/<hex>`). An object appears only when its upload completes, so
//! the temp-then-rename dance becomes "multipart upload to `tmp/<random>`,
//! server-side copy to `sha256/<hex>` with `If-None-Match: *`, delete the
//! temp key" (or a direct upload when the client states the digest up front,
//! checked by S3 with `x-amz-checksum-sha256`). `put_stream`, `contains`,
//! `verify` and `remove` carry over as they are; `path_of` is local-only and
//! would give way to a reader or a presigned URL. At that point these methods
//! become a trait with this type as its local implementation.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};

/// Prefix of every digest this store hands out and accepts.
pub const DIGEST_PREFIX: &str = "sha256:";

/// Upload chunks are gathered up to this many bytes before one trip to the
/// blocking pool hashes and writes them: network chunks are often a few
/// KiB, and a pool hop per chunk would cost more than the work.
const WRITE_BATCH: usize = 1 << 20;

/// Read buffer for hashing and copying local files.
const READ_BUF: usize = 1 << 20;

/// An artifact now in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Stored {
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
    /// False when the same content was already stored.
    pub created: bool,
}

/// What [`ArtifactStore::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// Artifacts examined (missing ones included).
    pub checked: u64,
    /// Artifacts whose bytes no longer hash to their name, in digest order.
    pub mismatched: Vec<Mismatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Mismatch {
    /// The name the artifact is stored under.
    pub digest: String,
    /// `sha256:<hex>` of what is there now; `None` when nothing is.
    pub actual: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The upload went past the size limit; nothing was stored.
    #[error("artifact larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// Not `sha256:` followed by 64 lowercase hex digits.
    #[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    InvalidDigest(String),
    #[error("artifact store I/O: {0}")]
    Io(#[from] io::Error),
    /// The incoming stream failed (client went away, broken body).
    #[error("artifact upload failed: {0}")]
    Upload(String),
}

/// A content-addressed directory of artifacts. Cheap to clone: it is only
/// its root path, and every operation works on the file system directly.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    root: PathBuf,
}

impl ArtifactStore {
    /// Creates `root/`, `root/sha256/` and `root/tmp/` if missing, and
    /// removes temp files left in `root/tmp/` by a crash. (Fails only with
    /// [`ArtifactError::Io`]; the one error type keeps callers' `?` simple.)
    pub fn open(root: &Path) -> Result<ArtifactStore, ArtifactError> {
        let store = ArtifactStore {
            root: root.to_owned(),
        };
        for dir in [store.sha_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(|e| with_path(e, &dir))?;
        }
        // The new directories' entries must survive a crash too, or
        // artifacts fsynced into them later could vanish with them.
        sync_dir(root).map_err(|e| with_path(e, root))?;
        store.remove_stale_temp_files()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Streams `stream` into the store, hashing as bytes arrive, and
    /// publishes it under its digest once complete and fsynced. Storing
    /// content that is already there is not an error (`created: false`).
    ///
    /// Fails with [`ArtifactError::TooLarge`] as soon as more than
    /// `size_max` bytes arrive, and with [`ArtifactError::Upload`] when the
    /// stream yields an error; either way, and if this future is dropped,
    /// nothing is left behind. The loop ends when the stream does, so
    /// callers bound slow clients with a timeout.
    pub async fn put_stream<S, E>(
        &self,
        mut stream: S,
        size_max: u64,
    ) -> Result<Stored, ArtifactError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tmp_dir = self.tmp_dir();
        let mut temp = blocking(move || TempFile::create(&tmp_dir)).await?;
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batched = 0usize;
        let mut size = 0u64;
        while let Some(item) = stream.next().await {
            // Early returns drop `temp`, whose guard removes the temp file.
            let chunk = item.map_err(|e| ArtifactError::Upload(e.into().to_string()))?;
            size = size.saturating_add(chunk.len() as u64);
            if size > size_max {
                return Err(ArtifactError::TooLarge { limit: size_max });
            }
            if chunk.is_empty() {
                continue;
            }
            batched += chunk.len();
            batch.push(chunk);
            if batched >= WRITE_BATCH {
                // Hashing and writing both run on the blocking pool, so a big
                // upload never holds a runtime thread the data plane needs.
                let chunks = std::mem::take(&mut batch);
                batched = 0;
                temp = blocking(move || {
                    temp.write_chunks(&chunks)?;
                    Ok(temp)
                })
                .await?;
            }
        }
        let sha_dir = self.sha_dir();
        // The commit owns the temp file: if this future is dropped while the
        // commit runs, it still finishes or cleans up on its own.
        let stored = blocking(move || {
            temp.write_chunks(&batch)?;
            temp.commit(&sha_dir)
        })
        .await?;
        Ok(stored)
    }

    /// Copies a local file into the store (no size limit: the caller chose
    /// the file).
    pub async fn put_file(&self, path: &Path) -> Result<Stored, ArtifactError> {
        let source = path.to_owned();
        let tmp_dir = self.tmp_dir();
        let sha_dir = self.sha_dir();
        let stored = blocking(move || {
            let file = File::open(&source).map_err(|e| with_path(e, &source))?;
            let mut temp = TempFile::create(&tmp_dir)?;
            io::copy(&mut BufReader::with_capacity(READ_BUF, file), &mut temp)?;
            temp.commit(&sha_dir)
        })
        .await?;
        Ok(stored)
    }

    /// Whether an artifact with this digest is stored (false for an invalid
    /// digest).
    pub fn contains(&self, digest: &str) -> bool {
        self.path_of(digest).is_ok_and(|path| path.is_file())
    }

    /// Where the artifact with this digest lives (whether or not it is
    /// there). Only `sha256:` and 64 lowercase hex digits are accepted, so
    /// the result is always a direct child of `root/sha256/`.
    pub fn path_of(&self, digest: &str) -> Result<PathBuf, ArtifactError> {
        Ok(self.sha_dir().join(hex_of(digest)?))
    }

    /// Re-hashes every stored artifact, or only the given digests, and
    /// reports those whose bytes no longer match their name or are gone.
    /// Reads everything it checks: run it on the blocking pool.
    pub fn verify(&self, only: Option<&[String]>) -> Result<VerifyReport, ArtifactError> {
        let hexes: Vec<String> = match only {
            Some(digests) => digests
                .iter()
                .map(|digest| hex_of(digest).map(str::to_owned))
                .collect::<Result<_, _>>()?,
            None => self.list_hexes()?,
        };
        let mut report = VerifyReport::default();
        for hex in hexes {
            let path = self.sha_dir().join(&hex);
            report.checked += 1;
            let actual = match hash_file(&path) {
                Ok(actual) if actual == hex => continue,
                Ok(actual) => Some(format!("{DIGEST_PREFIX}{actual}")),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(with_path(e, &path).into()),
            };
            report.mismatched.push(Mismatch {
                digest: format!("{DIGEST_PREFIX}{hex}"),
                actual,
            });
        }
        Ok(report)
    }

    /// Digests of every stored artifact, sorted (what GC looks at).
    pub fn digests(&self) -> Result<Vec<String>, ArtifactError> {
        Ok(self
            .list_hexes()?
            .into_iter()
            .map(|hex| format!("{DIGEST_PREFIX}{hex}"))
            .collect())
    }

    /// Deletes an artifact; false when it was not there. Callers check
    /// retention rules (versions that still name it) first.
    pub fn remove(&self, digest: &str) -> Result<bool, ArtifactError> {
        let path = self.path_of(digest)?;
        match fs::remove_file(&path) {
            Ok(()) => {
                // Make the removal durable, so a crash cannot bring back an
                // artifact the caller was told is gone.
                sync_dir(&self.sha_dir())?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(with_path(e, &path).into()),
        }
    }

    fn sha_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Hex names of the files under `sha256/`, sorted so reports are stable.
    /// Anything else there is skipped with a warning: it is not an artifact
    /// this store wrote, and reporting it by a name that is not a digest
    /// would only confuse callers that act on the report.
    fn list_hexes(&self) -> io::Result<Vec<String>> {
        let dir = self.sha_dir();
        let mut hexes = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| with_path(e, &dir))? {
            let entry = entry?;
            let name = entry.file_name();
            match name.to_str() {
                Some(hex) if is_hex64(hex) && entry.file_type()?.is_file() => {
                    hexes.push(hex.to_owned());
                }
                _ => tracing::warn!(
                    path = %entry.path().display(),
                    "artifact store: ignoring an entry that is not an artifact"
                ),
            }
        }
        hexes.sort_unstable();
        Ok(hexes)
    }

    fn remove_stale_temp_files(&self) -> io::Result<()> {
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir).map_err(|e| with_path(e, &dir))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_file() {
                fs::remove_file(&path).map_err(|e| with_path(e, &path))?;
                tracing::info!(path = %path.display(), "artifact store: removed a stale temp file");
            } else {
                // This store only ever writes plain files here.
                tracing::warn!(path = %path.display(), "artifact store: leaving an unexpected entry in tmp/");
            }
        }
        Ok(())
    }
}

/// An upload being written: the open temp file, the running hash and size.
/// Dropping it without [`TempFile::commit`] removes the file.
struct TempFile {
    // Declared before `guard` so the file is closed before it is removed.
    file: File,
    hasher: Sha256,
    size: u64,
    guard: RemoveOnDrop,
}

impl TempFile {
    fn create(tmp_dir: &Path) -> io::Result<TempFile> {
        // 64 random bits and `create_new`: two uploads never share a file.
        let path = tmp_dir.join(format!("{:016x}.part", fastrand::u64(..)));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| with_path(e, &path))?;
        Ok(TempFile {
            file,
            hasher: Sha256::new(),
            size: 0,
            guard: RemoveOnDrop { path, armed: true },
        })
    }

    fn write_chunks(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        chunks.iter().try_for_each(|chunk| self.write_all(chunk))
    }

    /// Publishes the file under its digest: fsync, rename into `sha_dir`,
    /// fsync `sha_dir`. If the digest is already stored the temp file is
    /// simply dropped.
    fn commit(self, sha_dir: &Path) -> io::Result<Stored> {
        let TempFile {
            file,
            hasher,
            size,
            mut guard,
        } = self;
        let hex = format!("{:x}", hasher.finalize());
        let final_path = sha_dir.join(&hex);
        let created = match fs::symlink_metadata(&final_path) {
            // Same name, same size: same content (the name is its hash).
            // Deep checks are `verify`'s job, not every upload's.
            Ok(meta) if meta.is_file() && meta.len() == size => false,
            Ok(_) => {
                // Content that no longer matches its name (truncated or
                // grown): replace it atomically with the good copy.
                tracing::warn!(path = %final_path.display(), "artifact store: replacing a corrupt artifact");
                publish(&file, &guard.path, &final_path)?;
                guard.armed = false;
                false
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                publish(&file, &guard.path, &final_path)?;
                guard.armed = false;
                true
            }
            Err(e) => return Err(with_path(e, &final_path)),
        };
        drop(file);
        // Also when the artifact was already there: it may come from a
        // concurrent upload that has renamed but not yet fsynced, and this
        // call must not report success before the name is durable.
        sync_dir(sha_dir).map_err(|e| with_path(e, sha_dir))?;
        Ok(Stored {
            digest: format!("{DIGEST_PREFIX}{hex}"),
            size,
            created,
        })
    }
}

/// Fsyncs the temp file's data, then renames it to its final name.
fn publish(file: &File, temp_path: &Path, final_path: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(temp_path, final_path).map_err(|e| with_path(e, final_path))
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        // Hash exactly what reached the file, so digest and content agree.
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Removes a path when dropped while armed: the temp file goes away on
/// every early return, error and cancelled upload. Disarmed once the file
/// has been renamed to its final name.
struct RemoveOnDrop {
    path: PathBuf,
    armed: bool,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // One unlink, fine even on a runtime thread. Failing to remove it
        // only leaves garbage that the next `open` removes.
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "artifact store: could not remove a temp file");
            }
        }
    }
}

/// The hex part of a valid digest.
fn hex_of(digest: &str) -> Result<&str, ArtifactError> {
    digest
        .strip_prefix(DIGEST_PREFIX)
        .filter(|hex| is_hex64(hex))
        .ok_or_else(|| {
            // The digest may come from a request: keep the message short.
            let shown: String = digest.chars().take(80).collect();
            ArtifactError::InvalidDigest(shown)
        })
}

/// 64 lowercase hex digits: a SHA-256 as this store names it. Nothing else
/// (no `/`, no `.`) can pass, which is what rules out path traversal.
fn is_hex64(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lowercase hex SHA-256 of a file's bytes.
fn hash_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    // `io::copy` from a `BufReader` reads straight into its buffer; the loop
    // ends at end of file.
    io::copy(
        &mut BufReader::with_capacity(READ_BUF, File::open(path)?),
        &mut hasher,
    )?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Makes a directory's entries (renames, creations, removals) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    // Elsewhere a directory cannot be opened as a file; the rename is as
    // durable as the platform makes it.
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Names the path in an I/O error, which `io::Error` alone does not.
fn with_path(error: io::Error, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Runs file work on the blocking pool. A panic there is a bug and is
/// passed on; a task cancelled by runtime shutdown becomes an error.
async fn blocking<T, F>(work: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(io::Error::other(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use std::time::Duration;

    type Chunk = Result<Bytes, io::Error>;

    fn sha256_digest(data: &[u8]) -> String {
        format!("{DIGEST_PREFIX}{:x}", Sha256::digest(data))
    }

    /// `len` bytes of a repeating, not-all-equal pattern.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn ok_chunks(data: &[u8], sizes: &[usize]) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut at = 0;
        for &size in sizes {
            let end = (at + size).min(data.len());
            chunks.push(Ok(Bytes::copy_from_slice(&data[at..end])));
            at = end;
        }
        assert_eq!(at, data.len(), "the sizes cover the data");
        chunks
    }

    fn assert_empty(store: &ArtifactStore) {
        assert_eq!(names(&store.sha_dir()), Vec::<String>::new());
        assert_eq!(names(&store.tmp_dir()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn multi_chunk_stream_hashes_like_sha256_over_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        // Crosses the write batch twice, with an empty chunk and tiny ones.
        let data = pattern(2 * WRITE_BATCH + 12_345, 7);
        let sizes = [1, 0, 4096, WRITE_BATCH, 3, WRITE_BATCH - 4100, 12_345];
        let chunks = ok_chunks(&data, &sizes);

        let stored = store
            .put_stream(stream::iter(chunks), u64::MAX)
            .await
            .unwrap();

        assert_eq!(stored.digest, sha256_digest(&data));
        assert_eq!(stored.size, data.len() as u64);
        assert!(stored.created);
        assert!(store.contains(&stored.digest));
        assert_eq!(
            fs::read(store.path_of(&stored.digest).unwrap()).unwrap(),
            data
        );
        assert_eq!(names(&store.tmp_dir()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn empty_stream_stores_the_empty_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let stored = store
            .put_stream(stream::iter(Vec::<Chunk>::new()), 0)
            .await
            .unwrap();
        assert_eq!(stored.digest, sha256_digest(b""));
        assert_eq!(stored.size, 0);
    }

    #[tokio::test]
    async fn second_put_of_the_same_content_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = pattern(10_000, 1);

        let first = store
            .put_stream(stream::iter(ok_chunks(&data, &[10_000])), u64::MAX)
            .await
            .unwrap();
        let second = store
            .put_stream(stream::iter(ok_chunks(&data, &[3, 9_997])), u64::MAX)
            .await
            .unwrap();

        assert!(first.created);
        assert!(!second.created);
        assert_eq!(first.digest, second.digest);
        assert_eq!(second.size, 10_000);
        assert_eq!(names(&store.sha_dir()).len(), 1);
        assert_eq!(names(&store.tmp_dir()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn concurrent_puts_of_the_same_content_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = pattern(WRITE_BATCH + 1, 3);
        let (a, b) = tokio::join!(
            store.put_stream(stream::iter(ok_chunks(&data, &[data.len()])), u64::MAX),
            store.put_stream(stream::iter(ok_chunks(&data, &[data.len()])), u64::MAX),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.digest, b.digest);
        assert_eq!(names(&store.sha_dir()).len(), 1);
        assert_eq!(names(&store.tmp_dir()), Vec::<String>::new());
        assert_eq!(fs::read(store.path_of(&a.digest).unwrap()).unwrap(), data);
    }

    #[tokio::test]
    async fn put_replaces_a_truncated_copy() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = pattern(5_000, 9);
        let stored = store
            .put_stream(stream::iter(ok_chunks(&data, &[5_000])), u64::MAX)
            .await
            .unwrap();
        let path = store.path_of(&stored.digest).unwrap();
        fs::write(&path, &data[..100]).unwrap();

        let again = store
            .put_stream(stream::iter(ok_chunks(&data, &[5_000])), u64::MAX)
            .await
            .unwrap();
        assert!(!again.created);
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn exceeding_size_max_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        // Past the write batch, so part of it reached the temp file.
        let data = pattern(WRITE_BATCH + 100, 2);
        let limit = WRITE_BATCH as u64 + 50;
        let chunks = ok_chunks(&data, &[WRITE_BATCH, 100]);

        let error = store
            .put_stream(stream::iter(chunks), limit)
            .await
            .unwrap_err();

        assert!(
            matches!(error, ArtifactError::TooLarge { limit: l } if l == limit),
            "{error:?}"
        );
        assert_empty(&store);

        // Exactly at the limit is allowed.
        let stored = store
            .put_stream(
                stream::iter(ok_chunks(&data, &[data.len()])),
                data.len() as u64,
            )
            .await
            .unwrap();
        assert_eq!(stored.size, data.len() as u64);
    }

    #[tokio::test]
    async fn an_erroring_stream_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = pattern(WRITE_BATCH + 10, 4);
        let mut chunks = ok_chunks(&data, &[WRITE_BATCH, 10]);
        chunks.push(Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )));

        let error = store
            .put_stream(stream::iter(chunks), u64::MAX)
            .await
            .unwrap_err();

        match error {
            ArtifactError::Upload(message) => assert!(message.contains("client went away")),
            other => panic!("expected an upload error, got {other:?}"),
        }
        assert_empty(&store);
    }

    #[tokio::test]
    async fn a_dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let data = pattern(WRITE_BATCH + 10, 5);
        // Some data, then a client that never sends the rest.
        let stalled = stream::iter(ok_chunks(&data, &[WRITE_BATCH, 10])).chain(stream::pending());

        let outcome = tokio::time::timeout(
            Duration::from_millis(200),
            store.put_stream(stalled, u64::MAX),
        )
        .await;

        assert!(outcome.is_err(), "the upload cannot finish");
        // Dropped while awaiting the stream, the guard removes the temp file
        // at once; dropped during a batch write, the blocking task does when
        // it ends. Allow for the latter, boundedly.
        for _ in 0..100 {
            if names(&store.tmp_dir()).is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_empty(&store);
    }

    #[tokio::test]
    async fn put_file_matches_put_stream() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(&dir.path().join("store")).unwrap();
        let data = pattern(3 * READ_BUF / 2, 6);
        let source = dir.path().join("model.bin");
        fs::write(&source, &data).unwrap();

        let from_file = store.put_file(&source).await.unwrap();
        let from_stream = store
            .put_stream(stream::iter(ok_chunks(&data, &[data.len()])), u64::MAX)
            .await
            .unwrap();

        assert_eq!(from_file.digest, sha256_digest(&data));
        assert!(from_file.created);
        assert_eq!(from_stream.digest, from_file.digest);
        assert!(!from_stream.created);

        let missing = store.put_file(&dir.path().join("nope")).await.unwrap_err();
        assert!(matches!(&missing, ArtifactError::Io(e) if e.kind() == io::ErrorKind::NotFound));
        assert_eq!(names(&store.tmp_dir()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn verify_finds_corrupted_and_missing_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let mut digests = Vec::new();
        for seed in 0..3u8 {
            let data = pattern(1_000 + usize::from(seed), seed);
            let stored = store
                .put_stream(stream::iter(ok_chunks(&data, &[data.len()])), u64::MAX)
                .await
                .unwrap();
            digests.push(stored.digest);
        }
        let report = store.verify(None).unwrap();
        assert_eq!(report.checked, 3);
        assert!(report.mismatched.is_empty());

        // Same length, different bytes: only a re-hash can tell.
        let corrupted = &digests[0];
        let path = store.path_of(corrupted).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[500] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let missing = &digests[1];
        fs::remove_file(store.path_of(missing).unwrap()).unwrap();

        let report = store.verify(None).unwrap();
        assert_eq!(report.checked, 2);
        assert_eq!(
            report.mismatched,
            vec![Mismatch {
                digest: corrupted.clone(),
                actual: Some(sha256_digest(&bytes)),
            }]
        );

        let only = vec![missing.clone(), digests[2].clone(), corrupted.clone()];
        let report = store.verify(Some(&only)).unwrap();
        assert_eq!(report.checked, 3);
        assert_eq!(
            report.mismatched,
            vec![
                Mismatch {
                    digest: missing.clone(),
                    actual: None,
                },
                Mismatch {
                    digest: corrupted.clone(),
                    actual: Some(sha256_digest(&bytes)),
                },
            ]
        );

        let bad = vec!["sha256:nope".to_owned()];
        assert!(matches!(
            store.verify(Some(&bad)),
            Err(ArtifactError::InvalidDigest(_))
        ));
    }

    #[tokio::test]
    async fn verify_skips_entries_that_are_not_artifacts() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        fs::write(store.sha_dir().join("README"), b"not an artifact").unwrap();
        fs::create_dir(store.sha_dir().join("a".repeat(64))).unwrap();
        let report = store.verify(None).unwrap();
        assert_eq!(report, VerifyReport::default());
    }

    #[test]
    fn path_of_accepts_only_sha256_lowercase_hex() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(
            store.path_of(&format!("sha256:{hex}")).unwrap(),
            dir.path().join("sha256").join(&hex)
        );

        let refused = [
            "sha256:../../etc/passwd".to_owned(),
            format!("sha256:../../{}", &hex[6..]),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}A", &hex[1..]),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{hex}0"),
            format!("sha512:{hex}"),
            format!("md5:{}", &hex[..32]),
            format!("SHA256:{hex}"),
            hex.clone(),
            format!(" sha256:{hex}"),
            format!("sha256:{}/", &hex[1..]),
            format!("sha256:{}é", &hex[2..]),
            String::new(),
            "sha256:".to_owned(),
        ];
        for digest in &refused {
            assert!(
                matches!(store.path_of(digest), Err(ArtifactError::InvalidDigest(_))),
                "accepted {digest:?}"
            );
            assert!(!store.contains(digest));
            assert!(matches!(
                store.remove(digest),
                Err(ArtifactError::InvalidDigest(_))
            ));
        }
    }

    #[test]
    fn invalid_digest_messages_stay_short() {
        let long = "x".repeat(10_000);
        let error = hex_of(&long).unwrap_err();
        assert!(error.to_string().len() < 200, "{error}");
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let artifact = store.sha_dir().join("f".repeat(64));
        fs::write(&artifact, b"kept").unwrap();
        for name in ["0000000000000001.part", "0000000000000002.part", "odd"] {
            fs::write(store.tmp_dir().join(name), b"half an upload").unwrap();
        }

        let store = ArtifactStore::open(dir.path()).unwrap();

        assert_eq!(names(&store.tmp_dir()), Vec::<String>::new());
        assert_eq!(fs::read(&artifact).unwrap(), b"kept");
    }

    #[tokio::test]
    async fn remove_deletes_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let stored = store
            .put_stream(stream::iter(ok_chunks(b"weights", &[7])), u64::MAX)
            .await
            .unwrap();

        assert!(store.remove(&stored.digest).unwrap());
        assert!(!store.contains(&stored.digest));
        assert!(!store.remove(&stored.digest).unwrap());
    }

    #[test]
    fn stored_serializes_as_the_api_shows_it() {
        let stored = Stored {
            digest: sha256_digest(b""),
            size: 0,
            created: true,
        };
        let json = serde_json::to_value(&stored).unwrap();
        assert_eq!(json["digest"], stored.digest.as_str());
        assert_eq!(json["size"], 0);
        assert_eq!(json["created"], true);
    }
}
