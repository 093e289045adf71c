//! Reading the small files an operator or a peer can name: certificates, keys, CAs, CRLs, trust
//! bundles, state and challenge files. Both binaries read all of these here, because a plain
//! `open` + `read_to_end` has two ways to hang or blow up that each caller would otherwise have to
//! remember: a FIFO (named pipe) in a file's place blocks `open(2)` until a writer comes, and a
//! huge or growing file is read whole into memory. An operator's typo or a hostile mount would
//! then stop the process at start, or freeze a reload for good.
//!
//! So a file is opened with `O_NONBLOCK` (opening a FIFO returns at once), the *opened* file is
//! checked to be a regular file (a FIFO, socket, device or directory is refused, saying which),
//! its size is checked against the caller's limit before reading, and at most one byte more than
//! the limit is read (a file growing under us). Symbolic links are followed unless the caller
//! asks otherwise (certbot's `live/` names are links into `archive/`). Callers keep their own
//! limits and wrap [`ReadError`] into their own errors, which name the flag and the file.

use std::fmt;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

/// Whether the last component of a path may be a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Follow it, as `open(2)` does: the usual case (certbot's `live/` links, Kubernetes'
    /// `..data` swaps).
    Follow,
    /// Refuse it (`O_NOFOLLOW`): for a file whose writer must not point it elsewhere.
    Refuse,
}

/// What a path turned out to be, when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// Anything else that is not a regular file.
    Special,
}

impl Kind {
    fn of(meta: &Metadata) -> Option<Kind> {
        let t = meta.file_type();
        Some(if t.is_file() {
            return None;
        } else if t.is_dir() {
            Kind::Directory
        } else if t.is_fifo() {
            Kind::Fifo
        } else if t.is_socket() {
            Kind::Socket
        } else if t.is_char_device() {
            Kind::CharDevice
        } else if t.is_block_device() {
            Kind::BlockDevice
        } else {
            Kind::Special
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Directory => "a directory",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Special => "a special file",
        })
    }
}

/// Why a file was not read. The messages name no file: the caller's error does.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// `open(2)`, `fstat(2)` or `read(2)` failed; shown as the system's message (`No such file or
    /// directory (os error 2)`).
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("is {kind}, not a regular file")]
    NotRegular { kind: Kind },
    #[error("is a symbolic link, refused")]
    Symlink,
    #[error("larger than {}", Size(*limit))]
    TooLarge { limit: u64 },
}

impl ReadError {
    /// Whether the file is not there (for callers where that means "none yet").
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// A byte count as people write limits: `64 MiB`, `64 KiB`, else `N bytes`.
struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * 1024;
        match self.0 {
            n if n >= MIB && n % MIB == 0 => write!(f, "{} MiB", n / MIB),
            n if n >= KIB && n % KIB == 0 => write!(f, "{} KiB", n / KIB),
            n => write!(f, "{n} bytes"),
        }
    }
}

/// Reads the regular file at `path` (following symbolic links), refusing anything else and
/// anything larger than `limit` bytes. Blocking, but never on a FIFO: a local file is read at once.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    RegularFile::open(path, Links::Follow)?.read(limit)
}

/// [`read`] off the async threads (`spawn_blocking`, as `tokio::fs` does).
pub async fn read_async(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || read(&path, limit)).await {
        Ok(read) => read,
        Err(e) => Err(ReadError::Io(io::Error::other(e))),
    }
}

/// An open file checked to be a regular file, for callers that need more than its bytes (the
/// identity CA checks its key file's mode on the very file it then reads).
#[derive(Debug)]
pub struct RegularFile {
    file: File,
    meta: Metadata,
}

/// How files are opened: `O_NONBLOCK` so that opening a FIFO cannot block (the type check after
/// the open then refuses it), `O_NOCTTY` so that opening a terminal cannot make it ours.
const OPEN_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

impl RegularFile {
    /// Opens `path` if it is a regular file. The path is looked at first, so a device or FIFO is
    /// refused without being opened at all (opening some devices does something); the opened file
    /// is checked again, as the path may name something else by then.
    pub fn open(path: &Path, links: Links) -> Result<RegularFile, ReadError> {
        let seen = match links {
            Links::Follow => std::fs::metadata(path)?,
            Links::Refuse => std::fs::symlink_metadata(path)?,
        };
        if seen.file_type().is_symlink() {
            return Err(ReadError::Symlink);
        }
        if let Some(kind) = Kind::of(&seen) {
            return Err(ReadError::NotRegular { kind });
        }
        let flags = match links {
            Links::Follow => OPEN_FLAGS,
            Links::Refuse => OPEN_FLAGS.union(OFlags::NOFOLLOW),
        };
        let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
            Errno::LOOP if links == Links::Refuse => ReadError::Symlink,
            e => ReadError::Io(e.into()),
        })?;
        RegularFile::from_opened(File::from(fd))
    }

    /// Checks a file the caller opened itself (e.g. beneath a directory handle with `openat`),
    /// which must have been opened with `O_NONBLOCK`.
    pub fn from_opened(file: File) -> Result<RegularFile, ReadError> {
        let meta = file.metadata()?;
        if let Some(kind) = Kind::of(&meta) {
            return Err(ReadError::NotRegular { kind });
        }
        Ok(RegularFile { file, meta })
    }

    /// The opened file's metadata (`fstat`).
    pub fn metadata(&self) -> &Metadata {
        &self.meta
    }

    /// The whole file, if it is at most `limit` bytes, both by its size and by what is read.
    pub fn read(self, limit: u64) -> Result<Vec<u8>, ReadError> {
        if self.meta.len() > limit {
            return Err(ReadError::TooLarge { limit });
        }
        let mut data = Vec::with_capacity(self.meta.len() as usize);
        self.file.take(limit + 1).read_to_end(&mut data)?;
        if data.len() as u64 > limit {
            return Err(ReadError::TooLarge { limit });
        }
        Ok(data)
    }
}

/// For the tests of every reader of an operator-named file, in this crate and the binaries
/// (feature `testing`): a FIFO in a file's place must be refused, and a test must fail, not
/// hang, if it is waited on.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::path::Path;
    use std::time::Duration;

    /// Longer than reading a small file could take, short enough that a hang fails quickly.
    const HANG: Duration = Duration::from_secs(5);

    /// A FIFO at `path`.
    pub fn mkfifo(path: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", path.display()));
    }

    /// `f()` on a thread of its own, failing the test if it has not returned within [`HANG`]: a
    /// reader blocked on a FIFO is left behind, not joined.
    pub fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(HANG)
            .unwrap_or_else(|e| panic!("{what}: no answer within {HANG:?} ({e})"))
    }

    /// `f()`'s future on a runtime of its own, [`within`] the same bound.
    pub fn within_async<T: Send + 'static, F: std::future::Future<Output = T>>(
        what: &str,
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        within(what, move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("a runtime for a bounded read: {e}"))
                .block_on(f())
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Longer than any read of a small file could take, short enough that a hang fails quickly.
    const HANG: Duration = Duration::from_secs(5);

    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "shared-fs-{tag}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        }

        fn fifo(&self, name: &str) -> PathBuf {
            let path = self.0.join(name);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `read(path, limit)` on another thread, failing the test if it does not return in time.
    fn read_within(path: &Path, limit: u64, links: Links) -> Result<Vec<u8>, ReadError> {
        let (tx, rx) = mpsc::channel();
        let owned = path.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(RegularFile::open(&owned, links).and_then(|f| f.read(limit)));
        });
        rx.recv_timeout(HANG)
            .unwrap_or_else(|_| panic!("reading {} blocked", path.display()))
    }

    fn refused(path: &Path, links: Links) -> String {
        match read_within(path, 1024, links) {
            Ok(_) => panic!("{} was read", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = Scratch::new("regular");
        let path = dir.file("a.pem", b"certificate");
        assert_eq!(read(&path, 11).unwrap(), b"certificate");
        assert_eq!(read(&dir.file("empty", b""), 0).unwrap(), b"");
        let missing = read(&dir.0.join("missing"), 10).unwrap_err();
        assert!(missing.is_not_found(), "{missing}");
        assert_eq!(
            missing.to_string(),
            "No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = Scratch::new("fifo");
        let fifo = dir.fifo("cert.pem");
        assert_eq!(
            refused(&fifo, Links::Follow),
            "is a FIFO, not a regular file"
        );
        assert_eq!(
            refused(&fifo, Links::Refuse),
            "is a FIFO, not a regular file"
        );
        // Through a link, as certbot's live/ names are.
        let link = dir.0.join("link.pem");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert_eq!(
            refused(&link, Links::Follow),
            "is a FIFO, not a regular file"
        );
    }

    #[test]
    fn a_fifo_opened_by_the_caller_is_refused() {
        let dir = Scratch::new("opened-fifo");
        let fifo = dir.fifo("token");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let fd = rustix::fs::open(&fifo, OPEN_FLAGS, Mode::empty()).unwrap();
            let _ = tx.send(RegularFile::from_opened(File::from(fd)));
        });
        let e = rx.recv_timeout(HANG).expect("opening blocked").unwrap_err();
        assert!(
            matches!(e, ReadError::NotRegular { kind: Kind::Fifo }),
            "{e}"
        );
    }

    #[test]
    fn directories_devices_and_sockets_are_refused() {
        let dir = Scratch::new("special");
        assert_eq!(
            refused(&dir.0, Links::Follow),
            "is a directory, not a regular file"
        );
        assert_eq!(
            refused(Path::new("/dev/null"), Links::Follow),
            "is a character device, not a regular file"
        );
        let socket = dir.0.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        assert_eq!(
            refused(&socket, Links::Follow),
            "is a socket, not a regular file"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused() {
        let dir = Scratch::new("large");
        let path = dir.file("big.pem", &[b'x'; 1025]);
        assert_eq!(refused(&path, Links::Follow), "larger than 1 KiB");
        assert_eq!(read(&path, 1025).unwrap().len(), 1025);
        let e = read(&path, 1000).unwrap_err();
        assert_eq!(e.to_string(), "larger than 1000 bytes");
        let e = read(&path, 0).unwrap_err();
        assert_eq!(e.to_string(), "larger than 0 bytes");
        assert_eq!(
            ReadError::TooLarge {
                limit: 64 * 1024 * 1024
            }
            .to_string(),
            "larger than 64 MiB"
        );
    }

    #[test]
    fn a_file_growing_after_the_size_check_is_cut_at_the_limit() {
        let dir = Scratch::new("growing");
        let path = dir.file("grows.pem", b"0123456789");
        let opened = RegularFile::open(&path, Links::Follow).unwrap();
        std::fs::write(&path, [b'x'; 4096]).unwrap();
        let e = opened.read(100).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { limit: 100 }), "{e}");
    }

    #[test]
    fn links_are_followed_unless_refused() {
        let dir = Scratch::new("links");
        let target = dir.file("fullchain1.pem", b"chain");
        let link = dir.0.join("fullchain.pem");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(read(&link, 100).unwrap(), b"chain");
        assert_eq!(refused(&link, Links::Refuse), "is a symbolic link, refused");
        assert_eq!(read_within(&target, 100, Links::Refuse).unwrap(), b"chain");
        let dangling = dir.0.join("dangling.pem");
        std::os::unix::fs::symlink(dir.0.join("nowhere"), &dangling).unwrap();
        assert!(read(&dangling, 100).unwrap_err().is_not_found());
        assert_eq!(
            refused(&dangling, Links::Refuse),
            "is a symbolic link, refused"
        );
    }

    #[test]
    fn the_opened_file_s_metadata_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = Scratch::new("meta");
        let path = dir.file("key.pem", b"key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let opened = RegularFile::open(&path, Links::Follow).unwrap();
        assert_eq!(opened.metadata().permissions().mode() & 0o777, 0o600);
        assert_eq!(opened.read(3).unwrap(), b"key");
    }

    #[test]
    fn the_async_read_refuses_a_fifo_too() {
        let dir = Scratch::new("async");
        let fifo = dir.fifo("challenge.pem");
        let file = dir.file("ok.pem", b"ok");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let _ =
                tx.send(rt.block_on(async {
                    (read_async(&fifo, 10).await, read_async(&file, 10).await)
                }));
        });
        let (fifo, file) = rx.recv_timeout(HANG).expect("the async read blocked");
        assert_eq!(
            fifo.unwrap_err().to_string(),
            "is a FIFO, not a regular file"
        );
        assert_eq!(file.unwrap(), b"ok");
    }
}
