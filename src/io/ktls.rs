//! Kernel TLS (kTLS): probing, installing TLS_TX/TLS_RX from rustls's secrets, and the
//! record-type side channel (reading control records, sending alerts).
//!
//! Kernel behaviour this relies on (Linux 6.1, see `shared/docs/ktls-kernel-facts.md`):
//! - `setsockopt(TCP_ULP, "tls")` fails with ENOENT where the kernel has no TLS ULP;
//! - a non-data record makes `read` fail with EIO and `splice` with EINVAL, and stays queued
//!   until `recvmsg` with a control buffer reads it (one record per call, with the
//!   `TLS_GET_RECORD_TYPE` cmsg);
//! - the kernel never sends close_notify itself: `sendmsg` with `TLS_SET_RECORD_TYPE` does;
//! - `getsockopt(SOL_TLS, TLS_TX/TLS_RX)` returns the current record sequence number.

use std::io;
use std::mem::{size_of, size_of_val};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use zeroize::Zeroize;

/// TLS record content types.
pub const RECORD_ALERT: u8 = 21;
pub const RECORD_HANDSHAKE: u8 = 22;
pub const RECORD_APPLICATION_DATA: u8 = 23;

/// The AEADs the kernel can take over from rustls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "AES-128-GCM",
            Cipher::Aes256Gcm => "AES-256-GCM",
            Cipher::Chacha20Poly1305 => "CHACHA20-POLY1305",
        }
    }
}

/// TLS versions as the kernel names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn from_rustls(v: ProtocolVersion) -> Option<TlsVersion> {
        match v {
            ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
    fn uapi(self) -> u16 {
        match self {
            TlsVersion::Tls12 => libc::TLS_1_2_VERSION,
            TlsVersion::Tls13 => libc::TLS_1_3_VERSION,
        }
    }
}

/// What the running kernel offers, found once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSupport {
    /// `None` when the TLS ULP is available; otherwise the errno of `TCP_ULP "tls"`.
    pub ulp_errno: Option<i32>,
    /// (version, cipher) pairs the kernel accepted as TLS_TX and TLS_RX.
    pub ciphers: Vec<(TlsVersion, Cipher)>,
}

impl KernelSupport {
    pub fn available(&self) -> bool {
        self.ulp_errno.is_none()
    }
    pub fn supports(&self, version: TlsVersion, cipher: Cipher) -> bool {
        self.ciphers.contains(&(version, cipher))
    }
}

/// The kernel's name for a rustls cipher suite, if the kernel can run it at all.
pub fn kernel_cipher(suite: rustls::SupportedCipherSuite) -> Option<(TlsVersion, Cipher)> {
    use rustls::CipherSuite as S;
    let version = TlsVersion::from_rustls(suite.version().version)?;
    let cipher = match suite.suite() {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Cipher::Aes128Gcm,
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Cipher::Aes256Gcm,
        S::TLS13_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Cipher::Chacha20Poly1305,
        _ => return None,
    };
    Some((version, cipher))
}

/// A `tls12_crypto_info_*` struct for one direction, zeroed when dropped.
pub enum CryptoInfo {
    Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128),
    Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256),
    Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305),
}

impl CryptoInfo {
    /// Builds the kernel's struct from rustls's secrets for one direction. For the GCM
    /// suites the first 4 bytes of rustls's IV are the kernel's salt and the last 8 its IV;
    /// ChaCha20 takes all 12 as IV. The record sequence number is big-endian.
    pub fn from_rustls(
        version: TlsVersion,
        seq: u64,
        secrets: &ConnectionTrafficSecrets,
    ) -> Option<CryptoInfo> {
        let (cipher, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (Cipher::Chacha20Poly1305, key, iv)
            }
            _ => return None,
        };
        let iv: &[u8; 12] = iv.as_ref().try_into().ok()?;
        Self::build(version, cipher, key.as_ref(), iv, seq)
    }

    /// A struct with all-zero key material, for probing what the kernel accepts (and tests).
    pub fn dummy(version: TlsVersion, cipher: Cipher) -> CryptoInfo {
        let key = [0u8; 32];
        let key = match cipher {
            Cipher::Aes128Gcm => &key[..16],
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => &key[..],
        };
        Self::build(version, cipher, key, &[0; 12], 0).expect("key sized for the cipher")
    }

    /// Fills the uapi struct for `cipher`; `None` if `key` has the wrong length.
    fn build(
        version: TlsVersion,
        cipher: Cipher,
        key: &[u8],
        iv: &[u8; 12],
        seq: u64,
    ) -> Option<CryptoInfo> {
        let info = |cipher_type| libc::tls_crypto_info {
            version: version.uapi(),
            cipher_type,
        };
        let rec_seq = seq.to_be_bytes();
        let (salt, explicit) = iv.split_at(4);
        Some(match cipher {
            Cipher::Aes128Gcm => CryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: info(libc::TLS_CIPHER_AES_GCM_128),
                iv: explicit.try_into().ok()?,
                key: key.try_into().ok()?,
                salt: salt.try_into().ok()?,
                rec_seq,
            }),
            Cipher::Aes256Gcm => CryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: info(libc::TLS_CIPHER_AES_GCM_256),
                iv: explicit.try_into().ok()?,
                key: key.try_into().ok()?,
                salt: salt.try_into().ok()?,
                rec_seq,
            }),
            Cipher::Chacha20Poly1305 => {
                CryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: *iv,
                    key: key.try_into().ok()?,
                    salt: [0; 0],
                    rec_seq,
                })
            }
        })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        let (ptr, len) = match self {
            CryptoInfo::Aes128Gcm(s) => (s as *mut _ as *mut u8, size_of_val(s)),
            CryptoInfo::Aes256Gcm(s) => (s as *mut _ as *mut u8, size_of_val(s)),
            CryptoInfo::Chacha20Poly1305(s) => (s as *mut _ as *mut u8, size_of_val(s)),
        };
        // SAFETY: the structs are `repr(C)` plain old data made only of u8/u16 fields with no
        // padding (4 + multiples of 1 byte); the slice covers exactly the borrowed struct.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        self.bytes_mut().zeroize();
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn setsockopt_bytes(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: `value` is a live slice for the whole call and its exact length is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Attaches the TLS ULP to a connected TCP socket (ENOENT: the kernel has no kTLS).
pub fn attach_ulp(sock: &impl AsRawFd) -> io::Result<()> {
    setsockopt_bytes(sock.as_raw_fd(), libc::SOL_TCP, libc::TCP_ULP, b"tls")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

impl Direction {
    fn optname(self) -> libc::c_int {
        match self {
            Direction::Tx => libc::TLS_TX,
            Direction::Rx => libc::TLS_RX,
        }
    }
}

/// Installs one direction's keys on a socket that has the TLS ULP attached.
pub fn set_crypto(
    sock: &impl AsRawFd,
    direction: Direction,
    info: &mut CryptoInfo,
) -> io::Result<()> {
    setsockopt_bytes(
        sock.as_raw_fd(),
        libc::SOL_TLS,
        direction.optname(),
        info.bytes_mut(),
    )
}

/// Hands record encryption for both directions to the kernel.
pub fn install(sock: &impl AsRawFd, tx: &mut CryptoInfo, rx: &mut CryptoInfo) -> io::Result<()> {
    attach_ulp(sock)?;
    set_crypto(sock, Direction::Tx, tx)?;
    set_crypto(sock, Direction::Rx, rx)
}

/// `getsockopt(SOL_TLS, TLS_TX/TLS_RX)` into `buf`, which must be exactly as long as the
/// kernel expects (the header alone, or the whole struct for the installed cipher).
fn get_crypto(sock: &impl AsRawFd, direction: Direction, buf: &mut [u8]) -> io::Result<()> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `buf` and updates `len`.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_TLS,
            direction.optname(),
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    if len as usize != buf.len() {
        return Err(io::Error::other("unexpected crypto_info size"));
    }
    Ok(())
}

/// The next record sequence number the kernel will use in `direction`.
pub fn record_seq(sock: &impl AsRawFd, direction: Direction) -> io::Result<u64> {
    // The kernel wants the exact struct size for the installed cipher: ask for the header
    // first (version, cipher_type), then for the whole struct. rec_seq is its last 8 bytes.
    let mut header = [0u8; size_of::<libc::tls_crypto_info>()];
    get_crypto(sock, direction, &mut header)?;
    let cipher_type = u16::from_ne_bytes([header[2], header[3]]);
    let size = match cipher_type {
        libc::TLS_CIPHER_AES_GCM_128 => size_of::<libc::tls12_crypto_info_aes_gcm_128>(),
        libc::TLS_CIPHER_AES_GCM_256 => size_of::<libc::tls12_crypto_info_aes_gcm_256>(),
        libc::TLS_CIPHER_CHACHA20_POLY1305 => {
            size_of::<libc::tls12_crypto_info_chacha20_poly1305>()
        }
        other => {
            return Err(io::Error::other(format!(
                "unknown kTLS cipher type {other}"
            )))
        }
    };
    let mut buf = [0u8; 64];
    let info = &mut buf[..size];
    let result = get_crypto(sock, direction, info).map(|()| {
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&info[size - 8..]);
        u64::from_be_bytes(seq)
    });
    buf.zeroize(); // the kernel returned the key too
    result
}

/// A record read with [`recv_record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub content_type: u8,
    pub len: usize,
}

/// Reads the next record (or application data) without blocking, with its content type.
/// Returns `Ok(None)` when nothing is queued (EAGAIN) and `len == 0` with type 0 at EOF.
pub fn recv_record(sock: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Option<Record>> {
    // Room for one cmsg carrying one byte, aligned as the kernel expects.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no iov, no control" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: `msg` points at `iov` (covering `buf`) and `control`, all alive for the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    let mut content_type = if n == 0 { 0 } else { RECORD_APPLICATION_DATA };
    // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, bounded by
    // `msg_controllen`; the data of a SOL_TLS/TLS_GET_RECORD_TYPE cmsg is one byte.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_TLS && (*cmsg).cmsg_type == libc::TLS_GET_RECORD_TYPE
            {
                content_type = *libc::CMSG_DATA(cmsg);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Some(Record {
        content_type,
        len: n as usize,
    }))
}

/// Sends one record of `content_type` (e.g. an alert) through the kernel's TLS_TX.
pub fn send_record(sock: &impl AsRawFd, content_type: u8, payload: &[u8]) -> io::Result<()> {
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: as in `recv_record`; CMSG_SPACE(1) fits in `control` (64 bytes).
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(1) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_TLS;
        (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
        (*cmsg).cmsg_len = libc::CMSG_LEN(1) as usize;
        *libc::CMSG_DATA(cmsg) = content_type;
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != payload.len() {
        return Err(io::Error::other("short control record send"));
    }
    Ok(())
}

/// Sends a close_notify alert (warning level) through the kernel.
pub fn send_close_notify(sock: &impl AsRawFd) -> io::Result<()> {
    send_record(sock, RECORD_ALERT, &[1, 0])
}

/// Probes the kernel once: is the TLS ULP there, and which (version, cipher) pairs does it
/// accept for both directions? Uses throwaway loopback connections.
pub fn probe() -> KernelSupport {
    let pair = || -> io::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        Ok((client, server))
    };
    let ulp_errno = match pair().and_then(|(c, _s)| attach_ulp(&c)) {
        Ok(()) => None,
        Err(e) => Some(e.raw_os_error().unwrap_or(libc::EINVAL)),
    };
    let mut ciphers = Vec::new();
    if ulp_errno.is_none() {
        for version in [TlsVersion::Tls12, TlsVersion::Tls13] {
            for cipher in Cipher::ALL {
                let ok = pair().and_then(|(c, _s)| {
                    install(
                        &c,
                        &mut CryptoInfo::dummy(version, cipher),
                        &mut CryptoInfo::dummy(version, cipher),
                    )
                });
                if ok.is_ok() {
                    ciphers.push((version, cipher));
                }
            }
        }
    }
    KernelSupport { ulp_errno, ciphers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::cipher::{AeadKey, Iv};

    #[test]
    fn gcm_secrets_split_into_salt_and_iv() {
        let key = AeadKey::from([7u8; 32]);
        let iv = Iv::new([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let secrets = ConnectionTrafficSecrets::Aes256Gcm { key, iv };
        let Some(CryptoInfo::Aes256Gcm(s)) =
            CryptoInfo::from_rustls(TlsVersion::Tls13, 0x0102, &secrets)
        else {
            panic!("wrong struct");
        };
        assert_eq!(s.info.version, 0x0304);
        assert_eq!(s.info.cipher_type, 52);
        assert_eq!(s.salt, [1, 2, 3, 4]);
        assert_eq!(s.iv, [5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(s.key, [7u8; 32]);
        assert_eq!(s.rec_seq, [0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn chacha_takes_the_whole_iv() {
        let secrets = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: AeadKey::from([9u8; 32]),
            iv: Iv::new([3; 12]),
        };
        let Some(CryptoInfo::Chacha20Poly1305(s)) =
            CryptoInfo::from_rustls(TlsVersion::Tls12, 1, &secrets)
        else {
            panic!("wrong struct");
        };
        assert_eq!((s.info.version, s.info.cipher_type), (0x0303, 54));
        assert_eq!(s.iv, [3; 12]);
        assert_eq!(s.rec_seq, 1u64.to_be_bytes());
    }

    #[test]
    fn every_provider_suite_maps_to_a_kernel_cipher() {
        for suite in rustls::crypto::aws_lc_rs::ALL_CIPHER_SUITES {
            let (version, cipher) = kernel_cipher(*suite).expect("mapped");
            let name = crate::tls::suite_name(*suite);
            assert_eq!(
                version == TlsVersion::Tls13,
                name.starts_with("TLS13_"),
                "{name}"
            );
            let expect = if name.contains("AES_128") {
                Cipher::Aes128Gcm
            } else if name.contains("AES_256") {
                Cipher::Aes256Gcm
            } else {
                Cipher::Chacha20Poly1305
            };
            assert_eq!(cipher, expect, "{name}");
        }
    }

    #[test]
    fn key_material_is_wiped_on_drop() {
        let mut info = CryptoInfo::dummy(TlsVersion::Tls13, Cipher::Aes128Gcm);
        info.bytes_mut().fill(0xaa);
        info.bytes_mut().zeroize();
        assert!(info.bytes_mut().iter().all(|&b| b == 0));
    }

    /// Runs anywhere: on a kernel without kTLS it must say so with ENOENT, on one with kTLS
    /// it must find at least AES-128-GCM for TLS 1.3.
    #[test]
    fn probe_tells_the_truth() {
        let support = probe();
        let ulp_listed = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp")
            .map(|s| s.split_whitespace().any(|u| u == "tls"))
            .unwrap_or(false);
        if support.available() {
            assert!(
                support.supports(TlsVersion::Tls13, Cipher::Aes128Gcm),
                "{support:?}"
            );
        } else {
            assert!(
                !ulp_listed,
                "tls listed as available but the probe failed: {support:?}"
            );
            assert_eq!(support.ulp_errno, Some(libc::ENOENT), "{support:?}");
            assert!(support.ciphers.is_empty());
        }
    }
}
