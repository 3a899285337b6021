//! `host`: the command line, the master and the control commands (the crate's library).

fn main() -> std::process::ExitCode {
    host::host_main()
}
