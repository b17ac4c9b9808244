//! Checks that a file is an APK before pm sees it: a well-formed zip (central directory,
//! CRC of the manifest entry) holding a compiled `AndroidManifest.xml` whose `<manifest>`
//! names a valid package. What it reads (package, versions, split name) goes into the task
//! result and the logs. Blocking: call from `spawn_blocking`.

use super::axml::{self, Manifest};
use super::zipend::{self, Caps, EndError};
use crate::config::InstallConfig;
use std::io::{Read, Seek};

/// Largest AndroidManifest.xml read; real ones are kilobytes, the biggest apps' under 2 MiB.
const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// Why a file is not an installable APK; the message names what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ApkError {
    #[error("it is not a zip archive ({0})")]
    NotZip(String),
    #[error("the zip archive is damaged: {0}")]
    Damaged(String),
    #[error("the zip archive has no AndroidManifest.xml, so it is not an APK")]
    NoManifest,
    #[error("its AndroidManifest.xml is larger than {MAX_MANIFEST_BYTES} bytes")]
    ManifestTooLarge,
    #[error(transparent)]
    Manifest(#[from] axml::AxmlError),
    /// Its end records are missing, inconsistent, or declare more than the caps allow.
    #[error(transparent)]
    Directory(#[from] EndError),
}

/// The caps every zip opened for install is held to before its directory is read.
pub fn caps(limits: &InstallConfig) -> Caps {
    Caps {
        entries: limits.max_apk_entries,
        directory_bytes: limits.max_zip_directory_bytes,
    }
}

/// What kind of content a file holds, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Starts with a zip local header or end-of-directory record.
    Zip,
    Other,
}

/// Looks at the first bytes only (a zip starts with `PK\3\4`, an empty one with `PK\5\6`).
pub fn sniff(file: &mut (impl Read + Seek)) -> std::io::Result<Sniffed> {
    file.rewind()?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..])? {
            0 => break,
            n => got += n,
        }
    }
    file.rewind()?;
    Ok(match &magic[..got] {
        b"PK\x03\x04" | b"PK\x05\x06" => Sniffed::Zip,
        _ => Sniffed::Other,
    })
}

/// Opens the zip's central directory; a truncated or garbled archive fails here. Its end
/// records are checked against `caps` first, so an archive declaring a million entries is
/// refused before any of them is read (see [`zipend`]).
pub fn open_zip<R: Read + Seek>(mut reader: R, caps: Caps) -> Result<zip::ZipArchive<R>, ApkError> {
    match zipend::check(&mut reader, caps) {
        Ok(_) => {}
        Err(e @ (EndError::NoEnd | EndError::Io(_))) => {
            return Err(ApkError::NotZip(e.to_string()))
        }
        Err(e) => return Err(e.into()),
    }
    zip::ZipArchive::new(reader).map_err(|e| match e {
        zip::result::ZipError::InvalidArchive(_) | zip::result::ZipError::Io(_) => {
            ApkError::NotZip(e.to_string())
        }
        other => ApkError::Damaged(other.to_string()),
    })
}

/// Whether the archive has an `AndroidManifest.xml` at its top (the mark of an APK, as
/// opposed to a bundle of APKs).
pub fn has_manifest<R: Read + Seek>(zip: &zip::ZipArchive<R>) -> bool {
    zip.index_for_name("AndroidManifest.xml").is_some()
}

/// Reads and parses the manifest of an opened APK.
pub fn read_manifest<R: Read + Seek>(zip: &mut zip::ZipArchive<R>) -> Result<Manifest, ApkError> {
    let index = zip
        .index_for_name("AndroidManifest.xml")
        .ok_or(ApkError::NoManifest)?;
    let entry = zip
        .by_index(index)
        .map_err(|e| ApkError::Damaged(format!("AndroidManifest.xml: {e}")))?;
    if entry.size() > MAX_MANIFEST_BYTES {
        return Err(ApkError::ManifestTooLarge);
    }
    let mut data = Vec::with_capacity(entry.size() as usize);
    // Reading to the end checks the entry's CRC; the limit holds even if the size lies.
    entry
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| ApkError::Damaged(format!("AndroidManifest.xml: {e}")))?;
    if data.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ApkError::ManifestTooLarge);
    }
    Ok(axml::parse_manifest(&data)?)
}

/// The whole check of one APK file.
pub fn inspect<R: Read + Seek>(reader: R, caps: Caps) -> Result<Manifest, ApkError> {
    read_manifest(&mut open_zip(reader, caps)?)
}

/// The session name pm stores a split under: `base.apk`, or `split_NAME.apk`.
pub fn session_name(manifest: &Manifest) -> String {
    match &manifest.split {
        None => "base.apk".into(),
        Some(split) => format!("split_{split}.apk"),
    }
}

/// Split names pm accepts as file names (`config.arm64_v8a`, `feature_camera`).
pub fn valid_split_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
        && !name.starts_with('.')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use zip::write::SimpleFileOptions;

    pub(crate) fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body) in entries {
            // Stored, so a test can find and bend the bytes of an entry.
            let options =
                SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
            w.start_file(*name, options).unwrap();
            w.write_all(body).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn inspect_default(reader: Cursor<Vec<u8>>) -> Result<Manifest, ApkError> {
        inspect(reader, caps(&InstallConfig::default()))
    }

    fn base_axml() -> Vec<u8> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/axml/base.axml");
        std::fs::read(path).unwrap()
    }

    #[test]
    fn an_apk_yields_its_manifest() {
        let apk = zip_of(&[("AndroidManifest.xml", &base_axml()), ("classes.dex", b"x")]);
        assert_eq!(sniff(&mut Cursor::new(&apk)).unwrap(), Sniffed::Zip);
        let m = inspect_default(Cursor::new(apk)).unwrap();
        assert_eq!(m.package, "com.ferry.fixture");
        assert_eq!(session_name(&m), "base.apk");
    }

    #[test]
    fn not_a_zip_damaged_zip_and_zip_without_manifest_are_told_apart() {
        let text = b"just some text, not an archive".to_vec();
        assert_eq!(sniff(&mut Cursor::new(&text)).unwrap(), Sniffed::Other);
        assert!(matches!(
            inspect_default(Cursor::new(text)),
            Err(ApkError::NotZip(_))
        ));

        let apk = zip_of(&[("AndroidManifest.xml", &base_axml())]);
        let cut = apk[..apk.len() - 30].to_vec();
        let err = inspect_default(Cursor::new(cut)).unwrap_err();
        assert!(matches!(err, ApkError::NotZip(_)), "{err}");

        // A flipped byte inside the stored manifest: the CRC check catches it.
        let mut bent = apk.clone();
        let at = bent.windows(4).position(|w| w == [3, 0, 8, 0]).unwrap() + 40;
        bent[at] ^= 0x55;
        let err = inspect_default(Cursor::new(bent)).unwrap_err();
        assert!(
            matches!(err, ApkError::Damaged(_) | ApkError::Manifest(_)),
            "{err}"
        );

        let no_manifest = zip_of(&[("classes.dex", b"dex")]);
        assert!(matches!(
            inspect_default(Cursor::new(no_manifest)),
            Err(ApkError::NoManifest)
        ));
        let text_manifest = zip_of(&[("AndroidManifest.xml", b"<manifest package=\"a.b\"/>")]);
        assert!(matches!(
            inspect_default(Cursor::new(text_manifest)),
            Err(ApkError::Manifest(_))
        ));
    }

    #[test]
    fn split_names_become_safe_session_names() {
        let m = Manifest {
            package: "a.b".into(),
            split: Some("config.fr".into()),
            ..Default::default()
        };
        assert_eq!(session_name(&m), "split_config.fr.apk");
        assert!(valid_split_name("config.arm64_v8a"));
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            assert!(!valid_split_name(bad), "{bad}");
        }
    }
}
