//! SNI routing: `[[service.route]]` tables pick a certificate and a backend pool by the name
//! the client asks for (exact names beat `*.` wildcards, which match exactly one label);
//! `unknown_sni` decides between the service's default certificate + backend and a refusal
//! with `unrecognized_name`; TLS policy can differ per route. Every backend greets with its
//! own name, so each test knows which one a connection reached.

mod common;

use std::time::Duration;

use common::pki::*;
use common::*;
use rustls::AlertDescription;

#[test]
fn three_names_reach_three_backends_each_with_its_own_certificate() {
    let env = TestEnv::new();
    let ca = Ca::new(&env, "srv");
    let default_cert = ca.server("default", &["default.test"]);
    let default = named_backend("default");
    let names = ["alpha.test", "beta.test", "gamma.test"];
    let backends: Vec<Backend> = ["alpha", "beta", "gamma"]
        .iter()
        .map(|n| named_backend(n))
        .collect();
    let certs: Vec<Issued> = names.iter().map(|n| ca.server(n, &[n])).collect();

    let mut toml = global_toml(&[]);
    toml += &service_toml("edge", Some(default.addr), &default_cert, &[]);
    for (i, name) in names.iter().enumerate() {
        let route = name.trim_end_matches(".test");
        toml += &route_toml(route, &[name], backends[i].addr, Some(&certs[i]), &[]);
    }
    let proxy = serve(&env, &toml);
    let client = ca.tls_client(None);

    // In an order that is not the file's, twice, so a round-robin over routes cannot pass.
    for name in names.iter().rev().chain(names.iter()) {
        let i = names.iter().position(|n| n == name).unwrap();
        let got = reached(proxy.addr(), &client, name, &certs[i]);
        assert_eq!(got, name.trim_end_matches(".test"), "SNI {name}");
    }
    for (i, b) in backends.iter().enumerate() {
        assert_eq!(b.connections(), 2, "backend {i}");
    }
    assert_eq!(default.connections(), 0);

    // openssl s_client, checking the chain and the name of what it is served.
    if openssl_or_skip("three_names_reach_three_backends_each_with_its_own_certificate").is_none() {
        return;
    }
    for (i, name) in names.iter().enumerate() {
        let input = b"via s_client\n";
        let run = s_client(
            proxy.addr(),
            &ca.cert_pem,
            &["-servername", name, "-verify_hostname", name],
            input,
            GREETING_LEN + input.len(),
            Duration::from_secs(20),
        );
        assert!(
            run.stderr.contains("Verification: OK"),
            "{name}: s_client did not verify the route's certificate:\n{}",
            run.stderr
        );
        let mut want = greeting(name.trim_end_matches(".test"));
        want.extend_from_slice(input);
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&want),
            "{name}: s_client stderr:\n{}",
            run.stderr
        );
        assert_eq!(backends[i].connections(), 3, "{name}");
    }
}

#[test]
fn wildcards_match_exactly_one_label_and_exact_names_win() {
    let env = TestEnv::new();
    let ca = Ca::new(&env, "srv");
    // The default certificate also names what falls through, so the client can verify it.
    let default_cert = ca.server("default", &["default.test", "wild.test", "a.b.wild.test"]);
    let wild_cert = ca.server("wild", &["*.wild.test"]);
    let exact_cert = ca.server("exact", &["exact.wild.test"]);
    let (default, wild, exact) = (
        named_backend("default"),
        named_backend("wild"),
        named_backend("exact"),
    );
    let mut toml = global_toml(&[]);
    toml += &service_toml(
        "edge",
        Some(default.addr),
        &default_cert,
        &[r#"unknown_sni = "default""#],
    );
    // The wildcard comes first in the file: the exact route must win on specificity.
    toml += &route_toml("wild", &["*.wild.test"], wild.addr, Some(&wild_cert), &[]);
    toml += &route_toml(
        "exact",
        &["exact.wild.test"],
        exact.addr,
        Some(&exact_cert),
        &[],
    );
    let proxy = serve(&env, &toml);
    let client = ca.tls_client(None);
    let addr = proxy.addr();

    assert_eq!(reached(addr, &client, "a.wild.test", &wild_cert), "wild");
    assert_eq!(reached(addr, &client, "zz-9.wild.test", &wild_cert), "wild");
    assert_eq!(
        reached(addr, &client, "exact.wild.test", &exact_cert),
        "exact"
    );
    assert_eq!(
        reached(addr, &client, "wild.test", &default_cert),
        "default"
    );
    assert_eq!(
        reached(addr, &client, "a.b.wild.test", &default_cert),
        "default"
    );

    // Case and a trailing dot do not matter (openssl sends the name as given).
    if openssl_or_skip("wildcards_match_exactly_one_label_and_exact_names_win").is_none() {
        return;
    }
    for (sni, want) in [
        ("A.Wild.TEST", "wild"),
        ("a.wild.test.", "wild"),
        ("EXACT.wild.test.", "exact"),
    ] {
        let run = s_client(
            addr,
            &ca.cert_pem,
            &["-servername", sni],
            b"",
            GREETING_LEN,
            Duration::from_secs(20),
        );
        assert_eq!(
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&greeting(want)),
            "SNI {sni:?}; s_client stderr:\n{}",
            run.stderr
        );
    }
}

/// A service with one route (`known.test`) and `unknown_sni = <mode>`.
fn one_route_service(
    env: &TestEnv,
    ca: &Ca,
    mode: &str,
    default_backend: bool,
) -> (Proxy, Issued, Issued, Backend, Backend) {
    let default_cert = ca.server("default", &["default.test", "unknown.test", "localhost"]);
    let known_cert = ca.server("known", &["known.test"]);
    let (default, known) = (named_backend("default"), named_backend("known"));
    let mut toml = global_toml(&[]);
    let mode_line = format!("unknown_sni = {}", toml_str(mode));
    toml += &service_toml(
        "edge",
        default_backend.then_some(default.addr),
        &default_cert,
        &[&mode_line],
    );
    toml += &route_toml("known", &["known.test"], known.addr, Some(&known_cert), &[]);
    let proxy = serve(env, &toml);
    (proxy, default_cert, known_cert, default, known)
}

#[test]
fn unknown_or_missing_sni_gets_the_default_certificate_and_backend() {
    let env = TestEnv::new();
    let ca = Ca::new(&env, "srv");
    let (proxy, default_cert, known_cert, default, known) =
        one_route_service(&env, &ca, "default", true);
    let client = ca.tls_client(None);
    assert_eq!(
        reached(proxy.addr(), &client, "unknown.test", &default_cert),
        "default"
    );
    // No SNI at all (the client still checks the certificate against "localhost").
    assert_eq!(
        reached(
            proxy.addr(),
            &without_sni(&client),
            "localhost",
            &default_cert
        ),
        "default"
    );
    assert_eq!(
        reached(proxy.addr(), &client, "known.test", &known_cert),
        "known"
    );
    assert_eq!((default.connections(), known.connections()), (2, 1));
}

#[test]
fn unknown_or_missing_sni_is_refused_with_unrecognized_name_when_rejecting() {
    let env = TestEnv::new();
    let ca = Ca::new(&env, "srv");
    // With "reject" the service needs no backend of its own.
    let (proxy, _, known_cert, _default, known) = one_route_service(&env, &ca, "reject", false);
    let client = ca.tls_client(None);

    let unknown = refusal(proxy.addr(), &client, "unknown.test");
    unknown.assert_alert(AlertDescription::UnrecognisedName, "unknown SNI");
    assert_eq!(close_reason(&proxy, unknown.local), "sni_unknown");

    let none = refusal(proxy.addr(), &without_sni(&client), "localhost");
    none.assert_alert(AlertDescription::UnrecognisedName, "no SNI");
    assert_eq!(close_reason(&proxy, none.local), "sni_unknown");

    // The route still serves.
    assert_eq!(
        reached(proxy.addr(), &client, "known.test", &known_cert),
        "known"
    );
    assert_eq!(known.connections(), 1);
}

/// A service with `min_version = service_min` and backend "default"; a route `route` with
/// `min_version = route_min`; a route "inherits" that sets none. All three names share one
/// certificate. Returns the proxy, a TLS 1.2-only client, and the backends.
struct Floors {
    _env: TestEnv,
    proxy: Proxy,
    tls12: std::sync::Arc<rustls::ClientConfig>,
    tls13: std::sync::Arc<rustls::ClientConfig>,
    default: Backend,
    route: Backend,
    inherits: Backend,
}

fn floors(service_min: &str, route: &str, route_min: &str) -> Floors {
    let env = TestEnv::new();
    let ca = Ca::new(&env, "srv");
    let route_name = format!("{route}.test");
    let cert = ca.server("all", &["default.test", &route_name, "inherits.test"]);
    let (default, routed, inherits) = (
        named_backend("default"),
        named_backend(route),
        named_backend("inherits"),
    );
    let mut toml = global_toml(&[]);
    let service_line = format!("min_version = \"{service_min}\"");
    toml += &service_toml("edge", Some(default.addr), &cert, &[&service_line]);
    let route_line = format!("min_version = \"{route_min}\"");
    toml += &route_toml(route, &[&route_name], routed.addr, None, &[&route_line]);
    toml += &route_toml("inherits", &["inherits.test"], inherits.addr, None, &[]);
    Floors {
        proxy: serve(&env, &toml),
        tls12: client_config(&[&ca], &ClientOpts::tls12(), None),
        tls13: client_config(&[&ca], &ClientOpts::tls13(), None),
        _env: env,
        default,
        route: routed,
        inherits,
    }
}

#[test]
fn tls_policy_is_per_route_and_inherited_from_the_service_otherwise() {
    // The service allows 1.2; one route raises its floor, another keeps the service's.
    let f = floors("1.2", "modern", "1.3");
    let refused = tls_connect_sni(f.proxy.addr(), &f.tls12, "modern.test");
    assert!(
        refused.is_err(),
        "a TLS 1.2-only client was served by the 1.3-only route"
    );
    let mut ok = tls_connect_sni(f.proxy.addr(), &f.tls13, "modern.test").expect("1.3 to modern");
    assert_eq!(backend_name(&mut ok), "modern");

    for sni in ["inherits.test", "default.test"] {
        let mut tls = tls_connect_sni(f.proxy.addr(), &f.tls12, sni)
            .unwrap_or_else(|e| panic!("TLS 1.2 to {sni}: {e}"));
        assert_eq!(
            tls.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2),
            "{sni}"
        );
        let want = sni.trim_end_matches(".test");
        assert_eq!(backend_name(&mut tls), want, "{sni}");
    }
    assert_eq!(f.route.connections(), 1, "the refused client reached it");
    assert_eq!((f.default.connections(), f.inherits.connections()), (1, 1));

    // The other way round: a 1.3-only service, one route that lets 1.2 in.
    let f = floors("1.3", "legacy", "1.2");
    let mut tls = tls_connect_sni(f.proxy.addr(), &f.tls12, "legacy.test").expect("1.2 to legacy");
    assert_eq!(backend_name(&mut tls), "legacy");
    for sni in ["inherits.test", "default.test"] {
        assert!(
            tls_connect_sni(f.proxy.addr(), &f.tls12, sni).is_err(),
            "{sni} inherits min_version = 1.3 but served TLS 1.2"
        );
    }
    assert_eq!((f.default.connections(), f.inherits.connections()), (0, 0));
}

#[test]
fn a_bad_route_sni_names_the_line_and_the_field() {
    let env = TestEnv::new();
    let ca = Ca::new(&env, "srv");
    let cert = ca.server("default", &["default.test"]);
    let backend = "127.0.0.1:9".parse().unwrap();
    for bad in ["42", r#""""#, r#"["ok.test", "not a host name"]"#, r#"[]"#] {
        let mut toml = global_toml(&[]);
        toml += &service_toml("edge", Some(backend), &cert, &[]);
        toml += &route_toml("first", &["first.test"], backend, None, &[]);
        toml += "\n[[service.route]]\nname = \"second\"\n";
        toml += &format!("sni = {bad}\n");
        toml += "backend = \"127.0.0.1:9\"\n";
        expect_config_error(
            &env,
            &toml,
            &format!("sni = {bad}"),
            "service[0].route[1].sni",
        );
    }
}
