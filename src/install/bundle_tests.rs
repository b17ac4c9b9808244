use super::*;
use std::io::{Cursor, Write};
use zip::write::SimpleFileOptions;

fn deflated() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated)
}

fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, body) in entries {
        w.start_file(*name, deflated()).unwrap();
        w.write_all(body).unwrap();
    }
    w.finish().unwrap().into_inner()
}

struct Case {
    dir: tempfile::TempDir,
    zip: zip::ZipArchive<File>,
}

impl Case {
    fn new(bytes: &[u8]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle.zip");
        std::fs::write(&path, bytes).unwrap();
        let zip = zip::ZipArchive::new(File::open(&path).unwrap()).unwrap();
        Case { dir, zip }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("state/install/t-1")
    }

    fn unpack(&mut self, limits: &InstallConfig) -> Result<Bundle, BundleError> {
        let work = self.work();
        unpack(&mut self.zip, &work, limits)
    }
}

fn entries(bundle: &Bundle) -> Vec<&str> {
    bundle.apks.iter().map(|a| a.entry.as_str()).collect()
}

#[test]
fn bundletool_apks_take_the_splits_folder() {
    let mut case = Case::new(&zip_bytes(&[
        ("toc.pb", b"\x0a\x00"),
        ("splits/base-master.apk", b"base bytes"),
        ("splits/base-fr.apk", b"fr bytes"),
        ("standalones/standalone-x86.apk", b"old devices"),
    ]));
    let bundle = case.unpack(&InstallConfig::default()).unwrap();
    assert_eq!(
        entries(&bundle),
        ["splits/base-master.apk", "splits/base-fr.apk"]
    );
    assert_eq!(std::fs::read(&bundle.apks[0].path).unwrap(), b"base bytes");
    assert_eq!(bundle.apks[1].size, 8);
    assert!(bundle.apks[0].path.starts_with(case.work()));

    let mut universal = Case::new(&zip_bytes(&[
        ("toc.pb", b""),
        ("universal.apk", b"all in one"),
        ("standalones/standalone-x86.apk", b"old"),
    ]));
    let bundle = universal.unpack(&InstallConfig::default()).unwrap();
    assert_eq!(entries(&bundle), ["universal.apk"]);
}

#[test]
fn xapk_manifest_names_the_apks_and_the_expansions() {
    let manifest = br#"{"xapk_version":2,"package_name":"com.ferry.fixture","version_code":"7",
        "split_apks":[{"file":"com.ferry.fixture.apk","id":"base"},{"file":"config.fr.apk","id":"config.fr"}],
        "expansions":[{"file":"Android/obb/com.ferry.fixture/main.7.com.ferry.fixture.obb",
                       "install_location":"EXTERNAL_STORAGE",
                       "install_path":"Android/obb/com.ferry.fixture/main.7.com.ferry.fixture.obb"}]}"#;
    let mut case = Case::new(&zip_bytes(&[
        ("manifest.json", manifest),
        ("icon.png", b"png"),
        ("com.ferry.fixture.apk", b"base"),
        ("config.fr.apk", b"fr"),
        ("unlisted.apk", b"not named by the manifest"),
        (
            "Android/obb/com.ferry.fixture/main.7.com.ferry.fixture.obb",
            b"expansion data",
        ),
    ]));
    let bundle = case.unpack(&InstallConfig::default()).unwrap();
    assert_eq!(entries(&bundle), ["com.ferry.fixture.apk", "config.fr.apk"]);
    assert_eq!(
        bundle.declared_package.as_deref(),
        Some("com.ferry.fixture")
    );
    assert_eq!(bundle.expansions.len(), 1);
    assert_eq!(bundle.expansions[0].name, "main.7.com.ferry.fixture.obb");
    assert_eq!(bundle.expansions[0].size, 14);

    let mut missing = Case::new(&zip_bytes(&[(
        "manifest.json",
        br#"{"package_name":"a.b","split_apks":[{"file":"gone.apk"}]}"#,
    )]));
    let err = missing.unpack(&InstallConfig::default()).unwrap_err();
    assert!(err.to_string().contains("gone.apk"), "{err}");
}

#[test]
fn expansion_install_paths_with_staging_or_unsafe_names_are_refused() {
    for target in [
        "Android/obb/com.x/.ferry-t2-0123456789ab.part",
        "Android/obb/com.x/.FERRY-t2.obb.part",
        "Android/obb/.ferry-x/main.obb",
        "Android/obb/../x/main.obb",
        "Android/obb/com.x/",
    ] {
        let manifest = format!(
            r#"{{"package_name":"com.x","split_apks":[{{"file":"base.apk"}}],
                "expansions":[{{"file":"main.obb","install_path":{target:?}}}]}}"#
        );
        let mut case = Case::new(&zip_bytes(&[
            ("manifest.json", manifest.as_bytes()),
            ("base.apk", b"base"),
            ("main.obb", b"data"),
        ]));
        let err = case.unpack(&InstallConfig::default()).unwrap_err();
        assert!(
            matches!(err, BundleError::XapkManifest(_)),
            "{target}: {err}"
        );
    }
}

#[test]
fn zip_slip_entries_refuse_the_bundle_before_anything_is_written() {
    for evil in [
        "../../../data/local/evil.apk",
        "splits/../../evil.apk",
        "/system/app/evil.apk",
        "splits\\..\\evil.apk",
        "splits//x.apk",
    ] {
        let mut case = Case::new(&zip_bytes(&[("splits/base.apk", b"ok"), (evil, b"x")]));
        let err = case.unpack(&InstallConfig::default()).unwrap_err();
        assert!(
            matches!(err, BundleError::UnsafeEntry(ref n) if n == evil),
            "{evil}: {err}"
        );
        assert!(!case.work().exists(), "{evil}: the work folder was created");
    }
}

#[test]
fn a_zip_bomb_is_refused_by_its_declared_size() {
    let zeros = vec![0u8; 50 << 20];
    let bytes = zip_bytes(&[("splits/base.apk", &zeros)]);
    assert!(
        bytes.len() < 1 << 20,
        "deflate should shrink zeros: {}",
        bytes.len()
    );
    let mut case = Case::new(&bytes);
    let limits = InstallConfig {
        max_bundle_bytes: 10 << 20,
        ..InstallConfig::default()
    };
    let err = case.unpack(&limits).unwrap_err();
    assert!(
        matches!(err, BundleError::TooLarge(n, _) if n == 50 << 20),
        "{err}"
    );
    assert!(!case.work().exists());
}

#[test]
fn a_bomb_that_lies_in_its_headers_is_cut_off() {
    let zeros = vec![0u8; 10 << 20];
    let mut bytes = zip_bytes(&[("splits/base.apk", &zeros)]);
    // Claim 1000 bytes in the local and the central header.
    let lie = 1000u32.to_le_bytes();
    let local = bytes.windows(4).position(|w| w == b"PK\x03\x04").unwrap();
    bytes[local + 22..local + 26].copy_from_slice(&lie);
    let central = bytes.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    bytes[central + 24..central + 28].copy_from_slice(&lie);
    let mut case = Case::new(&bytes);
    let err = case.unpack(&InstallConfig::default()).unwrap_err();
    assert!(
        matches!(err, BundleError::LyingEntry(_) | BundleError::Entry(..)),
        "{err}"
    );
    let written = std::fs::metadata(case.work().join("0000.apk")).map_or(0, |m| m.len());
    assert!(
        written <= 1000,
        "{written} bytes were written for a 1000-byte entry"
    );
}

#[test]
fn too_many_entries_and_no_apks_are_refused() {
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let mut case = Case::new(&zip_bytes(&many));
    let limits = InstallConfig {
        max_bundle_entries: 10,
        ..InstallConfig::default()
    };
    assert!(matches!(
        case.unpack(&limits),
        Err(BundleError::TooManyEntries(20, 10))
    ));
    let mut none = Case::new(&zip_bytes(&[("standalones/only.apk", b"x")]));
    assert!(matches!(
        none.unpack(&InstallConfig::default()),
        Err(BundleError::NoApks)
    ));
}

#[test]
fn a_bundle_declaring_far_more_than_it_packs_is_refused_before_anything_is_written() {
    // 20 MiB of zeros deflate to about 20 KiB: a 1000:1 bomb, well under max_bundle_bytes.
    let zeros = vec![0u8; 20 << 20];
    let mut case = Case::new(&zip_bytes(&[("splits/base-master.apk", &zeros)]));
    let err = case.unpack(&InstallConfig::default()).unwrap_err();
    assert!(
        matches!(err, BundleError::Ratio(ref n, size, _) if n == "splits/base-master.apk" && size == 20 << 20),
        "{err}"
    );
    assert!(err.to_string().contains("100 to 1"), "{err}");
    assert!(!case.work().exists(), "the work folder was created");

    // The same for an XAPK's expansion file, which is unpacked later, to /sdcard.
    let manifest = br#"{"package_name":"com.ferry.fixture",
        "expansions":[{"file":"Android/obb/com.ferry.fixture/main.7.com.ferry.fixture.obb"}]}"#;
    let mut xapk = Case::new(&zip_bytes(&[
        ("manifest.json", manifest),
        ("com.ferry.fixture.apk", b"base"),
        (
            "Android/obb/com.ferry.fixture/main.7.com.ferry.fixture.obb",
            &zeros,
        ),
    ]));
    let err = xapk.unpack(&InstallConfig::default()).unwrap_err();
    assert!(
        matches!(err, BundleError::Ratio(ref n, ..) if n.ends_with(".obb")),
        "{err}"
    );
    assert!(!xapk.work().exists(), "the work folder was created");

    // Data that packs like real APKs passes.
    let noise: Vec<u8> = (0..1u32 << 18)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut fine = Case::new(&zip_bytes(&[("splits/base-master.apk", &noise)]));
    assert_eq!(
        fine.unpack(&InstallConfig::default()).unwrap().apks[0].size,
        1 << 18
    );
}

#[test]
fn a_bundle_declaring_more_than_the_free_space_is_refused_before_unpacking() {
    // Stored entries (ratio 1) that each claim almost 4 GiB: together more than the free
    // space of the folder the test unpacks into, though the bundle is a few hundred bytes.
    let probe = tempfile::tempdir().unwrap();
    let claim = 0xFFFF_FFFEu64;
    let count = free_bytes(probe.path()).unwrap() / claim + 2;
    let names: Vec<String> = (0..count).map(|i| format!("splits/s{i}.apk")).collect();
    let stored = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for name in &names {
        w.start_file(name.as_str(), stored).unwrap();
        w.write_all(b"x").unwrap();
    }
    let mut bytes = w.finish().unwrap().into_inner();
    let lie = (claim as u32).to_le_bytes();
    let mut at = 0;
    while let Some(p) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let p = at + p;
        bytes[p + 20..p + 24].copy_from_slice(&lie);
        bytes[p + 24..p + 28].copy_from_slice(&lie);
        at = p + 4;
    }
    let mut case = Case::new(&bytes);
    let limits = InstallConfig {
        max_bundle_bytes: u64::MAX,
        ..InstallConfig::default()
    };
    let err = case.unpack(&limits).unwrap_err();
    let BundleError::Local(e) = &err else {
        panic!("{err}")
    };
    assert_eq!(e.code, crate::error::Code::StorageDiskFull, "{err}");
    assert!(e.message.contains("free; nothing was unpacked"), "{err}");
    let written = std::fs::read_dir(case.work()).map_or(0, |d| d.count());
    assert_eq!(written, 0, "files were unpacked");
}
