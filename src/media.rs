//! Media files that `media` callbacks send (SPEC §1 `POSTBACK_MEDIA_ROOT`,
//! §3): a stream `path` is usable only when it is absolute and resolves
//! (symlinks followed, then checked) to a regular file under one of the
//! configured roots. It owns that check and opening the file once: the
//! descriptor it returns is checked with `fstat` against what was resolved
//! (same device and inode), so a file swapped between the check and the
//! open is refused, and the caller signs and sends from that one
//! descriptor.
//!
//! It must not import anything of the crate (a leaf), send anything, or
//! tell its caller *why* a path was refused in a way that reaches
//! customers: "not found" and "not allowed" are one error, so the API is no
//! oracle for which files exist on the host.

use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directories media may be read from (`POSTBACK_MEDIA_ROOT`). Empty:
/// media callbacks are off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaRoots {
    dirs: Vec<PathBuf>,
}

/// Why a media path cannot be used. Deliberately one case: a missing file,
/// a file outside the roots, a directory or a device all read the same.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MediaError {
    /// No `POSTBACK_MEDIA_ROOT` is configured.
    #[error("media callbacks are disabled: POSTBACK_MEDIA_ROOT is not set")]
    Disabled,
    /// The path is not a readable regular file under a media root.
    #[error("the path is not a readable file under POSTBACK_MEDIA_ROOT")]
    NotAllowed,
    /// The file changed between the check and the open, or while it was read.
    #[error("the media file changed while it was being sent")]
    Changed,
}

/// A media file opened once: its descriptor and the size `fstat` saw.
#[derive(Debug)]
pub struct MediaFile {
    /// The open descriptor (read only).
    pub file: File,
    /// Its size when opened.
    pub len: u64,
}

impl MediaRoots {
    /// Roots from the configured directories (each should be an absolute,
    /// existing directory; `config` checks that at start). A root that
    /// cannot be resolved when a path is checked matches nothing.
    pub fn new(dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        MediaRoots {
            dirs: dirs.into_iter().collect(),
        }
    }

    /// True when no root is configured (media callbacks are off).
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    /// Checks one configured root: absolute and an existing directory.
    pub fn check_root(dir: &Path) -> Result<(), String> {
        if !dir.is_absolute() {
            return Err(format!("{} is not an absolute path", dir.display()));
        }
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("{} is not a directory", dir.display())),
            Err(e) => Err(format!("{}: {e}", dir.display())),
        }
    }

    /// The canonical path of `path` when it is an absolute path resolving
    /// to a regular file under a root, with its metadata.
    pub fn resolve(&self, path: &str) -> Result<(PathBuf, std::fs::Metadata), MediaError> {
        if self.is_empty() {
            return Err(MediaError::Disabled);
        }
        let given = Path::new(path);
        if !given.is_absolute() {
            return Err(MediaError::NotAllowed);
        }
        let real = std::fs::canonicalize(given).map_err(|_| MediaError::NotAllowed)?;
        let inside = self
            .dirs
            .iter()
            .filter_map(|d| std::fs::canonicalize(d).ok())
            .any(|root| real.starts_with(&root) && real != root);
        if !inside {
            return Err(MediaError::NotAllowed);
        }
        let meta = std::fs::metadata(&real).map_err(|_| MediaError::NotAllowed)?;
        if !meta.is_file() {
            return Err(MediaError::NotAllowed);
        }
        Ok((real, meta))
    }

    /// Resolves `path` ([`MediaRoots::resolve`]) and opens it once: the
    /// last component is not followed again (`O_NOFOLLOW`), a FIFO swapped
    /// in cannot block (`O_NONBLOCK`), and the descriptor must be the very
    /// file that was checked (same device and inode, still regular).
    pub fn open(&self, path: &str) -> Result<MediaFile, MediaError> {
        let (real, checked) = self.resolve(path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(
                (nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_NONBLOCK
                    | nix::fcntl::OFlag::O_CLOEXEC)
                    .bits(),
            )
            .open(&real)
            .map_err(|_| MediaError::NotAllowed)?;
        let opened = file.metadata().map_err(|_| MediaError::NotAllowed)?;
        if !opened.is_file() || opened.dev() != checked.dev() || opened.ino() != checked.ino() {
            return Err(MediaError::Changed);
        }
        Ok(MediaFile {
            len: opened.len(),
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "postback-media-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn rand_suffix() -> u64 {
        use std::time::{SystemTime, UNIX_EPOCH};
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    }

    #[test]
    fn only_regular_files_under_a_root_resolve_and_refusals_look_alike() {
        let root = tempdir("root");
        let outside = tempdir("outside");
        std::fs::write(root.join("a.mp3"), b"audio").expect("write");
        std::fs::write(outside.join("secret"), b"secret").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).expect("symlink");
        std::fs::create_dir(root.join("sub")).expect("mkdir");
        let roots = MediaRoots::new([root.clone()]);
        let ok = |p: &Path| roots.open(&p.to_string_lossy()).map(|f| f.len);
        assert_eq!(ok(&root.join("a.mp3")), Ok(5));
        // Dot-dot out of the root, a symlink out of it, a directory, a
        // missing file, /proc and a relative path: one and the same error.
        for refused in [
            root.join("../")
                .join(outside.file_name().unwrap_or_default())
                .join("secret"),
            root.join("link"),
            root.join("sub"),
            root.join("missing.mp3"),
            PathBuf::from("/proc/self/environ"),
            PathBuf::from("/etc/passwd"),
            root.clone(),
        ] {
            assert_eq!(ok(&refused), Err(MediaError::NotAllowed), "{refused:?}");
        }
        assert_eq!(
            roots.open("a.mp3").map(|f| f.len),
            Err(MediaError::NotAllowed)
        );
        assert_eq!(
            MediaRoots::default()
                .open(&root.join("a.mp3").to_string_lossy())
                .map(|f| f.len),
            Err(MediaError::Disabled)
        );
        // A symlink to a file inside the root is followed, then checked: fine.
        std::os::unix::fs::symlink(root.join("a.mp3"), root.join("inner")).expect("symlink");
        assert_eq!(ok(&root.join("inner")), Ok(5));
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(&outside);
    }

    #[test]
    fn roots_must_be_absolute_existing_directories() {
        assert!(MediaRoots::check_root(Path::new("relative/dir")).is_err());
        assert!(MediaRoots::check_root(Path::new("/no/such/postback/dir")).is_err());
        assert!(MediaRoots::check_root(Path::new("/etc/passwd")).is_err());
        assert!(MediaRoots::check_root(&std::env::temp_dir()).is_ok());
    }
}
