//! Generated test PKI: one CA and the leaf identities served by the TLS listeners.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, date_time_ymd,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Subject alternative names of every "good" leaf.
const GOOD_SANS: [&str; 3] = ["127.0.0.1", "::1", "localhost"];

/// A certificate chain and its private key.
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Everything the TLS listeners need.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) good: Identity,
    pub(crate) wrong_host: Identity,
    pub(crate) expired: Identity,
    pub(crate) self_signed: Identity,
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "keepalive-testserver");
    dn.push(DnType::CommonName, cn);
    dn
}

fn leaf_params(sans: &[&str], expired: bool) -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    p.distinguished_name = name(sans[0]);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    if expired {
        p.not_before = date_time_ymd(2019, 1, 1);
        p.not_after = date_time_ymd(2020, 1, 1);
    } else {
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(2099, 12, 31);
    }
    Ok(p)
}

fn identity(cert: &rcgen::Certificate, key: &KeyPair) -> Identity {
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

/// Generates a fresh CA and the four leaf identities.
pub(crate) fn generate() -> Result<Pki, rcgen::Error> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name = name("keepalive-testserver CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = date_time_ymd(2015, 1, 1);
    ca.not_after = date_time_ymd(2099, 12, 31);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let signed = |sans: &[&str], expired: bool| -> Result<Identity, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(sans, expired)?.signed_by(&key, &issuer)?;
        Ok(identity(&cert, &key))
    };
    let good = signed(&GOOD_SANS, false)?;
    let wrong_host = signed(&["wrong.host.invalid"], false)?;
    let expired = signed(&GOOD_SANS, true)?;

    let ss_key = KeyPair::generate()?;
    let mut ss = leaf_params(&GOOD_SANS, false)?;
    ss.use_authority_key_identifier_extension = false;
    let ss_cert = ss.self_signed(&ss_key)?;

    Ok(Pki {
        ca_pem: ca_cert.pem(),
        good,
        wrong_host,
        expired,
        self_signed: identity(&ss_cert, &ss_key),
    })
}

/// Builds a rustls server config (ring provider) for `id`; TLS 1.2 only when `tls12_only`;
/// `alpn` is the one protocol offered.
pub(crate) fn server_config(id: &Identity, tls12_only: bool, alpn: &[u8]) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider);
    let builder = if tls12_only {
        builder.with_protocol_versions(&[&rustls::version::TLS12])
    } else {
        builder.with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }
    .expect("rustls protocol versions");
    let mut config = builder
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .expect("rustls server certificate");
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}
