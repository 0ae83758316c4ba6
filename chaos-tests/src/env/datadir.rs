//! Operations on a stopped node's data dir: back it up, restore it, corrupt its Raft data.

use std::fs;
use std::path::{Path, PathBuf};

use super::EnvError;

/// Files named like this are the harness's own (the disk ballast) and are never copied.
const HARNESS_FILE_PREFIX: &str = ".shoalchaos";

/// Bytes overwritten at the start of a corrupted file (headers, magic numbers).
const CORRUPT_HEAD_BYTES: usize = 512;
/// Bytes overwritten in the middle of a corrupted file (pages, records).
const CORRUPT_MIDDLE_BYTES: usize = 4096;

fn io_err(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> EnvError {
    let what = format!("{what} {}", path.display());
    move |e| EnvError::io(what, e)
}

/// Copies a directory tree (directories and regular files; the harness's ballast is skipped).
pub fn copy_dir(from: &Path, to: &Path) -> Result<(), EnvError> {
    fs::create_dir_all(to).map_err(io_err("mkdir", to))?;
    for entry in fs::read_dir(from).map_err(io_err("read dir", from))? {
        let entry = entry.map_err(io_err("read dir", from))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(HARNESS_FILE_PREFIX) {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(io_err("stat", &path))?;
        if kind.is_dir() {
            copy_dir(&path, &to.join(&name))?;
        } else if kind.is_file() {
            fs::copy(&path, to.join(&name)).map_err(io_err("copy", &path))?;
        }
    }
    Ok(())
}

/// Removes the contents of a directory; the directory itself (a mount point) stays.
pub fn clear_dir(dir: &Path) -> Result<(), EnvError> {
    for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        let path = entry.map_err(io_err("read dir", dir))?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
        } else {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
    }
    Ok(())
}

/// The Raft data files under `data_dir`: `*.redb` stores, anything under a `raft` directory,
/// and `state.json` (the single-node store).
pub fn raft_files(data_dir: &Path) -> Result<Vec<PathBuf>, EnvError> {
    let mut found = Vec::new();
    find_raft_files(data_dir, &mut found)?;
    found.sort();
    Ok(found)
}

fn find_raft_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<(), EnvError> {
    for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        let entry = entry.map_err(io_err("read dir", dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io_err("stat", &path))?.is_dir() {
            find_raft_files(&path, found)?;
            continue;
        }
        let in_raft_dir = path
            .parent()
            .is_some_and(|p| p.components().any(|c| c.as_os_str() == "raft"));
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".redb") || in_raft_dir || name == "state.json" {
            found.push(path);
        }
    }
    Ok(())
}

/// Overwrites the start and the middle of every Raft data file with bytes derived from
/// `pick_value`; returns the files hit. No Raft file is an error (the fault did not fire).
pub fn corrupt_raft_data(data_dir: &Path, pick_value: u64) -> Result<Vec<String>, EnvError> {
    let files = raft_files(data_dir)?;
    if files.is_empty() {
        return Err(EnvError::io(
            format!(
                "no Raft data file (*.redb, raft/*, state.json) in {}",
                data_dir.display()
            ),
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    for file in &files {
        let mut bytes = fs::read(file).map_err(io_err("read", file))?;
        let len = bytes.len();
        // Never the original byte: the xor with a non-zero value always changes it.
        let garbage =
            |i: usize, old: u8| old ^ ((pick_value.rotate_left((i % 64) as u32) as u8) | 1);
        for (i, b) in bytes.iter_mut().take(CORRUPT_HEAD_BYTES).enumerate() {
            *b = garbage(i, *b);
        }
        for (i, b) in bytes
            .iter_mut()
            .enumerate()
            .skip((len / 2).max(CORRUPT_HEAD_BYTES))
            .take(CORRUPT_MIDDLE_BYTES)
        {
            *b = garbage(i, *b);
        }
        fs::write(file, &bytes).map_err(io_err("write", file))?;
    }
    Ok(files.iter().map(|f| f.display().to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("raft")).unwrap();
        fs::write(root.join("raft/log.bin"), vec![7u8; 10_000]).unwrap();
        fs::write(root.join("store.redb"), vec![1u8; 300]).unwrap();
        fs::write(root.join("identity.key"), b"key").unwrap();
        fs::write(root.join(".shoalchaos-ballast"), b"x").unwrap();
    }

    #[test]
    fn copy_then_clear_then_restore_round_trips_without_the_ballast() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let backup = dir.path().join("backup");
        tree(&data);
        copy_dir(&data, &backup).unwrap();
        assert!(!backup.join(".shoalchaos-ballast").exists());
        clear_dir(&data).unwrap();
        assert!(data.exists() && fs::read_dir(&data).unwrap().next().is_none());
        copy_dir(&backup, &data).unwrap();
        assert_eq!(
            fs::read(data.join("raft/log.bin")).unwrap(),
            vec![7u8; 10_000]
        );
        assert_eq!(fs::read(data.join("identity.key")).unwrap(), b"key");
    }

    #[test]
    fn corruption_changes_every_raft_file_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let hit = corrupt_raft_data(dir.path(), 0xDEAD_BEEF).unwrap();
        assert_eq!(hit.len(), 2, "{hit:?}");
        let log = fs::read(dir.path().join("raft/log.bin")).unwrap();
        assert_eq!(log.len(), 10_000);
        assert!(log[..CORRUPT_HEAD_BYTES].iter().all(|&b| b != 7));
        assert!(log[5_000..5_000 + CORRUPT_MIDDLE_BYTES]
            .iter()
            .all(|&b| b != 7));
        assert!(fs::read(dir.path().join("store.redb"))
            .unwrap()
            .iter()
            .all(|&b| b != 1));
        assert_eq!(fs::read(dir.path().join("identity.key")).unwrap(), b"key");
    }

    #[test]
    fn no_raft_file_is_an_error_not_a_silent_no_op() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("identity.key"), b"key").unwrap();
        assert!(corrupt_raft_data(dir.path(), 1).is_err());
    }
}
