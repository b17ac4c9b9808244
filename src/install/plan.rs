//! Deciding what to install from the files a task landed, before pm is run: one APK, a
//! bundle of splits, an OSS folder of `.apk` files, or nothing (`Install.NotAnApk`).
//!
//! Install is a transaction: each landed file is opened once (inside its allowed root,
//! without following links), its size and sha256 are checked against what the transfer
//! recorded, and that same descriptor is what pm (or the unpacker) reads, so a file replaced
//! under the same name in between is never installed. Blocking: call from `spawn_blocking`.

use super::apk::{self, ApkError, Sniffed};
use super::axml::Manifest;
use super::bundle::{self, BundleError, Expansion};
use crate::config::Config;
use crate::error::{Code, Error, TaskCode};
use crate::pipeline::Landed;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// One APK ready for pm: an open file, its size, what its manifest says, and its session name.
#[derive(Debug)]
pub struct Apk {
    pub file: File,
    pub size: u64,
    pub manifest: Manifest,
    /// Where it came from (a device path, or an entry of a bundle), for messages.
    pub origin: String,
}

/// What the install step will do.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to install; the message says why (`Install.NotAnApk`).
    NotAnApk(String),
    /// `pm install -S SIZE`.
    Single(Apk),
    /// One session: the base first, then its splits; XAPK expansion files are copied from
    /// `bundle` afterwards.
    Session {
        apks: Vec<Apk>,
        expansions: Vec<Expansion>,
        bundle: Option<File>,
        /// Files of the set that are not APKs (an OSS folder), named in the result.
        ignored: Vec<String>,
    },
}

/// A refusal before pm runs: the code (`Install.InvalidApk`, or a `Storage.*` code when the
/// phone, not the file, is at fault) and what to tell the operator.
#[derive(Debug)]
pub struct Refusal {
    pub code: TaskCode,
    pub message: String,
}

fn invalid(message: String) -> Refusal {
    Refusal {
        code: Code::InstallInvalidApk.into(),
        message,
    }
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal {
            code: e.code.into(),
            message: e.message,
        }
    }
}

/// What a file's name says it is meant to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Named {
    Apk,
    Bundle,
    Other,
}

fn named(path: &str) -> Named {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".apk") {
        Named::Apk
    } else if [".apks", ".xapk", ".apkm"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        Named::Bundle
    } else {
        Named::Other
    }
}

/// Opens a landed file (in the folder it landed in, without following links) and checks it
/// is still exactly what the transfer verified.
pub fn open_verified(landed: &Landed) -> Result<File, Refusal> {
    let path = landed.device_path();
    let shown = path.to_string();
    let mut file = landed
        .dir
        .open_file(&landed.name, false)?
        .ok_or_else(|| Error::new(Code::StorageIo, format!("{path} vanished before install")))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("reading for install", Path::new(&shown), &e))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    let sha256 = crate::transfer::sink::hex(&hasher.finalize());
    if size != landed.size || sha256 != landed.sha256 {
        return Err(Refusal {
            code: Code::IntegritySourceChanged.into(),
            message: format!(
                "{path} changed after it was verified ({size} bytes, sha256 {sha256}; the transfer landed {} bytes, sha256 {}); it was not installed",
                landed.size, landed.sha256
            ),
        });
    }
    file.rewind()
        .map_err(|e| Error::io("rewinding", Path::new(&shown), &e))?;
    Ok(file)
}

/// Decides what to install from the landed files; `work` is this task's unpack folder.
pub fn plan(config: &Config, files: &[Landed], work: &Path) -> Result<Plan, Refusal> {
    match files {
        [] => Ok(Plan::NotAnApk("the task landed no file".into())),
        [one] => plan_file(config, one, work),
        many => plan_folder(config, many),
    }
}

fn plan_file(config: &Config, landed: &Landed, work: &Path) -> Result<Plan, Refusal> {
    let intent = named(&landed.name);
    let shown = &landed.device_path().to_string();
    let mut file = open_verified(landed)?;
    let sniffed = apk::sniff(&mut file)
        .map_err(|e| Error::io("reading for install", Path::new(shown), &e))?;
    let not_apk = |why: String| match intent {
        Named::Other => Ok(Plan::NotAnApk(format!("{shown} is not an APK: {why}"))),
        _ => Err(invalid(format!("{shown} cannot be installed: {why}"))),
    };
    if sniffed == Sniffed::Other {
        return not_apk(ApkError::NotZip("no zip signature".into()).to_string());
    }
    let mut zip = match apk::open_zip(file, apk::caps(&config.install)) {
        Ok(zip) => zip,
        Err(e) => return not_apk(e.to_string()),
    };
    if apk::has_manifest(&zip) {
        let manifest =
            apk::read_manifest(&mut zip).map_err(|e| invalid(format!("{shown}: {e}")))?;
        if let Some(split) = &manifest.split {
            return Err(invalid(format!(
                "{shown} is split {split:?} of {}; send it together with its base APK (a bundle or an OSS folder)",
                manifest.package
            )));
        }
        let size = landed.size;
        let mut file = zip.into_inner();
        file.rewind()
            .map_err(|e| Error::io("rewinding", Path::new(shown), &e))?;
        return Ok(Plan::Single(Apk {
            file,
            size,
            manifest,
            origin: shown.clone(),
        }));
    }
    if !bundle::is_bundle(&zip) {
        return not_apk(ApkError::NoManifest.to_string());
    }
    let unpacked = bundle::unpack(&mut zip, work, &config.install).map_err(|e| match e {
        BundleError::Local(e) => Refusal::from(e),
        other => invalid(format!("{shown}: {other}")),
    })?;
    let mut apks = Vec::with_capacity(unpacked.apks.len());
    for part in unpacked.apks {
        let origin = format!("{shown}!{}", part.entry);
        apks.push(open_apk(config, &part.path, part.size, origin)?);
    }
    let apks = order_session(apks, unpacked.declared_package.as_deref())?;
    Ok(Plan::Session {
        apks,
        expansions: unpacked.expansions,
        bundle: Some(zip.into_inner()),
        ignored: Vec::new(),
    })
}

fn open_apk(config: &Config, path: &PathBuf, size: u64, origin: String) -> Result<Apk, Refusal> {
    let file = File::open(path).map_err(|e| Error::io("opening", path, &e))?;
    let manifest = apk::inspect(&file, apk::caps(&config.install))
        .map_err(|e| invalid(format!("{origin}: {e}")))?;
    let file = File::open(path).map_err(|e| Error::io("opening", path, &e))?;
    Ok(Apk {
        file,
        size,
        manifest,
        origin,
    })
}

/// An OSS folder: its `.apk` files are one app's base and splits, installed as one session.
fn plan_folder(config: &Config, files: &[Landed]) -> Result<Plan, Refusal> {
    let (apks, ignored): (Vec<&Landed>, Vec<&Landed>) =
        files.iter().partition(|f| named(&f.name) == Named::Apk);
    if apks.is_empty() {
        return Ok(Plan::NotAnApk(format!(
            "none of the {} files of the folder is an .apk",
            files.len()
        )));
    }
    let mut checked = Vec::with_capacity(apks.len());
    for landed in apks {
        let shown = landed.device_path().to_string();
        let mut file = open_verified(landed)?;
        let manifest = apk::inspect(&mut file, apk::caps(&config.install))
            .map_err(|e| invalid(format!("{shown}: {e}")))?;
        file.rewind()
            .map_err(|e| Error::io("rewinding", Path::new(&shown), &e))?;
        checked.push(Apk {
            file,
            size: landed.size,
            manifest,
            origin: shown,
        });
    }
    if let [only] = checked.as_slice() {
        if only.manifest.split.is_none() && ignored.is_empty() {
            return Ok(Plan::Single(checked.pop().expect("one")));
        }
    }
    Ok(Plan::Session {
        apks: order_session(checked, None)?,
        expansions: Vec::new(),
        bundle: None,
        ignored: ignored
            .iter()
            .map(|f| f.device_path().to_string())
            .collect(),
    })
}

/// One base, splits of the same package with distinct names; base first. pm would refuse
/// anything else, but only after taking the bytes; saying it here is clearer and cheaper.
fn order_session(mut apks: Vec<Apk>, declared: Option<&str>) -> Result<Vec<Apk>, Refusal> {
    let bases: Vec<&str> = apks
        .iter()
        .filter(|a| a.manifest.split.is_none())
        .map(|a| a.origin.as_str())
        .collect();
    match bases.len() {
        1 => {}
        0 => return Err(invalid("the set has split APKs but no base APK".into())),
        _ => {
            return Err(invalid(format!(
                "the set has {} base APKs ({}); one install holds one app",
                bases.len(),
                bases.join(", ")
            )))
        }
    }
    apks.sort_by_key(|a| a.manifest.split.is_some());
    let package = apks[0].manifest.package.clone();
    if let Some(declared) = declared.filter(|d| *d != package) {
        return Err(invalid(format!(
            "manifest.json names package {declared} but the base APK is {package}"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for apk in &apks {
        if apk.manifest.package != package {
            return Err(invalid(format!(
                "{} is for package {}, the base APK for {package}",
                apk.origin, apk.manifest.package
            )));
        }
        if let Some(split) = &apk.manifest.split {
            if !apk::valid_split_name(split) {
                return Err(invalid(format!(
                    "{}: split name {split:?} is not usable",
                    apk.origin
                )));
            }
        }
        if !seen.insert(apk::session_name(&apk.manifest)) {
            return Err(invalid(format!(
                "split {:?} appears twice in the set",
                apk.manifest.split.as_deref().unwrap_or("base")
            )));
        }
    }
    Ok(apks)
}
