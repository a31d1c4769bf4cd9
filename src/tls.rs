//! The rustls client configuration of an agent: ring provider, system roots plus extra CAs,
//! OpenSSL's acceptance of a server certificate that is itself one of the caller's trust
//! anchors, client certificates, and handshake errors in words a person can act on.

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::{Error, Result};
use crate::options::Config;

/// The platform's trust anchors, loaded once per process.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        store.add_parsable_certificates(found.certs);
        store
    })
}

/// Parses the extra CA certificates of `cfg` (PEM bytes and/or a PEM file). Called when the
/// agent is created so that a bad CA is refused then, not at the first request.
pub fn extra_roots(cfg: &Config) -> Result<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    if let Some(pem) = &cfg.ca_pem {
        let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
        let certs = certs.map_err(|e| Error::invalid_option(format!("ca_pem: {e}")))?;
        if certs.is_empty() {
            return Err(Error::invalid_option(
                "ca_pem holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            ));
        }
        out.extend(certs);
    }
    if let Some(path) = &cfg.ca_file {
        let iter = CertificateDer::pem_file_iter(path)
            .map_err(|e| Error::invalid_option(format!("ca_file {path}: {e}")))?;
        let certs: std::result::Result<Vec<_>, _> = iter.collect();
        let certs = certs.map_err(|e| Error::invalid_option(format!("ca_file {path}: {e}")))?;
        if certs.is_empty() {
            return Err(Error::invalid_option(format!(
                "ca_file {path} holds no PEM certificate"
            )));
        }
        out.extend(certs);
    }
    Ok(out)
}

/// A client certificate chain and its private key (mutual TLS).
pub struct ClientIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientIdentity({} certificates)", self.chain.len())
    }
}

fn pem_source(
    what: &str,
    pem: &Option<Vec<u8>>,
    file: &Option<String>,
) -> Result<Option<(String, Vec<u8>)>> {
    match (pem, file) {
        (Some(_), Some(_)) => Err(Error::invalid_option(format!(
            "{what}_pem and {what}_file are both set: give one"
        ))),
        (Some(p), None) => Ok(Some((format!("{what}_pem"), p.clone()))),
        (None, Some(path)) => std::fs::read(path)
            .map(|b| Some((format!("{what}_file {path}"), b)))
            .map_err(|e| Error::invalid_option(format!("{what}_file {path}: {e}"))),
        (None, None) => Ok(None),
    }
}

/// Parses the client certificate and key of `cfg` (PEM bytes or files). Called when the
/// agent is created, so that a bad or missing file is refused then.
pub fn client_identity(cfg: &Config) -> Result<Option<ClientIdentity>> {
    let cert = pem_source("client_cert", &cfg.client_cert_pem, &cfg.client_cert_file)?;
    let key = pem_source("client_key", &cfg.client_key_pem, &cfg.client_key_file)?;
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(Error::invalid_option(
                "a client certificate needs its private key (client_key_pem or client_key_file)",
            ));
        }
        (None, Some(_)) => {
            return Err(Error::invalid_option(
                "a client key needs its certificate (client_cert_pem or client_cert_file)",
            ));
        }
    };
    let chain: std::result::Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&cert.1).collect();
    let chain = chain.map_err(|e| Error::invalid_option(format!("{}: {e}", cert.0)))?;
    if chain.is_empty() {
        return Err(Error::invalid_option(format!(
            "{} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
            cert.0
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key.1).map_err(|e| {
        Error::invalid_option(format!(
            "{}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            key.0
        ))
    })?;
    Ok(Some(ClientIdentity { chain, key }))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration: HTTP/1.1 by ALPN, TLS 1.2 and 1.3, verification on
/// unless `danger_accept_invalid_certs`.
pub fn client_config(
    cfg: &Config,
    extra: &[CertificateDer<'static>],
    identity: Option<&ClientIdentity>,
) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_option(format!("TLS configuration: {e}")))?;
    let builder = if cfg.danger_accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                algorithms: provider.signature_verification_algorithms,
            }))
    } else {
        let mut roots = if cfg.use_system_roots {
            system_roots().clone()
        } else {
            RootCertStore::empty()
        };
        for cert in extra {
            roots
                .add(cert.clone())
                .map_err(|e| Error::invalid_option(format!("CA certificate refused: {e}")))?;
        }
        if roots.is_empty() {
            // Nothing to trust: every server certificate fails as an unknown issuer.
            builder.with_root_certificates(roots)
        } else {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| Error::invalid_option(format!("TLS configuration: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnchorVerifier {
                    webpki,
                    anchors: extra.to_vec(),
                }))
        }
    };
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| {
                Error::invalid_option(format!(
                    "the client certificate and key do not go together: {}",
                    describe(&e)
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = cfg.http_version.alpn();
    Ok(Arc::new(config))
}

/// webpki's verification, plus OpenSSL's rule for a server certificate that is
/// byte-for-byte one of the caller's own trust anchors: it is trusted even when it is
/// marked as a CA (what `openssl req -x509` makes by default), still only for the names it
/// holds. webpki checks the validity period before the CA flag, so a certificate refused
/// only for being a CA is also within its dates.
#[derive(Debug)]
struct AnchorVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    anchors: Vec<CertificateDer<'static>>,
}

fn is_ca_used_as_end_entity(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(CertificateError::Other(o))
        if format!("{o:?}").contains("CaUsedAsEndEntity"))
}

impl ServerCertVerifier for AnchorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(e)
                if is_ca_used_as_end_entity(&e)
                    && self
                        .anchors
                        .iter()
                        .any(|a| a.as_ref() == end_entity.as_ref()) =>
            {
                let parsed = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)?;
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC` (Howard Hinnant's civil_from_days).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// rustls gives the certificate's names in their debug form (`DnsName("a.test")`,
/// `IpAddress(127.0.0.1)`): the name itself.
fn plain_name(n: &str) -> &str {
    let inner = n
        .strip_prefix("DnsName(")
        .or_else(|| n.strip_prefix("IpAddress("))
        .and_then(|r| r.strip_suffix(')'));
    match inner {
        Some(i) => i.trim_matches('"'),
        None => n,
    }
}

fn name_of(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        _ => format!("{n:?}"),
    }
}

/// A TLS failure in words a person can act on: the cause, the dates or names involved, and
/// what to do, never Rust's debug form of the error.
pub fn describe(e: &rustls::Error) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "the server's certificate is not signed by an authority this agent trusts (unknown issuer); give the agent the CA that signed it (ca_file or ca_pem; Node: ca)".into(),
            C::ExpiredContext { not_after, .. } => format!(
                "the server's certificate expired on {}",
                utc(not_after.as_secs())
            ),
            C::Expired => "the server's certificate has expired".into(),
            C::NotValidYetContext { not_before, .. } => format!(
                "the server's certificate is not valid before {}",
                utc(not_before.as_secs())
            ),
            C::NotValidYet => "the server's certificate is not valid yet".into(),
            C::NotValidForNameContext { expected, presented } => format!(
                "the server's certificate is not valid for {}; it is valid for {}",
                name_of(expected),
                if presented.is_empty() {
                    "no name at all".to_string()
                } else {
                    presented
                        .iter()
                        .map(|n| plain_name(n))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            C::NotValidForName => "the server's certificate is not valid for this host name".into(),
            C::Revoked => "the server's certificate has been revoked".into(),
            C::BadSignature => "the server's certificate has a bad signature".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the server's certificate is not meant for TLS servers (extended key usage)".into()
            }
            C::Other(_) if is_ca_used_as_end_entity(e) => "the server presented a CA certificate as its own (CA:TRUE, as `openssl req -x509` makes by default); to trust exactly this certificate, give it to the agent as its CA (ca_file or ca_pem; Node: ca), or make a leaf certificate with basicConstraints=CA:FALSE".into(),
            other => format!("the server's certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(a) => match a {
            rustls::AlertDescription::CertificateRequired => "the server requires a client certificate (give client_cert and client_key)".into(),
            rustls::AlertDescription::BadCertificate | rustls::AlertDescription::UnknownCA => format!(
                "the server refused the client certificate (alert: {a:?})"
            ),
            other => format!("the server ended the handshake with the alert {other:?}"),
        },
        rustls::Error::NoApplicationProtocol => "the server offers none of the requested protocols (ALPN)".into(),
        rustls::Error::PeerIncompatible(p) => format!("the server's TLS is incompatible: {p:?}"),
        other => other.to_string(),
    }
}

/// Accepts any certificate but still checks handshake signatures. Only reachable through
/// the option named `danger_accept_invalid_certs`.
#[derive(Debug)]
struct AcceptAnyCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Options;

    #[test]
    fn bad_ca_pem_is_refused_at_creation() {
        let cfg = Options {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Default::default()
        }
        .validate_with_env(|_| None)
        .unwrap();
        let e = extra_roots(&cfg).unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::InvalidOption);
    }

    #[test]
    fn missing_ca_file_is_refused() {
        let cfg = Options {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        }
        .validate_with_env(|_| None)
        .unwrap();
        assert!(
            extra_roots(&cfg)
                .unwrap_err()
                .message()
                .contains("/nonexistent/ca.pem")
        );
    }

    #[test]
    fn dates_are_written_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_798_761_599), "2026-12-31 23:59:59 UTC");
    }

    #[test]
    fn certificate_errors_read_as_sentences() {
        let e = rustls::Error::InvalidCertificate(CertificateError::ExpiredContext {
            time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(2_000_000_000)),
            not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(951_782_400)),
        });
        assert_eq!(
            describe(&e),
            "the server's certificate expired on 2000-02-29 00:00:00 UTC"
        );
        let e = rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("a.test").unwrap().to_owned(),
            presented: vec!["DnsName(\"b.test\")".into(), "IpAddress(127.0.0.1)".into()],
        });
        assert_eq!(
            describe(&e),
            "the server's certificate is not valid for a.test; it is valid for b.test, 127.0.0.1"
        );
        let e = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(describe(&e).contains("ca_file"));
        assert_eq!(plain_name("plain.test"), "plain.test");
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cfg = Options {
            client_cert_pem: Some(b"x".to_vec()),
            ..Default::default()
        }
        .validate_with_env(|_| None)
        .unwrap();
        assert!(
            client_identity(&cfg)
                .unwrap_err()
                .message()
                .contains("private key")
        );
        let cfg = Options {
            client_key_file: Some("/nonexistent/key.pem".into()),
            client_cert_file: Some("/nonexistent/cert.pem".into()),
            ..Default::default()
        }
        .validate_with_env(|_| None)
        .unwrap();
        assert!(
            client_identity(&cfg)
                .unwrap_err()
                .message()
                .contains("/nonexistent/")
        );
    }

    #[test]
    fn config_offers_http11_only() {
        let cfg = Options::default().validate_with_env(|_| None).unwrap();
        let c = client_config(&cfg, &[], None).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
