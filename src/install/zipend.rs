//! Sizing up a zip from its end records alone, before the `zip` crate reads its central
//! directory: that crate keeps every entry in memory (about 200 bytes each, a million-entry
//! APK took the daemon from 11 to 224 MB), so the entry count and the directory size the
//! archive declares are checked first, against `install.max_apk_entries` and
//! `install.max_zip_directory_bytes`.
//!
//! The record read is the one the `zip` crate uses: the last end-of-central-directory
//! signature in the final 65,557 bytes whose comment fits in the file, and, when it says so,
//! the ZIP64 record its locator points at. The directory it describes must end exactly where
//! that record starts (as every writer lays it out and APK signing requires): the `zip` crate
//! then never falls back to an earlier, unchecked record. Reads at most 65,557 + 56 bytes;
//! keeps nothing of the directory. Blocking.

use std::io::{Read, Seek, SeekFrom};

/// The fixed part of the end-of-central-directory record.
const EOCD_LEN: usize = 22;
/// The end record plus the largest comment.
pub const SEARCH_WINDOW: u64 = EOCD_LEN as u64 + u16::MAX as u64;
const EOCD_SIG: [u8; 4] = *b"PK\x05\x06";
const LOCATOR_SIG: [u8; 4] = *b"PK\x06\x07";
const LOCATOR_LEN: u64 = 20;
const ZIP64_SIG: [u8; 4] = *b"PK\x06\x06";
const CDFH_SIG: [u8; 4] = *b"PK\x01\x02";
/// The fixed part of the ZIP64 end record.
const ZIP64_LEN: usize = 56;
/// The smallest central directory header (no name, extra field or comment).
const MIN_HEADER: u64 = 46;

/// What the end records declare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Directory {
    pub entries: u64,
    /// Bytes of the central directory.
    pub size: u64,
    pub offset: u64,
    pub zip64: bool,
}

/// The caps checked, from `[install]`.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub entries: u64,
    pub directory_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EndError {
    #[error("no end-of-central-directory record in its last {SEARCH_WINDOW} bytes")]
    NoEnd,
    #[error("its end records are inconsistent: {0}")]
    Malformed(String),
    #[error("it declares {0} zip entries, more than install.max_apk_entries ({1}); it was not read further")]
    TooManyEntries(u64, u64),
    #[error("its central directory is {0} bytes, more than install.max_zip_directory_bytes ({1}); it was not read further")]
    DirectoryTooLarge(u64, u64),
    #[error("reading its end records: {0}")]
    Io(#[from] std::io::Error),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn malformed(what: impl Into<String>) -> EndError {
    EndError::Malformed(what.into())
}

/// Reads the end records of `file` and checks them against `caps`; leaves the position
/// anywhere (the caller rewinds or hands the file to the `zip` crate, which seeks).
pub fn check(file: &mut (impl Read + Seek), caps: Caps) -> Result<Directory, EndError> {
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(SEARCH_WINDOW);
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.seek(SeekFrom::Start(start))?;
    file.by_ref().take(len - start).read_to_end(&mut tail)?;
    if tail.len() as u64 != len - start {
        return Err(malformed("the file shrank while it was read"));
    }
    // The last signature whose record and comment fit, as the `zip` crate picks it.
    let at = (0..tail.len().saturating_sub(EOCD_LEN - 1))
        .rev()
        .find(|&i| {
            tail[i..i + 4] == EOCD_SIG
                && i + EOCD_LEN + u16_at(&tail, i + 20) as usize <= tail.len()
        })
        .ok_or(EndError::NoEnd)?;
    let eocd = &tail[at..at + EOCD_LEN];
    let eocd_pos = start + at as u64;
    let (entries16, size32, offset32) = (u16_at(eocd, 10), u32_at(eocd, 12), u32_at(eocd, 16));
    let may_be_zip64 = entries16 == u16::MAX || size32 == u32::MAX || offset32 == u32::MAX;
    let locator = match eocd_pos.checked_sub(LOCATOR_LEN) {
        Some(pos) if may_be_zip64 => read_locator(file, pos)?,
        _ => None,
    };
    let (dir, record_pos) = match locator {
        None => {
            if u16_at(eocd, 8) != entries16 || u16_at(eocd, 4) != 0 || u16_at(eocd, 6) != 0 {
                return Err(malformed("it spans several disks"));
            }
            let dir = Directory {
                entries: entries16.into(),
                size: size32.into(),
                offset: offset32.into(),
                zip64: false,
            };
            (dir, eocd_pos)
        }
        Some((locator_pos, record_pos)) => (read_zip64(file, locator_pos, record_pos)?, record_pos),
    };
    if dir.entries > caps.entries {
        return Err(EndError::TooManyEntries(dir.entries, caps.entries));
    }
    if dir.size > caps.directory_bytes {
        return Err(EndError::DirectoryTooLarge(dir.size, caps.directory_bytes));
    }
    if dir.entries.saturating_mul(MIN_HEADER) > dir.size {
        return Err(malformed(format!(
            "{} entries cannot fit in a central directory of {} bytes",
            dir.entries, dir.size
        )));
    }
    if dir.offset.checked_add(dir.size) != Some(record_pos) {
        return Err(malformed(format!(
            "the central directory ({} bytes at offset {}) does not end where its end record starts ({record_pos})",
            dir.size, dir.offset
        )));
    }
    // The `zip` crate gives up on an end record whose directory holds no header and falls
    // back to an earlier one (which could declare a million entries): the directory must
    // start with a header, so the record checked here is the one it uses.
    if dir.entries == 0 {
        return Err(malformed("it has no entries"));
    }
    let mut first = [0u8; 4];
    file.seek(SeekFrom::Start(dir.offset))?;
    file.read_exact(&mut first)?;
    if first != CDFH_SIG {
        return Err(malformed(format!(
            "no central directory header at offset {}, where its end record says the directory starts",
            dir.offset
        )));
    }
    Ok(dir)
}

/// The ZIP64 locator just before the end record, if there is one: its position and the
/// ZIP64 record's offset.
fn read_locator(file: &mut (impl Read + Seek), pos: u64) -> Result<Option<(u64, u64)>, EndError> {
    let mut b = [0u8; LOCATOR_LEN as usize];
    file.seek(SeekFrom::Start(pos))?;
    file.read_exact(&mut b)?;
    if b[..4] != LOCATOR_SIG {
        return Ok(None);
    }
    // The `zip` crate passes over a ZIP64 record whose disk disagrees with its locator and
    // falls back to an earlier, unchecked end record: refuse it instead.
    if u32_at(&b, 4) != 0 || u32_at(&b, 16) > 1 {
        return Err(malformed("its ZIP64 locator names several disks"));
    }
    let record = u64_at(&b, 8);
    if record >= pos {
        return Err(malformed("its ZIP64 locator points past itself"));
    }
    Ok(Some((pos, record)))
}

/// The ZIP64 end record at `record_pos`, which must end at the locator.
fn read_zip64(
    file: &mut (impl Read + Seek),
    locator_pos: u64,
    record_pos: u64,
) -> Result<Directory, EndError> {
    let mut b = [0u8; ZIP64_LEN];
    if locator_pos - record_pos < ZIP64_LEN as u64 {
        return Err(malformed(
            "its ZIP64 end record does not fit before its locator",
        ));
    }
    file.seek(SeekFrom::Start(record_pos))?;
    file.read_exact(&mut b)?;
    if b[..4] != ZIP64_SIG {
        return Err(malformed("no ZIP64 end record where its locator points"));
    }
    if record_pos
        .checked_add(12)
        .and_then(|p| p.checked_add(u64_at(&b, 4)))
        != Some(locator_pos)
    {
        return Err(malformed(
            "its ZIP64 end record does not end at its locator",
        ));
    }
    let entries = u64_at(&b, 32);
    if u32_at(&b, 16) != 0 || u32_at(&b, 20) != 0 || u64_at(&b, 24) != entries {
        return Err(malformed("it spans several disks"));
    }
    Ok(Directory {
        entries,
        size: u64_at(&b, 40),
        offset: u64_at(&b, 48),
        zip64: true,
    })
}

#[cfg(test)]
#[path = "zipend_tests.rs"]
mod tests;
