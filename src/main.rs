//! The `ferry` binary: everything lives in the library; see [`ferry::cli`].

fn main() -> std::process::ExitCode {
    ferry::alloc::tune();
    std::process::ExitCode::from(ferry::cli::run(std::env::args_os()))
}
