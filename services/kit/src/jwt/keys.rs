//! Ed25519 keys: auth's private signing key (PKCS#8 PEM), public keys read from PEM,
//! certificates or a JWKS, and their `kid`s (RFC 7638 thumbprints). Pure: no I/O, no clock.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, OctetKeyPairParameters, OctetKeyPairType,
    ThumbprintHash,
};
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use super::ALGORITHM;

/// Signing key of developer mode (`--dev`), PKCS#8 PEM. Public, so tokens signed with it prove
/// nothing; refused as a configured `JWT_SIGNING_KEY`.
pub const DEV_SIGNING_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIIpvKWRZ7fRIFNiGWdsTY6gzUrkNRL1tp/cNSREoXl83
-----END PRIVATE KEY-----
";

/// The public half of [`DEV_SIGNING_KEY`], which users and orders trust in developer mode.
pub const DEV_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAqMN6T21Ux0TX4Qr1wO021lijj3EaAp3hH5gexEspPZA=
-----END PUBLIC KEY-----
";

/// DER prefix of an Ed25519 private key in PKCS#8 (RFC 8410), followed by the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// DER prefix of an Ed25519 SubjectPublicKeyInfo, followed by the 32-byte public key. A
/// certificate carries its subject key in this form too.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A key that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text holds no PEM block or JWKS.
    #[error("expected PEM ({0}) or a JWKS document")]
    Format(&'static str),
    /// A block or JWK is not an Ed25519 key.
    #[error("not an Ed25519 key: {0}")]
    NotEd25519(String),
}

/// An Ed25519 public key and its `kid` (the RFC 7638 thumbprint of its JWK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub(super) kid: String,
    pub(super) x: [u8; 32],
}

impl PublicKey {
    /// From the raw 32-byte key.
    pub fn from_bytes(x: [u8; 32]) -> Self {
        let x_b64 = URL_SAFE_NO_PAD.encode(x);
        let jwk = Jwk {
            common: Default::default(),
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: x_b64.clone(),
            }),
        };
        // The thumbprint cannot fail for an OKP key; the key itself is a unique name too.
        let kid = jwk.thumbprint(ThumbprintHash::SHA256).unwrap_or(x_b64);
        Self { kid, x }
    }

    /// The key id tokens signed with this key carry.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key as a JWK, as auth publishes it.
    pub fn jwk(&self) -> JwkEntry {
        JwkEntry {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: URL_SAFE_NO_PAD.encode(self.x),
            kid: Some(self.kid.clone()),
            alg: Some("EdDSA".into()),
            key_use: Some("sig".into()),
        }
    }

    pub(super) fn decoding_key(&self) -> DecodingKey {
        DecodingKey::from_ed_der(&self.x)
    }
}

/// One key of a JWKS document, as auth publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkEntry {
    /// Key type: `OKP`.
    pub kty: String,
    /// Curve: `Ed25519`.
    pub crv: String,
    /// The public key, base64url.
    pub x: String,
    /// Key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// `EdDSA`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// `sig`.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

/// A JWKS document: `GET /.well-known/jwks.json` on auth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The published keys, the signing key first.
    pub keys: Vec<JwkEntry>,
}

impl Jwks {
    /// The Ed25519 keys of the document. Other key types are refused rather than skipped, so a
    /// misconfigured set is noticed; the `kid` is recomputed from the key, never trusted.
    pub fn public_keys(&self) -> Result<Vec<PublicKey>, KeyError> {
        self.keys
            .iter()
            .map(|k| {
                if k.kty != "OKP" || k.crv != "Ed25519" {
                    return Err(KeyError::NotEd25519(format!("{}/{}", k.kty, k.crv)));
                }
                let x = URL_SAFE_NO_PAD
                    .decode(k.x.trim_end_matches('='))
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| KeyError::NotEd25519("x is not 32 bytes of base64url".into()))?;
                Ok(PublicKey::from_bytes(x))
            })
            .collect()
    }
}

/// The PEM blocks of `text`: (label, DER).
fn pem_blocks(text: &str) -> Result<Vec<(String, Vec<u8>)>, KeyError> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if line.starts_with("-----END ") {
            let (label, body) = current
                .take()
                .ok_or(KeyError::Format("END without BEGIN"))?;
            let der = STANDARD
                .decode(body)
                .map_err(|_| KeyError::Format("bad base64 in a block"))?;
            blocks.push((label, der));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
        }
    }
    if current.is_some() {
        return Err(KeyError::Format("BEGIN without END"));
    }
    Ok(blocks)
}

fn seed_of(der: &[u8]) -> Result<[u8; 32], KeyError> {
    der.strip_prefix(&PKCS8_ED25519_PREFIX[..])
        .and_then(|s| <[u8; 32]>::try_from(s).ok())
        .ok_or_else(|| KeyError::NotEd25519("PRIVATE KEY is not a PKCS#8 Ed25519 key".into()))
}

fn spki_key(der: &[u8]) -> Option<[u8; 32]> {
    der.windows(SPKI_ED25519_PREFIX.len() + 32)
        .find(|w| w.starts_with(&SPKI_ED25519_PREFIX))
        .and_then(|w| <[u8; 32]>::try_from(&w[SPKI_ED25519_PREFIX.len()..]).ok())
}

/// Reads public keys from PEM (`PUBLIC KEY`; `CERTIFICATE`, of which only the Ed25519 subject
/// key is used — Helm can write a generated key's public half only inside a certificate;
/// `PRIVATE KEY`, of which only the public half is kept) or from a JWKS document. At least
/// one key.
pub fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, KeyError> {
    let text = text.trim();
    let keys = if text.starts_with('{') {
        let jwks: Jwks =
            serde_json::from_str(text).map_err(|_| KeyError::Format("invalid JWKS JSON"))?;
        jwks.public_keys()?
    } else {
        let mut keys = Vec::new();
        for (label, der) in pem_blocks(text)? {
            let key = match label.as_str() {
                "PUBLIC KEY" => der
                    .strip_prefix(&SPKI_ED25519_PREFIX[..])
                    .and_then(|x| <[u8; 32]>::try_from(x).ok())
                    .map(PublicKey::from_bytes)
                    .ok_or_else(|| KeyError::NotEd25519("PUBLIC KEY".into()))?,
                "CERTIFICATE" => spki_key(&der)
                    .map(PublicKey::from_bytes)
                    .ok_or_else(|| KeyError::NotEd25519("CERTIFICATE".into()))?,
                "PRIVATE KEY" => SigningKey::from_seed(seed_of(&der)?)?.public,
                other => return Err(KeyError::NotEd25519(other.to_owned())),
            };
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    };
    if keys.is_empty() {
        return Err(KeyError::Format("-----BEGIN PUBLIC KEY-----"));
    }
    Ok(keys)
}

/// An Ed25519 private key with its public half.
#[derive(Clone)]
pub struct SigningKey {
    pub(super) encoding: EncodingKey,
    pub(super) public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`, Helm's
    /// `genPrivateKey "ed25519"`).
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let blocks = pem_blocks(text)?;
        let [(label, der)] = blocks.as_slice() else {
            return Err(KeyError::Format("one -----BEGIN PRIVATE KEY----- block"));
        };
        if label != "PRIVATE KEY" {
            return Err(KeyError::Format("-----BEGIN PRIVATE KEY-----"));
        }
        Self::from_seed(seed_of(der)?)
    }

    /// From the 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, KeyError> {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        let encoding = EncodingKey::from_ed_der(&der);
        let jwk = Jwk::from_encoding_key(&encoding, ALGORITHM)
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let AlgorithmParameters::OctetKeyPair(okp) = jwk.algorithm else {
            return Err(KeyError::NotEd25519("no public key".into()));
        };
        let x = URL_SAFE_NO_PAD
            .decode(&okp.x)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| KeyError::NotEd25519("public key is not 32 bytes".into()))?;
        Ok(Self {
            encoding,
            public: PublicKey::from_bytes(x),
        })
    }

    /// A fresh random key (tests and key generation).
    pub fn generate() -> Result<Self, KeyError> {
        Self::from_seed(rand::random())
    }

    /// The public half.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(self.encoding_der())
        )
    }

    fn encoding_der(&self) -> &[u8] {
        self.encoding.as_bytes()
    }
}

impl PublicKey {
    /// The key as SubjectPublicKeyInfo PEM.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&self.x);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(der)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_from_pem_jwks_and_certificates() {
        // The development pair matches; a key survives PEM and JWKS round trips with the same
        // kid; a certificate's subject key is found; garbage is refused.
        let dev = SigningKey::from_pem(DEV_SIGNING_KEY).expect("dev key");
        assert_eq!(
            parse_public_keys(DEV_PUBLIC_KEY).expect("dev public"),
            vec![dev.public_key().clone()]
        );
        let key = SigningKey::generate().expect("key");
        let again = SigningKey::from_pem(&key.to_pem()).expect("pem");
        assert_eq!(again.public_key(), key.public_key());
        let both = format!("{}{}", key.public_key().to_pem(), DEV_PUBLIC_KEY);
        assert_eq!(parse_public_keys(&both).expect("two").len(), 2);
        let jwks = serde_json::to_string(&Jwks {
            keys: vec![key.public_key().jwk()],
        })
        .expect("json");
        assert_eq!(
            parse_public_keys(&jwks).expect("jwks"),
            vec![key.public_key().clone()]
        );
        // A certificate wraps the SubjectPublicKeyInfo among other fields.
        let mut cert = vec![0x30, 0x82, 0x01, 0x00, 0xa0, 0x03];
        cert.extend_from_slice(&SPKI_ED25519_PREFIX);
        cert.extend_from_slice(&key.public_key().x);
        cert.extend_from_slice(&[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70]);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            STANDARD.encode(&cert)
        );
        assert_eq!(
            parse_public_keys(&pem).expect("cert"),
            vec![key.public_key().clone()]
        );
        assert!(parse_public_keys("").is_err());
        assert!(parse_public_keys("0123456789abcdef0123456789abcdef").is_err());
        assert!(SigningKey::from_pem(DEV_PUBLIC_KEY).is_err());
        // An RFC 8037 test vector's thumbprint (Appendix A.3).
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .expect("b64");
        let rfc = PublicKey::from_bytes(x.try_into().expect("32"));
        assert_eq!(rfc.kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    /// A key and certificate as the samples chart writes them (`genPrivateKey "ed25519"`,
    /// `genSelfSignedCertWithKey`).
    const HELM_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEINyTnf5g8eniQ3tcLbAFjSQEIGXl/I/LuCOTI9mJR6Xc
-----END PRIVATE KEY-----
";
    const HELM_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBQjCB9aADAgECAhAXvgeJ7ySFkGRBZ0UdNbATMAUGAytlcDAiMSAwHgYDVQQD
ExdmbG90aWxsYS1hdXRoLXRva2VuLWtleTAgFw0yNjEyMDYyMDUyMTBaGA8yMTI2
MTExMjIwNTIxMFowIjEgMB4GA1UEAxMXZmxvdGlsbGEtYXV0aC10b2tlbi1rZXkw
KjAFBgMrZXADIQAn+rZdRlwK/iZIQJZDcijD6fh1eiya1gTEFcQLFNKMVaM/MD0w
DgYDVR0PAQH/BAQDAgWgMB0GA1UdJQQWMBQGCCsGAQUFBwMBBggrBgEFBQcDAjAM
BgNVHRMBAf8EAjAAMAUGAytlcANBAIJf6r45maso0GLCN6BzYgLlMx/6JeJ+/GV1
dolIFntzeb9QCdqE/wdxjavCZqzo14bcvBloQkMiVenY4Xpq0Ac=
-----END CERTIFICATE-----
";

    #[test]
    fn a_helm_certificate_carries_the_public_half_of_the_helm_key() {
        // users and orders, given the chart's certificate, trust exactly the key auth signs with.
        let key = SigningKey::from_pem(HELM_KEY).expect("helm key");
        assert_eq!(
            parse_public_keys(HELM_CERT).expect("helm cert"),
            vec![key.public_key().clone()]
        );
    }
}
