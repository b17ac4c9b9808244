//! TLS trust the Android way. A static binary sees no system trust store in the places Linux
//! libraries look, and reqwest's bundled webpki roots know nothing of a CA an image integrator
//! or a user added. Android keeps its trusted CAs as one PEM file per certificate (`HASH.0`) in
//! `/system/etc/security/cacerts`, the updatable `/apex/com.android.conscrypt/cacerts`
//! (Android 14+) and `/data/misc/user/0/cacerts-added`; every certificate found there is
//! trusted on top of the bundled roots.
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
}

/// Reads every regular file of every folder of `tls.ca_dirs` (mapped by `system_root`);
/// folders that do not exist are passed over.
pub fn load(config: &Config) -> AndroidRoots {
    let mut roots = AndroidRoots::default();
    let mut seen = HashSet::new();
    for dir in &config.tls.ca_dirs {
        let path = config.system_path(dir);
        let before = roots.certs.len();
        load_dir(&path, &mut roots, &mut seen);
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
    for cert in &roots.certs {
        match reqwest::Certificate::from_der(cert) {
            Ok(cert) => builder = builder.add_root_certificate(cert),
            Err(e) => tracing::debug!("CA certificate not added: {e}"),
        }
    }
    builder
}

fn load_dir(dir: &Path, roots: &mut AndroidRoots, seen: &mut HashSet<Vec<u8>>) {
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
        // Follows links: a CA folder may link its files elsewhere.
        if !std::fs::metadata(&file).is_ok_and(|m| m.is_file()) {
            continue;
        }
        match read_certs(&file) {
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

/// The certificates of one PEM file, each checked the way rustls will accept a root.
fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES + 1).read_to_end(&mut bytes))
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
}
