//! A test CA made now (rcgen) and one server certificate signed by it, for the tests that
//! serve TLS on 127.0.0.1 (mosquitto's listener, the embedded broker's, an HTTPS server).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub struct TestCa {
    /// PEM of the CA certificate: what a client is told to trust.
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    /// The server's certificate, for the names given to [`make`].
    pub leaf_pem: String,
    pub leaf_der: Vec<u8>,
    /// The server's key, PKCS#8.
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

/// A CA and a leaf for `names` (each a SAN: an IP address such as `127.0.0.1` becomes a SAN
/// of type IP address, as clients check it) signed by it.
pub fn make(names: &[&str]) -> TestCa {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    if let Some(first) = names.first() {
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, *first);
    }
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    TestCa {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        leaf_pem: leaf.pem(),
        leaf_der: leaf.der().to_vec(),
        key_pem: leaf_key.serialize_pem(),
        key_der: leaf_key.serialize_der(),
    }
}

impl TestCa {
    /// The PEM files in `dir`: `(ca.pem, cert.pem, key.pem)`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let files = (
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        std::fs::write(&files.0, &self.ca_pem).unwrap();
        std::fs::write(&files.1, &self.leaf_pem).unwrap();
        std::fs::write(&files.2, &self.key_pem).unwrap();
        files
    }
}

/// [`make`] for `names`, written into `dir`: `(cafile, certfile, keyfile)`.
pub fn files(dir: &Path, names: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    make(names).write(dir)
}
