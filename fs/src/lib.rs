//! Files and directories private to the process's user, from the moment they exist: every
//! directory Strata creates is 0700 and every file 0600, set when it is created (never widened
//! by the umask, never chmodded afterwards, so never readable by others for an instant). The
//! logs, snapshots and slice files hold message bodies and, in the metadata catalog, access-key
//! secrets.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of the files Strata creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories Strata creates.
pub const DIR_MODE: u32 = 0o700;

/// `OpenOptions` whose `create` makes a 0600 file.
pub fn file_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(FILE_MODE);
    options
}

/// Creates `path` and its missing parents as 0700 directories (existing ones are left as
/// they are; see [`restrict_dir`]).
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Makes an existing directory 0700 when it is open to others (a data directory from before
/// this rule): what is inside is then out of others' reach, whatever its own modes.
pub fn restrict_dir(path: &Path) -> io::Result<()> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
    }
    Ok(())
}

/// fsyncs a directory so that entries created, renamed or removed in it are durable.
pub fn sync_dir(dir: impl AsRef<Path>) -> io::Result<()> {
    std::fs::File::open(dir.as_ref())?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_private_from_creation() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        create_dir_all(&dir).expect("create");
        assert_eq!((mode(&root.path().join("a")), mode(&dir)), (DIR_MODE, DIR_MODE));
        let file = dir.join("f");
        file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .expect("open")
            .write_all(b"x")
            .expect("write");
        assert_eq!(mode(&file), FILE_MODE);

        std::fs::set_permissions(root.path(), Permissions::from_mode(0o755)).expect("chmod");
        restrict_dir(root.path()).expect("restrict");
        assert_eq!(mode(root.path()), DIR_MODE);
    }
}
