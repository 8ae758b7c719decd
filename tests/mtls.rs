//! Client certificates: `client_auth = "required" | "optional"` against `client_ca` and
//! `client_crl`, the allowlists (`allow_cn`, `allow_dns`, `allow_uri` prefixes, `allow_spki`
//! pins; any entry of any list admits), routing by identity (`[[service.by_identity]]`,
//! `[[service.route.by_identity]]`), each refusal's close reason and alert, and the
//! `client_cert_rejected` counter.

mod common;

use std::time::Duration;

use common::pki::*;
use common::*;
use rustls::AlertDescription;

/// The CAs of one test: `srv` signs tlsfront's certificate, `clients` the client certificates
/// tlsfront trusts, `rogue` ones it does not.
struct Pki {
    env: TestEnv,
    srv: Ca,
    clients: Ca,
    rogue: Ca,
    server_cert: Issued,
}

impl Pki {
    fn new() -> Pki {
        let env = TestEnv::new();
        let srv = Ca::new(&env, "srv");
        let clients = Ca::new(&env, "clients");
        let rogue = Ca::new(&env, "rogue");
        let server_cert = srv.server("edge", &["edge.test", "api.test", "localhost"]);
        Pki {
            env,
            srv,
            clients,
            rogue,
            server_cert,
        }
    }

    fn client_ca_line(&self) -> String {
        format!("client_ca = {}", toml_path(&self.clients.cert_pem))
    }

    /// A client trusting `srv`, presenting `id` if given.
    fn client(&self, id: Option<&Issued>) -> std::sync::Arc<rustls::ClientConfig> {
        self.srv.tls_client(id)
    }

    /// One service `edge` (backend greets "edge") with `lines` added.
    fn serve(&self, backend: &Backend, lines: &[&str]) -> Proxy {
        let mut toml = global_toml(&[]);
        toml += &service_toml("edge", Some(backend.addr), &self.server_cert, lines);
        serve(&self.env, &toml)
    }
}

/// Asserts `cfg` gets through to the "edge" backend and echoes.
fn admitted(proxy: &Proxy, cfg: &std::sync::Arc<rustls::ClientConfig>, what: &str) {
    let mut tls = tls_connect_sni(proxy.addr(), cfg, "edge.test")
        .unwrap_or_else(|e| panic!("{what}: handshake failed: {e}"));
    let out = read_plain(&mut tls, GREETING_LEN, Duration::from_secs(10));
    assert_eq!(
        out.received,
        greeting("edge"),
        "{what}: not admitted: {}",
        out.summary()
    );
    assert_echo(&mut tls, format!("{what}\n").as_bytes(), what);
}

/// Asserts `cfg` is refused with `reason` and one of the `alerts` (empty: any TLS error).
fn refused(
    proxy: &Proxy,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
    alerts: &[AlertDescription],
    reason: &str,
    what: &str,
) {
    let r = refusal(proxy.addr(), cfg, "edge.test");
    if alerts.is_empty() {
        r.assert_tls_error(what);
    } else {
        assert!(
            matches!(&r.result, Ok(rustls::Error::AlertReceived(a)) if alerts.contains(a)),
            "{what}: expected one of the alerts {alerts:?}, got {:?}",
            r.result
        );
    }
    assert_eq!(close_reason(proxy, r.local), reason, "{what}");
}

fn rejected_count(proxy: &Proxy) -> u64 {
    let stats = worker_stats(proxy, 1);
    num(stats.values().next().unwrap(), "client_cert_rejected")
}

#[test]
fn required_refuses_missing_foreign_expired_and_revoked_certificates() {
    let p = Pki::new();
    let id = ClientId::cn("billing");
    let good = p.clients.client_cert("good", &id);
    let revoked = p.clients.client_cert("revoked", &id);
    let expired = p.clients.expired_client_cert("expired", &id);
    let foreign = p.rogue.client_cert("foreign", &id);
    let crl = p.clients.crl("clients", &[&revoked]);
    let backend = named_backend("edge");
    let proxy = p.serve(
        &backend,
        &[
            r#"client_auth = "required""#,
            &p.client_ca_line(),
            &format!("client_crl = [{}]", toml_path(&crl)),
        ],
    );

    refused(
        &proxy,
        &p.client(None),
        &[AlertDescription::CertificateRequired],
        "client_cert_missing",
        "no certificate (TLS 1.3)",
    );
    refused(
        &proxy,
        &client_config(&[&p.srv], &ClientOpts::tls12(), None),
        // The contract says handshake_failure; rustls itself sends certificate_required.
        &[
            AlertDescription::HandshakeFailure,
            AlertDescription::CertificateRequired,
        ],
        "client_cert_missing",
        "no certificate (TLS 1.2)",
    );
    refused(
        &proxy,
        &p.client(Some(&foreign)),
        &[],
        "client_cert_invalid",
        "certificate from an unrelated CA",
    );
    refused(
        &proxy,
        &p.client(Some(&expired)),
        &[],
        "client_cert_invalid",
        "expired certificate",
    );
    refused(
        &proxy,
        &p.client(Some(&revoked)),
        &[AlertDescription::CertificateRevoked],
        "client_cert_revoked",
        "revoked certificate",
    );
    assert_eq!(
        backend.connections(),
        0,
        "a refused client reached the backend"
    );

    admitted(&proxy, &p.client(Some(&good)), "good certificate");
    admitted(
        &proxy,
        &client_config(&[&p.srv], &ClientOpts::tls12(), Some(&good)),
        "good certificate over TLS 1.2",
    );
    assert_eq!(rejected_count(&proxy), 5);
}

#[test]
fn optional_admits_anonymous_and_good_clients_but_not_bad_ones() {
    let p = Pki::new();
    let id = ClientId::cn("billing");
    let good = p.clients.client_cert("good", &id);
    let revoked = p.clients.client_cert("revoked", &id);
    let foreign = p.rogue.client_cert("foreign", &id);
    let crl = p.clients.crl("clients", &[&revoked]);
    let backend = named_backend("edge");
    let proxy = p.serve(
        &backend,
        &[
            r#"client_auth = "optional""#,
            &p.client_ca_line(),
            &format!("client_crl = [{}]", toml_path(&crl)),
        ],
    );
    admitted(&proxy, &p.client(None), "anonymous");
    admitted(&proxy, &p.client(Some(&good)), "good certificate");
    refused(
        &proxy,
        &p.client(Some(&foreign)),
        &[],
        "client_cert_invalid",
        "certificate from an unrelated CA",
    );
    refused(
        &proxy,
        &p.client(Some(&revoked)),
        &[AlertDescription::CertificateRevoked],
        "client_cert_revoked",
        "revoked certificate",
    );
    assert_eq!(backend.connections(), 2);
    assert_eq!(rejected_count(&proxy), 2);
}

/// One allowlist configuration with the identities it must admit and those it must deny.
struct AllowCase {
    what: &'static str,
    lines: Vec<String>,
    admit: Vec<Issued>,
    deny: Vec<Issued>,
}

#[test]
fn allowlists_admit_matching_certificates_and_deny_others_with_access_denied() {
    let p = Pki::new();
    let c = &p.clients;
    let cert = |file: &str, id: ClientId| c.client_cert(file, &id);
    let pinned = cert("pinned", ClientId::cn("pinned"));
    let unpinned = cert("unpinned", ClientId::cn("pinned"));
    let spki_hex = pinned.spki_sha256_hex();
    let spki_colons = spki_hex
        .as_bytes()
        .chunks(2)
        .map(|b| std::str::from_utf8(b).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");

    let cases = vec![
        AllowCase {
            what: "allow_cn",
            lines: vec![r#"allow_cn = ["billing"]"#.into()],
            admit: vec![cert("cn-billing", ClientId::cn("billing"))],
            deny: vec![
                cert("cn-payroll", ClientId::cn("payroll")),
                cert("cn-billing-x", ClientId::cn("billing-x")),
                cert("no-cn", ClientId::default().dns("billing")),
            ],
        },
        AllowCase {
            what: "allow_dns",
            lines: vec![r#"allow_dns = ["svc.corp.internal"]"#.into()],
            admit: vec![cert(
                "dns-svc",
                ClientId::cn("anyone")
                    .dns("other.corp.internal")
                    .dns("svc.corp.internal"),
            )],
            deny: vec![cert(
                "dns-other",
                ClientId::cn("anyone").dns("other.corp.internal"),
            )],
        },
        AllowCase {
            what: "allow_uri (a prefix)",
            lines: vec![r#"allow_uri = ["spiffe://corp/ns/billing/"]"#.into()],
            admit: vec![cert(
                "uri-billing",
                ClientId::cn("api").uri("spiffe://corp/ns/billing/sa/api"),
            )],
            deny: vec![
                cert(
                    "uri-payroll",
                    ClientId::cn("x").uri("spiffe://corp/ns/payroll/sa/x"),
                ),
                cert(
                    "uri-billingx",
                    ClientId::cn("x").uri("spiffe://corp/ns/billingx/sa/x"),
                ),
            ],
        },
        AllowCase {
            what: "allow_spki (hex)",
            lines: vec![format!("allow_spki = [{}]", toml_str(&spki_hex))],
            admit: vec![pinned.clone()],
            deny: vec![unpinned.clone()],
        },
        AllowCase {
            what: "allow_spki (upper-case hex with colons)",
            lines: vec![format!("allow_spki = [{}]", toml_str(&spki_colons))],
            admit: vec![pinned.clone()],
            deny: vec![unpinned.clone()],
        },
        AllowCase {
            what: "allow_spki (base64)",
            lines: vec![format!(
                "allow_spki = [{}]",
                toml_str(pinned.spki_sha256_base64())
            )],
            admit: vec![pinned.clone()],
            deny: vec![unpinned.clone()],
        },
        AllowCase {
            what: "allow_cn or allow_uri",
            lines: vec![
                r#"allow_cn = ["billing"]"#.into(),
                r#"allow_uri = ["spiffe://corp/ns/billing/"]"#.into(),
            ],
            admit: vec![
                cert("or-cn", ClientId::cn("billing")),
                cert(
                    "or-uri",
                    ClientId::cn("other").uri("spiffe://corp/ns/billing/sa/api"),
                ),
            ],
            deny: vec![cert(
                "or-neither",
                ClientId::cn("other").uri("spiffe://corp/ns/payroll/sa/x"),
            )],
        },
    ];

    for case in cases {
        let backend = named_backend("edge");
        let mut lines = vec![
            r#"client_auth = "required""#.to_string(),
            p.client_ca_line(),
        ];
        lines.extend(case.lines.iter().cloned());
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let proxy = p.serve(&backend, &lines);
        for (i, id) in case.admit.iter().enumerate() {
            admitted(
                &proxy,
                &p.client(Some(id)),
                &format!("{}: admit #{i}", case.what),
            );
        }
        for (i, id) in case.deny.iter().enumerate() {
            refused(
                &proxy,
                &p.client(Some(id)),
                &[AlertDescription::AccessDenied],
                "client_not_allowed",
                &format!("{}: deny #{i}", case.what),
            );
        }
        assert_eq!(
            backend.connections(),
            case.admit.len(),
            "{}: a denied client reached the backend",
            case.what
        );
        assert_eq!(
            rejected_count(&proxy),
            case.deny.len() as u64,
            "{}",
            case.what
        );
    }
}

#[test]
fn openssl_s_client_with_a_client_certificate_is_admitted_or_denied() {
    if openssl_or_skip("openssl_s_client_with_a_client_certificate_is_admitted_or_denied").is_none()
    {
        return;
    }
    let p = Pki::new();
    let billing = p.clients.client_cert("billing", &ClientId::cn("billing"));
    let payroll = p.clients.client_cert("payroll", &ClientId::cn("payroll"));
    let backend = named_backend("edge");
    let proxy = p.serve(
        &backend,
        &[
            r#"client_auth = "required""#,
            &p.client_ca_line(),
            r#"allow_cn = ["billing"]"#,
        ],
    );
    let run = |who: &Issued, input: &[u8], expect: usize| {
        s_client(
            proxy.addr(),
            &p.srv.cert_pem,
            &[
                "-cert",
                who.cert_pem.to_str().unwrap(),
                "-key",
                who.key_pem.to_str().unwrap(),
            ],
            input,
            expect,
            Duration::from_secs(20),
        )
    };

    let input = b"hello from openssl\n";
    let ok = run(&billing, input, GREETING_LEN + input.len());
    let mut want = greeting("edge");
    want.extend_from_slice(input);
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&want),
        "s_client with an allowed certificate; stderr:\n{}",
        ok.stderr
    );

    // Waits for s_client to exit (or 20 s): it is refused after its own Finished.
    let denied = run(&payroll, input, usize::MAX);
    assert!(
        denied.stdout.is_empty(),
        "a denied client got data: {:?}",
        String::from_utf8_lossy(&denied.stdout)
    );
    let err = denied.stderr.to_ascii_lowercase();
    assert!(
        err.contains("access denied") || err.contains("alert number 49"),
        "s_client did not report access_denied:\n{}",
        denied.stderr
    );
    assert!(
        proxy.wait_for_log("reason=client_not_allowed", Duration::from_secs(10)),
        "{}",
        proxy.log()
    );
    assert_eq!(backend.connections(), 1);
}

#[test]
fn by_identity_sends_clients_to_different_backends() {
    let p = Pki::new();
    let c = &p.clients;
    let alice = c.client_cert("alice", &ClientId::cn("alice"));
    let biller = c.client_cert(
        "biller",
        &ClientId::cn("bob").uri("spiffe://corp/ns/billing/sa/api"),
    );
    let both = c.client_cert(
        "both",
        &ClientId::cn("alice").uri("spiffe://corp/ns/billing/sa/api"),
    );
    let carol = c.client_cert("carol", &ClientId::cn("carol"));
    let names = ["edge", "edge-alice", "api", "api-alice", "api-billing"];
    let b: Vec<Backend> = names.iter().map(|n| named_backend(n)).collect();

    let mut toml = global_toml(&[]);
    toml += &service_toml(
        "edge",
        Some(b[0].addr),
        &p.server_cert,
        &[r#"client_auth = "optional""#, &p.client_ca_line()],
    );
    toml += &format!(
        "\n[[service.by_identity]]\nallow_cn = [\"alice\"]\n{}\n",
        backend_toml(b[1].addr)
    );
    toml += &route_toml("api", &["api.test"], b[2].addr, None, &[]);
    toml += &format!(
        "\n[[service.route.by_identity]]\nallow_uri = [\"spiffe://corp/ns/billing/\"]\n{}\n",
        backend_toml(b[4].addr)
    );
    toml += &format!(
        "\n[[service.route.by_identity]]\nallow_cn = [\"alice\"]\n{}\n",
        backend_toml(b[3].addr)
    );
    let proxy = serve(&p.env, &toml);

    let via = |id: Option<&Issued>, sni: &str| {
        let mut tls = tls_connect_sni(proxy.addr(), &p.client(id), sni)
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        let name = backend_name(&mut tls);
        assert_echo(&mut tls, b"who am i\n", sni);
        name
    };
    assert_eq!(via(Some(&biller), "api.test"), "api-billing");
    assert_eq!(via(Some(&alice), "api.test"), "api-alice");
    assert_eq!(
        via(Some(&both), "api.test"),
        "api-billing",
        "first match wins"
    );
    assert_eq!(
        via(Some(&carol), "api.test"),
        "api",
        "no match: the route's own"
    );
    assert_eq!(via(None, "api.test"), "api", "anonymous: the route's own");
    assert_eq!(via(Some(&alice), "edge.test"), "edge-alice");
    assert_eq!(via(Some(&biller), "edge.test"), "edge");
    assert_eq!(via(None, "edge.test"), "edge");
    let counts: Vec<usize> = b.iter().map(Backend::connections).collect();
    assert_eq!(counts, [2, 1, 2, 1, 2], "{names:?}");
}

#[test]
fn a_bad_spki_pin_names_the_line_and_the_field() {
    let p = Pki::new();
    let backend: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let short = "ab".repeat(31); // 62 hex digits
    for bad in [short.as_str(), "not-a-digest", "zz"] {
        let pin = format!("allow_spki = [{}]", toml_str(bad));
        let mut toml = global_toml(&[]);
        toml += &service_toml(
            "edge",
            Some(backend),
            &p.server_cert,
            &[r#"client_auth = "required""#, &p.client_ca_line(), &pin],
        );
        expect_config_error(&p.env, &toml, &pin, "service[0].allow_spki");

        let mut toml = global_toml(&[]);
        toml += &service_toml(
            "edge",
            Some(backend),
            &p.server_cert,
            &[r#"client_auth = "required""#, &p.client_ca_line()],
        );
        toml += &route_toml("api", &["api.test"], backend, None, &[&pin]);
        expect_config_error(&p.env, &toml, &pin, "service[0].route[0].allow_spki");
    }
}

/// rustls does not look at client authentication when it resumes a session, so tickets are
/// bound to the route that issued them: a ticket from a route without `client_auth` must
/// not let a client without a certificate into a route with the same name that requires
/// one (here the routes differ by `alpn_match`).
#[test]
fn a_ticket_from_an_open_route_does_not_resume_on_a_route_requiring_certificates() {
    let p = Pki::new();
    let (open, locked, default) = (
        named_backend("open"),
        named_backend("locked"),
        named_backend("edge"),
    );
    let mut toml = global_toml(&[]);
    toml += &service_toml("edge", Some(default.addr), &p.server_cert, &[]);
    toml += &route_toml(
        "open",
        &["api.test"],
        open.addr,
        None,
        &["alpn_match = [\"h2\"]"],
    );
    let ca = p.client_ca_line();
    toml += &route_toml(
        "locked",
        &["api.test"],
        locked.addr,
        None,
        &["client_auth = \"required\"", &ca],
    );
    let proxy = serve(&p.env, &toml);

    // Two clients without certificates sharing one session store, one offering h2.
    // (rustls clients only offer a session to a config with the same verifier and client
    // certificate resolver: both come from one base config.)
    let store = std::sync::Arc::new(rustls::client::ClientSessionMemoryCache::new(16));
    let base = p.client(None);
    let with_alpn = |alpn: &[u8]| {
        let mut cfg = (*base).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        cfg.resumption = rustls::client::Resumption::store(store.clone());
        std::sync::Arc::new(cfg)
    };
    let (h2, http1) = (with_alpn(b"h2"), with_alpn(b"http/1.1"));

    let mut first = tls_connect_sni(proxy.addr(), &h2, "api.test").unwrap();
    assert_eq!(backend_name(&mut first), "open");
    assert_echo(&mut first, b"takes in the tickets\n", "first");
    let mut again = tls_connect_sni(proxy.addr(), &h2, "api.test").unwrap();
    assert_eq!(backend_name(&mut again), "open");
    assert_eq!(
        again.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the open route's tickets resume on the open route"
    );

    let r = refusal(proxy.addr(), &http1, "api.test");
    assert!(
        matches!(
            &r.result,
            Ok(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        ),
        "the locked route must ask for a certificate, got {:?}",
        r.result
    );
    assert_eq!(close_reason(&proxy, r.local), "client_cert_missing");
    assert_eq!(
        locked.connections(),
        0,
        "nothing reached the locked backend"
    );
}
