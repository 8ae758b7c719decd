//! Whether a connection's records go to kernel TLS or stay in userspace, and why.

use std::fmt;

use crate::config::KtlsMode;
use crate::io::ktls::{kernel_cipher, Cipher, KernelSupport, TlsVersion};

/// Why a connection stays in userspace (the `reason=` of `offload=userspace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserspaceReason {
    /// `ktls = "off"`.
    Disabled,
    /// The kernel has no TLS ULP (no CONFIG_TLS, or the module cannot load).
    KernelLacksTlsUlp,
    /// The negotiated suite's AEAD is not one the kernel accepted when probed.
    CipherUnsupported,
    /// Attaching the TLS ULP to this socket failed with this errno.
    InstallFailed(i32),
    /// The backend is TLS too (re-encryption): the relay decrypts and encrypts itself.
    Reencrypt,
}

impl fmt::Display for UserspaceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserspaceReason::Disabled => f.write_str("disabled"),
            UserspaceReason::KernelLacksTlsUlp => f.write_str("kernel_lacks_tls_ulp"),
            UserspaceReason::CipherUnsupported => f.write_str("cipher_unsupported"),
            UserspaceReason::InstallFailed(errno) => write!(f, "install_failed:{errno}"),
            UserspaceReason::Reencrypt => f.write_str("reencrypt"),
        }
    }
}

/// Where the records of a connection are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    Kernel { version: TlsVersion, cipher: Cipher },
    Userspace(UserspaceReason),
}

/// Decides before the handshake whether rustls must keep its secrets extractable.
pub fn may_offload(mode: KtlsMode, support: Option<&KernelSupport>) -> bool {
    mode != KtlsMode::Off && support.is_some_and(KernelSupport::available)
}

/// Decides after the handshake, from the negotiated suite.
pub fn decide(
    mode: KtlsMode,
    support: Option<&KernelSupport>,
    suite: rustls::SupportedCipherSuite,
) -> Offload {
    if mode == KtlsMode::Off {
        return Offload::Userspace(UserspaceReason::Disabled);
    }
    let Some(support) = support.filter(|s| s.available()) else {
        return Offload::Userspace(UserspaceReason::KernelLacksTlsUlp);
    };
    match kernel_cipher(suite) {
        Some((version, cipher)) if support.supports(version, cipher) => {
            Offload::Kernel { version, cipher }
        }
        _ => Offload::Userspace(UserspaceReason::CipherUnsupported),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::cipher_suite as suites;

    fn kernel(ciphers: Vec<(TlsVersion, Cipher)>) -> KernelSupport {
        KernelSupport {
            ulp_errno: None,
            ciphers,
        }
    }

    #[test]
    fn decisions() {
        let none = KernelSupport {
            ulp_errno: Some(libc::ENOENT),
            ciphers: vec![],
        };
        let gcm13 = kernel(vec![(TlsVersion::Tls13, Cipher::Aes128Gcm)]);
        let suite = suites::TLS13_AES_128_GCM_SHA256;
        assert_eq!(
            decide(KtlsMode::Off, Some(&gcm13), suite),
            Offload::Userspace(UserspaceReason::Disabled)
        );
        assert_eq!(
            decide(KtlsMode::Auto, Some(&none), suite),
            Offload::Userspace(UserspaceReason::KernelLacksTlsUlp)
        );
        assert_eq!(
            decide(KtlsMode::Auto, None, suite),
            Offload::Userspace(UserspaceReason::KernelLacksTlsUlp)
        );
        assert_eq!(
            decide(KtlsMode::Auto, Some(&gcm13), suite),
            Offload::Kernel {
                version: TlsVersion::Tls13,
                cipher: Cipher::Aes128Gcm
            }
        );
        assert_eq!(
            decide(
                KtlsMode::On,
                Some(&gcm13),
                suites::TLS13_CHACHA20_POLY1305_SHA256
            ),
            Offload::Userspace(UserspaceReason::CipherUnsupported)
        );
        assert!(may_offload(KtlsMode::Auto, Some(&gcm13)));
        assert!(!may_offload(KtlsMode::Auto, Some(&none)));
        assert!(!may_offload(KtlsMode::Off, Some(&gcm13)));
        assert_eq!(
            UserspaceReason::InstallFailed(95).to_string(),
            "install_failed:95"
        );
    }
}
