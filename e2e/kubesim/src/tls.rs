//! kubesim's PKI: a cluster CA, the API server's serving certificate and client certificates,
//! generated with rcgen at every start (nothing here is meant to outlive one run), and the rustls
//! server configuration that asks for — but does not require — a client certificate.
//!
//! A client certificate signed by the CA authenticates its subject: the common name is the user
//! name and each organisation a group, as on a real cluster. Pure crypto and parsing; no I/O
//! except [`Pki::write_to`].

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::auth::UserInfo;

/// Errors generating certificates or the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating a certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA and the API server's serving certificate.
pub struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    serving: CertPair,
    serving_der: CertificateDer<'static>,
    serving_key_der: Vec<u8>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "kubesim-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

impl Pki {
    /// A new CA and a serving certificate valid for `sans` (host names and IP addresses), plus
    /// the names every API server answers to (`kubernetes`, `kubernetes.default.svc`, ...).
    pub fn generate(sans: &[String]) -> Result<Pki, TlsError> {
        let ca_key = KeyPair::generate()?;
        let params = ca_params()?;
        let ca_cert = params.self_signed(&ca_key)?;
        let issuer = Issuer::new(params, ca_key);

        let mut names: Vec<String> = sans.to_vec();
        for n in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            issuer,
            serving: CertPair {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
            serving_der: cert.der().clone(),
            serving_key_der: key.serialize_der(),
        })
    }

    /// The CA certificate (PEM), as kubeconfigs and pods' `ca.crt` carry it.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A client certificate for `user`, in `group` when given (one organisation: rcgen keeps
    /// one value per subject attribute), signed by the CA.
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<CertPair, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = group {
            params.distinguished_name.push(DnType::OrganizationName, g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The server configuration: the serving certificate, HTTP/1.1, and client certificates
    /// verified against the CA when offered (requests without one authenticate otherwise).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.serving_key_der.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.serving_der.clone()], key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Writes `ca.crt`, `apiserver.crt` and `apiserver.key` into `dir` (for inspection and for
    /// clients configured by hand; the CA key never leaves memory).
    pub fn write_to(&self, dir: &Path) -> Result<(), TlsError> {
        let files = [
            ("ca.crt", &self.ca_pem),
            ("apiserver.crt", &self.serving.cert_pem),
            ("apiserver.key", &self.serving.key_pem),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| TlsError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
        Ok(())
    }
}

/// The user a verified client certificate names: common name → user, organisations → groups.
pub fn identity_of(der: &CertificateDer<'_>) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(crate::auth::AUTHENTICATED.to_string());
    Some(UserInfo {
        name,
        uid: String::new(),
        groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificates_name_their_user_and_groups() {
        // A client certificate's subject is the identity the API server authenticates.
        let pki = Pki::generate(&["127.0.0.1".into()]).expect("pki");
        let pair = pki
            .issue_client("alice", Some("system:masters"))
            .expect("client cert");
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pair.cert_pem.as_bytes())
            .expect("pem");
        let user = identity_of(&der).expect("identity");
        assert_eq!(user.name, "alice");
        assert_eq!(user.groups, vec!["system:masters", "system:authenticated"]);
        assert!(pki.server_config().is_ok());
    }
}
