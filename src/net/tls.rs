//! TLS trust the Android way. A static binary sees no system trust store in the places Linux
//! libraries look, and reqwest's bundled webpki roots know nothing of a CA an image integrator
//! or a user added. Android keeps its trusted CAs as one PEM file per certificate (`HASH.0`) in
//! `/system/etc/security/cacerts`, the updatable `/apex/com.android.conscrypt/cacerts`
//! (Android 14+) and `/data/misc/user/0/cacerts-added`; every certificate found there is
//! trusted on top of the bundled roots.
//!
//! Except the system CAs the user turned off: Android keeps a copy of each, under its system
//! file name, in `/data/misc/user/0/cacerts-removed`, and its TrustedCertificateStore then
//! ignores the system file. ferry does the same (same name or same certificate), and since
//! the bundled webpki roots largely repeat the system store, a phone with any removed CA gets
//! only its own store, so a turned-off CA cannot come back through the bundle.
//!
//! Each file is parsed and checked here, one by one: reqwest only decodes PEM roots when the
//! client is built, so a single damaged file would otherwise fail every transfer. Files that
//! hold no usable certificate are skipped with a debug log.

use crate::config::Config;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

/// A CA file is about 2 KiB; anything far larger is not one and is not read whole.
const MAX_CA_FILE_BYTES: u64 = 256 * 1024;

/// The certificates found in the configured CA folders.
#[derive(Debug, Default)]
pub struct AndroidRoots {
    /// DER certificates, each accepted as a trust anchor, without duplicates (the system and
    /// APEX folders usually hold the same set).
    pub certs: Vec<CertificateDer<'static>>,
    /// Files that held no usable certificate.
    pub skipped: usize,
    /// Files passed over because the user turned their CA off (`tls.ca_removed_dir`).
    pub removed: usize,
    /// Whether `tls.ca_removed_dir` lists any CA: the bundled roots must then be left out.
    pub any_removed: bool,
}

/// What `tls.ca_removed_dir` holds: file names and the certificates in them.
#[derive(Default)]
struct Removed {
    names: HashSet<std::ffi::OsString>,
    certs: HashSet<Vec<u8>>,
}

impl Removed {
    fn read(dir: &Path) -> Removed {
        let mut removed = Removed::default();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return removed;
        };
        for entry in entries.filter_map(|e| e.ok()) {
            if let Ok(certs) = read_certs(&entry.path()) {
                removed
                    .certs
                    .extend(certs.iter().map(|c| c.as_ref().to_vec()));
            }
            removed.names.insert(entry.file_name());
        }
        removed
    }

    fn covers(&self, file: &Path, certs: &[CertificateDer<'static>]) -> bool {
        file.file_name().is_some_and(|n| self.names.contains(n))
            || certs.iter().any(|c| self.certs.contains(c.as_ref()))
    }
}

/// Reads every regular file of every folder of `tls.ca_dirs` (mapped by `system_root`);
/// folders that do not exist are passed over.
pub fn load(config: &Config) -> AndroidRoots {
    let mut roots = AndroidRoots::default();
    let mut seen = HashSet::new();
    let removed = match config.tls.ca_removed_dir.as_str() {
        "" => Removed::default(),
        dir => Removed::read(&config.system_path(dir)),
    };
    roots.any_removed = !removed.names.is_empty();
    for dir in &config.tls.ca_dirs {
        let path = config.system_path(dir);
        let before = roots.certs.len();
        load_dir(&path, &removed, &mut roots, &mut seen);
        let added = roots.certs.len() - before;
        if added > 0 {
            tracing::debug!(dir = %path.display(), added, "trusting CA certificates");
        }
    }
    roots
}

/// Adds the Android CA certificates to a client's roots, beside the bundled webpki roots.
pub fn with_android_roots(
    mut builder: reqwest::ClientBuilder,
    config: &Config,
) -> reqwest::ClientBuilder {
    let roots = load(config);
    if roots.any_removed && !roots.certs.is_empty() {
        tracing::debug!(
            removed = roots.removed,
            "CAs turned off by the user: trusting the phone's store only"
        );
        builder = builder.tls_built_in_root_certs(false);
    }
    for cert in &roots.certs {
        match reqwest::Certificate::from_der(cert) {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(e) => tracing::debug!("CA certificate not added: {e}"),
        }
    }
    builder
}

fn load_dir(dir: &Path, removed: &Removed, roots: &mut AndroidRoots, seen: &mut HashSet<Vec<u8>>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(dir = %dir.display(), "cannot list CA folder: {e}");
            }
            return;
        }
    };
    let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    files.sort();
    for file in files {
        match read_certs(&file) {
            Ok(certs) if certs.is_empty() => {}
            Ok(certs) if removed.covers(&file, &certs) => {
                roots.removed += 1;
                tracing::debug!(file = %file.display(), "CA turned off by the user");
            }
            Ok(certs) => {
                for cert in certs {
                    if seen.insert(cert.as_ref().to_vec()) {
                        roots.certs.push(cert);
                    }
                }
            }
            Err(why) => {
                roots.skipped += 1;
                tracing::debug!(file = %file.display(), "CA file skipped: {why}");
            }
        }
    }
}

/// The certificates of one PEM file, each checked the way rustls will accept a root; none
/// when `file` is not a regular file.
pub(crate) fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    // Opened, then checked through the descriptor (links followed): no stat of the path.
    let mut bytes = Vec::new();
    let f = std::fs::File::open(file).map_err(|e| format!("cannot open it: {e}"))?;
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return Ok(Vec::new()); // a folder or device in the folder: not a CA file, passed over
    }
    f.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(format!("larger than {MAX_CA_FILE_BYTES} bytes"));
    }
    parse_pem(&bytes)
}

fn parse_pem(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(bytes) {
        let cert = item.map_err(|e| format!("bad PEM: {e}"))?;
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(dirs: &[&Path]) -> Config {
        let mut config = Config::default();
        config.tls.ca_dirs = dirs.iter().map(|d| d.display().to_string()).collect();
        config
    }

    fn test_ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn reads_pem_files_and_skips_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let ca = test_ca_pem();
        std::fs::write(dir.path().join("1a2b3c4d.0"), &ca).unwrap();
        // The same certificate again (system and APEX folders overlap): trusted once.
        std::fs::write(dir.path().join("1a2b3c4d.1"), &ca).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a certificate").unwrap();
        let broken = ca.replace("MII", "MIX");
        std::fs::write(dir.path().join("deadbeef.0"), broken).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let missing = dir.path().join("missing");
        let roots = load(&config_with(&[dir.path(), &missing]));
        assert_eq!(roots.certs.len(), 1);
        assert_eq!(roots.skipped, 2);
    }

    #[test]
    fn folders_are_mapped_under_system_root() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("system/etc/security/cacerts");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("5ad8a5d6.0"), test_ca_pem()).unwrap();
        let config = Config {
            system_root: Some(root.path().to_path_buf()),
            ..Config::default()
        };
        assert_eq!(load(&config).certs.len(), 1);
        // A client with those roots still builds.
        with_android_roots(reqwest::Client::builder(), &config)
            .build()
            .unwrap();
    }

    #[test]
    fn system_cas_the_user_turned_off_in_cacerts_removed_are_not_trusted() {
        let root = tempfile::tempdir().unwrap();
        let system = root.path().join("system/etc/security/cacerts");
        let apex = root.path().join("apex/com.android.conscrypt/cacerts");
        let removed = root.path().join("data/misc/user/0/cacerts-removed");
        for dir in [&system, &apex, &removed] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let (off, kept, renamed) = (test_ca_pem(), test_ca_pem(), test_ca_pem());
        std::fs::write(system.join("0ff0ff00.0"), &off).unwrap();
        std::fs::write(apex.join("0ff0ff00.0"), &off).unwrap();
        std::fs::write(system.join("6e6e6e6e.0"), &kept).unwrap();
        // The APEX copy of a removed CA may have another name: its certificate matches.
        std::fs::write(apex.join("7a7a7a7a.0"), &renamed).unwrap();
        std::fs::write(removed.join("0ff0ff00.0"), &off).unwrap();
        std::fs::write(removed.join("7b7b7b7b.0"), &renamed).unwrap();
        let config = Config {
            system_root: Some(root.path().to_path_buf()),
            ..Config::default()
        };
        let roots = load(&config);
        let der = |pem: &str| parse_pem(pem.as_bytes()).unwrap().remove(0);
        assert_eq!(roots.certs, vec![der(&kept)]);
        assert_eq!(roots.removed, 3);
        assert!(roots.any_removed);

        // Without removals (or with the setting off) everything is trusted as before.
        let mut all = config.clone();
        all.tls.ca_removed_dir.clear();
        let roots = load(&all);
        assert_eq!((roots.certs.len(), roots.removed), (3, 0));
        assert!(!roots.any_removed);
    }
}
