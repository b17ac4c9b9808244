//! Path safety tests against real folders: a temporary directory stands in for the
//! device's `/`, and symlinks are planted in it the way a hostile app on the phone could.

use super::*;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{symlink, MetadataExt};
use tempfile::TempDir;

const ROOTS: &[&str] = &["/sdcard", "/storage/emulated/0", "/data/local/tmp"];

fn dp(text: &str) -> DevicePath {
    DevicePath::parse(text).unwrap_or_else(|why| panic!("{text}: {why}"))
}

fn roots_at(dev: &Path, allowed: &[&str]) -> Roots {
    let allowed: Vec<String> = allowed.iter().map(|r| r.to_string()).collect();
    Roots::new(Some(dev.to_path_buf()), &allowed).unwrap()
}

/// A device tree in a temp folder (`TMP/dev`), with `TMP/outside` as a folder that must
/// never be written through the device tree.
struct Device {
    tmp: TempDir,
    roots: Roots,
}

impl Device {
    fn new() -> Device {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("dev/sdcard")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        let roots = roots_at(&tmp.path().join("dev"), ROOTS);
        Device { tmp, roots }
    }

    /// The host path of a path inside the device tree (`"sdcard/x"`).
    fn dev(&self, rel: &str) -> PathBuf {
        self.tmp.path().join("dev").join(rel)
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// Everything below the outside folder, to prove nothing was created there.
    fn outside_listing(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.clone());
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.outside(), &mut out);
        out.sort();
        out
    }

    fn open(&self, dir: &str) -> Dir {
        self.roots
            .open_dir(&dp(dir), true)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
    }
}

fn read(file: &mut File) -> String {
    let mut text = String::new();
    file.rewind().unwrap();
    file.read_to_string(&mut text).unwrap();
    text
}

#[test]
fn device_path_normalises_repeated_and_trailing_slashes() {
    for text in [
        "/sdcard/Download",
        "//sdcard/Download",
        "/sdcard//Download",
        "/sdcard/Download/",
        "///sdcard///Download///",
    ] {
        let path = dp(text);
        assert_eq!(path.components(), ["sdcard", "Download"], "{text}");
        assert_eq!(path.to_string(), "/sdcard/Download");
        assert_eq!(path, dp("/sdcard/Download"));
    }
    let root = dp("///");
    assert!(root.components().is_empty());
    assert_eq!(root.to_string(), "/");
    assert_eq!(root.file_name(), None);
    // Names that merely contain dots are names.
    assert_eq!(dp("/sdcard/.x/...").components(), ["sdcard", ".x", "..."]);
}

#[test]
fn device_path_refuses_ambiguous_paths() {
    let too_long = "/".to_string() + &vec!["a".repeat(240); 17].join("/");
    let long_name = format!("/sdcard/{}", "n".repeat(256));
    for text in [
        "",
        "sdcard/Download",
        "./sdcard",
        "~/x",
        "/..",
        "/sdcard/..",
        "/sdcard/../data",
        "/sdcard/./Download",
        "/.",
        "/sdcard/a\0b",
        "/sdcard/a\nb",
        "/sdcard/a\x7f",
        too_long.as_str(),
        long_name.as_str(),
    ] {
        let why = DevicePath::parse(text).expect_err(text);
        assert!(!why.is_empty());
    }
    assert!(too_long.len() > MAX_PATH_BYTES);
    // The limits themselves are allowed.
    let longest = "/".to_string() + &vec!["a".repeat(255); 16].join("/");
    assert_eq!(longest.len(), MAX_PATH_BYTES);
    assert_eq!(dp(&longest).components().len(), 16);
}

#[test]
fn check_file_name_allows_only_plain_names() {
    let longest = "n".repeat(255);
    for name in [
        "a.apk",
        ".hidden",
        "...",
        "名前.txt",
        "with space",
        longest.as_str(),
    ] {
        check_file_name(name).unwrap_or_else(|why| panic!("{name:?}: {why}"));
    }
    let long = "n".repeat(256);
    for name in [
        "",
        ".",
        "..",
        "a/b",
        "/",
        "a\0b",
        "a\tb",
        "a\x7f",
        long.as_str(),
    ] {
        assert!(check_file_name(name).is_err(), "{name:?} accepted");
    }
}

#[test]
fn device_path_join_parent_and_prefix_are_component_wise() {
    let dir = dp("/sdcard/Download");
    let file = dir.join("a.apk");
    assert_eq!(file.to_string(), "/sdcard/Download/a.apk");
    assert_eq!(file.file_name(), Some("a.apk"));
    assert_eq!(file.parent(), dir);
    assert!(file.starts_with(&dir));
    assert!(file.starts_with(&dp("/")));
    assert!(!dp("/sdcardX/a").starts_with(&dp("/sdcard")));
    assert!(!dp("/sdcard").starts_with(&dir));
}

#[test]
fn root_of_picks_the_most_specific_root() {
    let dev = tempfile::tempdir().unwrap();
    // Both orders, so the choice does not depend on the configuration's order.
    for allowed in [
        ["/sdcard", "/sdcard/Download", "/data/local/tmp"],
        ["/data/local/tmp", "/sdcard/Download", "/sdcard"],
    ] {
        let roots = roots_at(dev.path(), &allowed);
        for (path, root) in [
            ("/sdcard/Download/a/b.apk", "/sdcard/Download"),
            ("/sdcard/Download", "/sdcard/Download"),
            ("/sdcard/Downloads/x", "/sdcard"),
            ("/sdcard/Music", "/sdcard"),
            ("/sdcard", "/sdcard"),
            ("/data/local/tmp/x", "/data/local/tmp"),
        ] {
            assert_eq!(roots.root_of(&dp(path)).unwrap(), &dp(root), "{path}");
        }
    }
}

#[test]
fn root_of_refuses_paths_outside_every_root() {
    let dev = tempfile::tempdir().unwrap();
    let roots = roots_at(dev.path(), ROOTS);
    for path in [
        "/sdcardX/a",
        "/sdcard2",
        "/sdcar",
        "/",
        "/data",
        "/data/local",
        "/data/local/tmpfoo/x",
        "/storage/emulated",
        "/storage/emulated/01/x",
        "/system/bin/sh",
    ] {
        let err = roots.root_of(&dp(path)).expect_err(path);
        assert_eq!(err.code, Code::StoragePathNotAllowed, "{path}");
        assert!(err.message.contains(path), "{}", err.message);
        // And nothing is touched on disk for such a path.
        let err = roots.open_dir(&dp(path), true).expect_err(path);
        assert_eq!(err.code, Code::StoragePathNotAllowed, "{path}");
    }
    assert_eq!(std::fs::read_dir(dev.path()).unwrap().count(), 0);
}

#[test]
fn roots_new_refuses_a_malformed_root() {
    for bad in ["sdcard", "/sdcard/../data", ""] {
        let err = Roots::new(None, &[bad.to_string()]).expect_err(bad);
        assert_eq!(err.code, Code::InvalidConfig, "{bad}");
    }
}

#[test]
fn host_path_maps_device_paths_under_the_device_root() {
    let roots = roots_at(Path::new("/tmp/devroot"), ROOTS);
    assert_eq!(
        roots.host_path(&dp("/sdcard/Download/a.apk")),
        Path::new("/tmp/devroot/sdcard/Download/a.apk")
    );
    let real = Roots::new(None, &["/sdcard".to_string()]).unwrap();
    assert_eq!(
        real.host_path(&dp("/sdcard/Download")),
        Path::new("/sdcard/Download")
    );
}

#[test]
fn open_dir_creates_missing_folders_inside_the_root() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download/a/b");
    assert!(d.dev("sdcard/Download/a/b").is_dir());
    assert_eq!(dir.device_path(), &dp("/sdcard/Download/a/b"));
    assert_eq!(dir.host_path("x.apk"), d.dev("sdcard/Download/a/b/x.apk"));
    // A root missing from the stand-in tree is created too.
    d.open("/data/local/tmp/t");
    assert!(d.dev("data/local/tmp/t").is_dir());
    // Opening again finds what is there.
    d.open("/sdcard/Download/a/b");
}

#[test]
fn open_dir_without_create_does_not_create() {
    let d = Device::new();
    let err = d
        .roots
        .open_dir(&dp("/sdcard/Download/new"), false)
        .unwrap_err();
    assert!(!err.message.is_empty());
    assert!(!d.dev("sdcard/Download").exists());
    assert!(d.roots.open_dir(&dp("/data/local/tmp"), false).is_err());
    assert!(!d.dev("data").exists());
    std::fs::create_dir(d.dev("sdcard/Download")).unwrap();
    d.roots.open_dir(&dp("/sdcard/Download"), false).unwrap();
}

#[test]
fn symlink_inside_a_root_pointing_outside_is_refused() {
    let d = Device::new();
    symlink(d.outside(), d.dev("sdcard/Download")).unwrap();
    for (dir, create) in [
        ("/sdcard/Download", true),
        ("/sdcard/Download", false),
        ("/sdcard/Download/sub", true),
        ("/sdcard/Download/sub/deeper", true),
    ] {
        let err = d.roots.open_dir(&dp(dir), create).expect_err(dir);
        assert_eq!(
            err.code,
            Code::StoragePathNotAllowed,
            "{dir}: {}",
            err.message
        );
        assert!(err.message.contains("/sdcard/Download"), "{}", err.message);
    }
    assert_eq!(d.outside_listing(), Vec::<PathBuf>::new());
}

#[test]
fn dangling_symlink_to_outside_is_refused_without_creating_its_target() {
    let d = Device::new();
    let target = d.outside().join("made-by-ferry");
    symlink(&target, d.dev("sdcard/Download")).unwrap();
    let err = d
        .roots
        .open_dir(&dp("/sdcard/Download/sub"), true)
        .unwrap_err();
    assert_eq!(err.code, Code::StoragePathNotAllowed, "{}", err.message);
    assert!(!target.exists());
    assert_eq!(d.outside_listing(), Vec::<PathBuf>::new());
}

#[test]
fn symlink_between_folders_of_the_same_root_is_refused_too() {
    let d = Device::new();
    std::fs::create_dir(d.dev("sdcard/Real")).unwrap();
    symlink("Real", d.dev("sdcard/Download")).unwrap();
    let err = d
        .roots
        .open_dir(&dp("/sdcard/Download/x"), true)
        .unwrap_err();
    assert_eq!(err.code, Code::StoragePathNotAllowed);
    assert!(!d.dev("sdcard/Real/x").exists());
}

#[test]
fn a_root_may_itself_be_a_symlink() {
    // On Android /sdcard is a link to /storage/emulated/0; roots are trusted configuration.
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("dev");
    std::fs::create_dir_all(dev.join("storage/emulated/0")).unwrap();
    symlink("storage/emulated/0", dev.join("sdcard")).unwrap();
    let roots = roots_at(&dev, ROOTS);
    roots.open_dir(&dp("/sdcard/Download"), true).unwrap();
    assert!(dev.join("storage/emulated/0/Download").is_dir());
}

#[test]
fn a_file_in_the_way_of_a_folder_is_refused() {
    let d = Device::new();
    std::fs::write(d.dev("sdcard/Download"), "not a folder").unwrap();
    for dir in ["/sdcard/Download", "/sdcard/Download/sub"] {
        let err = d.roots.open_dir(&dp(dir), true).expect_err(dir);
        assert_eq!(
            err.code,
            Code::StoragePathNotAllowed,
            "{dir}: {}",
            err.message
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.dev("sdcard/Download")).unwrap(),
        "not a folder"
    );
}

#[test]
fn open_file_creates_reads_and_reports_missing() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    assert!(dir.open_file("a.txt", false).unwrap().is_none());
    let mut file = dir.open_file("a.txt", true).unwrap().unwrap();
    file.write_all(b"hello").unwrap();
    drop(file);
    let mut again = dir.open_file("a.txt", false).unwrap().unwrap();
    assert_eq!(read(&mut again), "hello");
    assert_eq!(
        std::fs::read_to_string(d.dev("sdcard/Download/a.txt")).unwrap(),
        "hello"
    );
}

#[test]
fn open_file_refuses_a_symlink_as_the_final_name() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    let victim = d.outside().join("victim");
    std::fs::write(&victim, "original").unwrap();
    symlink(&victim, d.dev("sdcard/Download/evil.apk")).unwrap();
    let dangling = d.outside().join("created-through-link");
    symlink(&dangling, d.dev("sdcard/Download/dangling.apk")).unwrap();
    for name in ["evil.apk", "dangling.apk"] {
        for create in [true, false] {
            let err = dir.open_file(name, create).expect_err(name);
            assert_eq!(
                err.code,
                Code::StoragePathNotAllowed,
                "{name}: {}",
                err.message
            );
            assert!(err.message.contains(name), "{}", err.message);
        }
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    assert!(!dangling.exists());
}

/// `Dir` promises every operation stays in its folder, so a name that is not a plain
/// name (`..`, `a/b`) must not reach `openat` as a relative path.
#[test]
fn dir_operations_refuse_names_that_are_not_plain() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    symlink(d.outside(), d.dev("sdcard/Download/link")).unwrap();
    std::fs::write(d.dev("sdcard/Download/a.txt"), "a").unwrap();
    for name in ["../../escaped", "../escaped", "link/escaped"] {
        assert!(dir.open_file(name, true).is_err(), "open_file {name:?}");
        assert!(dir.rename("a.txt", name).is_err(), "rename to {name:?}");
    }
    assert_eq!(d.outside_listing(), Vec::<PathBuf>::new());
    assert!(!d.dev("escaped").exists());
    assert!(!d.dev("sdcard/escaped").exists());
    assert!(d.dev("sdcard/Download/a.txt").exists());
}

#[test]
fn rename_replaces_the_target_atomically() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    std::fs::write(d.dev("sdcard/Download/app.apk"), "old").unwrap();
    let mut staging = dir.open_file(".app.apk.ferry", true).unwrap().unwrap();
    staging.write_all(b"new").unwrap();
    let staged_inode = staging.metadata().unwrap().ino();
    drop(staging);
    dir.rename(".app.apk.ferry", "app.apk").unwrap();
    dir.sync().unwrap();
    let final_path = d.dev("sdcard/Download/app.apk");
    assert_eq!(std::fs::read_to_string(&final_path).unwrap(), "new");
    // The very file that was written is now the target, not a copy of it.
    assert_eq!(std::fs::metadata(&final_path).unwrap().ino(), staged_inode);
    assert_eq!(dir.entry(".app.apk.ferry").unwrap(), Entry::Missing);
    let err = dir.rename(".app.apk.ferry", "app.apk").unwrap_err();
    assert!(err.message.contains("app.apk"), "{}", err.message);
}

#[test]
fn remove_deletes_a_file_and_accepts_a_missing_one() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    dir.remove("never-existed").unwrap();
    std::fs::write(d.dev("sdcard/Download/partial"), "x").unwrap();
    dir.remove("partial").unwrap();
    assert!(!d.dev("sdcard/Download/partial").exists());
    dir.remove("partial").unwrap();
    // A link is removed itself; its target stays.
    let victim = d.outside().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    symlink(&victim, d.dev("sdcard/Download/link")).unwrap();
    dir.remove("link").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
}

#[test]
fn entry_reports_missing_file_and_other() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    std::fs::write(d.dev("sdcard/Download/file"), "x").unwrap();
    std::fs::create_dir(d.dev("sdcard/Download/folder")).unwrap();
    std::fs::write(d.outside().join("target"), "x").unwrap();
    symlink(
        d.outside().join("target"),
        d.dev("sdcard/Download/link-to-file"),
    )
    .unwrap();
    assert_eq!(dir.entry("missing").unwrap(), Entry::Missing);
    assert_eq!(dir.entry("file").unwrap(), Entry::File);
    assert_eq!(dir.entry("folder").unwrap(), Entry::Other);
    // A link to a file is not a file: it is never followed.
    assert_eq!(dir.entry("link-to-file").unwrap(), Entry::Other);
}

#[test]
fn free_bytes_and_sync_work_on_an_open_folder() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    assert!(dir.free_bytes().unwrap() > 0);
    dir.sync().unwrap();
}

/// A staging name is only ever written when it holds a plain file of ferry's own. A hard
/// link planted there would have its other name truncated, a FIFO would block the writer
/// (and then fail as `Storage.Io` "Invalid argument"), a symlink would redirect the data.
#[test]
fn staging_open_removes_foreign_objects_and_never_writes_through_them() {
    let d = Device::new();
    let dir = d.open("/sdcard/Download");
    let victim = d.outside().join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let staging = d.dev("sdcard/Download/.ferry-t1.part");

    std::fs::hard_link(&victim, &staging).unwrap();
    let mut file = dir.open_staging(".ferry-t1.part").unwrap();
    file.set_len(0).unwrap();
    file.write_all(b"new").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(std::fs::metadata(&staging).unwrap().nlink(), 1);
    std::fs::remove_file(&staging).unwrap();

    symlink(&victim, &staging).unwrap();
    let mut file = dir.open_staging(".ferry-t1.part").unwrap();
    file.write_all(b"new").unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(&staging).unwrap().is_symlink());
    std::fs::remove_file(&staging).unwrap();

    nix::unistd::mkfifo(&staging, Mode::from_bits_truncate(0o644)).unwrap();
    // A FIFO would block this thread forever if it were opened: guard with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let dir2 = d.open("/sdcard/Download");
    std::thread::spawn(move || {
        let opened = dir2.open_staging(".ferry-t1.part").map(|mut f| {
            f.write_all(b"data").unwrap();
        });
        tx.send(opened.map_err(|e| e.to_string())).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("opening a staging name holding a FIFO blocked")
        .unwrap();
    assert!(std::fs::metadata(&staging).unwrap().is_file());
    assert_eq!(std::fs::read_to_string(&staging).unwrap(), "data");

    // Its own plain file is kept for resume.
    let mut again = dir.open_staging(".ferry-t1.part").unwrap();
    assert_eq!(read(&mut again), "data");

    // A folder is not removed: the error says what is there.
    std::fs::create_dir(d.dev("sdcard/Download/.ferry-t2.part")).unwrap();
    let err = dir.open_staging(".ferry-t2.part").unwrap_err();
    assert_eq!(err.code, Code::StoragePathNotAllowed);
    assert!(err.message.contains("is a folder"), "{}", err.message);
}

#[test]
fn final_names_reserved_for_staging_and_invisible_characters_are_refused() {
    for bad in [
        ".ferry-t1.part",
        ".FERRY-t1.part",
        ".Ferry-",
        "a\u{202e}kpa.exe",
        "a\u{85}b",
        "a\u{200b}b",
        "\u{feff}a",
        "a\u{2066}b",
        "a\u{61c}b",
        // Default-ignorable code points a case-folding filesystem may drop, so these could
        // name a staging file, and separators that break a log line.
        ".\u{ad}ferry-t1-0123456789ab.part",
        "\u{ad}setup.apk",
        "a\u{34f}b",
        "a\u{115f}b",
        "a\u{17b4}b",
        "a\u{180b}b",
        "a\u{2028}[INFO] ok.apk",
        "a\u{2029}b",
        "a\u{3164}b",
        "a\u{fe0f}b",
        "a\u{ffa0}b",
        "a\u{fff9}b",
        "a\u{1bca0}b",
        "a\u{1d173}b",
        "a\u{e0001}b",
    ] {
        assert!(check_final_name(bad).is_err(), "{bad:?} accepted");
    }
    for good in [".ferry", "ferry-x", "x.ferry-1", "été.apk", "日本.txt"] {
        assert_eq!(check_final_name(good), Ok(()), "{good:?}");
    }
}
