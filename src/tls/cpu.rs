//! What this CPU accelerates, for choosing between AES-GCM and ChaCha20-Poly1305.
//!
//! AES-GCM is fast only with AES round instructions and carry-less multiplication (x86:
//! AES-NI + PCLMULQDQ, wider with VAES/VPCLMULQDQ; Arm: AES + PMULL). Without them
//! ChaCha20-Poly1305 is the faster and constant-time choice.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CpuCrypto {
    pub arch: &'static str,
    /// Feature name → present, in a fixed order per architecture.
    pub features: Vec<(&'static str, bool)>,
    /// AES-GCM runs on dedicated instructions here.
    pub aes_gcm_accelerated: bool,
}

/// Detects the features at run time (not from compile-time target flags).
pub fn detect() -> CpuCrypto {
    #[cfg(target_arch = "x86_64")]
    {
        let features = vec![
            ("aes", std::arch::is_x86_feature_detected!("aes")),
            (
                "pclmulqdq",
                std::arch::is_x86_feature_detected!("pclmulqdq"),
            ),
            ("vaes", std::arch::is_x86_feature_detected!("vaes")),
            (
                "vpclmulqdq",
                std::arch::is_x86_feature_detected!("vpclmulqdq"),
            ),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ];
        let aes_gcm_accelerated = features[0].1 && features[1].1;
        CpuCrypto {
            arch: "x86_64",
            features,
            aes_gcm_accelerated,
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let features = vec![
            ("aes", std::arch::is_aarch64_feature_detected!("aes")),
            ("pmull", std::arch::is_aarch64_feature_detected!("pmull")),
        ];
        let aes_gcm_accelerated = features[0].1 && features[1].1;
        CpuCrypto {
            arch: "aarch64",
            features,
            aes_gcm_accelerated,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        CpuCrypto {
            arch: std::env::consts::ARCH,
            features: Vec::new(),
            aes_gcm_accelerated: false,
        }
    }
}

/// Whether AES-GCM is accelerated here (detected once).
pub fn aes_gcm_accelerated() -> bool {
    static ACCEL: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ACCEL.get_or_init(|| detect().aes_gcm_accelerated)
}

#[cfg(test)]
mod tests {
    #[test]
    fn detection_agrees_with_proc_cpuinfo() {
        let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
            return;
        };
        let flags: Vec<&str> = info
            .lines()
            .find(|l| l.starts_with("flags") || l.starts_with("Features"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let cpu = super::detect();
        for (name, present) in &cpu.features {
            // The kernel calls x86 AVX-512 Foundation "avx512f" and Arm PMULL "pmull" too.
            assert_eq!(
                flags.contains(name),
                *present,
                "{name}: /proc/cpuinfo and runtime detection disagree"
            );
        }
    }
}
