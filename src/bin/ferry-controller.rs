//! The `ferry-controller` binary (feature `controller`): everything lives in the library; see
//! [`ferry::controller::cli`].

fn main() -> std::process::ExitCode {
    ferry::alloc::tune();
    std::process::ExitCode::from(ferry::controller::cli::run(std::env::args_os()))
}
