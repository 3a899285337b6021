//! `host-worker`: one worker process and nothing else (no command line parser, config file reader
//! or master code), so that its image is small. The master executes it from beside its own
//! binary; `host worker` runs the same code from the whole binary where it is absent.

fn main() -> std::process::ExitCode {
    host::worker_main()
}
