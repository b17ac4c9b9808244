//! Split-APK bundles: bundletool's `.apks` (`splits/*.apk`, or `universal.apk`), APKPure's
//! `.xapk` (`manifest.json` naming the APKs and the OBB expansion files), and plain zips of
//! `.apk` files (`.apkm` without encryption is one). The chosen APKs are unpacked into a work
//! folder in the state directory, which the caller removes afterwards.
//!
//! A bundle comes from the network, so before anything is written every entry name is
//! checked (one that could escape a folder — `..`, absolute, backslashes, NUL — rejects the
//! whole bundle: it was made to attack), the declared sizes of what would be unpacked must fit
//! `install.max_bundle_bytes` and the free space, no entry may declare more than
//! [`MAX_RATIO`] times its compressed size, and while unpacking no entry may yield more
//! than it declared (a zip bomb that lies in its headers is cut off at once). Blocking: call
//! from `spawn_blocking`.

use super::apk::ApkError;
use crate::config::InstallConfig;
use serde::Deserialize;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// manifest.json of an XAPK is a few kilobytes; more is not a manifest.
const MAX_XAPK_MANIFEST: u64 = 1 << 20;
/// Free space left in the state folder's filesystem after unpacking.
const RESERVE_BYTES: u64 = 64 << 20;
/// Most bytes an entry may declare for each compressed byte. An APK or OBB is mostly
/// compressed data already (deflating one, stored native libraries and all, gains a few
/// times at most); deflate itself reaches 1032:1, which only a bomb of zeros approaches.
pub const MAX_RATIO: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("entry {0:?} has an unsafe name (it could escape its folder); the bundle is refused")]
    UnsafeEntry(String),
    #[error("the bundle has {0} entries, more than install.max_bundle_entries ({1})")]
    TooManyEntries(usize, usize),
    #[error("the bundle would unpack to {0} bytes, more than install.max_bundle_bytes ({1})")]
    TooLarge(u64, u64),
    #[error("entry {0:?} unpacks to more bytes than its header declares (a zip bomb?)")]
    LyingEntry(String),
    #[error("entry {0:?} declares {1} bytes from {2} compressed, more than {MAX_RATIO} to 1 (a zip bomb?); nothing was unpacked")]
    Ratio(String, u64, u64),
    #[error("the bundle holds no APK to install")]
    NoApks,
    #[error("manifest.json: {0}")]
    XapkManifest(String),
    #[error("entry {0:?}: {1}")]
    Entry(String, String),
    #[error(transparent)]
    Apk(#[from] ApkError),
    /// The state folder, not the bundle, is at fault (disk full, permissions).
    #[error("{0}")]
    Local(crate::error::Error),
}

/// One APK unpacked into the work folder.
#[derive(Debug)]
pub struct Unpacked {
    /// Its name inside the bundle, for messages.
    pub entry: String,
    pub path: PathBuf,
    pub size: u64,
}

/// An XAPK expansion file, copied out of the bundle once the app is installed.
#[derive(Clone, Debug)]
pub struct Expansion {
    pub index: usize,
    pub entry: String,
    /// The plain file name it gets in `OBB_ROOT/PACKAGE/`.
    pub name: String,
    pub size: u64,
    /// Its compressed size, for the ratio check.
    pub compressed: u64,
}

#[derive(Debug)]
pub struct Bundle {
    pub apks: Vec<Unpacked>,
    pub expansions: Vec<Expansion>,
    /// `package_name` of an XAPK's manifest.json, checked against the APKs.
    pub declared_package: Option<String>,
}

#[derive(Deserialize)]
struct XapkManifest {
    package_name: Option<String>,
    #[serde(default)]
    split_apks: Vec<XapkSplit>,
    #[serde(default)]
    expansions: Vec<XapkExpansion>,
}

#[derive(Deserialize)]
struct XapkSplit {
    file: String,
}

#[derive(Deserialize)]
struct XapkExpansion {
    file: String,
    install_path: Option<String>,
}

/// Whether an archive is a bundle: it has `.apk` entries (an APK itself has none).
pub fn is_bundle<R: Read + std::io::Seek>(zip: &zip::ZipArchive<R>) -> bool {
    zip.file_names()
        .flatten()
        .any(|n| n.to_ascii_lowercase().ends_with(".apk"))
}

/// Every entry name; one that does not decode is refused like an unsafe one.
fn entry_names<R: Read + std::io::Seek>(
    zip: &zip::ZipArchive<R>,
) -> Result<Vec<String>, BundleError> {
    zip.file_names()
        .map(|n| {
            n.map(|n| n.into_owned())
                .map_err(|e| BundleError::UnsafeEntry(format!("(undecodable name: {e})")))
        })
        .collect()
}

/// Refuses entry names that could walk out of a folder when unpacked anywhere.
fn check_entry_name(name: &str) -> Result<(), BundleError> {
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let bad = trimmed.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || trimmed
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == ".." || c.len() > 255);
    if bad {
        return Err(BundleError::UnsafeEntry(name.to_string()));
    }
    Ok(())
}

/// Picks, checks and unpacks the APKs of a bundle into `work` (created, must not exist).
pub fn unpack(
    zip: &mut zip::ZipArchive<File>,
    work: &Path,
    limits: &InstallConfig,
) -> Result<Bundle, BundleError> {
    if zip.len() > limits.max_bundle_entries {
        return Err(BundleError::TooManyEntries(
            zip.len(),
            limits.max_bundle_entries,
        ));
    }
    let names = entry_names(zip)?;
    for name in &names {
        check_entry_name(name)?;
    }
    let (apk_names, expansions, declared_package) = match zip.index_for_name("manifest.json") {
        Some(index) => xapk_contents(zip, index, &names)?,
        None => (bundletool_apks(&names), Vec::new(), None),
    };
    if apk_names.is_empty() {
        return Err(BundleError::NoApks);
    }
    let mut sizes = Vec::with_capacity(apk_names.len());
    let mut compressed = Vec::with_capacity(apk_names.len() + expansions.len());
    for name in &apk_names {
        let entry = zip
            .by_name(name)
            .map_err(|e| BundleError::Entry(name.clone(), e.to_string()))?;
        sizes.push(entry.size());
        compressed.push((name.clone(), entry.size(), entry.compressed_size()));
    }
    for exp in &expansions {
        compressed.push((exp.entry.clone(), exp.size, exp.compressed));
    }
    let total = sizes
        .iter()
        .chain(expansions.iter().map(|e| &e.size))
        .fold(0u64, |a, b| a.saturating_add(*b));
    if total > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge(total, limits.max_bundle_bytes));
    }
    // Only now, with every declared size known to fit, is anything written.
    for (name, size, packed) in compressed {
        if size > packed.saturating_mul(MAX_RATIO) {
            return Err(BundleError::Ratio(name, size, packed));
        }
    }
    let apk_bytes: u64 = sizes.iter().fold(0u64, |a, b| a.saturating_add(*b));
    create_work_dir(work)?;
    let free = free_bytes(work)?;
    if apk_bytes.saturating_add(RESERVE_BYTES) > free {
        return Err(BundleError::Local(crate::error::Error::new(
            crate::error::Code::StorageDiskFull,
            format!(
                "unpacking the bundle needs {apk_bytes} bytes and a reserve of {RESERVE_BYTES} in {}, which has {free} free; nothing was unpacked",
                work.display()
            ),
        )));
    }
    let mut apks = Vec::with_capacity(apk_names.len());
    for (n, (name, size)) in apk_names.iter().zip(sizes).enumerate() {
        let path = work.join(format!("{n:04}.apk"));
        let mut out = File::create(&path).map_err(|e| local("creating", &path, &e))?;
        let index = zip.index_for_name(name).expect("listed above");
        copy_entry(zip, index, name, size, &mut out)?;
        out.sync_all().map_err(|e| local("syncing", &path, &e))?;
        apks.push(Unpacked {
            entry: name.clone(),
            path,
            size,
        });
    }
    Ok(Bundle {
        apks,
        expansions,
        declared_package,
    })
}

/// bundletool's layout first (`splits/`, else `universal.apk`), else every `.apk` entry
/// except pre-Lollipop `standalones/`, which would each be a second base.
fn bundletool_apks(names: &[String]) -> Vec<String> {
    let is_apk = |n: &&String| n.to_ascii_lowercase().ends_with(".apk");
    let splits: Vec<String> = names
        .iter()
        .filter(is_apk)
        .filter(|n| n.starts_with("splits/"))
        .cloned()
        .collect();
    if !splits.is_empty() {
        return splits;
    }
    names
        .iter()
        .filter(is_apk)
        .filter(|n| !n.starts_with("standalones/"))
        .cloned()
        .collect()
}

type XapkContents = (Vec<String>, Vec<Expansion>, Option<String>);

fn xapk_contents(
    zip: &mut zip::ZipArchive<File>,
    index: usize,
    names: &[String],
) -> Result<XapkContents, BundleError> {
    let mut text = Vec::new();
    let entry = zip
        .by_index(index)
        .map_err(|e| BundleError::XapkManifest(e.to_string()))?;
    entry
        .take(MAX_XAPK_MANIFEST + 1)
        .read_to_end(&mut text)
        .map_err(|e| BundleError::XapkManifest(e.to_string()))?;
    if text.len() as u64 > MAX_XAPK_MANIFEST {
        return Err(BundleError::XapkManifest("larger than 1 MiB".into()));
    }
    let manifest: XapkManifest =
        serde_json::from_slice(&text).map_err(|e| BundleError::XapkManifest(e.to_string()))?;
    let missing =
        |file: &str| BundleError::XapkManifest(format!("names {file:?}, which the bundle lacks"));
    let apks = if manifest.split_apks.is_empty() {
        // A single-APK XAPK: `PACKAGE.apk` at the top.
        names
            .iter()
            .filter(|n| !n.contains('/') && n.to_ascii_lowercase().ends_with(".apk"))
            .cloned()
            .collect()
    } else {
        let mut apks = Vec::new();
        for split in &manifest.split_apks {
            if !names.contains(&split.file) {
                return Err(missing(&split.file));
            }
            apks.push(split.file.clone());
        }
        apks
    };
    let mut expansions = Vec::new();
    for exp in &manifest.expansions {
        let index = zip
            .index_for_name(&exp.file)
            .ok_or_else(|| missing(&exp.file))?;
        let (size, compressed) = {
            let entry = zip
                .by_index(index)
                .map_err(|e| BundleError::Entry(exp.file.clone(), e.to_string()))?;
            (entry.size(), entry.compressed_size())
        };
        let target = exp.install_path.as_deref().unwrap_or(&exp.file);
        // Every component as a final name: an expansion named `.ferry-…` would land on
        // another task's staging file.
        for component in target.split('/') {
            crate::paths::check_final_name(component).map_err(|why| {
                BundleError::XapkManifest(format!(
                    "expansion {target:?}: component {component:?}: {why}"
                ))
            })?;
        }
        let name = target.rsplit('/').next().unwrap_or_default().to_string();
        expansions.push(Expansion {
            index,
            entry: exp.file.clone(),
            name,
            size,
            compressed,
        });
    }
    Ok((apks, expansions, manifest.package_name))
}

/// Copies one entry, refusing a single byte beyond what its header declared. Reading to the
/// end also checks the entry's CRC.
pub fn copy_entry(
    zip: &mut zip::ZipArchive<File>,
    index: usize,
    name: &str,
    declared: u64,
    out: &mut impl Write,
) -> Result<u64, BundleError> {
    let entry = zip
        .by_index(index)
        .map_err(|e| BundleError::Entry(name.to_string(), e.to_string()))?;
    let mut limited = entry.take(declared + 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(BundleError::Entry(name.to_string(), e.to_string())),
        };
        copied += n as u64;
        if copied > declared {
            return Err(BundleError::LyingEntry(name.to_string()));
        }
        out.write_all(&buf[..n]).map_err(|e| {
            BundleError::Local(crate::error::Error::io(
                "writing an unpacked file for",
                Path::new(name),
                &e,
            ))
        })?;
    }
    if copied != declared {
        return Err(BundleError::Entry(
            name.to_string(),
            format!("{copied} bytes instead of the declared {declared}"),
        ));
    }
    Ok(copied)
}

fn local(action: &str, path: &Path, e: &std::io::Error) -> BundleError {
    BundleError::Local(crate::error::Error::io(action, path, e))
}

fn create_work_dir(work: &Path) -> Result<(), BundleError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = work.parent() {
        std::fs::create_dir_all(parent).map_err(|e| local("creating", parent, &e))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(work)
        .map_err(|e| local("creating", work, &e))
}

fn free_bytes(dir: &Path) -> Result<u64, BundleError> {
    let st = nix::sys::statvfs::statvfs(dir)
        .map_err(|e| local("checking free space of", dir, &e.into()))?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
