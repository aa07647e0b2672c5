//! The HTTP edges a raw-socket probe looks at: slow heads and bodies, connection caps, methods
//! that are not Matomo's, `Host`, absolute-form targets, `Expect`, and the request id. Each test
//! speaks raw HTTP/1.1 to unikgate in front of the Matomo stand-in, whose log shows what reached
//! it. Tabled in docs/SECURITY.md.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::provider::FakeProvider;
use support::{config, StandIn, TestApp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn setup(extra_server: &str) -> (StandIn, FakeProvider, TestApp) {
    let m = StandIn::start().await;
    let p = FakeProvider::start().await;
    let cfg = config(&m.url(), &p.config(), "")
        .replace("[server]\n", &format!("[server]\n{extra_server}\n"));
    let app = TestApp::start(&cfg).await;
    (m, p, app)
}

/// Everything the server sends until it closes the connection, or 10 s pass (a guard against a
/// hang, not a measurement).
async fn read_all(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `request` on a new connection and reads the answer to the close.
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    read_all(&mut s).await
}

/// A connection from the loopback address `from` (127.0.0.x: each one is another client).
async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((from, 0))).unwrap();
    sock.connect(to).await.unwrap()
}

fn status_of(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn connect_and_trace_are_refused_on_every_path() {
    let (m, _p, app) = setup("").await;
    let host = app.addr.to_string();
    let cases = [
        format!("CONNECT /matomo.php HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!("TRACE /matomo.php HTTP/1.1\r\nHost: {host}\r\nCookie: MATOMO_SESSID=secret\r\nConnection: close\r\n\r\n"),
        format!("TRACE /index.php?module=CoreHome HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!("TRACE /_unikgate/healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
    ];
    for c in &cases {
        let answer = exchange(app.addr, c).await;
        assert_eq!(status_of(&answer), "405", "{c:?} → {answer:.200}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nallow: get, head, post"),
            "{answer:.300}"
        );
        assert!(!answer.contains("secret"), "nothing echoed");
    }
    assert!(
        m.state
            .log()
            .iter()
            .all(|s| s.method != "CONNECT" && s.method != "TRACE"),
        "neither reached Matomo"
    );
    // The connection after a CONNECT is still plain HTTP: the next request on it is answered.
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(format!("CONNECT /matomo.php HTTP/1.1\r\nHost: {host}\r\n\r\nGET /matomo.php HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let answer = read_all(&mut s).await;
    assert_eq!(status_of(&answer), "405", "{answer:.200}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 2, "{answer}");
}

#[tokio::test]
async fn http_1_1_needs_exactly_one_host() {
    let (m, _p, app) = setup("").await;
    let host = app.addr.to_string();
    let no_host = exchange(
        app.addr,
        "GET /matomo.php HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&no_host), "400", "{no_host:.200}");
    assert!(no_host.contains("Host"), "the page says what is wrong");
    let two = exchange(
        app.addr,
        &format!("GET /matomo.php HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&two), "400", "{two:.200}");
    assert_eq!(m.state.log().len(), 0, "neither reached Matomo");
    // HTTP/1.0 has no Host requirement.
    let old = exchange(app.addr, "GET /matomo.php HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&old), "200", "{old:.200}");
    assert_eq!(m.state.log().len(), 1);
}

#[tokio::test]
async fn an_absolute_form_target_reaches_matomo_in_origin_form() {
    let (m, _p, app) = setup("").await;
    let host = app.addr.to_string();
    for (target, want) in [
        (
            format!("http://{host}?module=API&method=API.getPiwikVersion&token_auth=t"),
            "/?module=API&method=API.getPiwikVersion&token_auth=t",
        ),
        (
            format!("http://{host}/matomo.php?idsite=1"),
            "/matomo.php?idsite=1",
        ),
    ] {
        m.state.clear_log();
        let answer = exchange(
            app.addr,
            &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        // Matomo's answer (the stand-in refuses the made-up token: 401), not unikgate's 400.
        assert!(
            ["200", "401"].contains(&status_of(&answer)),
            "{target} → {answer:.200}"
        );
        let log = m.state.log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].uri, want);
    }
}

#[tokio::test]
async fn expect_is_met_by_unikgate_and_never_forwarded() {
    let (m, _p, app) = setup("").await;
    let host = app.addr.to_string();
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    s.write_all(format!("POST /matomo.php?idsite=1&rec=1 HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    // The body is sent only once unikgate said to go on.
    let mut first = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut first))
        .await
        .expect("an interim answer")
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"action=view").await.unwrap();
    let answer = read_all(&mut s).await;
    assert_eq!(status_of(&answer), "200", "{answer:.200}");
    let log = m.state.log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].body_len, 11);
    assert!(
        log[0].headers.get("expect").is_none(),
        "Expect reached Matomo"
    );
    // An expectation unikgate cannot meet is refused before anything is read or forwarded.
    let answer = exchange(
        app.addr,
        &format!("POST /matomo.php HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nExpect: 200-ok\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), "417", "{answer:.200}");
    assert_eq!(m.state.log().len(), 1);
}

#[tokio::test]
async fn a_client_cannot_strip_unikgates_request_id() {
    let (m, _p, app) = setup("").await;
    let host = app.addr.to_string();
    let answer = exchange(
        app.addr,
        &format!("GET /matomo.php HTTP/1.1\r\nHost: {host}\r\nConnection: x-request-id, close\r\nX-Request-Id: forged\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&answer), "200", "{answer:.200}");
    let log = m.state.log();
    let id = log[0]
        .headers
        .get("x-request-id")
        .expect("the request id reached Matomo");
    assert_ne!(id, "forged");
    assert!(
        answer.contains(&format!("x-request-id: {}", id.to_str().unwrap())),
        "the same id on the answer: {answer:.300}"
    );
}

#[tokio::test]
async fn bodies_unikgate_reads_itself_get_408_when_they_trickle() {
    let (m, _p, app) = setup("body_timeout = \"1s\"").await;
    let host = app.addr.to_string();
    for (path, ctype) in [
        // A form post to index.php is read whole to be classified.
        ("/index.php", "application/x-www-form-urlencoded"),
        // unikgate's own forms.
        ("/_unikgate/start", "application/x-www-form-urlencoded"),
        (
            "/_unikgate/backchannel_logout",
            "application/x-www-form-urlencoded",
        ),
    ] {
        let mut s = TcpStream::connect(app.addr).await.unwrap();
        s.write_all(format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\nContent-Length: 1000\r\n\r\nmodule=").as_bytes()).await.unwrap();
        // One byte every 200 ms, as long as the connection takes them (20 s at the most).
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..100 {
            let _ = s.write_all(b"x").await;
            match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => break,
                Err(_) => {}
            }
        }
        answer.extend_from_slice(read_all(&mut s).await.as_bytes());
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(status_of(&answer), "408", "{path}: {answer:.300}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("\r\nconnection: close"),
            "{answer:.300}"
        );
    }
    assert_eq!(m.state.log().len(), 0, "nothing reached Matomo");
}

#[tokio::test]
async fn a_head_begun_and_not_finished_gets_408_and_an_idle_connection_closes_quietly() {
    let (_m, _p, app) = setup("head_timeout = \"1s\"").await;
    let mut begun = TcpStream::connect(app.addr).await.unwrap();
    begun
        .write_all(b"GET /matomo.php HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let answer = read_all(&mut begun).await;
    assert_eq!(status_of(&answer), "408", "{answer:.200}");
    assert_eq!(read_all(&mut idle).await, "", "closed without a word");
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_total() {
    let (_m, _p, app) = setup("max_connections = 5\nmax_connections_per_ip = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from([127, 0, 0, 1], app.addr).await);
    }
    // The fourth from the same address.
    let mut fourth = connect_from([127, 0, 0, 1], app.addr).await;
    let answer = read_all(&mut fourth).await;
    assert_eq!(status_of(&answer), "503", "{answer:.200}");
    assert!(answer.contains("retry-after"), "{answer:.200}");
    // Others still come in, up to the total.
    for _ in 0..2 {
        held.push(connect_from([127, 0, 0, 2], app.addr).await);
    }
    let mut sixth = connect_from([127, 0, 0, 3], app.addr).await;
    assert_eq!(status_of(&read_all(&mut sixth).await), "503");
    // The held ones are served, and a closed one makes room.
    let c = &mut held[0];
    c.write_all(b"GET /_unikgate/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_all(c).await), "200");
    drop(held.remove(0));
    // The permit is given back as the server side of the connection ends.
    let mut answer = String::new();
    for _ in 0..50 {
        let mut s = connect_from([127, 0, 0, 3], app.addr).await;
        s.write_all(b"GET /_unikgate/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        answer = read_all(&mut s).await;
        if status_of(&answer) == "200" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&answer), "200", "{answer:.200}");
}
