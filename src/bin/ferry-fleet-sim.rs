//! `ferry-fleet-sim`: many SIMULATED agents in one process for scale runs of
//! ferry-controller (feature `fleet-sim`); everything lives in [`ferry::fleet::sim`].

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = ferry::fleet::sim::run::Args::parse();
    std::process::ExitCode::from(ferry::fleet::sim::run::main(args) as u8)
}
