//! A reader for Android's binary XML (AXML), just enough to take the identity of an APK from
//! its compiled `AndroidManifest.xml`: the `<manifest>` element's `package`, `versionCode`
//! (with `versionCodeMajor`), `versionName` and `split`.
//!
//! Layout (AOSP `ResourceTypes.h`): an `RES_XML_TYPE` chunk holding a string pool (UTF-16 or
//! UTF-8), a resource map (the framework attribute id of each attribute name), then XML nodes.
//! Attributes are matched by framework id as Android does, and by name when the map lacks
//! one, so manifests whose attribute names were obfuscated still read. Every offset is
//! bounds-checked: the input comes from the network.

/// RES_XML_TYPE, RES_STRING_POOL_TYPE, RES_XML_RESOURCE_MAP_TYPE, RES_XML_START_ELEMENT_TYPE.
const XML: u16 = 0x0003;
const STRING_POOL: u16 = 0x0001;
const RESOURCE_MAP: u16 = 0x0180;
const START_ELEMENT: u16 = 0x0102;
const UTF8_FLAG: u32 = 1 << 8;

/// `android:versionCode`, `versionName`, `versionCodeMajor` in the framework's R.attr.
const ATTR_VERSION_CODE: u32 = 0x0101_021b;
const ATTR_VERSION_NAME: u32 = 0x0101_021c;
const ATTR_VERSION_CODE_MAJOR: u32 = 0x0101_0576;

/// Res_value data types.
const TYPE_STRING: u8 = 0x03;
const TYPE_INT_DEC: u8 = 0x10;
const TYPE_INT_HEX: u8 = 0x11;

/// Strings longer than this are refused; a package name is at most a few hundred bytes.
const MAX_STRING_CHARS: usize = 4096;

/// What the `<manifest>` element says about the APK.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    pub package: String,
    pub version_code: Option<u64>,
    /// `None` when absent or a resource reference (only resources.arsc could resolve it).
    pub version_name: Option<String>,
    /// The split name (`config.fr`) of a split APK; `None` for a base APK.
    pub split: Option<String>,
}

/// Why the bytes are not a readable binary manifest.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("AndroidManifest.xml is not a valid binary manifest: {0}")]
pub struct AxmlError(String);

fn bad<T>(why: impl Into<String>) -> Result<T, AxmlError> {
    Err(AxmlError(why.into()))
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u16(&self, at: usize) -> Result<u16, AxmlError> {
        match self.0.get(at..at + 2) {
            Some(b) => Ok(u16::from_le_bytes([b[0], b[1]])),
            None => bad(format!("truncated at byte {at}")),
        }
    }
    fn u32(&self, at: usize) -> Result<u32, AxmlError> {
        match self.0.get(at..at + 4) {
            Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            None => bad(format!("truncated at byte {at}")),
        }
    }
    fn u8(&self, at: usize) -> Result<u8, AxmlError> {
        self.0
            .get(at)
            .copied()
            .ok_or_else(|| AxmlError(format!("truncated at byte {at}")))
    }
}

/// The string pool: offsets of each string, decoded on demand.
struct Pool<'a> {
    data: Bytes<'a>,
    /// Absolute offset of the first string.
    strings_start: usize,
    offsets: Vec<usize>,
    utf8: bool,
}

impl Pool<'_> {
    fn get(&self, index: u32) -> Result<String, AxmlError> {
        let Some(rel) = self.offsets.get(index as usize) else {
            return bad(format!("string index {index} out of range"));
        };
        let at = self.strings_start + rel;
        if self.utf8 {
            // UTF-16 length (skipped), then UTF-8 length, each 1 or 2 bytes.
            let (_, n16) = self.len8(at)?;
            let (len, n8) = self.len8(at + n16)?;
            let start = at + n16 + n8;
            let Some(raw) = self.data.0.get(start..start + len) else {
                return bad("string past the end of the pool");
            };
            String::from_utf8(raw.to_vec()).or_else(|_| bad("string is not UTF-8"))
        } else {
            let first = self.data.u16(at)? as usize;
            let (len, skip) = if first & 0x8000 != 0 {
                let second = self.data.u16(at + 2)? as usize;
                (((first & 0x7fff) << 16) | second, 4)
            } else {
                (first, 2)
            };
            if len > MAX_STRING_CHARS {
                return bad(format!("string of {len} characters"));
            }
            let units = (0..len)
                .map(|i| self.data.u16(at + skip + 2 * i))
                .collect::<Result<Vec<u16>, _>>()?;
            String::from_utf16(&units).or_else(|_| bad("string is not UTF-16"))
        }
    }

    fn len8(&self, at: usize) -> Result<(usize, usize), AxmlError> {
        let first = self.data.u8(at)? as usize;
        if first & 0x80 != 0 {
            let second = self.data.u8(at + 1)? as usize;
            Ok((((first & 0x7f) << 8) | second, 2))
        } else {
            Ok((first, 1))
        }
    }
}

fn string_pool(data: &[u8], chunk: usize, size: usize) -> Result<Pool<'_>, AxmlError> {
    let b = Bytes(data);
    let count = b.u32(chunk + 8)? as usize;
    let flags = b.u32(chunk + 16)?;
    let strings_start = chunk + b.u32(chunk + 20)? as usize;
    let header = b.u16(chunk + 2)? as usize;
    if count > size / 4 || strings_start > chunk + size {
        return bad("string pool header is inconsistent");
    }
    let offsets = (0..count)
        .map(|i| b.u32(chunk + header + 4 * i).map(|o| o as usize))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Pool {
        data: Bytes(&data[..chunk + size]),
        strings_start,
        offsets,
        utf8: flags & UTF8_FLAG != 0,
    })
}

/// Reads the `<manifest>` element of a compiled AndroidManifest.xml.
pub fn parse_manifest(data: &[u8]) -> Result<Manifest, AxmlError> {
    let b = Bytes(data);
    if b.u16(0)? != XML {
        return bad("it does not start with an XML chunk (a text manifest is not compiled)");
    }
    let end = (b.u32(4)? as usize).min(data.len());
    let mut at = b.u16(2)? as usize;
    let mut pool = None;
    let mut res_ids: Vec<u32> = Vec::new();
    while at + 8 <= end {
        let kind = b.u16(at)?;
        let size = b.u32(at + 4)? as usize;
        if size < 8 || at + size > end {
            return bad(format!("chunk at byte {at} has a bad size {size}"));
        }
        match kind {
            STRING_POOL => pool = Some(string_pool(data, at, size)?),
            RESOURCE_MAP => {
                res_ids = (at + 8..at + size)
                    .step_by(4)
                    .map(|i| b.u32(i))
                    .collect::<Result<_, _>>()?;
            }
            START_ELEMENT => {
                let Some(pool) = &pool else {
                    return bad("an element comes before the string pool");
                };
                return manifest_element(&b, pool, &res_ids, at);
            }
            _ => {}
        }
        at += size;
    }
    bad("no <manifest> element")
}

fn manifest_element(
    b: &Bytes<'_>,
    pool: &Pool<'_>,
    res_ids: &[u32],
    chunk: usize,
) -> Result<Manifest, AxmlError> {
    let ext = chunk + b.u16(chunk + 2)? as usize;
    let name = pool.get(b.u32(ext + 4)?)?;
    if name != "manifest" {
        return bad(format!("the root element is <{name}>, not <manifest>"));
    }
    let attr_start = b.u16(ext + 8)? as usize;
    let attr_size = b.u16(ext + 10)? as usize;
    let attr_count = b.u16(ext + 12)? as usize;
    if attr_size < 20 {
        return bad("attributes are too small");
    }
    let mut manifest = Manifest::default();
    let mut major = 0u64;
    let mut package = None;
    for i in 0..attr_count {
        let a = ext + attr_start + i * attr_size;
        let name_index = b.u32(a + 4)?;
        let raw = b.u32(a + 8)?;
        let data_type = b.u8(a + 15)?;
        let value = b.u32(a + 16)?;
        let id = res_ids.get(name_index as usize).copied().unwrap_or(0);
        let name = if id == 0 {
            pool.get(name_index)?
        } else {
            String::new()
        };
        let text = || -> Result<Option<String>, AxmlError> {
            match (data_type, raw) {
                (TYPE_STRING, _) => pool.get(value).map(Some),
                (_, u32::MAX) => Ok(None),
                (_, raw) => pool.get(raw).map(Some),
            }
        };
        let int = || matches!(data_type, TYPE_INT_DEC | TYPE_INT_HEX).then_some(value as u64);
        match (id, name.as_str()) {
            (ATTR_VERSION_CODE, _) | (0, "versionCode") => manifest.version_code = int(),
            (ATTR_VERSION_CODE_MAJOR, _) | (0, "versionCodeMajor") => major = int().unwrap_or(0),
            (ATTR_VERSION_NAME, _) | (0, "versionName") => manifest.version_name = text()?,
            (0, "package") => package = text()?,
            (0, "split") => manifest.split = text()?.filter(|s| !s.is_empty()),
            _ => {}
        }
    }
    manifest.version_code = manifest.version_code.map(|low| (major << 32) | low);
    manifest.package = match package {
        Some(p) if valid_package(&p) => p,
        Some(p) => return bad(format!("package {p:?} is not a valid package name")),
        None => return bad("<manifest> has no package attribute"),
    };
    Ok(manifest)
}

/// Android's rule: at least two dot-separated segments, each a letter then letters, digits
/// or underscores (PackageParser.validateName).
pub fn valid_package(name: &str) -> bool {
    let segments: Vec<&str> = name.split('.').collect();
    segments.len() >= 2
        && name.len() <= 255
        && segments.iter().all(|s| {
            s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
#[path = "axml_tests.rs"]
mod tests;
