//! TLS identities for cluster members: the cluster CA, member certificates issued from
//! CSRs, CA pinning by SPKI hash (as `kubeadm join --discovery-token-ca-cert-hash`), and the
//! rustls configurations every QUIC endpoint uses.
//!
//! Trust model: the coordinator owns the CA. A joining node knows only the CA hash; it
//! verifies the coordinator's chain against that hash, proves its token, and gets a
//! certificate for a key that never leaves the node. Every later connection is mutual TLS.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::{ProtocolError, ALPN};

/// The TLS server name coordinators present and clients ask for.
pub const COORDINATOR_SERVER_NAME: &str = "shoal-coordinator";
/// The TLS server name nodes present on their data-plane endpoint.
pub const NODE_SERVER_NAME: &str = "shoal-node";
/// The TLS server name in gateway certificates (gateways do not serve QUIC).
pub const GATEWAY_SERVER_NAME: &str = "shoal-gateway";

const CA_VALIDITY_DAYS: i64 = 3650;
const MEMBER_VALIDITY_DAYS: i64 = 365;
const KEEP_ALIVE: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT_MS: u32 = 5_000;
const MAX_BIDI_STREAMS: u32 = 1024;

fn cert_err(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Certificate(e.to_string())
}
fn tls_err(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Tls(e.to_string())
}

/// What a certificate holder is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Coordinator,
    Node,
    /// A standalone gateway: a client of coordinators and nodes, never a server.
    Gateway,
}

impl MemberRole {
    fn prefix(self) -> &'static str {
        match self {
            MemberRole::Coordinator => "coordinator",
            MemberRole::Node => "node",
            MemberRole::Gateway => "gateway",
        }
    }
    fn server_name(self) -> &'static str {
        match self {
            MemberRole::Coordinator => COORDINATOR_SERVER_NAME,
            MemberRole::Node => NODE_SERVER_NAME,
            MemberRole::Gateway => GATEWAY_SERVER_NAME,
        }
    }
    /// The certificate common name for member `id`.
    pub fn common_name(self, id: &str) -> String {
        format!("{}:{}", self.prefix(), id)
    }
    /// Reads a common name back into role and id.
    pub fn parse_common_name(cn: &str) -> Option<(MemberRole, String)> {
        let (prefix, id) = cn.split_once(':')?;
        let role = match prefix {
            "coordinator" => MemberRole::Coordinator,
            "node" => MemberRole::Node,
            "gateway" => MemberRole::Gateway,
            _ => return None,
        };
        Some((role, id.to_string()))
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster certificate authority.
#[derive(Clone)]
pub struct ClusterCa {
    pub material: KeyedCert,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn member_params(role: MemberRole, id: &str, extra_sans: &[String]) -> Result<CertificateParams, ProtocolError> {
    let mut sans = vec![role.server_name().to_string(), "localhost".to_string()];
    sans.extend(extra_sans.iter().cloned());
    let mut params = CertificateParams::new(sans).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "shoal");
    dn.push(DnType::CommonName, role.common_name(id));
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, MEMBER_VALIDITY_DAYS);
    Ok(params)
}

impl ClusterCa {
    /// Creates a new CA with a fresh P-256 key.
    pub fn generate() -> Result<Self, ProtocolError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shoal");
        dn.push(DnType::CommonName, "shoal cluster CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(Self { material: KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() } })
    }

    pub fn from_pem(cert_pem: String, key_pem: String) -> Result<Self, ProtocolError> {
        let ca = Self { material: KeyedCert { cert_pem, key_pem } };
        ca.issuer()?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, ProtocolError> {
        let key = KeyPair::from_pem(&self.material.key_pem).map_err(cert_err)?;
        Issuer::from_ca_cert_pem(&self.material.cert_pem, key).map_err(cert_err)
    }

    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo.
    pub fn hash(&self) -> Result<String, ProtocolError> {
        spki_sha256(&pem_cert_der(&self.material.cert_pem)?)
    }

    /// Issues a certificate and a fresh key for a member (used for the coordinator itself).
    pub fn issue_with_new_key(
        &self,
        role: MemberRole,
        id: &str,
        extra_sans: &[String],
    ) -> Result<KeyedCert, ProtocolError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let cert = member_params(role, id, extra_sans)?.signed_by(&key, &self.issuer()?).map_err(cert_err)?;
        Ok(KeyedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Signs a member's CSR. Only the CSR's public key is used: the subject, names and
    /// usages are the CA's choice, never the requester's.
    pub fn sign_csr(&self, csr_der: &[u8], role: MemberRole, id: &str) -> Result<String, ProtocolError> {
        let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|e| ProtocolError::Certificate(format!("bad certificate signing request: {e}")))?;
        let cert = member_params(role, id, &[])?.signed_by(&csr.public_key, &self.issuer()?).map_err(cert_err)?;
        Ok(cert.pem())
    }
}

/// Generates a key and a CSR for it. Returns (CSR DER, key PEM).
pub fn new_csr(name: &str) -> Result<(Vec<u8>, String), ProtocolError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((csr.der().to_vec(), key.serialize_pem()))
}

/// Parses the first certificate of a PEM string.
pub fn pem_cert_der(pem: &str) -> Result<CertificateDer<'static>, ProtocolError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| cert_err(format!("not a PEM certificate: {e}")))
}

fn pem_key_der(pem: &str) -> Result<PrivateKeyDer<'static>, ProtocolError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| cert_err(format!("not a PEM private key: {e}")))
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_sha256(cert_der: &[u8]) -> Result<String, ProtocolError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(cert_err)?;
    Ok(format!("sha256:{}", hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))))
}

/// The subject common name of a certificate.
pub fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

/// Checks the form of a `sha256:<64 hex>` CA hash.
pub fn parse_ca_hash(s: &str) -> Result<String, ProtocolError> {
    let s = s.trim();
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| ProtocolError::Certificate("CA hash must start with 'sha256:'".into()))?;
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProtocolError::Certificate("CA hash must be 'sha256:' and 64 hex digits".into()));
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// A member's credentials, ready for rustls.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

impl Identity {
    pub fn from_pem(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, ProtocolError> {
        let cert = pem_cert_der(cert_pem)?;
        let ca = pem_cert_der(ca_pem)?;
        Ok(Self { chain: vec![cert, ca.clone()], key: pem_key_der(key_pem)?, ca })
    }

    /// A secret derived from this member's private key, stable across restarts.
    pub fn reset_secret(&self) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(b"shoal stateless reset v1");
        h.update(self.key.secret_der());
        h.finalize().to_vec()
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, ProtocolError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls_err)?;
        Ok(Arc::new(roots))
    }

    /// The server side of a member endpoint: presents this identity; verifies client
    /// certificates against the cluster CA when one is offered. A connection without a
    /// client certificate is only allowed to join (the caller checks).
    pub fn server_config(&self) -> Result<quinn::ServerConfig, ProtocolError> {
        let provider = provider();
        let client_verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg).map_err(tls_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(Arc::new(transport()));
        Ok(server)
    }

    /// The client side of a member endpoint: mutual TLS under the cluster CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, ProtocolError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        finish_client(cfg)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()));
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_BIDI_STREAMS));
    t
}

fn finish_client(cfg: rustls::ClientConfig) -> Result<quinn::ClientConfig, ProtocolError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).map_err(tls_err)?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport()));
    Ok(client)
}

/// What the pinned verifier saw, so a join can say exactly why it failed.
#[derive(Debug, Default, Clone)]
pub struct PinReport(Arc<Mutex<Option<String>>>);

impl PinReport {
    /// The CA hash the server presented, if the pin did not match.
    pub fn mismatch(&self) -> Option<String> {
        self.0.lock().ok().and_then(|g| g.clone())
    }
}

/// A client configuration for joining: no client certificate; the server's chain must
/// contain a CA whose SPKI hash is `ca_hash`, and the server certificate must verify
/// under that CA.
pub fn pinned_client_config(ca_hash: &str) -> Result<(quinn::ClientConfig, PinReport), ProtocolError> {
    let report = PinReport::default();
    let verifier = PinnedCaVerifier { hash: parse_ca_hash(ca_hash)?, provider: provider(), report: report.clone() };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok((finish_client(cfg)?, report))
}

#[derive(Debug)]
struct PinnedCaVerifier {
    hash: String,
    provider: Arc<CryptoProvider>,
    report: PinReport,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| spki_sha256(c).map(|h| h == self.hash).unwrap_or(false));
        let Some(ca) = ca else {
            let presented = intermediates.last().and_then(|c| spki_sha256(c).ok()).unwrap_or_else(|| "none".into());
            if let Ok(mut g) = self.report.0.lock() {
                *g = Some(presented);
            }
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_is_signed_with_the_cas_choice_of_name() {
        let ca = ClusterCa::generate().expect("ca");
        let (csr, _key) = new_csr("evil:admin").expect("csr");
        let pem = ca.sign_csr(&csr, MemberRole::Node, "n1").expect("signed");
        let der = pem_cert_der(&pem).expect("der");
        assert_eq!(common_name(&der).as_deref(), Some("node:n1"));
    }

    #[test]
    fn ca_hash_is_stable_and_well_formed() {
        let ca = ClusterCa::generate().expect("ca");
        let h = ca.hash().expect("hash");
        assert_eq!(parse_ca_hash(&h).expect("parses"), h);
        let again = ClusterCa::from_pem(ca.material.cert_pem.clone(), ca.material.key_pem.clone()).expect("reload");
        assert_eq!(again.hash().expect("hash"), h);
        assert_ne!(ClusterCa::generate().expect("ca").hash().expect("hash"), h);
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = ClusterCa::generate().expect("ca");
        assert!(ca.sign_csr(b"not a csr", MemberRole::Node, "x").is_err());
    }

    #[test]
    fn role_names_round_trip() {
        let cn = MemberRole::Node.common_name("abc");
        assert_eq!(MemberRole::parse_common_name(&cn), Some((MemberRole::Node, "abc".into())));
        assert_eq!(MemberRole::parse_common_name("root:abc"), None);
    }
}
