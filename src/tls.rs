//! The rustls client configuration of an agent: ring provider, system roots plus extra CAs.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

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

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration: HTTP/1.1 by ALPN, TLS 1.2 and 1.3, verification on
/// unless `danger_accept_invalid_certs`.
pub fn client_config(cfg: &Config, extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid_option(format!("TLS configuration: {e}")))?;
    let mut config = if cfg.danger_accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
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
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    fn config_offers_http11_only() {
        let cfg = Options::default().validate_with_env(|_| None).unwrap();
        let c = client_config(&cfg, &[]).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
