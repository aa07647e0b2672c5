//! The administration commands of the binary (`links`, `sessions`): what they print and how they
//! exit. The work itself is the library's (`App::unlink`, `App::end_sessions`, the link store).

pub mod links;
pub mod sessions;

/// The configured provider's issuer, as links and sessions record it.
pub fn default_issuer(app: &unikgate::App) -> String {
    app.oidc
        .as_ref()
        .map(|o| o.identity_issuer.clone())
        .or_else(|| {
            app.cfg
                .provider
                .issuer
                .as_ref()
                .map(|u| u.as_str().trim_end_matches('/').to_string())
        })
        .unwrap_or_default()
}
