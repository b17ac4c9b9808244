use super::*;
use std::io::Cursor;

const CAPS: Caps = Caps {
    entries: 65_535,
    directory_bytes: 16 << 20,
};

/// A zip of `n` empty stored entries with no local headers (the end records and the central
/// directory are all that is read before the `zip` crate looks at an entry), the ZIP64
/// records when `zip64`, and `comment` after the end record.
pub(crate) fn many_entries(n: u64, zip64: bool, comment: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("e{i:07}");
        out.extend_from_slice(b"PK\x01\x02");
        out.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&[0; 12]); // crc, compressed and uncompressed sizes
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        out.extend_from_slice(&0u32.to_le_bytes()); // local header offset
        out.extend_from_slice(name.as_bytes());
    }
    end_records(&mut out, n, 0, zip64, comment);
    out
}

/// Appends end records declaring `n` entries in a directory from `offset` to here.
fn end_records(out: &mut Vec<u8>, n: u64, offset: u64, zip64: bool, comment: &[u8]) {
    let size = out.len() as u64 - offset;
    if zip64 {
        let record = out.len() as u64;
        out.extend_from_slice(b"PK\x06\x06");
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for v in [n, n, size, offset] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(b"PK\x06\x07");
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&record.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    let n16 = if zip64 { u16::MAX } else { n as u16 };
    let (size32, offset32) = if zip64 {
        (u32::MAX, u32::MAX)
    } else {
        (size as u32, offset as u32)
    };
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&offset32.to_le_bytes());
    out.extend_from_slice(&(comment.len() as u16).to_le_bytes());
    out.extend_from_slice(comment);
}

#[test]
fn a_written_zip_is_read_as_it_declares() {
    let zip = crate::install::apk::tests::zip_of(&[("a", b"1"), ("b/c", b"22")]);
    let dir = check(&mut Cursor::new(&zip), CAPS).unwrap();
    assert_eq!(dir.entries, 2);
    assert!(!dir.zip64);
    assert_eq!(dir.offset + dir.size + 22, zip.len() as u64);

    let zip = many_entries(3, true, b"a comment");
    let dir = check(&mut Cursor::new(&zip), CAPS).unwrap();
    assert_eq!((dir.entries, dir.zip64), (3, true));
    let parsed = zip::ZipArchive::new(Cursor::new(zip)).unwrap();
    assert_eq!(parsed.len(), 3);
}

#[test]
fn a_million_declared_entries_are_refused_from_the_end_records_alone() {
    // 1M entries declared in a ZIP64 record, with none of the directory present.
    let mut zip = Vec::new();
    let n = 1_000_000u64;
    let record = 0u64;
    zip.extend_from_slice(b"PK\x06\x06");
    zip.extend_from_slice(&44u64.to_le_bytes());
    zip.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    for v in [n, n, n * 53, 0] {
        zip.extend_from_slice(&v.to_le_bytes());
    }
    zip.extend_from_slice(b"PK\x06\x07\0\0\0\0");
    zip.extend_from_slice(&record.to_le_bytes());
    zip.extend_from_slice(&1u32.to_le_bytes());
    zip.extend_from_slice(
        b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\0\0",
    );
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(
        matches!(err, EndError::TooManyEntries(1_000_000, 65_535)),
        "{err}"
    );
    assert!(err.to_string().contains("install.max_apk_entries"), "{err}");

    // A real directory of 70,000 entries (ZIP64, as more than 65,535 need).
    let zip = many_entries(70_000, true, b"");
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(matches!(err, EndError::TooManyEntries(70_000, _)), "{err}");
    let small = Caps {
        entries: 100_000,
        directory_bytes: 1 << 20,
    };
    let err = check(&mut Cursor::new(&zip), small).unwrap_err();
    assert!(
        matches!(err, EndError::DirectoryTooLarge(3_780_000, 1_048_576)),
        "{err}"
    );
}

#[test]
fn an_end_record_that_does_not_match_its_directory_is_refused() {
    // Claims fewer entries than the directory holds room for is fine; more is not.
    let mut zip = many_entries(2, false, b"");
    let at = zip.len() - 22;
    zip[at + 8..at + 12].copy_from_slice(&[200, 0, 200, 0]);
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(matches!(err, EndError::Malformed(_)), "{err}");

    // A directory that does not reach the end record: data between them could hold a second
    // directory that another reader picks.
    let mut zip = many_entries(2, false, b"");
    let at = zip.len() - 22;
    zip.splice(at..at, [0u8; 10]);
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(err.to_string().contains("does not end where"), "{err}");

    // The ZIP64 locator points at no ZIP64 record.
    let mut zip = many_entries(2, true, b"");
    let locator = zip.len() - 22 - 20;
    zip[locator + 8..locator + 16].copy_from_slice(&3u64.to_le_bytes());
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(matches!(err, EndError::Malformed(_)), "{err}");

    for short in [&b""[..], b"PK\x05\x06", b"not a zip at all, just text"] {
        let err = check(&mut Cursor::new(short), CAPS).unwrap_err();
        assert!(matches!(err, EndError::NoEnd), "{err}");
    }
}

#[test]
fn a_stray_end_record_in_the_comment_is_the_one_checked() {
    // The last signature whose comment fits wins, as in the `zip` crate: here a record inside
    // the comment that declares 1M entries (and whose own comment fits).
    let mut fake = Vec::from(&b"PK\x05\x06\0\0\0\0"[..]);
    fake.extend_from_slice(&[0x40, 0x42, 0x40, 0x42]);
    fake.extend_from_slice(&[0; 10]);
    let zip = many_entries(2, false, &fake);
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(matches!(err, EndError::Malformed(_)), "{err}");

    // A signature in the comment whose own comment would run past the end is passed over.
    let mut zip = many_entries(2, false, b"");
    let comment = b"PK\x05\x06 and the rest of a comment that is not a record".to_vec();
    let at = zip.len() - 2;
    zip[at..].copy_from_slice(&(comment.len() as u16).to_le_bytes());
    zip.extend_from_slice(&comment);
    assert_eq!(check(&mut Cursor::new(&zip), CAPS).unwrap().entries, 2);
}

#[test]
fn an_end_record_the_zip_crate_would_pass_over_is_refused() {
    // The last record is a fake in the comment whose "directory" is junk: the `zip` crate
    // finds no header there and falls back to the real record, so checking the fake alone
    // would let the real one (which could declare a million entries) through unchecked.
    let mut comment = vec![b'x'; MIN_HEADER as usize];
    let zip = many_entries(3, false, b"");
    let fake_pos = (zip.len() + comment.len()) as u64;
    comment.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    comment.extend_from_slice(&1u16.to_le_bytes());
    comment.extend_from_slice(&1u16.to_le_bytes());
    comment.extend_from_slice(&(MIN_HEADER as u32).to_le_bytes());
    comment.extend_from_slice(&((fake_pos - MIN_HEADER) as u32).to_le_bytes());
    comment.extend_from_slice(&0u16.to_le_bytes());
    let zip = many_entries(3, false, &comment);
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(
        matches!(&err, EndError::Malformed(m) if m.contains("no central directory header")),
        "{err}"
    );

    // A ZIP64 locator naming another disk: the crate would pass over its record too.
    let mut zip = many_entries(2, true, b"");
    let locator = zip.len() - EOCD_LEN - LOCATOR_LEN as usize;
    assert_eq!(zip[locator..locator + 4], LOCATOR_SIG);
    zip[locator + 4..locator + 8].copy_from_slice(&1u32.to_le_bytes());
    let err = check(&mut Cursor::new(&zip), CAPS).unwrap_err();
    assert!(matches!(err, EndError::Malformed(_)), "{err}");

    // No entries at all: nothing to anchor the record to.
    let err = check(&mut Cursor::new(many_entries(0, false, b"")), CAPS).unwrap_err();
    assert!(matches!(err, EndError::Malformed(_)), "{err}");
}
