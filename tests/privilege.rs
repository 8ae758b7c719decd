//! Least privilege: `[global] user` / `group` (bind and read keys as the starting user, then
//! drop to the configured one for good), the open-files limit raised for `max_connections`,
//! and a warning for private keys everyone can read.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::pki::*;
use common::*;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `Uid:`/`Gid:`/`Groups:`/`CapEff:` of every thread of `pid`.
fn thread_ids(pid: u32) -> Vec<(String, String, String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|t| {
            let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
            let get = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            (get("Uid:"), get("Gid:"), get("Groups:"), get("CapEff:"))
        })
        .collect()
}

#[test]
fn started_as_root_it_runs_as_the_configured_user_and_still_serves() {
    if !is_root() {
        eprintln!("SKIP started_as_root_it_runs_as_the_configured_user_and_still_serves: not root");
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    // The key is root's alone: read before the drop.
    std::fs::set_permissions(&env.key_pem, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = env
        .config(echo.addr)
        .workers(2)
        .global("user = \"nobody\"")
        .global("group = \"nogroup\"")
        .start();
    assert!(
        proxy.wait_for_log(
            "running as user=nobody uid=65534 group=nogroup gid=65534",
            Duration::from_secs(5)
        ),
        "{}",
        proxy.log()
    );
    let threads = thread_ids(proxy.pid());
    assert!(threads.len() >= 3, "{threads:?}");
    for (uid, gid, groups, caps) in &threads {
        assert_eq!(uid, "65534 65534 65534 65534", "{threads:?}");
        assert_eq!(gid, "65534 65534 65534 65534", "{threads:?}");
        assert_eq!(groups, "65534", "{threads:?}");
        assert_eq!(caps, "0000000000000000", "{threads:?}");
    }
    let cfg = env.client_with(&ClientOpts::tls13());
    for i in 0..4 {
        let mut tls = tls_connect_ok(proxy.addr(), &cfg);
        assert_echo(&mut tls, format!("as nobody {i}").as_bytes(), "echo");
    }
}

#[test]
fn changing_user_without_root_fails_start_up_clearly() {
    if is_root() {
        eprintln!("SKIP changing_user_without_root_fails_start_up_clearly: running as root");
        return;
    }
    let env = TestEnv::new();
    let path = env.write_config(
        &env.config("127.0.0.1:9")
            .global("user = \"root\"")
            .to_toml(),
    );
    let out = run_tlsfront(
        ["serve".as_ref(), "--config".as_ref(), path.as_os_str()],
        Duration::from_secs(15),
    );
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("cannot drop privileges to user root"),
        "{out:?}"
    );
}

#[test]
fn unknown_users_and_groups_are_config_errors() {
    let env = TestEnv::new();
    let toml = env
        .config("127.0.0.1:9")
        .global("user = \"no-such-user-tlsfront\"")
        .to_toml();
    expect_config_error(&env, &toml, "user =", "user");
    let toml = env
        .config("127.0.0.1:9")
        .global("user = \"nobody\"")
        .global("group = \"no-such-group-tlsfront\"")
        .to_toml();
    expect_config_error(&env, &toml, "group =", "group");
    let toml = env
        .config("127.0.0.1:9")
        .global("group = \"nogroup\"")
        .to_toml();
    expect_config_error(&env, &toml, "group =", "group");
}

#[test]
fn a_private_key_everyone_can_read_gets_a_warning() {
    let env = TestEnv::new();
    let echo = Backend::echo();
    let key = env.key_pem.display().to_string();
    std::fs::set_permissions(&env.key_pem, std::fs::Permissions::from_mode(0o644)).unwrap();
    let proxy = env.config(echo.addr).start();
    let warned = |p: &Proxy| {
        p.log_lines("readable by every user")
            .iter()
            .any(|l| l.contains(&key) && l.contains("0644"))
    };
    assert!(warned(&proxy), "{}", proxy.log());
    drop(proxy);
    std::fs::set_permissions(&env.key_pem, std::fs::Permissions::from_mode(0o640)).unwrap();
    let proxy = env.config(echo.addr).start();
    assert!(!warned(&proxy), "{}", proxy.log());
}

/// The soft limit goes up to what `max_connections` needs (the count `tlsfront doctor`
/// uses: two descriptors per connection, four where it may splice, plus slack), or as far
/// as the hard limit allows, with a warning that says what is short.
#[test]
fn the_open_files_limit_follows_max_connections() {
    use rustix::process::{getrlimit, Resource};
    let limits = getrlimit(Resource::Nofile);
    let soft = limits.current.unwrap_or(u64::MAX);
    let hard = limits.maximum.unwrap_or(u64::MAX);
    let env = TestEnv::new();
    let echo = Backend::echo();
    let soft_of = |p: &Proxy| -> u64 {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", p.pid())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        line.split_whitespace().nth(3).unwrap().parse().unwrap()
    };
    let number_after = |line: &str, word: &str| -> u64 {
        let rest = &line[line
            .find(word)
            .unwrap_or_else(|| panic!("no {word:?} in {line}"))
            + word.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    if hard != u64::MAX && hard > soft + 4096 {
        // Room between soft and hard: a bit more than soft is raised to, exactly.
        let proxy = env
            .config(echo.addr)
            .service(&format!("max_connections = {}", soft / 2 + 100))
            .start();
        let line = proxy
            .log_lines("open files limit raised")
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("not raised:\n{}", proxy.log()));
        let to = number_after(&line, " to ");
        assert!(to > soft && to <= hard, "{line}");
        assert_eq!(soft_of(&proxy), to, "{line}");
    }
    // Far more than any hard limit here: raised to the hard limit, and a warning says so.
    let proxy = env
        .config(echo.addr)
        .service("max_connections = 100000000")
        .start();
    let line = proxy
        .log_lines("open files limit is")
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no warning:\n{}", proxy.log()));
    assert!(number_after(&line, "may need ") >= 200_000_000, "{line}");
    if hard != u64::MAX {
        // (fs.nr_open, 1048576 by default, keeps even root from raising it that far.)
        assert_eq!(soft_of(&proxy), hard, "{line}");
    }
}

#[test]
fn as_root_it_refuses_to_serve_a_configuration_without_a_user_or_allow_root() {
    if !is_root() {
        eprintln!("SKIP as_root_it_refuses_to_serve_a_configuration_without_a_user_or_allow_root: not root");
        return;
    }
    let env = TestEnv::new();
    let echo = Backend::echo();
    let path = env.write_config(&env.config(echo.addr).to_toml());
    let serve = ["serve".as_ref(), "--config".as_ref(), path.as_os_str()];
    let mut refused = Proxy::spawn_exact(serve);
    let status = refused.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = refused.log();
    assert!(
        log.contains("refusing to serve as root") && log.contains("allow_root"),
        "{log}"
    );
    assert!(!log.contains("ready workers="), "{log}");

    // Asked for explicitly, in the file or on the command line, it serves.
    let path = env.write_config(&env.config(echo.addr).global("allow_root = true").to_toml());
    let mut allowed = Proxy::spawn_exact(["serve".as_ref(), "--config".as_ref(), path.as_os_str()]);
    allowed.wait_ready(Duration::from_secs(20));
    let path = env.write_config(&env.config(echo.addr).to_toml());
    let mut flagged = Proxy::spawn_exact([
        "serve".as_ref(),
        "--allow-root".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ]);
    flagged.wait_ready(Duration::from_secs(20));
    let cfg = env.client_with(&ClientOpts::tls13());
    for p in [&allowed, &flagged] {
        let mut tls = tls_connect_ok(p.addr(), &cfg);
        assert_echo(&mut tls, b"as root, asked for", "echo");
    }

    // The built-in demo (no file, no certificate, the built-in echo) only gets a warning.
    let mut demo = Proxy::spawn_exact(["serve", "--listen", "127.0.0.1:0"]);
    demo.wait_ready(Duration::from_secs(20));
    assert!(
        demo.log().contains("serving the built-in demo as root"),
        "{}",
        demo.log()
    );
}
