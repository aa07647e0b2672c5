//! unikgate in front of a real Matomo 5.1.2 (tests/support/real.rs): Apache + mod_php and
//! nginx + PHP-FPM over one installed tree and MariaDB, both minters. Every claim of
//! `matomo-contract.md` the stand-in implements is proved here (tests/CONTRACT.md maps them).
//!
//! A harness of its own (`harness = false`): Matomo is installed once, the tests run one after
//! the other (they share Matomo's state), and everything started is stopped at the end, also when
//! a test fails.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use support::provider::FakeProvider;
use support::real::{RealMatomo, ADMIN, ALICE, BOB, SHARED_SECRET};
use support::{link_password, location, sign_in, Browser, TestApp};

/// The test config with a real Matomo behind it: its upstream timeout is generous, because a real
/// Matomo rebuilding its caches (after a plugin is activated or a config key set) while the other
/// tests run beside it on two cores can take more than the stand-in's five seconds for one
/// answer (CI saw it on a logout). No test here measures time.
fn config(upstream: &str, provider: &str, extra: &str) -> String {
    let toml = support::config(upstream, provider, extra);
    assert!(
        toml.contains("\ntimeout = \"5s\"\n"),
        "support::config changed its timeout"
    );
    toml.replace("\ntimeout = \"5s\"\n", "\ntimeout = \"60s\"\n")
}

type Fut<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
type TestFn = for<'a> fn(&'a RealMatomo) -> Fut<'a>;
/// A request to try: method, path and query, form fields.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Web {
    Apache,
    Fpm,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Minter {
    Signed,
    AutoLogin,
}

fn upstream(m: &RealMatomo, web: Web) -> &str {
    match web {
        Web::Apache => &m.apache,
        Web::Fpm => &m.fpm,
    }
}

fn matomo_section(minter: Minter, extra: &str) -> String {
    match minter {
        Minter::Signed => {
            format!("[matomo]\nminter = \"signed\"\nshared_secret = \"{SHARED_SECRET}\"\n{extra}")
        }
        Minter::AutoLogin => format!("[matomo]\nminter = \"autologin\"\n{extra}"),
    }
}

/// unikgate in front of the real Matomo, with the fake provider.
async fn gate(m: &RealMatomo, web: Web, minter: Minter, p: &FakeProvider, extra: &str) -> TestApp {
    gate_with(m, web, &p.config(), &matomo_section(minter, extra)).await
}

/// unikgate on one of the ports Matomo trusts, with `provider` and `extra` sections.
async fn gate_with(m: &RealMatomo, web: Web, provider: &str, extra: &str) -> TestApp {
    gate_toml(m, &config(upstream(m, web), provider, extra)).await
}

/// unikgate from a whole test config (`support::config`'s placeholders) on a port Matomo trusts.
async fn gate_toml(m: &RealMatomo, toml: &str) -> TestApp {
    let l = m.gate_listener();
    l.set_nonblocking(true).expect("nonblocking");
    let addr = l.local_addr().expect("addr");
    let l = tokio::net::TcpListener::from_std(l).expect("tokio listener");
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    TestApp::start_on(toml, dir, l, addr).await
}

/// unikgate (signed, mod_php) behind a TLS terminator played by the test client: its
/// X-Forwarded-For is believed.
async fn gate_behind_a_proxy(m: &RealMatomo, p: &FakeProvider) -> TestApp {
    let toml = config(&m.apache, &p.config(), &matomo_section(Minter::Signed, "")).replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    );
    gate_toml(m, &toml).await
}

/// The Matomo user a page was rendered for (`piwik.userLogin`), after following redirects.
async fn page_user(b: &Browser, url: &str) -> (u16, Option<String>, String) {
    let res = b.get(url).await;
    let (res, at) = b.follow(res, 6).await;
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    (
        status,
        unikgate::upstream::matomo::parse_user_login(&body),
        format!("{at}\n{}", support::real::clip(&body)),
    )
}

/// Signs in as `sub` and links `login` by password; the browser then holds both sessions.
async fn sign_in_and_link(
    app: &TestApp,
    p: &FakeProvider,
    sub: &str,
    who: (&str, &str),
) -> Result<Browser, String> {
    let b = Browser::new();
    let res = sign_in(&b, app, p, sub, "/").await;
    let loc = location(&res);
    ensure!(
        loc.contains("/_unikgate/link"),
        "first sign-in should ask to link, went to {loc:?} ({})",
        res.status()
    );
    let res = link_password(&b, app, "/", who.0, who.1).await;
    let status = res.status();
    let loc = location(&res);
    let body = res.text().await.unwrap_or_default();
    ensure!(
        status == 302,
        "linking {} answered {status} {loc}:\n{}",
        who.0,
        support::real::clip(&body)
    );
    Ok(b)
}

/// The journey: sign in, link by password, land in Matomo as alice; a second browser signing in
/// again goes straight to Matomo.
async fn journey(m: &RealMatomo, web: Web, minter: Minter, sub: &str) -> Result<(), String> {
    if minter == Minter::AutoLogin {
        m.need_autologin()?;
    }
    let p = FakeProvider::start().await;
    let app = gate(m, web, minter, &p, "").await;
    let b = sign_in_and_link(&app, &p, sub, ALICE).await?;
    let (status, user, body) = page_user(
        &b,
        &app.url("/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday"),
    )
    .await;
    ensure!(
        status == 200 && user.as_deref() == Some("alice"),
        "dashboard through unikgate: {status} {user:?}\n{body}\n{}",
        m.php_errors()
    );
    let b2 = Browser::new();
    let res = sign_in(
        &b2,
        &app,
        &p,
        sub,
        "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday",
    )
    .await;
    let loc = location(&res);
    ensure!(
        !loc.contains("/_unikgate/link") && loc.contains("module=CoreHome"),
        "second sign-in went to {loc:?}"
    );
    let (status, user, body) = page_user(&b2, &app.url(&loc_path(&loc))).await;
    ensure!(
        status == 200 && user.as_deref() == Some("alice"),
        "second browser: {status} {user:?}\n{body}"
    );
    Ok(())
}

fn loc_path(loc: &str) -> String {
    match loc.find("://") {
        Some(i) => {
            let rest = &loc[i + 3..];
            rest.find('/')
                .map(|j| rest[j..].to_string())
                .unwrap_or("/".into())
        }
        None => loc.to_string(),
    }
}

/// Matomo under a path: the public URL `http://127.0.0.1:PORT/analytics/`, Matomo served at
/// `/analytics/` by its own server (Apache's `Alias`), unikgate's endpoints under it. The journey
/// (sign in, link by password, the dashboard as alice, the return path kept), the session cookie
/// scoped to the path, a return path outside it not followed, and nothing served outside it.
fn journey_under_a_path(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let toml = config(
            &format!("{}/analytics/", m.apache),
            &p.config(),
            &matomo_section(Minter::Signed, ""),
        )
        .replace(
            "public_url = \"{public}\"",
            "public_url = \"{public}/analytics/\"",
        );
        let app = gate_toml(m, &toml).await;
        let base = app.url("/analytics");
        let dashboard =
            "/analytics/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";
        let b = Browser::new();
        // Outside the path: nothing (Matomo's root is not unikgate's to serve).
        let res = b.get(&app.url("/index.php")).await;
        ensure!(
            res.status() == 404,
            "/index.php outside the path: {}",
            res.status()
        );
        // Not signed in: Matomo's page under the path goes to the sign-in page under the path.
        let res = b.get(&app.url(dashboard)).await;
        let loc = location(&res);
        ensure!(
            res.status() == 302 && loc.contains("/analytics/_unikgate/sign_in"),
            "not signed in: {} {loc}",
            res.status()
        );
        let res = support::sign_in_at(&b, &base, &p, "uns-journey-path", dashboard).await;
        let loc = location(&res);
        let cookies: Vec<String> = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        ensure!(
            loc.contains("/analytics/_unikgate/link"),
            "first sign-in should ask to link, went to {loc:?} ({})",
            res.status()
        );
        ensure!(
            cookies
                .iter()
                .any(|c| c.contains("Path=/analytics;") || c.ends_with("Path=/analytics")),
            "the session cookie is scoped to the path: {cookies:?}"
        );
        let res = support::link_password_at(&b, &base, dashboard, ALICE.0, ALICE.1).await;
        let loc = location(&res);
        ensure!(
            res.status() == 302 && loc.ends_with(dashboard),
            "linking answered {} {loc}",
            res.status()
        );
        let (status, user, body) = page_user(&b, &app.url(dashboard)).await;
        ensure!(
            status == 200 && user.as_deref() == Some("alice"),
            "the dashboard under the path: {status} {user:?}\n{body}\n{}",
            m.php_errors()
        );
        // A second browser, a return path outside the path: it lands at the path's home.
        let b2 = Browser::new();
        let res = support::sign_in_at(&b2, &base, &p, "uns-journey-path", "/elsewhere").await;
        let loc = location(&res);
        ensure!(
            res.status() == 302 && loc_path(&loc) == "/analytics/",
            "a return path outside /analytics/: {} {loc}",
            res.status()
        );
        let (status, user, body) = page_user(&b2, &app.url(&loc_path(&loc))).await;
        ensure!(
            status == 200 && user.as_deref() == Some("alice"),
            "second browser at the path's home: {status} {user:?}\n{body}"
        );
        // Matomo's sign-out under the path is unikgate's.
        let res = b2
            .get(&app.url("/analytics/index.php?module=Login&action=logout"))
            .await;
        ensure!(
            res.status() == 302 || res.status() == 303 || res.status() == 200,
            "sign-out under the path: {}",
            res.status()
        );
        let (_, user, _) = page_user(&b2, &app.url(dashboard)).await;
        ensure!(
            user.is_none(),
            "signed out, Matomo is not served as anybody: {user:?}"
        );
        Ok(())
    })
}

fn signed_apache_journey(m: &RealMatomo) -> Fut<'_> {
    Box::pin(journey(
        m,
        Web::Apache,
        Minter::Signed,
        "uns-journey-signed-apache",
    ))
}

fn signed_fpm_journey(m: &RealMatomo) -> Fut<'_> {
    Box::pin(journey(
        m,
        Web::Fpm,
        Minter::Signed,
        "uns-journey-signed-fpm",
    ))
}

fn autologin_apache_journey(m: &RealMatomo) -> Fut<'_> {
    Box::pin(journey(
        m,
        Web::Apache,
        Minter::AutoLogin,
        "uns-journey-autologin",
    ))
}

fn setup_script_configured_the_tree(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let ini = m.config_ini();
        ensure!(
            ini.matches("trusted_hosts[] = \"127.0.0.1\"").count() == 1,
            "trusted_hosts:\n{ini}"
        );
        ensure!(
            ini.matches("proxy_client_headers[] = \"HTTP_X_FORWARDED_FOR\"")
                .count()
                == 1,
            "proxy_client_headers:\n{ini}"
        );
        ensure!(
            !ini.contains("proxy_host_headers"),
            "proxy_host_headers must not be set:\n{ini}"
        );
        ensure!(
            ini.matches("proxy_scheme_headers[] = \"HTTP_X_FORWARDED_PROTO\"")
                .count()
                == 1,
            "proxy_scheme_headers:\n{ini}"
        );
        // Without PUBLIC_URL (the gates of this suite listen on many ports), no public_url: the
        // plugin checks against the URL Matomo computes.
        ensure!(!ini.contains("public_url"), "public_url:\n{ini}");
        ensure!(
            ini.contains("[UnikGate]") && ini.contains(SHARED_SECRET),
            "UnikGate section:\n{ini}"
        );
        ensure!(
            ini.contains("Plugins[] = \"UnikGate\"")
                && (!m.has_autologin || ini.contains("Plugins[] = \"AutoLogin\"")),
            "plugins activated:\n{ini}"
        );
        ensure!(
            !m.setup_output.contains(SHARED_SECRET),
            "matomo-setup.sh printed the secret:\n{}",
            m.setup_output
        );
        Ok(())
    })
}

/// The browser's `MATOMO_SESSID` for unikgate's origin.
fn matomo_cookie(b: &Browser, app: &TestApp) -> Option<String> {
    b.cookie(&app.url("/"), "MATOMO_SESSID")
}

/// Who Matomo says owns a session, asked directly (the UnikGate plugin's whoami).
async fn whoami_direct(base: &str, cookie: &str) -> Result<Option<String>, String> {
    let res = reqwest::Client::new()
        .get(format!("{base}/index.php?module=UnikGate&action=whoami"))
        .header("cookie", format!("MATOMO_SESSID={cookie}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
    Ok(v.get("login").and_then(|l| l.as_str()).map(str::to_string))
}

const DASHBOARD: &str =
    "/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday";

/// Matomo's own login form, filled in through `base` (a Matomo URL or a unikgate in front).
async fn matomo_password_login(b: &Browser, base: &str, who: (&str, &str)) -> Result<(), String> {
    let html = b
        .get(&format!("{base}/index.php?module=Login"))
        .await
        .text()
        .await
        .unwrap_or_default();
    let i = html
        .find("id=\"login_form\"")
        .ok_or_else(|| format!("no login form:\n{}", support::real::clip(&html)))?;
    let (_, mut f) = support::real::form_fields(&html[i.saturating_sub(200)..]);
    f.retain(|(k, _)| k.starts_with("form_"));
    for (k, v) in f.iter_mut() {
        match k.as_str() {
            "form_login" => *v = who.0.to_string(),
            "form_password" => *v = who.1.to_string(),
            _ => {}
        }
    }
    let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let res = b
        .post(&format!("{base}/index.php?module=Login"), &pairs)
        .await;
    ensure!(
        res.status().is_redirection(),
        "Matomo's login form answered {}",
        res.status()
    );
    Ok(())
}

/// Dashboard, widgets and the API calls Matomo's UI makes (POSTs with `token_auth` and
/// `force_api_session=1`), all through unikgate: none may fail.
async fn dashboard_calls(m: &RealMatomo, web: Web) -> Result<(), String> {
    let p = FakeProvider::start().await;
    let app = gate(m, web, Minter::Signed, &p, "").await;
    let b = sign_in_and_link(&app, &p, &format!("uns-ajax-{web:?}"), ALICE).await?;
    let res = b.get(&app.url(DASHBOARD)).await;
    ensure!(res.status() == 200, "dashboard: {}", res.status());
    let html = res.text().await.unwrap_or_default();
    let token = html
        .split("piwik.token_auth = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("the dashboard names no piwik.token_auth")?
        .to_string();
    let q = "idSite=1&period=day&date=yesterday";
    for get in [
        format!("/index.php?module=Dashboard&action=embeddedIndex&{q}"),
        format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=VisitsSummary&actionToWidgetize=getEvolutionGraph&{q}&disableLink=1&widget=1"),
        format!("/index.php?module=VisitsSummary&action=getEvolutionGraph&{q}&forceView=1&viewDataTable=graphEvolution&widget=1"),
        format!("/index.php?module=Live&action=widget&{q}&widget=1"),
        format!("/index.php?module=UsersManager&action=userSettings&{q}"),
    ] {
        let res = b.get(&app.url(&get)).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(status == 200 && unikgate::upstream::matomo::parse_user_login(&body).as_deref() != Some("anonymous"), "GET {get}: {status}\n{}\n{}", support::real::clip(&body), m.php_errors());
    }
    for method in [
        "API.getWidgetMetadata&deep=1",
        "API.getReportPagesMetadata",
        "SitesManager.getSiteFromId",
        "VisitsSummary.get",
        "UsersManager.getUserPreference&userLogin=alice&preferenceName=defaultReport",
        "Dashboard.getDashboards",
        "Live.getLastVisitsDetails&filter_limit=5",
    ] {
        let url = app.url(&format!(
            "/index.php?module=API&method={method}&{q}&format=json"
        ));
        let res = b
            .post(&url, &[("token_auth", &token), ("force_api_session", "1")])
            .await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            status == 200 && !body.contains("\"result\":\"error\""),
            "POST {method}: {status}\n{}",
            support::real::clip(&body)
        );
    }
    Ok(())
}

fn dashboard_and_ui_api_calls_pass_apache(m: &RealMatomo) -> Fut<'_> {
    Box::pin(dashboard_calls(m, Web::Apache))
}

fn dashboard_and_ui_api_calls_pass_fpm(m: &RealMatomo) -> Fut<'_> {
    Box::pin(dashboard_calls(m, Web::Fpm))
}

fn remints_when_matomo_deleted_the_session(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = sign_in_and_link(&app, &p, "uns-remint-deleted", ALICE).await?;
        let (_, user, _) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(user.as_deref() == Some("alice"), "before: {user:?}");
        let before = matomo_cookie(&b, &app).ok_or("no Matomo cookie")?;
        m.sql("DELETE FROM matomo.matomo_session")?;
        ensure!(
            whoami_direct(&m.apache, &before).await?.is_none(),
            "the deleted session still works"
        );
        let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            status == 200 && user.as_deref() == Some("alice"),
            "after the delete: {status} {user:?}\n{body}"
        );
        let after = matomo_cookie(&b, &app).ok_or("no Matomo cookie")?;
        ensure!(after != before, "the Matomo session was not minted again");
        Ok(())
    })
}

fn remints_when_matomo_idled_the_session_out(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        // Matomo idles sessions out after 4 s (unikgate still believes the default hour). Matomo
        // stamps the expiry on a session when it is used, so the setting comes first.
        m.console("config:set 'General.login_session_not_remembered_idle_timeout=4'")?;
        let result = async {
            let p = FakeProvider::start().await;
            let app = gate(m, Web::Fpm, Minter::Signed, &p, "").await;
            let b = sign_in_and_link(&app, &p, "uns-remint-idle", ALICE).await?;
            let (_, user, _) = page_user(&b, &app.url(DASHBOARD)).await;
            ensure!(user.as_deref() == Some("alice"), "before: {user:?}");
            let before = matomo_cookie(&b, &app).ok_or("no Matomo cookie")?;
            tokio::time::sleep(Duration::from_secs(6)).await;
            ensure!(
                whoami_direct(&m.fpm, &before).await?.is_none(),
                "Matomo did not idle the session out"
            );
            let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
            ensure!(
                status == 200 && user.as_deref() == Some("alice"),
                "after idling out: {status} {user:?}\n{body}"
            );
            ensure!(
                matomo_cookie(&b, &app).as_deref() != Some(before.as_str()),
                "not minted again"
            );
            Ok(())
        }
        .await;
        m.console("config:delete General.login_session_not_remembered_idle_timeout")?;
        result
    })
}

fn another_users_matomo_cookie_never_works_under_alice(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        // bob signs in to Matomo directly and gets his own session.
        let bob = Browser::new();
        matomo_password_login(&bob, &m.apache, BOB).await?;
        let bobs = bob
            .cookie(&format!("{}/", m.apache), "MATOMO_SESSID")
            .ok_or("bob has no Matomo cookie")?;
        ensure!(
            whoami_direct(&m.apache, &bobs).await?.as_deref() == Some("bob"),
            "bob's cookie is not bob's"
        );
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = sign_in_and_link(&app, &p, "uns-cookie-swap", ALICE).await?;
        b.set_cookie(&app.url("/"), &format!("MATOMO_SESSID={bobs}; Path=/"));
        let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            status == 200 && user.as_deref() == Some("alice"),
            "with bob's cookie: {status} {user:?}\n{body}"
        );
        ensure!(
            matomo_cookie(&b, &app).as_deref() != Some(bobs.as_str()),
            "bob's cookie stayed"
        );
        // PHP reads MATOMO.SESSID and MATOMO SESSID as MATOMO_SESSID: also never forwarded.
        let res = b
            .client
            .get(app.url(DASHBOARD))
            .header("cookie", format!("MATOMO.SESSID={bobs}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body = res.text().await.unwrap_or_default();
        ensure!(
            unikgate::upstream::matomo::parse_user_login(&body).as_deref() != Some("bob"),
            "MATOMO.SESSID reached Matomo as bob"
        );
        Ok(())
    })
}

fn tracking_hit_is_a_visit_with_the_client_ip_and_token_api_passes(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate_behind_a_proxy(m, &p).await;
        let visitor = "7e1a6b2c3d4e5f60";
        let res = reqwest::Client::new()
            .get(app.url(&format!("/matomo.php?idsite=1&rec=1&apiv=1&_id={visitor}&url=https%3A%2F%2Fwww.example.com%2Fpricing&action_name=Pricing&rand=42&send_image=0")))
            .header("x-forwarded-for", "198.51.100.23")
            .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        ensure!(res.status().is_success(), "tracking hit: {}", res.status());
        // Read it back through unikgate with a token (API traffic passes untouched).
        let url = app.url(&format!(
            "/index.php?module=API&method=Live.getLastVisitsDetails&idSite=1&period=day&date=today&format=json&filter_limit=20&token_auth={}",
            m.admin_token
        ));
        let v: serde_json::Value = reqwest::get(&url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let visits = v
            .as_array()
            .ok_or_else(|| format!("not a list of visits: {v}"))?;
        let visit = visits
            .iter()
            .find(|x| x.get("visitorId").and_then(|i| i.as_str()) == Some(visitor))
            .ok_or_else(|| format!("the hit is not a visit: {v}"))?;
        let ip = visit.get("visitIp").and_then(|i| i.as_str()).unwrap_or("");
        ensure!(
            ip.starts_with("198.51."),
            "visit IP {ip:?}, want the client's 198.51.100.23 (Matomo may mask its end)"
        );
        // The same API as POST, and a wrong token gets Matomo's own answer, not unikgate's page.
        let res = reqwest::Client::new()
            .post(app.url("/index.php?module=API&method=UsersManager.getUsersLogin&format=json"))
            .form(&[("token_auth", m.admin_token.as_str())])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let logins = res.text().await.unwrap_or_default();
        ensure!(
            logins.contains("\"alice\"") && logins.contains("\"bob\""),
            "getUsersLogin: {logins}"
        );
        let res = reqwest::get(app.url("/index.php?module=API&method=UsersManager.getUsersLogin&format=json&token_auth=0123456789abcdef0123456789abcdef")).await.map_err(|e| e.to_string())?;
        let body = res.text().await.unwrap_or_default();
        ensure!(
            body.contains("\"result\":\"error\""),
            "a wrong token: {body}"
        );
        // A Bearer client (Matomo 5.4 and later read the header; 5.1.2 does not) gets Matomo's
        // own answer through unikgate, not the sign-in: here 5.1.2's "no access".
        let res = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?
            .get(app.url("/index.php?module=API&method=UsersManager.getUsersLogin&format=json"))
            .bearer_auth(&m.admin_token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            !status.is_redirection() && body.contains("\"result\":\"error\""),
            "a Bearer client: {status} {body}"
        );
        Ok(())
    })
}

fn matomo_logout_link_ends_both_sessions(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = sign_in_and_link(&app, &p, "uns-logout", ALICE).await?;
        let (_, user, _) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(user.as_deref() == Some("alice"), "before: {user:?}");
        let cookie = matomo_cookie(&b, &app).ok_or("no Matomo cookie")?;
        // The logout link of Matomo's menu.
        let res = b
            .get(&app.url("/index.php?module=Login&action=logout"))
            .await;
        let (res, at) = b.follow(res, 6).await;
        ensure!(
            res.status() == 200 && at.contains("/_unikgate/"),
            "logout ended on {at} ({})",
            res.status()
        );
        ensure!(
            whoami_direct(&m.apache, &cookie).await?.is_none(),
            "the Matomo session survived the logout"
        );
        let res = b.get(&app.url(DASHBOARD)).await;
        ensure!(
            location(&res).contains("/_unikgate/sign_in"),
            "unikgate's session survived: {}",
            location(&res)
        );
        Ok(())
    })
}

fn unlink_ends_the_matomo_session(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = sign_in_and_link(&app, &p, "uns-unlink", ALICE).await?;
        let (_, user, _) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(user.as_deref() == Some("alice"), "before: {user:?}");
        let cookie = matomo_cookie(&b, &app).ok_or("no Matomo cookie")?;
        let html = b
            .get(&app.url("/_unikgate/account"))
            .await
            .text()
            .await
            .unwrap_or_default();
        let res = b
            .post(
                &app.url("/_unikgate/unlink"),
                &[("csrf", &support::csrf_of(&html))],
            )
            .await;
        ensure!(res.status() == 302, "unlink: {}", res.status());
        ensure!(
            whoami_direct(&m.apache, &cookie).await?.is_none(),
            "the Matomo session survived the unlink"
        );
        // Still signed in with the @unikname: the next Matomo page asks to link again.
        let res = b.get(&app.url(DASHBOARD)).await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "after unlink the next page should ask to link again: {}",
            location(&res)
        );
        Ok(())
    })
}

fn superusers_link_and_deny_superusers_refuses_them(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = sign_in_and_link(&app, &p, "uns-admin", ADMIN).await?;
        let (_, user, _) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            user.as_deref() == Some("admin"),
            "the superuser lands as {user:?}"
        );
        let app = gate(
            m,
            Web::Apache,
            Minter::Signed,
            &p,
            "deny_superusers = true\n",
        )
        .await;
        let b = Browser::new();
        let res = sign_in(&b, &app, &p, "uns-admin-denied", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        let res = link_password(&b, &app, "/", ADMIN.0, ADMIN.1).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            status == 403 && body.contains("superuser"),
            "deny_superusers: {status}\n{}",
            support::real::clip(&body)
        );
        Ok(())
    })
}

/// The plugin's own refusals, straight to Matomo: replay, forged, expired, unknown login, wrong
/// audience; a good assertion opens a session of that login.
/// Posts an assertion to the plugin as unikgate does: (status, MATOMO_SESSID set, body + the
/// session cookie's attributes, lower-cased).
async fn post_assertion(base: &str, a: String) -> Result<(u16, Option<String>, String), String> {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?
        .post(format!("{base}/index.php?module=UnikGate&action=login"))
        .form(&[("assertion", a)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let cookie = unikgate::upstream::matomo::set_cookie_value(res.headers(), "MATOMO_SESSID");
    let raw: Vec<String> = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|v| v.starts_with("MATOMO_SESSID=") && !v.starts_with("MATOMO_SESSID=;"))
        .map(|v| v.to_ascii_lowercase())
        .collect();
    let body = format!(
        "{}\n{}",
        res.text().await.unwrap_or_default(),
        raw.join("\n")
    );
    Ok((status, cookie, body))
}

async fn plugin_refusals(base: &str) -> Result<(), String> {
    use secrecy::SecretString;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let signer = unikgate::upstream::matomo::Signed::new(SecretString::from(SHARED_SECRET), base);
    let post = |a: String| post_assertion(base, a);
    let good = signer.assertion("alice", now, "/index.php");
    let (status, cookie, body) = post(good.clone()).await?;
    ensure!(
        body.contains("httponly") && body.contains("samesite=lax") && body.contains("path=/"),
        "the session cookie's attributes: {body}"
    );
    ensure!(
        status == 302,
        "a good assertion: {status}\n{}",
        support::real::clip(&body)
    );
    let cookie = cookie.ok_or("no session cookie")?;
    ensure!(
        whoami_direct(base, &cookie).await?.as_deref() == Some("alice"),
        "the session is not alice's"
    );
    let cases = [
        (good, "replayed assertion"),
        (
            unikgate::upstream::matomo::Signed::new(
                SecretString::from("another-secret-of-at-least-32-bytes!!"),
                base,
            )
            .assertion("alice", now, "/"),
            "bad signature",
        ),
        (signer.assertion("alice", now - 200, "/"), "expired"),
        (signer.assertion("nobody-here", now, "/"), "unknown login"),
        (
            unikgate::upstream::matomo::Signed::new(
                SecretString::from(SHARED_SECRET),
                "http://evil.example",
            )
            .assertion("alice", now, "/"),
            "wrong audience",
        ),
        (
            signer.assertion("alice", now, "//evil.example/"),
            "rd is not a relative path",
        ),
    ];
    for (a, why) in cases {
        let (status, cookie, body) = post(a).await?;
        ensure!(
            status == 403 && body.contains(why),
            "want 403 {why:?}, got {status}: {}",
            support::real::clip(&body)
        );
        if let Some(c) = cookie {
            ensure!(
                whoami_direct(base, &c).await?.is_none(),
                "a refused assertion left a session ({why})"
            );
        }
    }
    Ok(())
}

/// `[UnikGate] public_url`: the audience is the configured URL, not the one Matomo computes (which
/// from Matomo 5.7 on is http:// behind TLS without proxy_scheme_headers); a refusal names both,
/// and only a caller with the secret reads the facts line.
fn plugin_audience_is_the_configured_public_url(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        use secrecy::SecretString;
        const PUBLIC: &str = "https://analytics.example.test";
        m.console(&format!("config:set 'UnikGate.public_url=\"{PUBLIC}\"'"))?;
        let result = async {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_secs();
            let base = m.apache.as_str();
            let for_matomos_url =
                unikgate::upstream::matomo::Signed::new(SecretString::from(SHARED_SECRET), base);
            let (status, cookie, body) =
                post_assertion(base, for_matomos_url.assertion("alice", now, "/index.php")).await?;
            if let Some(c) = cookie {
                ensure!(
                    whoami_direct(base, &c).await?.is_none(),
                    "a refused assertion left a session"
                );
            }
            ensure!(
                status == 403
                    && body.contains(&format!(
                        "wrong audience: the assertion is for {base}/, this Matomo is {PUBLIC}/ (from [UnikGate] public_url; Matomo sees its own URL as {base}/)"
                    )),
                "an assertion for the URL Matomo computes: {status}\n{body}"
            );
            // The version of the tree under test (5.1.2 unless MATOMO_ARCHIVE names another).
            let version_php = std::fs::read_to_string(m.tree.join("core/Version.php"))
                .map_err(|e| e.to_string())?;
            let version = version_php
                .split("const VERSION = '")
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .ok_or("no VERSION in core/Version.php")?;
            ensure!(
                body.contains(&format!("UnikGate-Facts: {{\"matomo\":\"{version}\""))
                    && body.contains(&format!("\"sees\":\"{base}/\""))
                    && body.contains(&format!("\"public_url\":\"{PUBLIC}/\""))
                    && body.contains("\"proxy_scheme_headers\":[\"HTTP_X_FORWARDED_PROTO\"]")
                    && body.contains("\"logout_user\":false"),
                "the facts for the secret's holder: {body}"
            );
            let for_public = unikgate::upstream::matomo::Signed::new(SecretString::from(SHARED_SECRET), PUBLIC);
            let (status, cookie, body) =
                post_assertion(base, for_public.assertion("alice", now, "/index.php")).await?;
            ensure!(status == 302, "an assertion for public_url: {status}\n{body}");
            let cookie = cookie.ok_or("no session cookie")?;
            ensure!(
                whoami_direct(base, &cookie).await?.as_deref() == Some("alice"),
                "the session is not alice's"
            );
            let forged = unikgate::upstream::matomo::Signed::new(
                SecretString::from("another-secret-of-at-least-32-bytes!!"),
                PUBLIC,
            );
            let (status, _, body) =
                post_assertion(base, forged.assertion("alice", now, "/")).await?;
            ensure!(
                status == 403 && body.contains("bad signature") && !body.contains("UnikGate-Facts"),
                "a forged assertion reads no facts: {status}\n{body}"
            );
            // A public_url that is no URL is refused as such, whatever the assertion.
            m.console("config:set 'UnikGate.public_url=\"analytics.example.test\"'")?;
            let (status, _, body) =
                post_assertion(base, for_public.assertion("alice", now, "/index.php")).await?;
            ensure!(
                status == 403 && body.contains("[UnikGate] public_url is not an http(s) URL"),
                "a public_url without scheme: {status}\n{body}"
            );
            Ok(())
        }
        .await;
        m.console("config:delete UnikGate.public_url")?;
        result
    })
}

fn plugin_refusals_apache(m: &RealMatomo) -> Fut<'_> {
    Box::pin(plugin_refusals(&m.apache))
}

fn plugin_refusals_fpm(m: &RealMatomo) -> Fut<'_> {
    Box::pin(plugin_refusals(&m.fpm))
}

fn plugin_refusals_are_pages_that_say_what_to_check(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        // A secret that is not Matomo's.
        let extra = "[matomo]\nminter = \"signed\"\nshared_secret = \"not-the-secret-matomo-holds-0123456789\"\n";
        let app = gate_with(m, Web::Apache, &p.config(), extra).await;
        let b = Browser::new();
        let res = sign_in(&b, &app, &p, "uns-wrong-secret", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        let res = link_password(&b, &app, "/", ALICE.0, ALICE.1).await;
        let (res, _) = b.follow(res, 4).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            status == 502 && body.contains("bad signature"),
            "wrong secret: {status}\n{}",
            support::real::clip(&body)
        );
        // Right after linking, the page says the link is saved, and what to check for this minter.
        ensure!(
            body.contains("now linked to the Matomo account alice")
                && body.contains("shared_secret")
                && !body.contains("mod_php"),
            "the page after linking: {}",
            support::real::clip(&body)
        );
        // A link to a login Matomo does not have.
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let issuer = p.issuer();
        let _created = app
            .app
            .links
            .create(&unikgate::store::Link {
                id: unikgate::random_token(),
                issuer,
                subject: "uns-ghost".into(),
                matomo_login: "ghost".into(),
                superuser: false,
                created_at: 0,
                last_login_at: None,
            })
            .await
            .map_err(|e| e.to_string())?;
        let b = Browser::new();
        let res = sign_in(&b, &app, &p, "uns-ghost", "/").await;
        let (res, _) = b.follow(res, 4).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            status == 502 && body.contains("unknown login"),
            "unknown login: {status}\n{}",
            support::real::clip(&body)
        );
        Ok(())
    })
}

/// The site ids a browser's Matomo session sees (`SitesManager.getSitesIdWithAtLeastViewAccess`,
/// as Matomo's own pages call it: the session and the page's token).
async fn sites_seen(b: &Browser, app: &TestApp) -> Result<Vec<i64>, String> {
    let res = b
        .get(&app.url("/index.php?module=UsersManager&action=userSettings"))
        .await;
    let (res, at) = b.follow(res, 6).await;
    let html = res.text().await.unwrap_or_default();
    let token = html
        .split("piwik.token_auth = \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or_else(|| {
            format!(
                "{at} names no piwik.token_auth:\n{}",
                support::real::clip(&html)
            )
        })?
        .to_string();
    let url = app.url(
        "/index.php?module=API&method=SitesManager.getSitesIdWithAtLeastViewAccess&format=json",
    );
    let res = b
        .post(&url, &[("token_auth", &token), ("force_api_session", "1")])
        .await;
    let body = res.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|_| format!("not JSON: {}", support::real::clip(&body)))?;
    let mut ids: Vec<i64> = v
        .as_array()
        .ok_or_else(|| format!("not a list: {body}"))?
        .iter()
        .filter_map(|x| {
            x.as_i64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// `[provision]` and `provision.access_claim` through unikgate against Matomo 5.1.2: a person
/// with no Matomo account signs in once, is offered an account, and lands in the dashboard with
/// exactly the configured access (view on site 1, not the second site), no superuser; a login
/// that exists gets the link page with it filled in and makes nothing; the claim-mapped access
/// is granted at the link and withdrawn (prune) at the next sign-in.
fn provision_through_unikgate_and_claim_mapped_access(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let second = m
            .api(
                "SitesManager.addSite",
                &[
                    ("siteName", "Provisioned"),
                    ("urls[]", "https://provisioned.example"),
                ],
            )
            .await?;
        let second = second
            .get("value")
            .and_then(|v| v.as_i64())
            .ok_or_else(|| format!("addSite: {second}"))?;
        let bob_before = m.sql(
            "SELECT idsite, access FROM matomo.matomo_access WHERE login = 'bob' ORDER BY idsite",
        )?;
        let result = provision_and_claims(m, second).await;
        let gone = m
            .api("UsersManager.deleteUser", &[("userLogin", "erin")])
            .await;
        let site = m
            .api(
                "SitesManager.deleteSite",
                &[("idSite", &second.to_string())],
            )
            .await;
        // bob's access as it was (the prune above may have removed site 1's).
        for line in bob_before.lines().filter(|l| !l.trim().is_empty()) {
            let mut it = line.split('\t');
            if let (Some(id), Some(level)) = (it.next(), it.next()) {
                if id != second.to_string() {
                    m.api(
                        "UsersManager.setUserAccess",
                        &[("userLogin", "bob"), ("access", level), ("idSites", id)],
                    )
                    .await?;
                }
            }
        }
        result?;
        let gone = gone?;
        ensure!(
            gone.get("result").and_then(|r| r.as_str()) == Some("success"),
            "deleteUser erin: {gone}"
        );
        site?;
        Ok(())
    })
}

async fn provision_and_claims(m: &RealMatomo, second: i64) -> Result<(), String> {
    use serde_json::json;
    let p = FakeProvider::start().await;
    let app = gate(
        m,
        Web::Apache,
        Minter::Signed,
        &p,
        "[provision]\nmode = \"offer\"\naccess = [\"/matomo/1/view\"]\n",
    )
    .await;
    p.set_claims(
        "uns-erin",
        json!({"preferred_username": "erin", "email": "erin@example.org", "email_verified": true}),
    );
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-erin", DASHBOARD).await;
    let loc = location(&res);
    ensure!(
        loc.contains("/_unikgate/link"),
        "to the link page, not {loc}"
    );
    let html = b.get(&loc).await.text().await.unwrap_or_default();
    ensure!(
        html.contains("Create my Matomo account (erin)"),
        "no offer: {}",
        support::real::clip(&html)
    );
    let res = b
        .post(
            &app.url("/_unikgate/provision"),
            &[
                ("csrf", support::csrf_of(&html).as_str()),
                ("rd", DASHBOARD),
            ],
        )
        .await;
    let status = res.status();
    let loc = location(&res);
    ensure!(
        status == 302 && loc == app.url(DASHBOARD),
        "provision answered {status} {loc}: {}",
        support::real::clip(&res.text().await.unwrap_or_default())
    );
    let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
    ensure!(
        status == 200 && user.as_deref() == Some("erin"),
        "the dashboard as {user:?} ({status}): {body}"
    );
    let row =
        m.sql("SELECT email, superuser_access FROM matomo.matomo_user WHERE login = 'erin'")?;
    ensure!(row.trim() == "erin@example.org\t0", "erin's row: {row:?}");
    let rows = m.sql(
        "SELECT idsite, access FROM matomo.matomo_access WHERE login = 'erin' ORDER BY idsite",
    )?;
    ensure!(rows.trim() == "1\tview", "erin's access: {rows:?}");
    let seen = sites_seen(&b, &app).await?;
    ensure!(
        seen == vec![1],
        "erin sees the sites {seen:?}, not only site 1"
    );
    ensure!(!seen.contains(&second), "erin sees the second site");

    // A login that exists: nothing made, the link page with it filled in.
    p.set_claims(
        "uns-not-alice",
        json!({"preferred_username": "alice", "email": "other@example.org", "email_verified": true}),
    );
    let users_before = m.sql("SELECT login FROM matomo.matomo_user ORDER BY login")?;
    let b2 = Browser::new();
    let res = sign_in(&b2, &app, &p, "uns-not-alice", "/").await;
    let html = b2
        .get(&location(&res))
        .await
        .text()
        .await
        .unwrap_or_default();
    let res = b2
        .post(
            &app.url("/_unikgate/provision"),
            &[("csrf", support::csrf_of(&html).as_str()), ("rd", "/")],
        )
        .await;
    let status = res.status();
    let page = res.text().await.unwrap_or_default();
    ensure!(
        status == 409
            && page.contains("A Matomo account named alice already exists")
            && page.contains("value=\"alice\""),
        "collision: {status} {}",
        support::real::clip(&page)
    );
    ensure!(
        m.sql("SELECT login FROM matomo.matomo_user ORDER BY login")? == users_before,
        "a user was made on a collision"
    );
    app.stop().await;

    // Claim-mapped access, pruned: granted at the link, withdrawn at the next sign-in.
    let app = gate(
        m,
        Web::Apache,
        Minter::Signed,
        &p,
        "[provision]\naccess_claim = \"matomo_access\"\naccess_claim_prune = true\n",
    )
    .await;
    p.set_claims(
        "uns-bob-claims",
        json!({"matomo_access": ["/matomo/1/view", format!("/matomo/{second}/write")]}),
    );
    let b = sign_in_and_link(&app, &p, "uns-bob-claims", BOB).await?;
    let rows = |m: &RealMatomo| {
        m.sql("SELECT idsite, access FROM matomo.matomo_access WHERE login = 'bob' ORDER BY idsite")
    };
    let want = format!("1\tview\n{second}\twrite");
    ensure!(
        rows(m)?.trim() == want,
        "bob's access after the link: {:?}",
        rows(m)?
    );
    ensure!(
        sites_seen(&b, &app).await? == vec![1, second],
        "bob does not see both sites"
    );
    p.set_claims(
        "uns-bob-claims",
        json!({"matomo_access": [format!("/matomo/{second}/view")]}),
    );
    let b = Browser::new();
    let res = sign_in(&b, &app, &p, "uns-bob-claims", "/").await;
    ensure!(res.status() == 302, "second sign-in: {}", res.status());
    let want = format!("{second}\tview");
    ensure!(
        rows(m)?.trim() == want,
        "bob's access after the claim changed: {:?}",
        rows(m)?
    );
    ensure!(
        sites_seen(&b, &app).await? == vec![second],
        "bob still sees site 1"
    );
    // Superusers are left alone by the claim.
    p.set_claims(
        "uns-admin-claims",
        json!({"matomo_access": ["/matomo/1/view"]}),
    );
    let _a = sign_in_and_link(&app, &p, "uns-admin-claims", ADMIN).await?;
    let su = m.sql("SELECT superuser_access FROM matomo.matomo_user WHERE login = 'admin'")?;
    ensure!(su.trim() == "1", "admin is no longer superuser: {su:?}");
    app.stop().await;
    Ok(())
}

/// Posts an assertion to the plugin's `action` as unikgate does: (status, Content-Type and
/// Cache-Control, MATOMO_SESSID set, body).
async fn post_action(
    base: &str,
    action: &str,
    token: &str,
) -> Result<(u16, String, Option<String>, String), String> {
    let res = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?
        .post(format!("{base}/index.php?module=UnikGate&action={action}"))
        .form(&[("assertion", token)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let header = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let heads = format!("{} | {}", header("content-type"), header("cache-control"));
    let cookie = unikgate::upstream::matomo::set_cookie_value(res.headers(), "MATOMO_SESSID");
    Ok((status, heads, cookie, res.text().await.unwrap_or_default()))
}

/// The plugin's `provision` and `access` actions, straight to Matomo 5.1.2 with assertions made
/// here: a user created without superuser and with the access asked for, signed in; replays,
/// forgeries, a token of another action, collisions (409), a level that is no level refused;
/// a retry for the same owner; access set where it differs, pruned, a superuser left alone.
fn plugin_provision_and_access_actions(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        ensure!(
            m.sql(
                "SELECT login FROM matomo.matomo_user WHERE login IN ('carol', 'mallory', 'dave')"
            )?
            .trim()
            .is_empty(),
            "carol, mallory or dave exist before the test"
        );
        let second = m
            .api(
                "SitesManager.addSite",
                &[("siteName", "Second"), ("urls[]", "https://second.example")],
            )
            .await?;
        let second = second
            .get("value")
            .and_then(|v| v.as_i64())
            .ok_or_else(|| format!("addSite: {second}"))?;
        let result = provision_and_access(m, second).await;
        // Whatever happened: carol and the site go (two_factor_accounts_… makes its own carol).
        let gone = m
            .api("UsersManager.deleteUser", &[("userLogin", "carol")])
            .await;
        let site = m
            .api(
                "SitesManager.deleteSite",
                &[("idSite", &second.to_string())],
            )
            .await?;
        result?;
        let gone = gone?;
        ensure!(
            gone.get("result").and_then(|r| r.as_str()) == Some("success"),
            "deleteUser carol: {gone}"
        );
        ensure!(
            site.get("result").and_then(|r| r.as_str()) == Some("success"),
            "deleteSite {second}: {site}"
        );
        // The owner goes with the user (the plugin's UsersManager.deleteUser handler).
        let owners = m.sql(
            "SELECT option_name FROM matomo.matomo_option WHERE option_name LIKE 'UnikGate_owner_%'",
        )?;
        ensure!(owners.trim().is_empty(), "owners left: {owners}");
        Ok(())
    })
}

async fn provision_and_access(m: &RealMatomo, second: i64) -> Result<(), String> {
    use serde_json::{json, Value};
    let base = m.apache.as_str();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let token = |secret: &str, act: Option<&str>, sub: &str, more: Value| {
        let mut c = json!({
            "iss": "unikgate", "aud": format!("{base}/"), "sub": sub, "iat": now, "exp": now + 30,
            "jti": unikgate::random_token(), "rd": "/index.php?module=CoreHome",
        });
        if let Some(a) = act {
            c["act"] = a.into();
        }
        if let (Some(c), Some(more)) = (c.as_object_mut(), more.as_object()) {
            c.extend(more.clone());
        }
        unikgate::upstream::matomo::sign_hs256(&c, secret.as_bytes())
    };
    let owner = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        b"https://provider.example/\nuns-carol",
    ));
    let other_owner = hex::encode([0x5a; 32]);
    let carol = json!({"email": "carol@example.org", "acc": {"1": "view"}, "owner": owner});
    let provision = |who: &str, more: Value| token(SHARED_SECRET, Some("provision"), who, more);
    let access = |who: &str, acc: Value, prune: bool| {
        token(
            SHARED_SECRET,
            Some("access"),
            who,
            json!({"acc": acc, "prune": prune}),
        )
    };
    let users = || m.sql("SELECT login, superuser_access FROM matomo.matomo_user ORDER BY login");
    let rows = |login: &str| {
        m.sql(&format!(
            "SELECT idsite, access FROM matomo.matomo_access WHERE login = '{login}' ORDER BY idsite, access"
        ))
    };

    // Created: no superuser, view on site 1 only, its owner kept; signed in.
    let made = provision("carol", carol.clone());
    let (status, heads, cookie, body) = post_action(base, "provision", &made).await?;
    ensure!(
        status == 302 && heads.contains("no-store"),
        "provision carol: {status} {heads}\n{}",
        support::real::clip(&body)
    );
    let cookie = cookie.ok_or("provision set no session cookie")?;
    ensure!(
        whoami_direct(base, &cookie).await?.as_deref() == Some("carol"),
        "the new session is not carol's"
    );
    let row =
        m.sql("SELECT email, superuser_access FROM matomo.matomo_user WHERE login = 'carol'")?;
    ensure!(row.trim() == "carol@example.org\t0", "carol's row: {row:?}");
    ensure!(
        rows("carol")?.trim() == "1\tview",
        "carol's access: {:?}",
        rows("carol")?
    );
    let api = m
        .api(
            "UsersManager.getSitesAccessFromUser",
            &[("userLogin", "carol")],
        )
        .await?;
    ensure!(
        api == json!([{"site": 1, "access": "view"}])
            || api == json!([{"site": "1", "access": "view"}]),
        "Matomo's API: carol's access {api}"
    );
    let kept = m.sql(
        "SELECT option_value FROM matomo.matomo_option WHERE option_name = 'UnikGate_owner_carol'",
    )?;
    ensure!(kept.trim() == owner, "the owner kept: {kept:?}");
    let before = users()?;

    // Refused, and nothing changes.
    let asking =
        |email: &str, acc: Value, owner: &str| json!({"email": email, "acc": acc, "owner": owner});
    let mallory = |acc: Value| asking("mallory@example.org", acc, &other_owner);
    let none = || json!({});
    let admin_on_1 = || json!({"1": "admin"});
    let forged = "another-secret-of-at-least-32-bytes!!";
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("provision", made, 403, "replayed assertion\n"),
        (
            "provision",
            token(forged, Some("provision"), "mallory", mallory(admin_on_1())),
            403,
            "bad signature\n",
        ),
        (
            "provision",
            token(SHARED_SECRET, None, "mallory", mallory(none())),
            403,
            "wrong action: the assertion is for login, not provision\n",
        ),
        (
            "login",
            provision("carol", carol.clone()),
            403,
            "wrong action: the assertion is for provision, not login\n",
        ),
        (
            "provision",
            access("carol", admin_on_1(), false),
            403,
            "wrong action: the assertion is for access, not provision\n",
        ),
        (
            "provision",
            provision(
                "carol",
                asking("carol@example.org", admin_on_1(), &other_owner),
            ),
            409,
            "exists login carol\n",
        ),
        (
            "provision",
            provision("alice", asking("alice@example.org", admin_on_1(), &owner)),
            409,
            "exists login alice\n",
        ),
        (
            "provision",
            provision("dave", asking("Carol@Example.org", none(), &other_owner)),
            409,
            "exists email carol\n",
        ),
        (
            "provision",
            provision("mallory", mallory(json!({"1": "superuser"}))),
            403,
            "acc: site 1 cannot be given \"superuser\" (only view, write or admin)\n",
        ),
        (
            "provision",
            provision("mallory", mallory(json!({"one": "view"}))),
            403,
            "acc: \"one\" is not a site id\n",
        ),
        (
            "provision",
            provision("mallory", asking("not-an-email", none(), &other_owner)),
            400,
            "cannot create mallory: Email: The value \"not-an-email\" does not look like a valid email.\n",
        ),
        (
            "provision",
            provision("m", asking("m@example.org", none(), &other_owner)),
            400,
            "cannot create m: Username: The username must be between 2 and 100 characters long",
        ),
        (
            "access",
            access("nobody-here", none(), true),
            403,
            "unknown login\n",
        ),
    ];
    for (action, t, want, why) in cases {
        let (status, heads, cookie, body) = post_action(base, action, &t).await?;
        ensure!(
            status == want
                && body.starts_with(&format!("UnikGate: {why}"))
                && heads.starts_with("text/plain")
                && heads.contains("no-store"),
            "want {want} {why:?} from {action}, got {status} {heads}\n{}",
            support::real::clip(&body)
        );
        if let Some(c) = cookie {
            ensure!(
                whoami_direct(base, &c).await?.is_none(),
                "a refusal left a session ({why})"
            );
        }
        if why.contains("wrong action") {
            ensure!(
                body.contains(r#""actions":["login","whoami","provision","access","superuser"]"#),
                "the facts name the actions: {body}"
            );
        }
    }
    let after = users()?;
    ensure!(after == before, "users changed:\n{before}\n→\n{after}");
    ensure!(
        rows("carol")?.trim() == "1\tview",
        "carol's access changed: {:?}",
        rows("carol")?
    );
    ensure!(
        rows("mallory")?.trim().is_empty(),
        "mallory has access rows"
    );

    // A retry of a lost answer: the same owner signs in again.
    let (status, _, cookie, body) =
        post_action(base, "provision", &provision("carol", carol.clone())).await?;
    ensure!(
        status == 302,
        "the retry: {status}\n{}",
        support::real::clip(&body)
    );
    let cookie = cookie.ok_or("the retry set no session cookie")?;
    ensure!(
        whoami_direct(base, &cookie).await?.as_deref() == Some("carol"),
        "the retry's session is not carol's"
    );
    ensure!(users()? == before, "the retry changed the users");

    // Access: set where it differs (a site that does not exist is left out), no session.
    let answer =
        |body: &str| serde_json::from_str::<Value>(body).map_err(|e| format!("{e}: {body}"));
    let (status, heads, cookie, body) = post_action(
        base,
        "access",
        &access("carol", json!({"1": "write", "999": "view"}), false),
    )
    .await?;
    ensure!(
        status == 200 && heads.starts_with("application/json") && heads.contains("no-store"),
        "access: {status} {heads}\n{}",
        support::real::clip(&body)
    );
    if let Some(c) = cookie {
        ensure!(
            whoami_direct(base, &c).await?.is_none(),
            "access opened a session"
        );
    }
    ensure!(
        answer(&body)? == json!({"set": {"1": "write"}, "removed": [], "superuser": false}),
        "access {{1: write}}: {body}"
    );
    ensure!(
        rows("carol")?.trim() == "1\twrite",
        "after write: {:?}",
        rows("carol")?
    );
    // A capability on site 1 and view on the second site, given by hand: the same level leaves
    // site 1 (and its capability) alone; prune removes the second site.
    m.sql("INSERT INTO matomo.matomo_access (login, idsite, access) VALUES ('carol', 1, 'tagmanager_write')")?;
    let v = m
        .api(
            "UsersManager.setUserAccess",
            &[
                ("userLogin", "carol"),
                ("access", "view"),
                ("idSites", &second.to_string()),
            ],
        )
        .await?;
    ensure!(
        v.get("result").and_then(|r| r.as_str()) == Some("success"),
        "setUserAccess: {v}"
    );
    let (_, _, _, body) = post_action(
        base,
        "access",
        &access("carol", json!({"1": "write"}), false),
    )
    .await?;
    ensure!(
        answer(&body)? == json!({"set": {}, "removed": [], "superuser": false}),
        "nothing to change: {body}"
    );
    let (_, _, _, body) = post_action(
        base,
        "access",
        &access("carol", json!({"1": "write"}), true),
    )
    .await?;
    ensure!(
        answer(&body)? == json!({"set": {}, "removed": [second], "superuser": false}),
        "prune: {body}"
    );
    ensure!(
        rows("carol")?.trim() == "1\ttagmanager_write\n1\twrite",
        "after prune: {:?}",
        rows("carol")?
    );
    let (_, _, _, body) = post_action(
        base,
        "access",
        &access(
            "carol",
            json!({"1": "view", &second.to_string(): "admin"}),
            true,
        ),
    )
    .await?;
    let set = json!({"1": "view", second.to_string(): "admin"});
    ensure!(
        answer(&body)? == json!({"set": set, "removed": [], "superuser": false}),
        "two levels at once: {body}"
    );
    ensure!(
        rows("carol")?.trim() == format!("1\tview\n{second}\tadmin"),
        "after two levels: {:?}",
        rows("carol")?
    );
    // The superuser is left alone.
    let admin_rows = rows(ADMIN.0)?;
    let (status, _, _, body) =
        post_action(base, "access", &access(ADMIN.0, json!({"1": "view"}), true)).await?;
    ensure!(
        status == 200 && answer(&body)? == json!({"set": {}, "removed": [], "superuser": true}),
        "access for the superuser: {status} {body}"
    );
    ensure!(
        rows(ADMIN.0)? == admin_rows && users()? == before,
        "the superuser changed"
    );
    Ok(())
}

/// The plugin's `superuser` action and its admin page, straight to Matomo 5.1.2: the action reads
/// the user table at that moment (a superuser made or taken back through Matomo's API is seen at
/// once), refuses another action's token and a replay; the page (Administration → System →
/// Unikname) is a superuser's only, as is its menu entry.
fn plugin_superuser_action_and_admin_page(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let before = alice_access(m)?;
        let result = superuser_action_and_admin_page(m, &before).await;
        // Whatever happened: alice is no superuser, with the access she had.
        let restored = alice_back(m, &before).await;
        result?;
        restored
    })
}

/// alice's access rows (site, level), one a line.
fn alice_access(m: &RealMatomo) -> Result<String, String> {
    m.sql(
        "SELECT idsite, access FROM matomo.matomo_access WHERE login = 'alice' \
         ORDER BY idsite, access",
    )
}

/// The admin API through unikgate against Matomo 5.1.2, with both minters: a superuser reads it,
/// alice does not; alice made superuser in Matomo gets it at her next request, and loses it at the
/// next one after she is taken back (the plugin's superuser action; with AutoLogin, the page
/// Matomo renders for her session).
fn admin_api_follows_superuser_access_in_matomo(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let before = alice_access(m)?;
        let result = admin_api_as(m, Minter::Signed).await;
        // Taking superuser back drops her site access: hers again before the next pass.
        alice_back(m, &before).await?;
        let result = match result {
            Ok(()) => admin_api_as(m, Minter::AutoLogin).await,
            e => e,
        };
        alice_back(m, &before).await?;
        result
    })
}

async fn admin_api_as(m: &RealMatomo, minter: Minter) -> Result<(), String> {
    if minter == Minter::AutoLogin {
        m.need_autologin()?;
    }
    let p = FakeProvider::start().await;
    let app = gate(m, Web::Apache, minter, &p, "").await;
    let tag = format!("{minter:?}").to_lowercase();
    let admin = sign_in_and_link(&app, &p, &format!("uns-admin-{tag}"), ADMIN).await?;
    let alice = sign_in_and_link(&app, &p, &format!("uns-alice-{tag}"), ALICE).await?;
    let links = |b: &Browser| {
        let url = app.url("/_unikgate/admin/api/links");
        let b = b.client.clone();
        async move {
            let res = b.get(url).send().await.map_err(|e| e.to_string())?;
            let status = res.status().as_u16();
            Ok::<_, String>((status, res.text().await.unwrap_or_default()))
        }
    };
    let (s, body) = links(&admin).await?;
    ensure!(
        s == 200 && body.contains("\"matomo_login\":\"alice\""),
        "{minter:?}: admin reads {s} {body}"
    );
    let (s, body) = links(&alice).await?;
    ensure!(
        s == 403 && !body.contains("admin"),
        "{minter:?}: alice reads {s} {body}"
    );
    let set = |on: &'static str| async move {
        let v = m
            .api(
                "UsersManager.setSuperUserAccess",
                &[
                    ("userLogin", ALICE.0),
                    ("hasSuperUserAccess", on),
                    ("passwordConfirmation", ADMIN.1),
                ],
            )
            .await?;
        ensure!(
            v.get("result").and_then(|r| r.as_str()) == Some("success"),
            "setSuperUserAccess alice {on}: {v}"
        );
        Ok::<(), String>(())
    };
    set("1").await?;
    let (s, body) = links(&alice).await?;
    ensure!(
        s == 200,
        "{minter:?}: alice made superuser reads {s} {body}"
    );
    set("0").await?;
    let (s, body) = links(&alice).await?;
    ensure!(
        s == 403,
        "{minter:?}: alice taken back still reads {s} {body}"
    );
    if minter == Minter::AutoLogin {
        // No plugin: unikgate's own page holds the script.
        let res = admin.get(&app.url("/_unikgate/admin")).await;
        let status = res.status();
        let html = res.text().await.unwrap_or_default();
        ensure!(
            status == 200 && html.contains("id=\"unikgate-admin\""),
            "unikgate's own page: {status} {}",
            support::real::clip(&html)
        );
    }
    app.stop().await;
    Ok(())
}

/// alice no superuser, with the access rows `before` (setSuperUserAccess drops a user's rows).
async fn alice_back(m: &RealMatomo, before: &str) -> Result<(), String> {
    let su = m.sql("SELECT superuser_access FROM matomo.matomo_user WHERE login = 'alice'")?;
    if su.trim() != "0" {
        let v = m
            .api(
                "UsersManager.setSuperUserAccess",
                &[
                    ("userLogin", ALICE.0),
                    ("hasSuperUserAccess", "0"),
                    ("passwordConfirmation", ADMIN.1),
                ],
            )
            .await?;
        ensure!(
            v.get("result").and_then(|r| r.as_str()) == Some("success"),
            "alice back from superuser: {v}"
        );
    }
    if alice_access(m)? != before {
        for row in before.lines() {
            let Some((site, level)) = row.split_once('\t') else {
                continue;
            };
            let v = m
                .api(
                    "UsersManager.setUserAccess",
                    &[("userLogin", ALICE.0), ("access", level), ("idSites", site)],
                )
                .await?;
            ensure!(
                v.get("result").and_then(|r| r.as_str()) == Some("success"),
                "alice's access {row:?} back: {v}"
            );
        }
    }
    let after = alice_access(m)?;
    ensure!(after == before, "alice's access: {before:?} → {after:?}");
    Ok(())
}

/// Whether an admin page's menu (the server-rendered `#secondNavBar`) has the Unikname entry,
/// under System: its link, and the label in it.
fn admin_menu_has_unikname(html: &str) -> Result<bool, String> {
    let menu = html
        .find("id=\"secondNavBar\"")
        .map(|i| &html[i..])
        .ok_or_else(|| format!("no admin menu:\n{}", support::real::clip(html)))?;
    let Some(i) = menu.find("href=\"index.php?module=UnikGate&amp;action=admin\"") else {
        return Ok(false);
    };
    let system = menu
        .find("</span>System")
        .ok_or("no System section in the admin menu")?;
    let next = menu[system..]
        .find("class=\"menuTab")
        .map_or(menu.len(), |n| system + n);
    let label = &menu[i..];
    let label = &label[..label.find("</a>").unwrap_or(label.len())];
    ensure!(
        system < i && i < next,
        "the Unikname entry is not under System"
    );
    ensure!(
        label.trim_end().ends_with("Unikname"),
        "the entry's label: {label:?}"
    );
    Ok(true)
}

async fn superuser_action_and_admin_page(m: &RealMatomo, alice_before: &str) -> Result<(), String> {
    use serde_json::{json, Value};
    let base = m.apache.as_str();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    // As unikgate asks: act "superuser", rd "/"; a fresh jti each time.
    let token = |act: Option<&str>, sub: &str| {
        let mut c = json!({
            "iss": "unikgate", "aud": format!("{base}/"), "sub": sub, "iat": now, "exp": now + 30,
            "jti": unikgate::random_token(), "rd": "/",
        });
        if let Some(a) = act {
            c["act"] = a.into();
        }
        unikgate::upstream::matomo::sign_hs256(&c, SHARED_SECRET.as_bytes())
    };
    let ask = |sub: &str| token(Some("superuser"), sub);
    let answer = |t: String| async move {
        let (status, heads, cookie, body) = post_action(base, "superuser", &t).await?;
        ensure!(
            status == 200 && heads.starts_with("application/json") && heads.contains("no-store"),
            "superuser: {status} {heads}\n{}",
            support::real::clip(&body)
        );
        if let Some(c) = cookie {
            ensure!(
                whoami_direct(base, &c).await?.is_none(),
                "the superuser action opened a session"
            );
        }
        serde_json::from_str::<Value>(&body).map_err(|e| format!("{e}: {body}"))
    };

    let admin = ask(ADMIN.0);
    let got = answer(admin.clone()).await?;
    ensure!(
        got == json!({"login": "admin", "exists": true, "superuser": true}),
        "admin: {got}"
    );
    let got = answer(ask(ALICE.0)).await?;
    ensure!(
        got == json!({"login": "alice", "exists": true, "superuser": false}),
        "alice: {got}"
    );
    // MySQL compares logins without case: the stored login is named.
    let got = answer(ask("ALICE")).await?;
    ensure!(
        got == json!({"login": "alice", "exists": true, "superuser": false}),
        "ALICE: {got}"
    );
    let got = answer(ask("nosuch")).await?;
    ensure!(
        got == json!({"login": "nosuch", "exists": false, "superuser": false}),
        "nosuch: {got}"
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "superuser",
            token(None, ADMIN.0),
            "wrong action: the assertion is for login, not superuser\n",
        ),
        (
            "superuser",
            token(Some("login"), ADMIN.0),
            "wrong action: the assertion is for login, not superuser\n",
        ),
        (
            "login",
            ask(ADMIN.0),
            "wrong action: the assertion is for superuser, not login\n",
        ),
        ("superuser", admin, "replayed assertion\n"),
    ];
    for (action, t, why) in cases {
        let (status, heads, cookie, body) = post_action(base, action, &t).await?;
        ensure!(
            status == 403
                && body.starts_with(&format!("UnikGate: {why}"))
                && heads.starts_with("text/plain")
                && heads.contains("no-store"),
            "want 403 {why:?} from {action}, got {status} {heads}\n{}",
            support::real::clip(&body)
        );
        ensure!(
            body.contains(r#""actions":["login","whoami","provision","access","superuser"]"#),
            "the facts name the actions: {body}"
        );
        if let Some(c) = cookie {
            ensure!(
                whoami_direct(base, &c).await?.is_none(),
                "a refusal left a session ({why})"
            );
        }
    }

    // Made superuser and taken back through Matomo's API: the action sees each at once.
    let set_superuser = |on: &'static str| async move {
        let v = m
            .api(
                "UsersManager.setSuperUserAccess",
                &[
                    ("userLogin", ALICE.0),
                    ("hasSuperUserAccess", on),
                    ("passwordConfirmation", ADMIN.1),
                ],
            )
            .await?;
        ensure!(
            v.get("result").and_then(|r| r.as_str()) == Some("success"),
            "setSuperUserAccess alice {on}: {v}"
        );
        Ok::<(), String>(())
    };
    set_superuser("1").await?;
    let got = answer(ask(ALICE.0)).await?;
    ensure!(
        got == json!({"login": "alice", "exists": true, "superuser": true}),
        "alice made superuser: {got}"
    );
    set_superuser("0").await?;
    let got = answer(ask(ALICE.0)).await?;
    ensure!(
        got == json!({"login": "alice", "exists": true, "superuser": false}),
        "alice taken back: {got}"
    );
    // Matomo dropped her access rows with the change: they are put back.
    alice_back(m, alice_before).await?;

    // The page: a superuser's, in Matomo's admin layout, with the menu entry under System.
    let page = format!("{base}/index.php?module=UnikGate&action=admin");
    let settings = format!("{base}/index.php?module=UsersManager&action=userSettings");
    let b = Browser::new();
    matomo_password_login(&b, base, ADMIN).await?;
    let res = b.get(&page).await;
    let status = res.status().as_u16();
    let html = res.text().await.unwrap_or_default();
    ensure!(
        status == 200
            && html.contains(
                r#"<div id="unikgate-admin" data-prefix="/_unikgate" data-login="admin"></div>"#
            )
            && html.contains(r#"<script src="/_unikgate/static/admin.js" defer></script>"#)
            && html.contains("@unikname links and sessions")
            && html.contains("on every unikgate replica"),
        "the admin page for admin: {status}\n{}",
        support::real::clip(&html)
    );
    let container = html.find("id=\"unikgate-admin\"").unwrap_or(0);
    let script = html.find("/_unikgate/static/admin.js").unwrap_or(0);
    ensure!(
        html.contains("class=\"admin\" id=\"content\"") && container < script,
        "not Matomo's admin layout, or the script before the container"
    );
    ensure!(
        admin_menu_has_unikname(&html)?,
        "the admin page's menu has no Unikname entry"
    );
    let html = b.get(&settings).await.text().await.unwrap_or_default();
    ensure!(
        admin_menu_has_unikname(&html)?,
        "admin's Personal settings page: the menu has no Unikname entry"
    );

    // alice: Matomo's access-denied answer (its login page, 403, saying a superuser's access is
    // needed), no container, no entry.
    let b = Browser::new();
    matomo_password_login(&b, base, ALICE).await?;
    let res = b.get(&page).await;
    let status = res.status().as_u16();
    let html = res.text().await.unwrap_or_default();
    ensure!(
        status == 403
            && !html.contains("unikgate-admin")
            && !html.contains("static/admin.js")
            && html.contains("access this resource as it requires a"),
        "the admin page for alice: {status}\n{}",
        support::real::clip(&html)
    );
    let html = b.get(&settings).await.text().await.unwrap_or_default();
    ensure!(
        html.contains("module=UsersManager&amp;action=userSecurity"),
        "alice's Personal settings page has no admin menu:\n{}",
        support::real::clip(&html)
    );
    ensure!(
        !admin_menu_has_unikname(&html)? && !html.contains("module=UnikGate"),
        "alice's admin menu has the Unikname entry"
    );
    Ok(())
}

/// `unikgate doctor` (the binary) against the real Matomo.
async fn doctor(
    m: &RealMatomo,
    web: Web,
    minter: Minter,
    args: &[&str],
) -> Result<(bool, String), String> {
    doctor_as(m, web, minter, "http", args).await
}

/// [`doctor`] with a public URL of `scheme` (the loopback port stays: no TLS is served, doctor
/// only talks to Matomo and the provider).
async fn doctor_as(
    m: &RealMatomo,
    web: Web,
    minter: Minter,
    scheme: &str,
    args: &[&str],
) -> Result<(bool, String), String> {
    let p = FakeProvider::start().await;
    let l = m.gate_listener();
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    drop(l);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let toml = config(upstream(m, web), &p.config(), &matomo_section(minter, ""))
        .replace("{public}", &format!("{scheme}://{addr}"))
        .replace("{dir}", &dir.path().display().to_string());
    let cfg = dir.path().join("unikgate.toml");
    std::fs::write(&cfg, toml).map_err(|e| e.to_string())?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_unikgate"))
        .arg("doctor")
        .arg("-c")
        .arg(&cfg)
        .args(args)
        .env("UNIKGATE_LOG", "error")
        .output()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

fn doctor_as_alice_mints_and_logs_out(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        for web in [Web::Apache, Web::Fpm] {
            let (ok, out) = doctor(m, web, Minter::Signed, &["--as", "alice"]).await?;
            ensure!(
                ok && out.contains("ok   mint") && out.contains("for alice"),
                "doctor --as alice ({web:?}):\n{out}"
            );
            let (ok, out) = doctor(m, web, Minter::Signed, &[]).await?;
            ensure!(
                ok && out.contains("skip mint") && out.contains("not exercised"),
                "doctor without --as ({web:?}):\n{out}"
            );
        }
        m.need_autologin()?;
        let (ok, out) = doctor(m, Web::Apache, Minter::AutoLogin, &["--as", "alice"]).await?;
        ensure!(
            ok && out.contains("ok   mint"),
            "doctor --as alice (AutoLogin):\n{out}"
        );
        let (ok, out) = doctor(m, Web::Apache, Minter::Signed, &["--as", "nobody-at-all"]).await?;
        ensure!(
            !ok && out.contains("FAIL mint") && out.contains("unknown login"),
            "doctor --as an unknown login:\n{out}"
        );
        Ok(())
    })
}

/// Matomo 5.1.2 reads X-Forwarded-Proto without configuration: behind TLS (an https public URL)
/// it computes its https URL, and doctor prints the version and the checks for it.
fn doctor_prints_the_real_matomos_version_and_checks(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        for web in [Web::Apache, Web::Fpm] {
            let (ok, out) = doctor_as(m, web, Minter::Signed, "https", &[]).await?;
            for want in [
                "ok   Matomo version       Matomo 5.1.2 (proved against the real Matomo",
                "ok   scheme header        Matomo 5.1.2 reads X-Forwarded-Proto unasked",
                "ok   client address header",
                "ok   host header",
                "ok   logoutUser           Matomo 5.1.2 has no UsersManager.logoutUser",
                "ok   audience             Matomo takes assertions for https://",
            ] {
                ensure!(ok && out.contains(want), "{web:?}: {want:?}:\n{out}");
            }
        }
        Ok(())
    })
}

fn doctor_as_fails_with_the_old_plugin(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        // The plugin as it was: the Login plugin's two-argument SessionInitializer.
        let controller = m.tree.join("plugins/UnikGate/Controller.php");
        let fixed = std::fs::read_to_string(&controller).map_err(|e| e.to_string())?;
        let old = fixed.replace(
            "use Piwik\\Session\\SessionInitializer;",
            "use Piwik\\Plugins\\Login\\SessionInitializer;",
        );
        ensure!(
            old != fixed,
            "the fixed plugin no longer imports core's SessionInitializer"
        );
        std::fs::write(&controller, &old).map_err(|e| e.to_string())?;
        let with_old = doctor(m, Web::Apache, Minter::Signed, &["--as", "alice"]).await;
        let without_as = doctor(m, Web::Apache, Minter::Signed, &[]).await;
        std::fs::write(&controller, &fixed).map_err(|e| e.to_string())?;
        let (ok, out) = with_old?;
        ensure!(
            !ok && out.contains("FAIL mint") && out.contains("500"),
            "doctor --as alice with the old plugin:\n{out}"
        );
        let (ok, out) = without_as?;
        ensure!(ok, "without --as the old plugin passes every other check (that is why --as exists):\n{out}");
        let (ok, out) = doctor(m, Web::Apache, Minter::Signed, &["--as", "alice"]).await?;
        ensure!(ok, "doctor --as alice with the fixed plugin:\n{out}");
        Ok(())
    })
}

fn doctor_explains_autologin_under_php_fpm(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        m.need_autologin()?;
        let (ok, out) = doctor(m, Web::Fpm, Minter::AutoLogin, &[]).await?;
        ensure!(
            !ok && out.contains("FAIL AutoLogin")
                && out.contains("PHP-FPM")
                && out.contains("mod_php"),
            "AutoLogin under PHP-FPM:\n{out}"
        );
        let (ok, out) = doctor(m, Web::Apache, Minter::AutoLogin, &[]).await?;
        ensure!(
            ok && out.contains("ok   AutoLogin"),
            "AutoLogin under mod_php:\n{out}"
        );
        Ok(())
    })
}

fn link_by_an_existing_matomo_session(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(
            m,
            Web::Apache,
            Minter::Signed,
            &p,
            "password_login = true\n",
        )
        .await;
        let b = Browser::new();
        // Matomo's own password login, through unikgate (password_login lets it pass).
        matomo_password_login(&b, &app.url(""), ALICE).await?;
        let (_, user, _) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            user.as_deref() == Some("alice"),
            "password login through unikgate: {user:?}"
        );
        let res = sign_in(&b, &app, &p, "uns-link-by-session", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        let html = b
            .get(&app.url("/_unikgate/link"))
            .await
            .text()
            .await
            .unwrap_or_default();
        ensure!(
            html.contains("alice"),
            "the link page does not offer alice's session:\n{}",
            support::real::clip(&html)
        );
        let res = b
            .post(
                &app.url("/_unikgate/link"),
                &[
                    ("csrf", &support::csrf_of(&html)),
                    ("rd", "/"),
                    ("mode", "session"),
                ],
            )
            .await;
        ensure!(res.status() == 302, "link by session: {}", res.status());
        let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            status == 200 && user.as_deref() == Some("alice"),
            "after linking by session: {status} {user:?}\n{body}"
        );
        Ok(())
    })
}

fn matomo_setup_script_is_idempotent_and_quiet(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let before = m.config_ini();
        let out = m.as_web_user(&format!(
            "MATOMO_DIR='{}' SHARED_SECRET_FILE='{}' PUBLIC_HOST=127.0.0.1 MINTER=signed bash '{}'",
            m.tree.display(),
            m.secret_file.display(),
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/matomo-setup.sh")
                .display()
        ))?;
        let after = m.config_ini();
        ensure!(
            before == after,
            "a second run changed config.ini.php:\n--- before\n{before}\n--- after\n{after}"
        );
        ensure!(
            !out.contains(SHARED_SECRET),
            "the script printed the secret:\n{out}"
        );
        Ok(())
    })
}

/// The seed's journey in Chromium (tests/e2e/journey.mjs) with real processes: the unikgate
/// binary (signed minter) in front of the real Matomo under mod_php, and the real
/// `oidc-provider`. Its screenshots are the README's pictures. The first unikgate serves HTTPS
/// itself (`[tls]`, a certificate of a test CA): the journey runs over it, and Matomo's pages with
/// every asset and API call come over HTTP/2.
fn browser_journey_in_chromium(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        use support::provider::{node_dir, NodeProvider};
        ensure!(
            std::path::Path::new("/usr/bin/chromium").exists(),
            "Debian's chromium is not installed: run tests/run (it installs it)"
        );
        // Two unikgates: BASE as the README's quick start (unikgate's pages only), BASE2 with
        // `password_login` (Matomo's own login page, with the plugin's button). Both with Matomo
        // under /analytics/ (Apache's Alias; the other journeys cover the root): unikgate's pages,
        // the plugin's button and Security card (its prefix found from Matomo's own path) and
        // every asset Matomo's pages load, under the path.
        let mut ports = Vec::new();
        for _ in 0..3 {
            let l = m.gate_listener();
            ports.push(l.local_addr().map_err(|e| e.to_string())?.port());
            drop(l);
        }
        let bases: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let scheme = if i == 0 { "https" } else { "http" };
                format!("{scheme}://127.0.0.1:{p}/analytics")
            })
            .collect();
        let provider = NodeProvider::start(
            &bases
                .iter()
                .map(|b| format!("{b}/_unikgate/callback"))
                .collect::<Vec<_>>(),
            &bases
                .iter()
                .map(|b| format!("{b}/_unikgate/signed_out"))
                .collect::<Vec<_>>(),
        )
        .await;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // A test CA and a certificate for 127.0.0.1 (Matomo's trusted host) for the https one.
        let ca = support::ca::Ca::new("real-matomo");
        let (leaf_pem, leaf_key_pem) = ca.leaf(&["127.0.0.1"]);
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, leaf_pem).map_err(|e| e.to_string())?;
        std::fs::write(&key_file, leaf_key_pem).map_err(|e| e.to_string())?;
        let probe = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(ca.pem.as_bytes()).map_err(|e| e.to_string())?,
            )
            .build()
            .map_err(|e| e.to_string())?;
        let mut gates = Vec::new();
        for (i, (port, base)) in ports.iter().zip(&bases).enumerate() {
            let cfg = dir.path().join(format!("unikgate{i}.toml"));
            let extra = if i == 1 {
                "password_login = true\n".to_string()
            } else if i == 2 {
                "[access]\nallow_email_domains = [\"example.org\"]\n[provision]\nmode = \"offer\"\naccess = [\"/matomo/1/view\"]\n[links]\nallow_unlink = false\n".to_string()
            } else {
                format!(
                    "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                    cert_file.display(),
                    key_file.display()
                )
            };
            std::fs::write(
                &cfg,
                format!(
                    "[server]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"{base}/\"\n[upstream]\nurl = \"{}/analytics/\"\n[provider]\n{}[store]\nurl = \"sqlite://{}/data{i}/unikgate.db\"\n{}",
                    m.apache,
                    if i == 2 {
                        format!("{}scopes = [\"openid\", \"email\", \"profile\"]\n", provider.config_discovery())
                    } else {
                        provider.config_discovery()
                    },
                    dir.path().display(),
                    matomo_section(Minter::Signed, if i == 1 { &extra } else { "" })
                ),
            )
            .map_err(|e| e.to_string())?;
            if i != 1 {
                // After [matomo]: sections of their own.
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&cfg)
                    .map_err(|e| e.to_string())?;
                std::io::Write::write_all(&mut f, extra.as_bytes()).map_err(|e| e.to_string())?;
            }
            gates.push(
                tokio::process::Command::new(env!("CARGO_BIN_EXE_unikgate"))
                    .args(["serve", "-c"])
                    .arg(&cfg)
                    .env("UNIKGATE_LOG", "warn")
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| e.to_string())?,
            );
            let mut up = false;
            for _ in 0..200 {
                if probe
                    .get(format!("{base}/_unikgate/healthz"))
                    .send()
                    .await
                    .is_ok()
                {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ensure!(up, "unikgate {base} did not come up");
        }
        let base = &bases[0];
        // The dashboard shows its widgets once the site has a visit (else Matomo's "choose your
        // tracking method" page): one hit, whichever test runs first.
        let hit = reqwest::get(format!(
            "{}/matomo.php?idsite=1&rec=1&apiv=1&_id=0123456789abcdef&url=https%3A%2F%2Fwww.example.com%2F&action_name=Home&send_image=0",
            m.apache
        ))
        .await
        .map_err(|e| e.to_string())?;
        ensure!(hit.status().is_success(), "tracking hit: {}", hit.status());
        let shots = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
        let out = tokio::process::Command::new("node")
            .arg(node_dir().join("journey.mjs"))
            .env("BASE", base)
            .env("BASE2", &bases[1])
            .env("BASE3", &bases[2])
            .env("PROVIDER", provider.issuer())
            .env("SHOTS", &shots)
            .env("ALICE_PASSWORD", ALICE.1)
            .env("BOB_PASSWORD", BOB.1)
            .env("ADMIN_PASSWORD", ADMIN.1)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        for mut g in gates {
            let _ = g.kill().await;
        }
        // The account the journey made (other tests count Matomo's users).
        let _ = m
            .api("UsersManager.deleteUser", &[("userLogin", "frank")])
            .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        ensure!(
            out.status.success() && stdout.contains(" passed, 0 failed"),
            "the browser journey failed:\n{stdout}\n{}",
            m.php_errors()
        );
        Ok(())
    })
}

/// Sign-in through the real `oidc-provider` as `bcl-carol`, to Matomo's dashboard.
async fn sign_in_real(
    app: &TestApp,
    provider: &support::provider::NodeProvider,
    b: &Browser,
) -> reqwest::Response {
    let html = b
        .get(&app.url("/_unikgate/sign_in"))
        .await
        .text()
        .await
        .unwrap_or_default();
    let res = b
        .post(
            &app.url("/_unikgate/start"),
            &[("csrf", &support::csrf_of(&html)), ("rd", DASHBOARD)],
        )
        .await;
    let back = provider
        .interact(b, &location(&res), "bcl-carol", true)
        .await;
    b.get(&location(&back)).await
}

/// Back-channel logout with the real `oidc-provider` (its feature on, the client registered with
/// unikgate's back-channel URI) in front of the real Matomo (signed minter): two browsers signed
/// in as the same @unikname; the provider ends that @unikname's sessions from a third path (an
/// admin revocation); both unikgate sessions and both Matomo sessions are dead when the provider
/// has answered (it posts the logout token before it answers).
fn backchannel_logout_with_the_real_provider(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        use support::provider::NodeProvider;
        let l = m.gate_listener();
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = l.local_addr().map_err(|e| e.to_string())?;
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        let base = format!("http://{addr}");
        let provider = NodeProvider::start_with(
            &[format!("{base}/_unikgate/callback")],
            &[format!("{base}/_unikgate/signed_out")],
            Some(&format!("{base}/_unikgate/backchannel_logout")),
        )
        .await;
        let toml = config(
            &m.apache,
            &provider.config_discovery(),
            &matomo_section(Minter::Signed, ""),
        );
        let dir = Arc::new(tempfile::tempdir().map_err(|e| e.to_string())?);
        let app = TestApp::start_on(&toml, dir, l, addr).await;
        // doctor reads the provider's discovery.
        let steps = unikgate::doctor::run(&app.app, None).await;
        let bcl = steps
            .iter()
            .find(|s| s.name == "back-channel logout")
            .ok_or("doctor has no back-channel step")?;
        ensure!(
            bcl.detail.contains("supported by the provider, with sid"),
            "doctor: {}",
            bcl.detail
        );
        let one = Browser::new();
        let res = sign_in_real(&app, &provider, &one).await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "first sign-in: {}",
            location(&res)
        );
        let res = support::link_password(&one, &app, DASHBOARD, ALICE.0, ALICE.1).await;
        ensure!(res.status() == 302, "link: {}", res.status());
        let two = Browser::new();
        let res = sign_in_real(&app, &provider, &two).await;
        ensure!(
            location(&res).ends_with(DASHBOARD),
            "second browser, already linked: {}",
            location(&res)
        );
        let mut cookies = Vec::new();
        for b in [&one, &two] {
            let (_, user, _) = page_user(b, &app.url(DASHBOARD)).await;
            ensure!(user.as_deref() == Some("alice"), "before: {user:?}");
            let c = matomo_cookie(b, &app).ok_or("no Matomo cookie")?;
            ensure!(
                whoami_direct(&m.apache, &c).await?.as_deref() == Some("alice"),
                "Matomo knows the session"
            );
            cookies.push(c);
        }
        ensure!(cookies[0] != cookies[1], "two Matomo sessions");
        // The third path: the provider ends every session of that @unikname.
        let res = reqwest::Client::new()
            .post(format!("{}/test/end_sessions", provider.issuer()))
            .form(&[("login", "bcl-carol")])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body = res.text().await.unwrap_or_default();
        ensure!(
            body.contains("\"sent\":true"),
            "the provider did not send: {body}"
        );
        for (b, c) in [&one, &two].into_iter().zip(&cookies) {
            let res = b.get(&app.url(DASHBOARD)).await;
            ensure!(
                res.status() == 302 && location(&res).contains("/_unikgate/sign_in"),
                "the unikgate session survived: {} {}",
                res.status(),
                location(&res)
            );
            ensure!(
                whoami_direct(&m.apache, c).await?.is_none(),
                "the Matomo session survived the back-channel logout"
            );
        }
        // Signing in again: the provider asks again (its sessions ended), and the link stays.
        let res = sign_in_real(&app, &provider, &one).await;
        ensure!(
            location(&res).ends_with(DASHBOARD),
            "after the logout, sign-in goes straight to Matomo: {}",
            location(&res)
        );
        Ok(())
    })
}

/// The link page's answers to Matomo's proof answers: wrong password, short password, an email
/// instead of the login, then the right one.
fn password_proof_answers(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = Browser::new();
        let res = sign_in(&b, &app, &p, "uns-proof", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        for (login, password, want) in [
            (ALICE.0, "not-alices-password", "do not match"),
            (ALICE.0, "abc", "do not match"),
            ("alice@example.com", ALICE.1, "not your email"),
        ] {
            let res = link_password(&b, &app, "/", login, password).await;
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            ensure!(
                status.is_client_error() && body.contains(want),
                "{login}/{password}: want {want:?}, got {status}\n{}",
                support::real::clip(&body)
            );
        }
        let res = link_password(&b, &app, "/", ALICE.0, ALICE.1).await;
        ensure!(res.status() == 302, "the right password: {}", res.status());
        Ok(())
    })
}

/// Gives the anonymous user view access to site 1 (a public dashboard) while `f` runs.
async fn with_anonymous_view<'a, F>(m: &'a RealMatomo, f: F) -> Result<(), String>
where
    F: Future<Output = Result<(), String>> + 'a,
{
    let v = m
        .api(
            "UsersManager.setUserAccess",
            &[
                ("userLogin", "anonymous"),
                ("access", "view"),
                ("idSites", "1"),
            ],
        )
        .await?;
    ensure!(
        v.get("result").and_then(|r| r.as_str()) == Some("success"),
        "anonymous view access: {v}"
    );
    let out = f.await;
    m.api(
        "UsersManager.setUserAccess",
        &[
            ("userLogin", "anonymous"),
            ("access", "noaccess"),
            ("idSites", "1"),
        ],
    )
    .await?;
    out
}

/// What unikgate answered, and whether the answer came from the login plugins' controllers.
async fn send(
    b: &Browser,
    method: &str,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(u16, String, String), String> {
    let req = if method == "POST" {
        b.client.post(url).form(form)
    } else {
        b.client.get(url)
    };
    let res = req.send().await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let loc = location(&res);
    let body = res.text().await.unwrap_or_default();
    Ok((status, loc, body))
}

fn ran_a_login_plugin(body: &str) -> bool {
    body.contains("No username defined")
        || body.contains("Autologin error")
        || body.contains("{\"login\":")
}

fn the_login_plugins_are_unreachable_in_every_spelling(m: &RealMatomo) -> Fut<'_> {
    Box::pin(with_anonymous_view(m, async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let anon = Browser::new();
        let alice = sign_in_and_link(&app, &p, "uns-spellings", ALICE).await?;
        let w = "idSite=1&period=day&date=today";
        let cases: Vec<Case> = vec![
            ("GET", format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=AutoLogin&actionToWidgetize=index&{w}&token_auth=anonymous"), vec![]),
            ("GET", format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=UnikGate&actionToWidgetize=whoami&{w}&token_auth=anonymous"), vec![]),
            ("GET", format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=Auto%26%2376%3Bogin&actionToWidgetize=index&{w}&token_auth=anonymous"), vec![]),
            ("GET", format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=Auto%26%23x4c%3Bogin&actionToWidgetize=index&{w}&token_auth=anonymous"), vec![]),
            ("GET", format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=AutoLogin%00&actionToWidgetize=index&{w}&token_auth=anonymous"), vec![]),
            ("GET", format!("/index.php?module=Wid%67etize&action=ifr%61me&moduleToWidgetize=Login&moduleToWidgetize=AutoLogin&actionToWidgetize=index&{w}&token_auth=anonymous"), vec![]),
            ("POST", format!("/index.php?module=Widgetize&action=iframe&{w}&token_auth=anonymous"), vec![("moduleToWidgetize", "AutoLogin"), ("actionToWidgetize", "index")]),
            ("POST", format!("/index.php?{w}"), vec![("module", "Widgetize"), ("action", "iframe"), ("moduleToWidgetize", "UnikGate"), ("actionToWidgetize", "whoami"), ("token_auth", "anonymous")]),
            ("GET", format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=CoreHome&actionToWidgetize=showInContext&moduleToLoad=AutoLogin&actionToLoad=index&{w}&token_auth=anonymous"), vec![]),
            ("GET", format!("/index.php?module=CoreHome&action=showInContext&moduleToLoad=AutoLogin&actionToLoad=index&{w}"), vec![]),
            ("GET", format!("/index.php?module=CoreHome&action=showInContext&moduleToLoad=UnikGate&actionToLoad=whoami&{w}"), vec![]),
            ("GET", "/index.php?module=Auto%26%2376%3Bogin&action=index".to_string(), vec![]),
            ("GET", "/index.php?module=UnikGate%00&action=whoami".to_string(), vec![]),
            ("GET", "/index.php?module=API&method=AutoLogin.getUsersLogin&format=json&token_auth=anonymous".to_string(), vec![]),
            ("GET", "/index.php?module=API&method=Auto%26%2376%3Bogin.getUsersLogin&format=json&token_auth=anonymous".to_string(), vec![]),
            ("POST", "/index.php?module=API&method=API.getBulkRequest&format=json".to_string(), vec![("token_auth", "anonymous"), ("urls[0]", "method=AutoLogin.setSuperUserAccess&userLogin=bob&hasSuperUserAccess=1")]),
            ("POST", "/index.php?module=API&method=API.getBulkRequest&format=json".to_string(), vec![("token_auth", "anonymous"), ("urls[0]", "method%3DAutoLogin.setSuperUserAccess%26userLogin%3Dbob%26hasSuperUserAccess%3D1")]),
            ("GET", format!("/index.php?module=PagePerformance&action=indexPagePerformance&apiMethod=AutoLogin.getUsersLogin&{w}"), vec![]),
        ];
        for (who, b) in [("not signed in", &anon), ("signed in as alice", &alice)] {
            for (method, path, form) in &cases {
                let (status, loc, body) = send(b, method, &app.url(path), form).await?;
                ensure!(
                    !ran_a_login_plugin(&body),
                    "{who}: {method} {path} {form:?} ran a login plugin ({status}):\n{}",
                    support::real::clip(&body)
                );
                let refused =
                    status == 403 || (loc.contains("/_unikgate/sign_in") && who == "not signed in");
                ensure!(
                    refused,
                    "{who}: {method} {path} {form:?} was not refused: {status} {loc}\n{}",
                    support::real::clip(&body)
                );
            }
        }
        let v = m
            .api("UsersManager.getUser", &[("userLogin", "bob")])
            .await?;
        ensure!(
            v.get("superuser_access").map(|s| s.to_string()).as_deref() != Some("1")
                && v.get("superuser_access") != Some(&serde_json::json!(true)),
            "bob became a superuser: {v}"
        );
        // Matomo's Login module through Widgetize is never public.
        let (status, loc, body) = send(&anon, "GET", &app.url(&format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=Login&actionToWidgetize=login&{w}&token_auth=anonymous")), &[]).await?;
        ensure!(
            status == 302 && loc.contains("/_unikgate/sign_in"),
            "Login through Widgetize: {status} {loc}\n{}",
            support::real::clip(&body)
        );
        // A public widget still works for everyone (the public dashboard).
        let (status, _, body) = send(&anon, "GET", &app.url(&format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=VisitsSummary&actionToWidgetize=getEvolutionGraph&{w}&token_auth=anonymous&disableLink=1&widget=1")), &[]).await?;
        ensure!(
            status == 200 && body.contains("piwik.userLogin = \"anonymous\""),
            "a public widget: {status}\n{}",
            support::real::clip(&body)
        );
        Ok(())
    }))
}

fn no_matomo_password_opens_a_door_without_an_unikname(m: &RealMatomo) -> Fut<'_> {
    Box::pin(with_anonymous_view(m, async move {
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let anon = Browser::new();
        let token_for =
            "/index.php?module=API&method=UsersManager.createAppSpecificTokenAuth&format=json";
        let w = "idSite=1&period=day&date=today";
        let bulk_entry = format!("method=UsersManager.createAppSpecificTokenAuth&userLogin=alice&passwordConfirmation={}&description=x", ALICE.1);
        let bulk_encoded: String = form_urlencoded::byte_serialize(bulk_entry.as_bytes()).collect();
        let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
            (token_for.to_string(), vec![("token_auth", "anonymous"), ("userLogin", "alice"), ("passwordConfirmation", ALICE.1), ("description", "x")]),
            (token_for.replace("UsersManager", "Users%26%2377%3Banager"), vec![("token_auth", "anonymous"), ("userLogin", "alice"), ("passwordConfirmation", ALICE.1), ("description", "x")]),
            ("/index.php?module=API&method=API.getBulkRequest&format=json".to_string(), vec![("token_auth", "anonymous"), ("urls[0]", &bulk_entry)]),
            ("/index.php?module=API&method=API.getBulkRequest&format=json".to_string(), vec![("token_auth", "anonymous"), ("urls[0]", &bulk_encoded)]),
            ("/index.php?module=API&method=API.getBulkRequest&format=json".to_string(), vec![("token_auth", "anonymous"), ("urls[0]", "method=UsersManager.createAppSpecificTokenAuth&userLogin=alice&description=x"), ("passwordConfirmation", ALICE.1)]),
            // Any page the anonymous user may not see renders Matomo's login, which takes a posted password.
            (format!("/index.php?module=Widgetize&action=iframe&moduleToWidgetize=UsersManager&actionToWidgetize=index&{w}&token_auth=anonymous"), vec![("form_login", "alice"), ("form_password", ALICE.1), ("form_nonce", "x")]),
        ];
        for (path, form) in &cases {
            let (status, _, body) = send(&anon, "POST", &app.url(path), form).await?;
            ensure!(
                !body.contains("\"value\""),
                "{path} {form:?} gave a token:\n{body}"
            );
            ensure!(
                status == 403,
                "{path} {form:?}: {status}\n{}",
                support::real::clip(&body)
            );
        }
        // With password_login on, Matomo's own password features are the operator's choice.
        let open = gate(
            m,
            Web::Apache,
            Minter::Signed,
            &p,
            "password_login = true\n",
        )
        .await;
        let (status, _, body) = send(&anon, "POST", &open.url(token_for), &cases[0].1).await?;
        ensure!(
            status == 200 && body.contains("\"value\""),
            "password_login = true: {status}\n{body}"
        );
        Ok(())
    }))
}

/// Everything the harness started listens on 127.0.0.1 only (and PHP-FPM on a unix socket).
fn nothing_the_harness_starts_listens_beyond_loopback(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let l = support::real::listeners_under(&m.root);
        let ports: Vec<&str> = l.iter().map(|(_, a)| a.as_str()).collect();
        for want in [
            format!("127.0.0.1:{}", m.db_port),
            m.apache.trim_start_matches("http://").to_string(),
            m.fpm.trim_start_matches("http://").to_string(),
        ] {
            ensure!(
                ports.contains(&want.as_str()),
                "{want} is not among the listeners: {l:?}"
            );
        }
        for (who, addr) in &l {
            ensure!(addr.starts_with("127.0.0.1:"), "{who} listens on {addr}");
        }
        Ok(())
    })
}

/// unikgate started as the compose file starts it: the image's config file and environment
/// (Dockerfile), then `deploy/docker-compose.yml`'s `environment:` for the service, substituted
/// from `dotenv`. What differs on loopback: no TLS terminator (the public URL is http), the
/// service names become loopback addresses, `/run/secrets` is a folder of the test, and the
/// provider is the test's (compose uses Unikname Connect's defaults).
struct ComposeGate {
    env: Vec<(String, String)>,
    base: String,
    child: Option<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl ComposeGate {
    fn new(
        m: &RealMatomo,
        dotenv: &std::collections::BTreeMap<String, String>,
        matomo_url: &str,
        p: &FakeProvider,
    ) -> Result<ComposeGate, String> {
        use support::compose;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let secrets = dir.path().join("secrets");
        std::fs::create_dir_all(&secrets).map_err(|e| e.to_string())?;
        std::fs::write(
            secrets.join("client_secret"),
            support::provider::CLIENT_SECRET,
        )
        .map_err(|e| e.to_string())?;
        std::fs::copy(&m.secret_file, secrets.join("shared_secret")).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(compose::deploy_dir().join("docker-compose.yml"))
            .map_err(|e| e.to_string())?;
        let base = format!("http://{}", dotenv["PUBLIC_HOST"]);
        let mut env = vec![
            // The image (Dockerfile).
            (
                "UNIKGATE_SERVER__LISTEN".to_string(),
                dotenv["PUBLIC_HOST"].clone(),
            ),
            (
                "UNIKGATE_STORE__URL".to_string(),
                format!("sqlite://{}/unikgate.db", dir.path().display()),
            ),
        ];
        for (k, v) in compose::environment(&text, "unikgate") {
            let v = compose::substitute(&v, dotenv)?
                .replace("https://", "http://")
                .replace("http://matomo:80", matomo_url)
                .replace("/run/secrets", &secrets.display().to_string());
            env.push((k, v));
        }
        let b = p.issuer();
        for (k, v) in [
            ("UNIKGATE_PROVIDER__ISSUER", b.clone()),
            ("UNIKGATE_PROVIDER__AUTHORIZE_URL", format!("{b}/authorize")),
            ("UNIKGATE_PROVIDER__TOKEN_URL", format!("{b}/accessToken")),
            ("UNIKGATE_PROVIDER__USERINFO_URL", format!("{b}/profile")),
            ("UNIKGATE_PROVIDER__JWKS_URL", format!("{b}/jwks-unused")),
            ("UNIKGATE_PROVIDER__ID_TOKEN_ALGS", "HS256".into()),
            ("UNIKGATE_LOG", "warn".into()),
        ] {
            env.push((k.to_string(), v));
        }
        Ok(ComposeGate {
            env,
            base,
            child: None,
            _dir: dir,
        })
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_unikgate"));
        c.args(args)
            .arg("-c")
            .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/unikgate.toml"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .kill_on_drop(true);
        c
    }

    /// `docker compose up -d`: (re)starts the service with the current environment.
    async fn up(&mut self) -> Result<(), String> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
        self.child = Some(
            self.command(&["serve"])
                .spawn()
                .map_err(|e| e.to_string())?,
        );
        for _ in 0..200 {
            if reqwest::get(format!("{}/_unikgate/healthz", self.base))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("unikgate did not come up with the compose environment".into())
    }

    async fn run(&self, args: &[&str]) -> Result<(bool, String), String> {
        let out = self
            .command(args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ))
    }
}

/// The README's compose section, step by step, on a fresh Matomo.
fn compose_rehearsal_as_the_readme_says(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        use support::compose;
        let site = m.fresh_site("rehearsal").await?;
        let p = FakeProvider::start().await;
        let l = m.gate_listener();
        let public_host = l.local_addr().map_err(|e| e.to_string())?.to_string();
        drop(l);
        // 1. cp deploy/.env.example deploy/.env, then edit it; 2. the secret files.
        let mut dotenv = compose::read_env_file(&compose::deploy_dir().join(".env.example"));
        dotenv.insert("PUBLIC_HOST".into(), public_host.clone());
        // Rehearsed natively over plain http: TLS_MODE=off, as behind a proxy of one's own.
        dotenv.insert("TLS_MODE".into(), "off".into());
        dotenv.insert(
            "UNIKNAME_CLIENT_ID".into(),
            support::provider::CLIENT_ID.into(),
        );
        ensure!(
            dotenv.get("PASSWORD_LOGIN").map(String::as_str) == Some("true"),
            ".env.example should start with PASSWORD_LOGIN=true (the installer must pass)"
        );
        // 3. docker compose up -d.
        let mut gate = ComposeGate::new(m, &dotenv, &site.url, &p)?;
        gate.up().await?;
        // 4. Matomo's web installer, through unikgate.
        m.web_installer(&gate.base, &site.db, &site.tree).await?;
        let ini = site.config_ini();
        support::real::check_installed_behind_unikgate(&ini)?;
        ensure!(
            ini.contains(&format!("trusted_hosts[] = \"{public_host}\"")),
            "the installer did not trust the public host:\n{ini}"
        );
        // 5. matomo-setup.sh, as www-data, with the container's environment (PUBLIC_HOST,
        // PUBLIC_URL, MINTER).
        let script = format!(
            "MATOMO_DIR='{}' SHARED_SECRET_FILE='{}' PUBLIC_HOST='{public_host}' PUBLIC_URL='{}' MINTER='{}' bash '{}'",
            site.tree.display(),
            m.secret_file.display(),
            gate.base,
            dotenv["MINTER"],
            compose::deploy_dir().join("matomo-setup.sh").display()
        );
        let out = support::real::as_web_user_in(&site.tree, &script)?;
        ensure!(
            !out.contains(SHARED_SECRET),
            "matomo-setup.sh printed the secret:\n{out}"
        );
        let once = site.config_ini();
        support::real::as_web_user_in(&site.tree, &script)?;
        ensure!(
            site.config_ini() == once,
            "a second matomo-setup.sh run changed config.ini.php"
        );
        support::real::check_set_up(&once, &public_host, Some(&gate.base))?;
        // 6. PASSWORD_LOGIN=false, docker compose up -d.
        gate.set("UNIKGATE_MATOMO__PASSWORD_LOGIN", "false");
        gate.up().await?;
        // 7. unikgate doctor --as admin.
        let (ok, out) = gate.run(&["doctor", "--as", ADMIN.0]).await?;
        ensure!(ok && out.contains("ok   mint"), "doctor --as admin:\n{out}");
        // 8. The first @unikname sign-in and link, as the installer's superuser.
        let b = Browser::new();
        let res = support::sign_in_at(&b, &gate.base, &p, "uns-rehearsal-admin", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "first sign-in: {}",
            location(&res)
        );
        let res = support::link_password_at(&b, &gate.base, "/", ADMIN.0, ADMIN.1).await;
        ensure!(res.status() == 302, "linking admin: {}", res.status());
        let (status, user, body) = page_user(&b, &format!("{}{DASHBOARD}", gate.base)).await;
        ensure!(
            status == 200 && user.as_deref() == Some(ADMIN.0),
            "Matomo as admin: {status} {user:?}\n{body}"
        );
        // 9. Matomo's own "Sign out" ends on unikgate's page.
        let res = b
            .get(&format!(
                "{}/index.php?module=Login&action=logout",
                gate.base
            ))
            .await;
        let (res, at) = b.follow(res, 6).await;
        ensure!(
            res.status() == 200 && at.contains("/_unikgate/"),
            "Matomo's sign-out ended on {at} ({})",
            res.status()
        );
        Ok(())
    })
}

/// RFC 6238 TOTP (HMAC-SHA1, 30 s, 6 digits), as Matomo's TwoFactorAuthenticator computes it,
/// for the time slice `now / 30 + offset`.
fn totp(base32_secret: &str, offset: i64) -> String {
    use hmac::Mac;
    let mut bits: u64 = 0;
    let mut n = 0;
    let mut key = Vec::new();
    for c in base32_secret.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        bits = (bits << 5) | u64::from(v);
        n += 5;
        if n >= 8 {
            key.push((bits >> (n - 8)) as u8);
            n -= 8;
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let slice = (now / 30 + offset) as u64;
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&key) else {
        return String::new();
    };
    mac.update(&slice.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[h.len() - 1] & 0x0f) as usize;
    let v = u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]) & 0x7fff_ffff;
    format!("{:06}", v % 1_000_000)
}

const CAROL: (&str, &str) = ("carol", "carol-Passw0rd-real");

/// Whether Matomo answers `url` with its own two-factor code page (the whole page is read).
async fn shows_two_factor_page(b: &Browser, url: &str) -> bool {
    let res = b.get(url).await;
    let (res, _) = b.follow(res, 6).await;
    res.text()
        .await
        .unwrap_or_default()
        .contains("TwoFactorAuth.LoginTwoFactorAuth")
}
const CAROL_TOTP: &str = "JBSWY3DPEHPK3PXP";

/// The link form with a password and a two-factor code.
async fn link_with_code(
    b: &Browser,
    app: &TestApp,
    who: (&str, &str),
    code: &str,
) -> Result<(u16, String), String> {
    let html = b
        .get(&app.url("/_unikgate/link"))
        .await
        .text()
        .await
        .unwrap_or_default();
    let res = b
        .post(
            &app.url("/_unikgate/link"),
            &[
                ("csrf", &support::csrf_of(&html)),
                ("rd", "/"),
                ("mode", "password"),
                ("login", who.0),
                ("password", who.1),
                ("code", code),
            ],
        )
        .await;
    let status = res.status().as_u16();
    Ok((status, res.text().await.unwrap_or_default()))
}

fn two_factor_accounts_link_with_their_code_and_keep_it(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let v = m
            .api(
                "UsersManager.addUser",
                &[
                    ("userLogin", CAROL.0),
                    ("password", CAROL.1),
                    ("email", "carol@example.com"),
                    ("initialIdSite", "1"),
                ],
            )
            .await?;
        ensure!(
            v.get("result").and_then(|r| r.as_str()) != Some("error"),
            "addUser carol: {v}"
        );
        // Two-factor authentication on, as Matomo's own setup would store it.
        m.sql(&format!(
            "UPDATE matomo.matomo_user SET twofactor_secret = '{CAROL_TOTP}' WHERE login = 'carol'"
        ))?;
        let p = FakeProvider::start().await;
        let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
        let b = Browser::new();
        let res = sign_in(&b, &app, &p, "uns-carol", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        // The password alone: the page asks for the code, and nothing is linked.
        let res = link_password(&b, &app, "/", CAROL.0, CAROL.1).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            status == 401
                && body.contains("uses two-factor authentication")
                && body.contains("name=\"code\"")
                && body.contains("required")
                && !body.contains(CAROL.1),
            "password alone: {status}\n{}",
            support::real::clip(&body)
        );
        // A wrong code says so, and nothing is linked.
        let valid: Vec<String> = (-2..=2).map(|o| totp(CAROL_TOTP, o)).collect();
        let wrong = (0..1_000_000)
            .map(|n| format!("{n:06}"))
            .find(|c| !valid.contains(c))
            .unwrap_or_default();
        let (status, body) = link_with_code(&b, &app, CAROL, &wrong).await?;
        ensure!(
            status == 401 && body.contains("two-factor code is not right"),
            "wrong code: {status}\n{}",
            support::real::clip(&body)
        );
        let res = link_password(&b, &app, "/", CAROL.0, CAROL.1).await;
        ensure!(
            res.status() == 401,
            "the password alone never links: {}",
            res.status()
        );
        ensure!(
            app.app
                .links
                .get_by_login(CAROL.0)
                .await
                .map_err(|e| e.to_string())?
                .is_none(),
            "linked without the code"
        );
        // Password + the current code: linked, and Matomo opens as carol without asking its code.
        let (status, body) = link_with_code(&b, &app, CAROL, &totp(CAROL_TOTP, 0)).await?;
        ensure!(
            status == 302,
            "password + code: {status}\n{}",
            support::real::clip(&body)
        );
        let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            status == 200
                && user.as_deref() == Some(CAROL.0)
                && !shows_two_factor_page(&b, &app.url(DASHBOARD)).await,
            "Matomo after linking: {status} {user:?}\n{body}"
        );
        // Later sign-ins: straight to Matomo, no code asked.
        let b2 = Browser::new();
        let res = sign_in(&b2, &app, &p, "uns-carol", DASHBOARD).await;
        ensure!(
            !location(&res).contains("/_unikgate/link"),
            "second sign-in: {}",
            location(&res)
        );
        let (status, user, body) = page_user(&b2, &app.url(DASHBOARD)).await;
        ensure!(
            status == 200
                && user.as_deref() == Some(CAROL.0)
                && !shows_two_factor_page(&b2, &app.url(DASHBOARD)).await,
            "second sign-in in Matomo: {status} {user:?}\n{body}"
        );
        Ok(())
    })
}

fn two_factor_required_for_everyone_says_set_it_up_first(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        // TwoFactorAuth's system setting "require two-factor for all users", as Matomo stores it.
        m.sql("INSERT INTO matomo.matomo_plugin_setting (plugin_name, setting_name, setting_value, json_encoded, user_login) VALUES ('TwoFactorAuth', 'twoFactorAuthRequired', '1', 0, '')")?;
        let result = async {
            let p = FakeProvider::start().await;
            let app = gate(m, Web::Apache, Minter::Signed, &p, "").await;
            let b = Browser::new();
            let res = sign_in(&b, &app, &p, "uns-2fa-required", "/").await;
            ensure!(
                location(&res).contains("/_unikgate/link"),
                "{}",
                location(&res)
            );
            let res = link_password(&b, &app, "/", BOB.0, BOB.1).await;
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            ensure!(
                status == 401
                    && body.contains("requires two-factor authentication for every account"),
                "2FA required, none set up: {status}\n{}",
                support::real::clip(&body)
            );
            Ok(())
        }
        .await;
        m.sql("DELETE FROM matomo.matomo_plugin_setting WHERE plugin_name = 'TwoFactorAuth' AND setting_name = 'twoFactorAuthRequired'")?;
        result
    })
}

fn matomo_brute_force_block_and_matomo_down_have_their_own_messages(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        // 20 failures from one client address make Matomo block it (its brute-force protection).
        let ip = "203.0.113.77";
        let client = reqwest::Client::new();
        for i in 0..21 {
            client
                .post(format!("{}/index.php?module=API&method=UsersManager.createAppSpecificTokenAuth&format=json", m.apache))
                .header("x-forwarded-for", ip)
                .form(&[("userLogin", "bob"), ("passwordConfirmation", &format!("wrong-password-{i}")), ("description", "x")])
                .send()
                .await
                .map_err(|e| e.to_string())?;
        }
        let result = async {
            let p = FakeProvider::start().await;
            let app = gate_behind_a_proxy(m, &p).await;
            let b = Browser::new();
            let res = sign_in(&b, &app, &p, "uns-blocked", "/").await;
            ensure!(
                location(&res).contains("/_unikgate/link"),
                "{}",
                location(&res)
            );
            let html = b
                .get(&app.url("/_unikgate/link"))
                .await
                .text()
                .await
                .unwrap_or_default();
            let res = b
                .client
                .post(app.url("/_unikgate/link"))
                .header("x-forwarded-for", ip)
                .form(&[
                    ("csrf", support::csrf_of(&html).as_str()),
                    ("rd", "/"),
                    ("mode", "password"),
                    ("login", BOB.0),
                    ("password", BOB.1),
                ])
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            ensure!(
                status == 401 && body.contains("too many failed attempts"),
                "blocked: {status}\n{}",
                support::real::clip(&body)
            );
            Ok(())
        }
        .await;
        let v = m.api("Login.unblockBruteForceIPs", &[]).await?;
        ensure!(
            v.get("result").and_then(|r| r.as_str()) != Some("error"),
            "unblock: {v}"
        );
        result?;
        // Matomo down: its own page, nothing linked.
        let p = FakeProvider::start().await;
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let app = TestApp::start(&config(
            &format!("http://127.0.0.1:{closed}"),
            &p.config(),
            &matomo_section(Minter::Signed, ""),
        ))
        .await;
        let b = Browser::new();
        let res = sign_in(&b, &app, &p, "uns-matomo-down", "/").await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        let res = link_password(&b, &app, "/", BOB.0, BOB.1).await;
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        ensure!(
            status == 502 && body.contains("Matomo is unreachable"),
            "Matomo down: {status}\n{}",
            support::real::clip(&body)
        );
        Ok(())
    })
}

/// Matomo's own login page (password_login on) offers the @unikname sign-in below its form, and
/// the button keeps the page that was asked for through sign-in and link.
fn matomos_login_page_offers_the_unikname_sign_in(m: &RealMatomo) -> Fut<'_> {
    Box::pin(async move {
        let p = FakeProvider::start().await;
        let app = gate(
            m,
            Web::Apache,
            Minter::Signed,
            &p,
            "password_login = true\n",
        )
        .await;
        let b = Browser::new();
        let html = b
            .get(&app.url(DASHBOARD))
            .await
            .text()
            .await
            .unwrap_or_default();
        ensure!(
            html.contains("login_form"),
            "Matomo's login page was expected:\n{}",
            support::real::clip(&html)
        );
        let i = html.find("id=\"unikgate_login\"").ok_or_else(|| {
            format!(
                "no @unikname button on Matomo's login page:\n{}",
                support::real::clip(&html)
            )
        })?;
        let button = &html[i..html[i..]
            .find("</span>")
            .map(|e| i + e)
            .unwrap_or(html.len())];
        ensure!(
            button.contains("Connect with your private @unikname"),
            "the button's label: {button}"
        );
        let href = button
            .split("href=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .ok_or("the button has no link")?
            .replace("&amp;", "&");
        let want_rd: String = form_urlencoded::byte_serialize(DASHBOARD.as_bytes()).collect();
        ensure!(
            href == format!("/_unikgate/sign_in?rd={}", want_rd.replace('+', "%20")),
            "the button's link: {href}"
        );
        let page = b
            .get(&app.url(&href))
            .await
            .text()
            .await
            .unwrap_or_default();
        ensure!(
            page.contains(&format!(
                "name=\"rd\" value=\"{}\"",
                DASHBOARD.replace('&', "&#38;")
            )),
            "unikgate's sign-in page lost the page asked for:\n{}",
            support::real::clip(&page)
        );
        let res = sign_in(&b, &app, &p, "uns-login-page-button", DASHBOARD).await;
        ensure!(
            location(&res).contains("/_unikgate/link"),
            "{}",
            location(&res)
        );
        let res = link_password(&b, &app, DASHBOARD, ALICE.0, ALICE.1).await;
        ensure!(
            res.status() == 302 && location(&res).ends_with(DASHBOARD),
            "after linking: {} {}",
            res.status(),
            location(&res)
        );
        let (status, user, body) = page_user(&b, &app.url(DASHBOARD)).await;
        ensure!(
            status == 200 && user.as_deref() == Some("alice"),
            "Matomo as alice: {status} {user:?}\n{body}"
        );
        Ok(())
    })
}

fn main() {
    let args = Arguments::from_args();
    let tests: Vec<(&str, TestFn)> = vec![
        (
            "setup_script_configured_the_tree",
            setup_script_configured_the_tree,
        ),
        (
            "nothing_the_harness_starts_listens_beyond_loopback",
            nothing_the_harness_starts_listens_beyond_loopback,
        ),
        ("signed_apache_journey", signed_apache_journey),
        ("journey_under_a_path", journey_under_a_path),
        (
            "admin_api_follows_superuser_access_in_matomo",
            admin_api_follows_superuser_access_in_matomo,
        ),
        (
            "provision_through_unikgate_and_claim_mapped_access",
            provision_through_unikgate_and_claim_mapped_access,
        ),
        ("signed_fpm_journey", signed_fpm_journey),
        ("autologin_apache_journey", autologin_apache_journey),
        (
            "dashboard_and_ui_api_calls_pass_apache",
            dashboard_and_ui_api_calls_pass_apache,
        ),
        (
            "dashboard_and_ui_api_calls_pass_fpm",
            dashboard_and_ui_api_calls_pass_fpm,
        ),
        (
            "remints_when_matomo_deleted_the_session",
            remints_when_matomo_deleted_the_session,
        ),
        (
            "remints_when_matomo_idled_the_session_out",
            remints_when_matomo_idled_the_session_out,
        ),
        (
            "another_users_matomo_cookie_never_works_under_alice",
            another_users_matomo_cookie_never_works_under_alice,
        ),
        (
            "tracking_hit_is_a_visit_with_the_client_ip_and_token_api_passes",
            tracking_hit_is_a_visit_with_the_client_ip_and_token_api_passes,
        ),
        (
            "matomo_logout_link_ends_both_sessions",
            matomo_logout_link_ends_both_sessions,
        ),
        (
            "unlink_ends_the_matomo_session",
            unlink_ends_the_matomo_session,
        ),
        (
            "superusers_link_and_deny_superusers_refuses_them",
            superusers_link_and_deny_superusers_refuses_them,
        ),
        ("plugin_refusals_apache", plugin_refusals_apache),
        (
            "plugin_audience_is_the_configured_public_url",
            plugin_audience_is_the_configured_public_url,
        ),
        ("plugin_refusals_fpm", plugin_refusals_fpm),
        (
            "plugin_refusals_are_pages_that_say_what_to_check",
            plugin_refusals_are_pages_that_say_what_to_check,
        ),
        (
            "plugin_provision_and_access_actions",
            plugin_provision_and_access_actions,
        ),
        (
            "plugin_superuser_action_and_admin_page",
            plugin_superuser_action_and_admin_page,
        ),
        (
            "doctor_as_alice_mints_and_logs_out",
            doctor_as_alice_mints_and_logs_out,
        ),
        (
            "doctor_as_fails_with_the_old_plugin",
            doctor_as_fails_with_the_old_plugin,
        ),
        (
            "doctor_prints_the_real_matomos_version_and_checks",
            doctor_prints_the_real_matomos_version_and_checks,
        ),
        (
            "doctor_explains_autologin_under_php_fpm",
            doctor_explains_autologin_under_php_fpm,
        ),
        (
            "link_by_an_existing_matomo_session",
            link_by_an_existing_matomo_session,
        ),
        (
            "matomo_setup_script_is_idempotent_and_quiet",
            matomo_setup_script_is_idempotent_and_quiet,
        ),
        ("password_proof_answers", password_proof_answers),
        (
            "the_login_plugins_are_unreachable_in_every_spelling",
            the_login_plugins_are_unreachable_in_every_spelling,
        ),
        (
            "no_matomo_password_opens_a_door_without_an_unikname",
            no_matomo_password_opens_a_door_without_an_unikname,
        ),
        (
            "compose_rehearsal_as_the_readme_says",
            compose_rehearsal_as_the_readme_says,
        ),
        (
            "two_factor_accounts_link_with_their_code_and_keep_it",
            two_factor_accounts_link_with_their_code_and_keep_it,
        ),
        (
            "two_factor_required_for_everyone_says_set_it_up_first",
            two_factor_required_for_everyone_says_set_it_up_first,
        ),
        (
            "matomo_brute_force_block_and_matomo_down_have_their_own_messages",
            matomo_brute_force_block_and_matomo_down_have_their_own_messages,
        ),
        (
            "matomos_login_page_offers_the_unikname_sign_in",
            matomos_login_page_offers_the_unikname_sign_in,
        ),
        ("browser_journey_in_chromium", browser_journey_in_chromium),
        (
            "backchannel_logout_with_the_real_provider",
            backchannel_logout_with_the_real_provider,
        ),
    ];
    if args.list {
        let trials = tests
            .into_iter()
            .map(|(n, _)| Trial::test(n, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => Arc::new(rt),
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let started = std::time::Instant::now();
    let matomo = rt.block_on(RealMatomo::start()).map(Arc::new);
    match &matomo {
        Ok(m) => eprintln!(
            "real Matomo 5.1.2 ready in {:.1} s: Apache + mod_php {} | nginx + PHP-FPM {} | MariaDB 127.0.0.1:{} | {}",
            started.elapsed().as_secs_f64(),
            m.apache,
            m.fpm,
            m.db_port,
            m.root.display()
        ),
        Err(e) => eprintln!("real Matomo harness: {e}"),
    }
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let m = matomo.clone();
            let rt = rt.clone();
            Trial::test(name, move || {
                let m =
                    m.map_err(|e| Failed::from(format!("the real Matomo did not start: {e}")))?;
                let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(async {
                        tokio::time::timeout(Duration::from_secs(180), f(&m))
                            .await
                            .unwrap_or_else(|_| Err("timed out after 180 s".into()))
                    })
                }));
                match out {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(p) => Err(Failed::from(
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panicked".into()),
                    )),
                }
            })
        })
        .collect();
    let mut args = args;
    args.test_threads = Some(1);
    let conclusion = libtest_mimic::run(&args, trials);
    if let Ok(m) = &matomo {
        let left = m.stop();
        if !left.is_empty() {
            eprintln!(
                "still running after the harness stopped:\n{}",
                left.join("\n")
            );
            std::process::exit(101);
        }
    }
    conclusion.exit();
}
