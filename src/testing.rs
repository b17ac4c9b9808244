//! Helpers for unit tests only.
//!
//! [`without_path_stat`] runs a closure on a thread where every `stat` of a path fails with
//! EACCES, the way an enforcing SELinux refuses `getattr` on a file the policy only lets the
//! domain `write` or `open` (AOSP grants `write`, never `getattr`, on `/dev/socket/dnsproxyd`
//! and `/dev/socket/logdw`). Code that stats such a path before using it sees the denial; code
//! that just connects or opens, as bionic and liblog do, works. The filter is a seccomp
//! program on that thread alone (and the threads it starts): other tests are not affected.
//!
//! [`skip`] is the integration tests' own helper (tests/common/skip.rs), so a unit test that
//! cannot run skips the same way: loudly, and as a failure under `CI=true`.

use std::io::ErrorKind;

#[path = "../tests/common/skip.rs"]
pub mod skip;

/// Runs `f` on a new thread whose path stats (`stat`, `lstat`, `newfstatat` and `statx`
/// without `AT_EMPTY_PATH`) fail with EACCES; `fstat` of an open descriptor still works.
/// Panics if the filter cannot be installed or does not refuse a stat of `/`.
pub fn without_path_stat<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        deny_path_stat();
        let probe = std::fs::metadata("/").map(|_| ()).map_err(|e| e.kind());
        assert_eq!(
            probe,
            Err(ErrorKind::PermissionDenied),
            "the stat filter works"
        );
        assert!(std::fs::File::open("/").unwrap().metadata().is_ok());
        f()
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn deny_path_stat() {
    use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_JSET, BPF_K, BPF_LD};
    use libc::{BPF_RET, BPF_W, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO};
    const NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARG: u32 = 16; // offsetof(struct seccomp_data, args): 8 bytes each, low half first
    let load = |offset: u32| sock_filter {
        code: (BPF_LD | BPF_W | BPF_ABS) as u16,
        jt: 0,
        jf: 0,
        k: offset,
    };
    // Jumps hold targets (instruction indexes) here and are made relative below.
    let jump = |op: u32, k: u32, jt: u8, jf: u8| sock_filter {
        code: (BPF_JMP | op | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ret = |k: u32| sock_filter {
        code: (BPF_RET | BPF_K) as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let empty_path = libc::AT_EMPTY_PATH as u32;
    #[cfg(target_arch = "x86_64")]
    let path_only = [libc::SYS_stat as u32, libc::SYS_lstat as u32];
    #[cfg(not(target_arch = "x86_64"))]
    let path_only: [u32; 0] = [];
    let allow = 7 + path_only.len() as u8;
    let deny = allow + 1;
    let mut prog = vec![
        load(NR),
        jump(BPF_JEQ, libc::SYS_statx as u32, 2, 4),
        load(ARG + 2 * 8), // statx(dirfd, path, flags, ..)
        jump(BPF_JSET, empty_path, allow, deny),
        jump(BPF_JEQ, libc::SYS_newfstatat as u32, 5, 7),
        load(ARG + 3 * 8), // newfstatat(dirfd, path, buf, flags)
        jump(BPF_JSET, empty_path, allow, deny),
    ];
    for nr in path_only {
        prog.push(jump(BPF_JEQ, nr, deny, prog.len() as u8 + 1));
    }
    prog.push(ret(SECCOMP_RET_ALLOW));
    prog.push(ret(SECCOMP_RET_ERRNO | libc::EACCES as u32));
    for (i, ins) in prog.iter_mut().enumerate() {
        if ins.code == (BPF_JMP | BPF_JEQ | BPF_K) as u16
            || ins.code == (BPF_JMP | BPF_JSET | BPF_K) as u16
        {
            ins.jt -= i as u8 + 1;
            ins.jf -= i as u8 + 1;
        }
    }
    let fprog = sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls on this thread; `fprog` points at `prog`, alive until the
    // kernel has copied the program.
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        let set = libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const sock_fprog,
        );
        assert_eq!(set, 0, "seccomp: {}", std::io::Error::last_os_error());
    }
}
