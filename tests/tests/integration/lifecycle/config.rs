//! Config files.

use super::*;

const TWO_SERVICES: &str = r#"
[[service]]
name = "web"
plugin = "http"
listen = "127.0.0.1:0"
count = 2

[[service]]
name = "lines"
plugin = "text"
listen = "127.0.0.1:0"
"#;

// Two services from one file: both answer, `status` shows both, the titles name them.
#[test]
fn config_file_runs_two_services() {
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir.write("two.toml", TWO_SERVICES).display().to_string();
    let mut host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    hello(service_port(&host, "web"));
    echo(service_port(&host, "lines"), "hello lines");

    let workers = host.wait_workers(3, Duration::from_secs(2), |_| true).unwrap();
    let mut titles: Vec<String> = workers.iter().filter_map(|&p| cmdline(p)).collect();
    titles.sort();
    for (title, want) in
        titles.iter().zip(["host: worker lines #0 text ", "host: worker web #0 http ", "host: worker web #1 http "])
    {
        assert!(title.starts_with(want), "{title:?} should start with {want:?}");
    }
    assert!(cmdline(host.pid()).unwrap().starts_with("host: master (two.toml)"), "{:?}", cmdline(host.pid()));

    let out = host.command(["status", "-c", &cfg], COMMAND_TIMEOUT);
    assert_ok(&out, "status -c");
    let text = &out.stdout;
    for name in ["web", "lines"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} ")) && !l.contains('#')),
            "no {name} service row:\n{text}"
        );
    }
    let rows = worker_rows(text);
    let mut names: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    names.sort_unstable();
    assert_eq!(names, [("lines", "#0"), ("web", "#0"), ("web", "#1")], "{text}");
    assert_eq!(row_pids(text), workers, "{text}");
}

// A misspelt key: refused in one line that names the key and its line.
#[test]
fn config_file_typo_is_one_line_with_the_line_number() {
    let dir = TempDir::new();
    let cfg =
        dir.write("typo.toml", "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\ncuont = 2\n");
    let out = run_host([Path::new("-c"), &cfg], EXIT_TIMEOUT);
    assert_failed(&out, "-c typo.toml");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert_contains!(lines[0], "line 5");
    assert_contains!(lines[0], "cuont");
}

// A config file and service flags together: refused, saying why.
#[test]
fn config_file_with_service_flags_is_refused() {
    let dir = TempDir::new();
    let cfg = dir.write("two.toml", TWO_SERVICES).display().to_string();
    let out = run_host(["-c", &cfg, "--plugin", "http"], EXIT_TIMEOUT);
    assert_failed(&out, "-c … --plugin http");
    assert_contains!(out.stderr, "--plugin cannot be used with --config");
}

// Global options may be written before the subcommand (`host -c FILE status`, `host --pid-file
// F stop`): clap must not take them for start options that conflict with a subcommand.
#[test]
fn global_options_before_the_subcommand_are_accepted() {
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir.write("two.toml", TWO_SERVICES).display().to_string();
    let mut host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = host.command(["-c", &cfg, "status"], COMMAND_TIMEOUT);
    assert_ok(&out, "-c FILE status");
    let pid_file = host.pid_file().display().to_string();
    let out = host.command(["--pid-file", &pid_file, "stop"], COMMAND_TIMEOUT);
    assert_ok(&out, "--pid-file F stop");
}
