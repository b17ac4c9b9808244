use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/axml")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn reads_a_base_manifest_compiled_by_aapt() {
    let m = parse_manifest(&fixture("base.axml")).unwrap();
    assert_eq!(
        m,
        Manifest {
            package: "com.ferry.fixture".into(),
            version_code: Some(7),
            version_name: Some("1.2.3".into()),
            split: None,
        }
    );
}

#[test]
fn reads_the_split_name_of_a_config_split() {
    let m = parse_manifest(&fixture("split-config-fr.axml")).unwrap();
    assert_eq!(m.package, "com.ferry.fixture");
    assert_eq!(m.split.as_deref(), Some("config.fr"));
    assert_eq!(m.version_code, Some(7));
}

#[test]
fn every_truncation_and_corruption_is_an_error_not_a_panic() {
    let data = fixture("base.axml");
    for len in 0..data.len() - 1 {
        // Cut short: either an error, or (once the manifest element is complete) the same
        // answer; never a panic or a different package.
        if let Ok(m) = parse_manifest(&data[..len]) {
            assert_eq!(m.package, "com.ferry.fixture", "prefix of {len} bytes");
        }
    }
    for at in 0..data.len() {
        let mut bent = data.clone();
        bent[at] ^= 0xff;
        let _ = parse_manifest(&bent);
    }
}

#[test]
fn text_manifests_and_other_roots_are_refused() {
    let err = parse_manifest(b"<?xml version=\"1.0\"?><manifest package=\"a.b\"/>").unwrap_err();
    assert!(err.to_string().contains("not compiled"), "{err}");
    let err = parse_manifest(&utf8_doc("application", &[("package", "a.b")])).unwrap_err();
    assert!(err.to_string().contains("<application>"), "{err}");
    let err = parse_manifest(&utf8_doc("manifest", &[("package", "nodots")])).unwrap_err();
    assert!(
        err.to_string().contains("not a valid package name"),
        "{err}"
    );
    let err = parse_manifest(&utf8_doc("manifest", &[])).unwrap_err();
    assert!(err.to_string().contains("no package"), "{err}");
}

#[test]
fn utf8_pools_and_attribute_names_without_resource_ids() {
    let doc = utf8_doc(
        "manifest",
        &[
            ("package", "org.example.app_2"),
            ("split", "config.arm64_v8a"),
            ("versionName", "2.0-ü"),
        ],
    );
    let m = parse_manifest(&doc).unwrap();
    assert_eq!(m.package, "org.example.app_2");
    assert_eq!(m.split.as_deref(), Some("config.arm64_v8a"));
    assert_eq!(m.version_name.as_deref(), Some("2.0-ü"));
    assert_eq!(m.version_code, None);
}

#[test]
fn package_names_follow_androids_rule() {
    for ok in ["a.b", "com.ferry.fixture", "A1.b_2"] {
        assert!(valid_package(ok), "{ok}");
    }
    for bad in ["", "a", "a..b", "1a.b", "a.b-c", "a.b/c", ".a.b"] {
        assert!(!valid_package(bad), "{bad}");
    }
}

/// A minimal AXML document with a UTF-8 string pool, no resource map, and one element with
/// string attributes, laid out as aapt2 does.
fn utf8_doc(element: &str, attrs: &[(&str, &str)]) -> Vec<u8> {
    let mut strings: Vec<&str> = vec![element];
    for (k, v) in attrs {
        strings.push(k);
        strings.push(v);
    }
    let mut bodies = Vec::new();
    let mut offsets = Vec::new();
    for s in &strings {
        offsets.push(bodies.len() as u32);
        bodies.push(s.encode_utf16().count() as u8);
        bodies.push(s.len() as u8);
        bodies.extend_from_slice(s.as_bytes());
        bodies.push(0);
    }
    while bodies.len() % 4 != 0 {
        bodies.push(0);
    }
    let header = 28;
    let strings_start = header + 4 * strings.len();
    let mut pool = Vec::new();
    pool.extend_from_slice(&STRING_POOL.to_le_bytes());
    pool.extend_from_slice(&(header as u16).to_le_bytes());
    pool.extend_from_slice(&((strings_start + bodies.len()) as u32).to_le_bytes());
    pool.extend_from_slice(&(strings.len() as u32).to_le_bytes());
    pool.extend_from_slice(&0u32.to_le_bytes());
    pool.extend_from_slice(&UTF8_FLAG.to_le_bytes());
    pool.extend_from_slice(&(strings_start as u32).to_le_bytes());
    pool.extend_from_slice(&0u32.to_le_bytes());
    for o in offsets {
        pool.extend_from_slice(&o.to_le_bytes());
    }
    pool.extend_from_slice(&bodies);

    let mut el = Vec::new();
    let size = 16 + 20 + 20 * attrs.len();
    el.extend_from_slice(&START_ELEMENT.to_le_bytes());
    el.extend_from_slice(&16u16.to_le_bytes());
    el.extend_from_slice(&(size as u32).to_le_bytes());
    el.extend_from_slice(&[0u8; 8]); // line number, comment
    el.extend_from_slice(&u32::MAX.to_le_bytes()); // namespace
    el.extend_from_slice(&0u32.to_le_bytes()); // name: string 0
    el.extend_from_slice(&20u16.to_le_bytes()); // attributeStart
    el.extend_from_slice(&20u16.to_le_bytes()); // attributeSize
    el.extend_from_slice(&(attrs.len() as u16).to_le_bytes());
    el.extend_from_slice(&[0u8; 6]);
    for i in 0..attrs.len() {
        let (name, value) = (1 + 2 * i as u32, 2 + 2 * i as u32);
        el.extend_from_slice(&u32::MAX.to_le_bytes());
        el.extend_from_slice(&name.to_le_bytes());
        el.extend_from_slice(&value.to_le_bytes());
        el.extend_from_slice(&8u16.to_le_bytes());
        el.push(0);
        el.push(TYPE_STRING);
        el.extend_from_slice(&value.to_le_bytes());
    }

    let mut doc = Vec::new();
    doc.extend_from_slice(&XML.to_le_bytes());
    doc.extend_from_slice(&8u16.to_le_bytes());
    doc.extend_from_slice(&((8 + pool.len() + el.len()) as u32).to_le_bytes());
    doc.extend(pool);
    doc.extend(el);
    doc
}
