//! What the transfer tests check after a task: its `Result.Files`, the files on the phone, the
//! staging files left behind, and test data to compare them with.

use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;

/// Lowercase hex sha256, as `Result.Files[].Sha256`.
pub fn sha256_hex(data: &[u8]) -> String {
    ferry::transfer::sink::hex(&Sha256::digest(data))
}

/// `len` deterministic bytes that differ for each `seed` and at every offset.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// A task's `Result.Files` as (Path, Size, Sha256), sorted by path.
pub fn result_files(view: &Value) -> Vec<(String, u64, String)> {
    let list = view["Result"]["Files"].as_array();
    let mut out: Vec<_> = list
        .unwrap_or_else(|| panic!("no Result.Files in {view}"))
        .iter()
        .map(|f| {
            let path = f["Path"].as_str().unwrap().to_string();
            let sha = f["Sha256"].as_str().unwrap().to_string();
            (path, f["Size"].as_u64().unwrap(), sha)
        })
        .collect();
    out.sort();
    out
}

/// The (Path, Size, Sha256) a file `data` at device path `path` is reported with.
pub fn expected(path: &str, data: &[u8]) -> (String, u64, String) {
    (path.to_string(), data.len() as u64, sha256_hex(data))
}

pub fn assert_success(view: &Value) {
    assert_eq!(view["Phase"], "SUCCESS", "{view}");
}

pub fn assert_failed(view: &Value, code: &str) {
    assert_eq!(view["Phase"], "FAILED", "{view}");
    assert_eq!(view["ErrorCode"], code, "{view}");
}

/// Every file (hidden ones too) under a host folder, relative to it, sorted; empty when the
/// folder does not exist.
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.map(Result::unwrap) {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Names in a host folder that start with `.ferry-` (staging files).
pub fn staging_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".ferry-"))
        .collect()
}
