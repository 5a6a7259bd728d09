//! Local private key generation: ECDSA P-256 (default) or RSA 2048/3072/4096.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The algorithm of a locally generated key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (generated with rcgen/ring).
    #[default]
    EcdsaP256,
    /// RSA 2048 (generated with OpenSSL; ring cannot generate RSA).
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

impl KeyAlgorithm {
    /// Vault's role parameters for this key: `(key_type, key_bits)`.
    pub fn vault_key_type(self) -> (&'static str, u32) {
        match self {
            Self::EcdsaP256 => ("ec", 256),
            Self::Rsa2048 => ("rsa", 2048),
            Self::Rsa3072 => ("rsa", 3072),
            Self::Rsa4096 => ("rsa", 4096),
        }
    }

    fn rsa_bits(self) -> Option<u32> {
        match self {
            Self::EcdsaP256 => None,
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
        }
    }
}

/// A private key generated on this host: PKCS#8 PEM, wiped on drop, never printed.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: KeyAlgorithm,
    pem: Zeroizing<String>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("pem", &"<redacted>")
            .finish()
    }
}

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self> {
        let pem = match algorithm.rsa_bits() {
            None => {
                let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| Error::crypto("generate ECDSA P-256 key", e))?;
                Zeroizing::new(kp.serialize_pem())
            }
            Some(bits) => {
                let what = || format!("generate RSA {bits} key");
                let rsa =
                    openssl::rsa::Rsa::generate(bits).map_err(|e| Error::crypto(what(), e))?;
                let pkey =
                    openssl::pkey::PKey::from_rsa(rsa).map_err(|e| Error::crypto(what(), e))?;
                let pem = Zeroizing::new(
                    pkey.private_key_to_pem_pkcs8()
                        .map_err(|e| Error::crypto(what(), e))?,
                );
                Zeroizing::new(
                    String::from_utf8(pem.to_vec()).map_err(|e| Error::crypto(what(), e))?,
                )
            }
        };
        Ok(Self { algorithm, pem })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Consumes the key, returning its PEM (still wiped on drop).
    pub fn into_pem(self) -> Zeroizing<String> {
        self.pem
    }

    /// The key as an rcgen key pair (to sign a CSR).
    pub(crate) fn rcgen_key_pair(&self) -> Result<rcgen::KeyPair> {
        rcgen::KeyPair::from_pem(&self.pem).map_err(|e| Error::crypto("load generated key", e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn generates_each_algorithm() {
        for (alg, bits) in [
            (KeyAlgorithm::EcdsaP256, 256),
            (KeyAlgorithm::Rsa2048, 2048),
            (KeyAlgorithm::Rsa3072, 3072),
        ] {
            let key = PrivateKey::generate(alg).unwrap();
            assert!(
                key.pem().starts_with("-----BEGIN PRIVATE KEY-----"),
                "{alg:?}"
            );
            let pkey = openssl::pkey::PKey::private_key_from_pem(key.pem().as_bytes()).unwrap();
            assert_eq!(pkey.bits(), bits, "{alg:?}");
            let id = if bits == 256 {
                openssl::pkey::Id::EC
            } else {
                openssl::pkey::Id::RSA
            };
            assert_eq!(pkey.id(), id);
            // Loads into rcgen (RSA via PKCS#8), so it can sign CSRs.
            key.rcgen_key_pair().unwrap();
            assert_eq!(key.algorithm(), alg);
        }
    }

    #[test]
    fn debug_redacts() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let dbg = format!("{key:?}");
        assert!(
            dbg.contains("redacted") && !dbg.contains("PRIVATE"),
            "{dbg}"
        );
    }

    #[test]
    fn vault_key_types() {
        assert_eq!(KeyAlgorithm::default().vault_key_type(), ("ec", 256));
        assert_eq!(KeyAlgorithm::Rsa4096.vault_key_type(), ("rsa", 4096));
    }
}
