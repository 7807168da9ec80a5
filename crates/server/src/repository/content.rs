//! A model version's content identity: a BLAKE3 digest of the files in its version folder,
//! taken at load. It is part of the prediction cache key, so that a model file replaced in
//! place (same version number) is never answered from the cache entries of the old file, in
//! the local tier or in the shared Redis tier.

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use super::LoadError;

/// Hex digits of the digest kept in the identity (64 bits: a replaced file gets a new key;
/// the key itself is a cryptographic digest over this and the request).
const IDENTITY_HEX_DIGITS: usize = 16;

/// The digest of every regular file under `version_dir` (names relative to it, sorted, and
/// contents, each length-prefixed), as hex.
pub fn content_identity(version_dir: &Path) -> Result<String, LoadError> {
    let unreadable =
        |path: &Path, e: std::io::Error| LoadError::Layout(format!("cannot read {}: {e}", path.display()));
    let mut files = files_under(version_dir).map_err(|e| unreadable(version_dir, e))?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = blake3::Hasher::new();
    for (relative, _) in &files {
        let path = version_dir.join(relative);
        let name = relative.to_string_lossy();
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        let bytes = std::fs::read(&path).map_err(|e| unreadable(&path, e))?;
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    let hex = hasher.finalize().to_hex();
    Ok(hex[..IDENTITY_HEX_DIGITS].to_string())
}

/// Every file below `root` (symbolic links followed, as the engines follow them), with its
/// path relative to `root` and its metadata.
pub fn files_under(root: &Path) -> std::io::Result<Vec<(PathBuf, Metadata)>> {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(dir) = folders.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let metadata = std::fs::metadata(&path)?;
            if metadata.is_dir() {
                folders.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                files.push((relative.to_path_buf(), metadata));
            }
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_with_a_file_replaced_in_place_and_only_then() {
        let dir = tempfile::tempdir().expect("temporary folder");
        std::fs::write(dir.path().join("model.onnx"), b"first").expect("write");
        let first = content_identity(dir.path()).expect("identity");
        assert_eq!(first, content_identity(dir.path()).expect("identity"), "stable");
        std::fs::write(dir.path().join("model.onnx"), b"other").expect("write");
        let replaced = content_identity(dir.path()).expect("identity");
        assert_ne!(first, replaced, "same size, other bytes");
        std::fs::create_dir(dir.path().join("extra")).expect("folder");
        std::fs::write(dir.path().join("extra/weights.bin"), b"w").expect("write");
        assert_ne!(replaced, content_identity(dir.path()).expect("identity"), "a file added below");
    }
}
