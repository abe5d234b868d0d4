//! What the state file needs from the operating system, one form per platform
//! (docs/state-file.md#windows). Locking itself is std's `File::lock` on every platform.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

pub use imp::{create_private_dir, make_private_dir, make_private_file, open_lock_file, FileStamp};

/// How long a replace retries while another program holds the old file (docs/state-file.md#windows).
const REPLACE_RETRY_FOR: Duration = Duration::from_secs(1);
const REPLACE_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Replaces `to` with `from` atomically (docs/state-file.md#atomic-writes).
pub fn replace(from: &Path, to: &Path) -> io::Result<()> {
    let started = Instant::now();
    loop {
        match fs::rename(from, to) {
            Err(e)
                if cfg!(windows)
                    && e.kind() == io::ErrorKind::PermissionDenied
                    && started.elapsed() < REPLACE_RETRY_FOR =>
            {
                std::thread::sleep(REPLACE_RETRY_PAUSE);
            }
            result => return result,
        }
    }
}

/// Makes a rename in `dir` durable; not on Windows, where NTFS journals it.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(windows) {
        return Ok(());
    }
    File::open(dir).and_then(|d| d.sync_all())
}

/// The error a lock file or directory that turned out to be a link fails with.
pub fn link_refused() -> io::Error {
    io::Error::other("is a symbolic link; refusing to follow it")
}

#[cfg(unix)]
mod imp {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

    use super::{fs, io, File, OpenOptions, Path};

    /// What tells one version of the file from another (docs/state-file.md#windows).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FileStamp {
        device: u64,
        inode: u64,
        len: u64,
        modified: (i64, i64),
        changed: (i64, i64),
    }

    impl FileStamp {
        pub fn of(file: &File) -> io::Result<Self> {
            let metadata = file.metadata()?;
            Ok(Self {
                device: metadata.dev(),
                inode: metadata.ino(),
                len: metadata.len(),
                modified: (metadata.mtime(), metadata.mtime_nsec()),
                changed: (metadata.ctime(), metadata.ctime_nsec()),
            })
        }
    }

    pub fn create_private_dir(dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }

    pub fn make_private_dir(dir: &Path, metadata: &fs::Metadata) -> io::Result<()> {
        if metadata.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        }
        Ok(())
    }

    /// tempfile already creates its files with mode 0600.
    #[allow(clippy::unnecessary_wraps)] // the signature both platforms share
    pub fn make_private_file(_path: &Path) -> io::Result<()> {
        Ok(())
    }

    pub fn open_lock_file(path: &Path) -> io::Result<File> {
        let opened = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path);
        match opened {
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(super::link_refused()),
            opened => opened,
        }
    }
}

#[cfg(windows)]
mod imp {
    use std::os::windows::ffi::OsStrExt;
    use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
    use std::os::windows::io::AsRawHandle;
    use std::sync::OnceLock;

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_SUCCESS, FILETIME, HANDLE};
    use windows_sys::Win32::Security::Authorization::{SetNamedSecurityInfoW, SE_FILE_OBJECT};
    use windows_sys::Win32::Security::{
        AddAccessAllowedAceEx, GetLengthSid, GetTokenInformation, InitializeAcl, TokenUser,
        ACCESS_ALLOWED_ACE, ACE_FLAGS, ACL, ACL_REVISION, CONTAINER_INHERIT_ACE,
        DACL_SECURITY_INFORMATION, OBJECT_INHERIT_ACE, PROTECTED_DACL_SECURITY_INFORMATION, PSID,
        TOKEN_QUERY, TOKEN_USER,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        GetFileInformationByHandle, BY_HANDLE_FILE_INFORMATION, FILE_ALL_ACCESS,
        FILE_ATTRIBUTE_REPARSE_POINT, FILE_FLAG_OPEN_REPARSE_POINT,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    use super::{fs, io, File, OpenOptions, Path};

    /// What tells one version of the file from another (docs/state-file.md#windows).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FileStamp {
        volume: u32,
        index: u64,
        len: u64,
        modified: u64,
        created: u64,
    }

    impl FileStamp {
        pub fn of(file: &File) -> io::Result<Self> {
            let mut info = BY_HANDLE_FILE_INFORMATION::default();
            // SAFETY: the handle is open for the duration of the call, and `info` is a valid
            // out-pointer of the type the function fills.
            if unsafe { GetFileInformationByHandle(file.as_raw_handle() as HANDLE, &raw mut info) }
                == 0
            {
                return Err(io::Error::last_os_error());
            }
            let join = |high: u32, low: u32| (u64::from(high) << 32) | u64::from(low);
            let time = |time: FILETIME| join(time.dwHighDateTime, time.dwLowDateTime);
            Ok(Self {
                volume: info.dwVolumeSerialNumber,
                index: join(info.nFileIndexHigh, info.nFileIndexLow),
                len: join(info.nFileSizeHigh, info.nFileSizeLow),
                modified: time(info.ftLastWriteTime),
                created: time(info.ftCreationTime),
            })
        }
    }

    /// Creates the directory (and its missing parents, which keep the default inherited
    /// permissions, as on Unix) and restricts the last one to the current user.
    pub fn create_private_dir(dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        restrict_to_current_user(dir, OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE)
    }

    /// Set every time: Windows has no cheap "is it private" test (docs/state-file.md#windows).
    pub fn make_private_dir(dir: &Path, _metadata: &fs::Metadata) -> io::Result<()> {
        restrict_to_current_user(dir, OBJECT_INHERIT_ACE | CONTAINER_INHERIT_ACE)
    }

    /// A new file inherits its directory's permissions (administrators, SYSTEM): restrict it.
    pub fn make_private_file(path: &Path) -> io::Result<()> {
        restrict_to_current_user(path, 0)
    }

    pub fn open_lock_file(path: &Path) -> io::Result<File> {
        // The reparse point itself, never a link's target; a link is refused, as by O_NOFOLLOW.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(path)?;
        if file.metadata()?.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return Err(super::link_refused());
        }
        Ok(file)
    }

    /// Replaces the object's DACL with one granting the current user alone full control.
    fn restrict_to_current_user(path: &Path, inherit: ACE_FLAGS) -> io::Result<()> {
        let sid = current_user_sid()?;
        let sid: PSID = sid.as_ptr().cast_mut().cast();
        // SAFETY: `sid` points at a valid SID that lives for the whole process.
        let sid_len = unsafe { GetLengthSid(sid) } as usize;
        let acl_len =
            size_of::<ACL>() + size_of::<ACCESS_ALLOWED_ACE>() - size_of::<u32>() + sid_len;
        // u32 elements: an ACL must be 4-byte aligned.
        let mut buffer = vec![0u32; acl_len.div_ceil(4)];
        let acl = buffer.as_mut_ptr().cast::<ACL>();
        let acl_len = u32::try_from(buffer.len() * 4).map_err(io::Error::other)?;
        let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
        // SAFETY: `acl` points at `acl_len` writable, aligned bytes that outlive the calls;
        // `sid` is valid; `wide` is a NUL-terminated UTF-16 path.
        unsafe {
            if InitializeAcl(acl, acl_len, ACL_REVISION) == 0
                || AddAccessAllowedAceEx(acl, ACL_REVISION, inherit, FILE_ALL_ACCESS, sid) == 0
            {
                return Err(io::Error::last_os_error());
            }
            let status = SetNamedSecurityInfoW(
                wide.as_ptr(),
                SE_FILE_OBJECT,
                DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                acl,
                std::ptr::null(),
            );
            if status != ERROR_SUCCESS {
                return Err(io::Error::from_raw_os_error(status as i32));
            }
        }
        Ok(())
    }

    /// The SID of the user this process runs as (read once: it cannot change).
    fn current_user_sid() -> io::Result<&'static [u32]> {
        // u32 elements: a SID is 4-byte aligned.
        static SID: OnceLock<Vec<u32>> = OnceLock::new();
        if let Some(sid) = SID.get() {
            return Ok(sid);
        }
        let mut token: HANDLE = std::ptr::null_mut();
        // SAFETY: plain out-pointer calls; the token handle is closed below on every path, and
        // the buffer is u64-aligned and as long as the size the first call reported.
        let sid = unsafe {
            if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &raw mut token) == 0 {
                return Err(io::Error::last_os_error());
            }
            let mut needed = 0u32;
            GetTokenInformation(token, TokenUser, std::ptr::null_mut(), 0, &raw mut needed);
            let mut buffer = vec![0u64; (needed as usize).div_ceil(8)];
            let ok = GetTokenInformation(
                token,
                TokenUser,
                buffer.as_mut_ptr().cast(),
                needed,
                &raw mut needed,
            );
            let error = io::Error::last_os_error();
            CloseHandle(token);
            if ok == 0 {
                return Err(error);
            }
            let user = &*buffer.as_ptr().cast::<TOKEN_USER>();
            let sid = user.User.Sid;
            let len = (GetLengthSid(sid) as usize).div_ceil(4);
            std::slice::from_raw_parts(sid.cast::<u32>(), len).to_vec()
        };
        Ok(SID.get_or_init(|| sid))
    }
}
