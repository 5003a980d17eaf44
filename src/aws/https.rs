//! The AWS SDK's HTTPS client, set up on its first request instead of when a configuration is
//! loaded.
//!
//! Loading the SDK configuration builds the credential chain's web-identity provider, whose STS
//! client validates its HTTP client by building the default HTTPS connector, which reads and
//! parses the whole system certificate store: most of our start-up work and about 3 MB of
//! memory, although most sessions never make an AWS call (a profile's keys sign the websocket
//! without any request). The client below builds the SDK's connector (rustls on ring, the
//! provider the websocket uses, so the binary links one crypto library; the proxy from the
//! environment) on the first request a connector carries, and skips the up-front validation
//! (the real connector cannot fail to build).

use std::sync::OnceLock;

use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::{tls, Builder, ConnectorBuilder};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// The SDK's HTTPS client (rustls on ring, proxy settings from the environment), behind
/// connectors that build their TLS setup on first use.
pub fn deferred_https_client() -> SharedHttpClient {
    let inner = Builder::new().build_with_connector_fn(|settings, components| {
        let mut b = ConnectorBuilder::default().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ));
        b.set_connector_settings(settings.cloned());
        if let Some(c) = components {
            b.set_sleep_impl(c.sleep_impl());
        }
        b.set_proxy_config(Some(ProxyConfig::from_env()));
        b.build()
    });
    SharedHttpClient::new(Deferred { inner })
}

#[derive(Debug)]
struct Deferred {
    inner: SharedHttpClient,
}

impl HttpClient for Deferred {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(DeferredConnector {
            inner: self.inner.clone(),
            settings: settings.clone(),
            components: components.clone(),
            built: OnceLock::new(),
        })
    }
}

#[derive(Debug)]
struct DeferredConnector {
    inner: SharedHttpClient,
    settings: HttpConnectorSettings,
    components: RuntimeComponents,
    built: OnceLock<SharedHttpConnector>,
}

impl HttpConnector for DeferredConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        self.built
            .get_or_init(|| self.inner.http_connector(&self.settings, &self.components))
            .call(request)
    }
}
