//! Why a connection ended. The labels are stable: logs and counters use them.

/// The reason a connection ended, from the proxy's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both sides finished cleanly (close_notify / FIN each way).
    Done,
    /// The client sent FIN without close_notify (possible truncation; relayed as FIN).
    ClientEofNoCloseNotify,
    HandshakeTimeout,
    /// The client closed or reset before the handshake finished.
    HandshakeEof,
    /// The client spoke something that is not acceptable TLS (garbage, bad record, alert).
    TlsError,
    BackendConnectRefused,
    BackendConnectTimeout,
    BackendConnectError,
    ClientIoError,
    BackendIoError,
    IdleTimeout,
    /// Shutdown's drain_timeout elapsed with the connection still open.
    DrainTimeout,
    /// The client sent a TLS alert other than close_notify (kTLS path).
    TlsAlert,
    /// The client updated its keys and this kernel cannot take new keys (Linux < 6.14).
    KeyUpdateUnsupported,
    /// Installing the extracted keys in the kernel failed after the hand-off.
    KtlsInstallFailed,
    /// The AEAD's record limit was reached and the kernel cannot rekey.
    RecordLimit,
    /// `accept_proxy`: an allowed load balancer connected without a PROXY header.
    ProxyHeaderMissing,
    /// A malformed or oversized PROXY header.
    ProxyHeaderInvalid,
    /// A PROXY header from a source not in `proxy_sources` (or to a service without
    /// `accept_proxy`).
    ProxyNotAllowed,
    /// No route for the client's SNI and `unknown_sni = "reject"` (alert unrecognized_name).
    SniUnknown,
    /// A ClientHello larger than one TLS record, where the route must be chosen from it.
    ClientHelloTooLarge,
    /// `client_auth = "required"` and the client presented no certificate.
    ClientCertMissing,
    /// The client certificate did not verify against `client_ca` (unknown issuer, expired,
    /// bad signature, wrong usage).
    ClientCertInvalid,
    /// The client certificate is revoked by a `client_crl`.
    ClientCertRevoked,
    /// The client certificate verified but matches no `allow_*` entry (alert access_denied).
    ClientNotAllowed,
    /// Client mode: the server sent FIN without close_notify (possible truncation).
    ServerEofNoCloseNotify,
    /// Client mode: the server's certificate did not verify (unknown CA, wrong name, expired).
    ServerCertInvalid,
    /// Client mode: the TLS handshake with the server failed otherwise (alert, no common
    /// version or suite).
    ServerTlsError,
    /// Re-encryption: the backend's certificate did not verify (or match its pin).
    BackendCertInvalid,
    /// Re-encryption: the TLS handshake with the backend failed otherwise.
    BackendTlsError,
    /// Client mode with `starttls`: the server did not offer or refused STARTTLS, broke
    /// the protocol, or a step timed out.
    StarttlsFailed,
    /// The splice relay could not get a pipe (the worker is out of descriptors or memory).
    PipeUnavailable,
}

impl CloseReason {
    /// Every reason, in declaration order (`reason as usize` is its index).
    pub const ALL: [CloseReason; 32] = [
        CloseReason::Done,
        CloseReason::ClientEofNoCloseNotify,
        CloseReason::HandshakeTimeout,
        CloseReason::HandshakeEof,
        CloseReason::TlsError,
        CloseReason::BackendConnectRefused,
        CloseReason::BackendConnectTimeout,
        CloseReason::BackendConnectError,
        CloseReason::ClientIoError,
        CloseReason::BackendIoError,
        CloseReason::IdleTimeout,
        CloseReason::DrainTimeout,
        CloseReason::TlsAlert,
        CloseReason::KeyUpdateUnsupported,
        CloseReason::KtlsInstallFailed,
        CloseReason::RecordLimit,
        CloseReason::ProxyHeaderMissing,
        CloseReason::ProxyHeaderInvalid,
        CloseReason::ProxyNotAllowed,
        CloseReason::SniUnknown,
        CloseReason::ClientHelloTooLarge,
        CloseReason::ClientCertMissing,
        CloseReason::ClientCertInvalid,
        CloseReason::ClientCertRevoked,
        CloseReason::ClientNotAllowed,
        CloseReason::ServerEofNoCloseNotify,
        CloseReason::ServerCertInvalid,
        CloseReason::ServerTlsError,
        CloseReason::BackendCertInvalid,
        CloseReason::BackendTlsError,
        CloseReason::StarttlsFailed,
        CloseReason::PipeUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Done => "done",
            CloseReason::ClientEofNoCloseNotify => "client_eof_without_close_notify",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HandshakeEof => "handshake_eof",
            CloseReason::TlsError => "tls_error",
            CloseReason::BackendConnectRefused => "backend_connect_refused",
            CloseReason::BackendConnectTimeout => "backend_connect_timeout",
            CloseReason::BackendConnectError => "backend_connect_error",
            CloseReason::ClientIoError => "client_io_error",
            CloseReason::BackendIoError => "backend_io_error",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::DrainTimeout => "drain_timeout",
            CloseReason::TlsAlert => "tls_alert",
            CloseReason::KeyUpdateUnsupported => "keyupdate_unsupported",
            CloseReason::KtlsInstallFailed => "ktls_install_failed",
            CloseReason::RecordLimit => "record_limit",
            CloseReason::ProxyHeaderMissing => "proxy_header_missing",
            CloseReason::ProxyHeaderInvalid => "proxy_header_invalid",
            CloseReason::ProxyNotAllowed => "proxy_not_allowed",
            CloseReason::SniUnknown => "sni_unknown",
            CloseReason::ClientHelloTooLarge => "client_hello_too_large",
            CloseReason::ClientCertMissing => "client_cert_missing",
            CloseReason::ClientCertInvalid => "client_cert_invalid",
            CloseReason::ClientCertRevoked => "client_cert_revoked",
            CloseReason::ClientNotAllowed => "client_not_allowed",
            CloseReason::ServerEofNoCloseNotify => "server_eof_without_close_notify",
            CloseReason::ServerCertInvalid => "server_cert_invalid",
            CloseReason::ServerTlsError => "server_tls_error",
            CloseReason::BackendCertInvalid => "backend_cert_invalid",
            CloseReason::BackendTlsError => "backend_tls_error",
            CloseReason::StarttlsFailed => "starttls_failed",
            CloseReason::PipeUnavailable => "pipe_unavailable",
        }
    }

    /// Whether the client was refused for its certificate (counted in
    /// `client_cert_rejected`).
    pub fn is_client_cert_refusal(self) -> bool {
        matches!(
            self,
            CloseReason::ClientCertMissing
                | CloseReason::ClientCertInvalid
                | CloseReason::ClientCertRevoked
                | CloseReason::ClientNotAllowed
        )
    }

    /// Whether the connection ended normally; anything else counts in `closed_with_error`.
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            CloseReason::Done
                | CloseReason::ClientEofNoCloseNotify
                | CloseReason::ServerEofNoCloseNotify
        )
    }

    /// Whether an operator should look at it (logged as a warning): the proxy, the backend
    /// or a misbehaving peer failed. A client that simply goes away or idles out is routine
    /// on any public listener and is logged at info, so resets cannot flood the log.
    pub fn is_failure(self) -> bool {
        !matches!(
            self,
            CloseReason::Done
                | CloseReason::ClientEofNoCloseNotify
                | CloseReason::ServerEofNoCloseNotify
                | CloseReason::HandshakeEof
                | CloseReason::ClientIoError
                | CloseReason::IdleTimeout
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::CloseReason::*;

    #[test]
    fn routine_client_departures_are_not_failures() {
        for r in [
            Done,
            ClientEofNoCloseNotify,
            HandshakeEof,
            ClientIoError,
            IdleTimeout,
        ] {
            assert!(!r.is_failure(), "{r}");
        }
        for r in [
            TlsError,
            HandshakeTimeout,
            BackendConnectRefused,
            BackendConnectTimeout,
            BackendIoError,
            DrainTimeout,
        ] {
            assert!(r.is_failure(), "{r}");
            assert!(!r.is_clean(), "{r}");
        }
        assert!(Done.is_clean() && !ClientIoError.is_clean());
    }

    #[test]
    fn all_lists_every_reason_at_its_index_with_a_distinct_label() {
        let mut labels = std::collections::HashSet::new();
        for (i, r) in super::CloseReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{r}");
            assert!(labels.insert(r.as_str()), "{r}");
        }
        // A reason added after the last one would not be in ALL: its index would be past it.
        assert_eq!(PipeUnavailable as usize, super::CloseReason::ALL.len() - 1);
    }
}
