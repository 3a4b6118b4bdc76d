//! Errno values and the mapping of engine errors onto them.

use bvfs_engine::EngineError;
use bvfs_engine::state::local::LocalError;

/// A POSIX error number (positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type VfsResult<T> = Result<T, Errno>;

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EACCES: Errno = Errno(libc::EACCES);
    pub const ENETUNREACH: Errno = Errno(libc::ENETUNREACH);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EILSEQ: Errno = Errno(libc::EILSEQ);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
}

impl From<std::io::Error> for Errno {
    fn from(e: std::io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<LocalError> for Errno {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::NotFound => Errno::ENOENT,
            LocalError::Exists => Errno::EEXIST,
            LocalError::NotDir => Errno::ENOTDIR,
            LocalError::IsDir => Errno::EISDIR,
            LocalError::NotEmpty => Errno::ENOTEMPTY,
            LocalError::InvalidName(bvfs_engine::model::NameError::TooLong { .. }) => {
                Errno::ENAMETOOLONG
            }
            LocalError::InvalidName(_) | LocalError::Invalid(_) => Errno::EINVAL,
            LocalError::State(e) => {
                tracing::error!("engine database: {e}");
                Errno::EIO
            }
        }
    }
}

impl From<EngineError> for Errno {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Local(e) => e.into(),
            EngineError::Io(e) => e.into(),
            EngineError::Fetch(e) => Errno(e.errno()),
            other => {
                tracing::error!("{other}");
                Errno::EIO
            }
        }
    }
}
