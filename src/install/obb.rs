//! XAPK expansion files: copied out of the bundle into `OBB_ROOT/PACKAGE/` (by default
//! `/sdcard/Android/obb/PACKAGE/`, where the app looks for them) once pm has installed the
//! app. Written like every other file ferry lands: through the path-safety layer (inside the
//! allowed roots, no symlinks followed), to a hidden staging name, synced, renamed. Blocking.

use super::bundle::{self, BundleError, Expansion};
use crate::config::Config;
use crate::error::{Code, Error, Result};
use crate::paths::{DevicePath, Roots};
use std::fs::File;

/// Places every expansion file; returns their device paths.
pub fn place(
    config: &Config,
    task_id: &str,
    package: &str,
    bundle: File,
    expansions: &[Expansion],
) -> Result<Vec<String>> {
    let roots = Roots::new(config.device_root.clone(), &config.allowed_roots)?;
    let root = DevicePath::parse(&config.install.obb_root).map_err(|why| {
        Error::new(
            Code::InvalidConfig,
            format!("install.obb_root {}: {why}", config.install.obb_root),
        )
    })?;
    let folder = root.join(package);
    let dir = roots.open_dir(&folder, true)?;
    let need: u64 = expansions.iter().map(|e| e.size).sum();
    let free = dir.free_bytes()?;
    if need > free {
        return Err(Error::new(
            Code::StorageDiskFull,
            format!("the expansion files need {need} bytes in {folder}, which has {free} free"),
        ));
    }
    let mut zip = super::apk::open_zip(bundle, super::apk::caps(&config.install))
        .map_err(|e| Error::new(Code::StorageIo, format!("re-reading the bundle: {e}")))?;
    let staging = staging_name(task_id);
    let mut placed = Vec::with_capacity(expansions.len());
    for exp in expansions {
        // Never written through: whatever sits under the name that ferry did not make is
        // removed, and a fresh file created with O_EXCL (see `Dir::open_staging`).
        let mut out = dir.open_staging(&staging)?;
        out.set_len(0)
            .map_err(|e| Error::io("emptying", &dir.host_path(&staging), &e))?;
        let copied = bundle::copy_entry(&mut zip, exp.index, &exp.entry, exp.size, &mut out);
        let outcome = copied
            .map_err(|e| match e {
                BundleError::Local(e) => e,
                other => Error::new(Code::InstallInvalidApk, other.to_string()),
            })
            .and_then(|_| {
                out.sync_all()
                    .map_err(|e| Error::io("syncing", &dir.host_path(&staging), &e))
            });
        if let Err(e) = outcome {
            let _ = dir.remove(&staging);
            return Err(e);
        }
        crate::transfer::sink::commit(&dir, &staging, &exp.name)?;
        placed.push(folder.join(&exp.name).to_string());
    }
    Ok(placed)
}

/// The staging name of a task's expansion files: the task's case-unique staging name with
/// `.obb` before `.part`, so it still starts with the reserved prefix yet never meets the
/// staging file of the task's own download.
fn staging_name(task_id: &str) -> String {
    let name = crate::pipeline::staging_name(task_id);
    let stem = name.strip_suffix(".part").unwrap_or(&name);
    format!("{stem}.obb.part")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obb_staging_name_is_reserved_case_unique_and_not_the_download_staging_name() {
        let a = staging_name("T-1");
        let b = staging_name("t-1");
        assert!(crate::paths::is_reserved(&a), "{a}");
        assert!(a.ends_with(".obb.part"), "{a}");
        assert_ne!(a.to_lowercase(), b.to_lowercase());
        assert_ne!(a, crate::pipeline::staging_name("T-1"));
        assert!(crate::paths::check_final_name(&a).is_err());
    }

    /// Something planted at the staging name (a FIFO would block while the install lock is
    /// held) is removed, never opened; the expansion still lands.
    #[test]
    fn a_fifo_planted_at_the_obb_staging_name_does_not_block() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            device_root: Some(tmp.path().to_path_buf()),
            ..Config::default()
        };
        let folder = tmp.path().join("sdcard/Android/obb/com.x");
        std::fs::create_dir_all(&folder).unwrap();
        nix::unistd::mkfifo(
            &folder.join(staging_name("t-1")),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let bundle_path = tmp.path().join("bundle.zip");
        let mut w = zip::ZipWriter::new(File::create(&bundle_path).unwrap());
        w.start_file("main.obb", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"obb data").unwrap();
        w.finish().unwrap();
        let expansions = vec![Expansion {
            index: 0,
            entry: "main.obb".into(),
            name: "main.1.com.x.obb".into(),
            size: 8,
            compressed: 8,
        }];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let bundle = File::open(&bundle_path).unwrap();
            let _ = tx.send(place(&config, "t-1", "com.x", bundle, &expansions));
        });
        let placed = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("placing the OBB blocked on the planted FIFO")
            .unwrap();
        assert_eq!(placed, ["/sdcard/Android/obb/com.x/main.1.com.x.obb"]);
        assert_eq!(
            std::fs::read(folder.join("main.1.com.x.obb")).unwrap(),
            b"obb data"
        );
        assert!(!folder.join(staging_name("t-1")).exists());
    }
}
