//! The link database's behaviour, one suite run on each backend: a SQLite file, and a real
//! PostgreSQL (Debian's, `support/servers.rs`; one server shared by the tests that run at the same
//! time, a database of its own per test). Each suite function sees the stores the way the
//! application does (`store::open`, then the four traits of `store/traits.rs`): links unique both
//! ways, conflicts, removal, listing, `touch`; attempts within a window and their limit; the
//! identity → sessions index taken once, by identity or by a logout token's `sid` / `sub`, and
//! pruned; each logout token's `jti` accepted once.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use support::servers::Postgres;
use unikgate::config::{StoreConfig, StoreUrl};
use unikgate::now_ms;
use unikgate::store::{self, AuditQuery, AuditRecord, Link, LinkConflict, SessionEntry, Stores};

/// The stores of one test, and what must outlive them (the SQLite file's folder, or the server).
struct Backend {
    stores: Stores,
    _keep: Box<dyn std::any::Any>,
}

fn config(url: StoreUrl) -> StoreConfig {
    StoreConfig {
        url: url.clone(),
        sessions_url: url.clone(),
        links_url: url,
        max_connections: 4,
    }
}

async fn on_sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let url = StoreUrl::Sqlite(dir.path().join("unikgate.db"));
    Backend {
        stores: store::open(&config(url)).await.unwrap(),
        _keep: Box::new(dir),
    }
}

/// The PostgreSQL server of the tests running now: started by the first, stopped when the last
/// one running lets go of it.
static SERVER: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

async fn on_postgres() -> Backend {
    let server = {
        let mut shared = SERVER.lock().unwrap_or_else(|p| p.into_inner());
        match shared.upgrade() {
            Some(s) => s,
            None => {
                let s = Arc::new(Postgres::start());
                *shared = Arc::downgrade(&s);
                s
            }
        }
    };
    static DATABASES: AtomicUsize = AtomicUsize::new(0);
    let name = format!("suite_{}", DATABASES.fetch_add(1, Ordering::Relaxed));
    let admin = sqlx::PgPool::connect(&server.url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{name}", server.port);
    Backend {
        stores: store::open(&config(StoreUrl::Postgres(url))).await.unwrap(),
        _keep: Box::new(server),
    }
}

/// One test per behaviour and backend: `sqlite::<behaviour>` and `postgres::<behaviour>`.
macro_rules! suite {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::$behaviour(&super::on_sqlite().await.stores).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    super::$behaviour(&super::on_postgres().await.stores).await;
                }
            )*
        }
    };
}

suite!(
    the_stores_answer,
    links_are_unique_both_ways,
    a_conflict_says_which_side_is_taken_and_changes_nothing,
    links_are_removed_by_identity_or_by_login,
    links_are_listed_oldest_first_with_every_field,
    touch_records_the_last_sign_in,
    attempts_are_counted_per_key_up_to_the_limit,
    attempts_leave_the_window,
    the_session_index_is_taken_once,
    the_session_index_is_listed_per_subject_oldest_first,
    logout_tokens_end_sessions_by_sid_or_sub,
    each_jti_counts_once_until_forgotten,
    the_session_index_is_pruned_by_age,
    links_are_paged_and_filtered,
    the_audit_trail_is_kept_filtered_and_pruned,
);

fn link(issuer: &str, subject: &str, login: &str, created_at: i64) -> Link {
    Link {
        id: format!("id-{issuer}-{subject}"),
        issuer: issuer.into(),
        subject: subject.into(),
        matomo_login: login.into(),
        superuser: false,
        created_at,
        last_login_at: None,
    }
}

fn entry(subject: &str, session: &str, sid: Option<&str>, id_sub: Option<&str>) -> SessionEntry {
    SessionEntry {
        issuer: "iss".into(),
        subject: subject.into(),
        session_id: session.into(),
        sid: sid.map(str::to_string),
        id_sub: id_sub.map(str::to_string),
        created_at: now_ms(),
        client_ip: Some("192.0.2.7".into()),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn the_stores_answer(s: &Stores) {
    s.ping().await.unwrap();
}

async fn links_are_unique_both_ways(s: &Stores) {
    let alice = link("iss", "alice", "alice", 1);
    assert_eq!(s.links.create(&alice).await.unwrap(), Ok(()));
    assert_eq!(
        s.links.get("iss", "alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(s.links.get("iss", "nobody").await.unwrap(), None);
    assert_eq!(s.links.get("other-iss", "alice").await.unwrap(), None);
    // Logins are compared without case, as Matomo does.
    assert_eq!(
        s.links.get_by_login("ALICE").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(s.links.get_by_login("bob").await.unwrap(), None);
    // One link per identity.
    let again = Link {
        id: "id-again".into(),
        ..link("iss", "alice", "bob", 2)
    };
    assert_eq!(
        s.links.create(&again).await.unwrap(),
        Err(LinkConflict::Identity)
    );
    // One identity per login, whatever its case.
    for login in ["alice", "Alice"] {
        let other = Link {
            id: format!("id-{login}"),
            ..link("iss", "carol", login, 3)
        };
        assert_eq!(
            s.links.create(&other).await.unwrap(),
            Err(LinkConflict::Login),
            "{login}"
        );
    }
    // The same subject of another issuer is another identity.
    let elsewhere = link("other-iss", "alice", "alice2", 4);
    assert_eq!(s.links.create(&elsewhere).await.unwrap(), Ok(()));
    assert_eq!(s.links.list().await.unwrap(), vec![alice, elsewhere]);
}

async fn a_conflict_says_which_side_is_taken_and_changes_nothing(s: &Stores) {
    let alice = link("iss", "alice", "alice", 1);
    let bob = link("iss", "bob", "bob", 2);
    s.links.create(&alice).await.unwrap().unwrap();
    s.links.create(&bob).await.unwrap().unwrap();
    // Both sides taken (by two different links): the identity is named.
    let both = Link {
        id: "id-both".into(),
        ..link("iss", "alice", "bob", 3)
    };
    assert_eq!(
        s.links.create(&both).await.unwrap(),
        Err(LinkConflict::Identity)
    );
    let login_taken = Link {
        id: "id-login".into(),
        ..link("iss", "carol", "BOB", 4)
    };
    assert_eq!(
        s.links.create(&login_taken).await.unwrap(),
        Err(LinkConflict::Login)
    );
    // Neither refusal wrote anything: both links are as they were, and carol has none.
    assert_eq!(
        s.links.get("iss", "alice").await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        s.links.get_by_login("bob").await.unwrap(),
        Some(bob.clone())
    );
    assert_eq!(s.links.get("iss", "carol").await.unwrap(), None);
    assert_eq!(s.links.list().await.unwrap(), vec![alice, bob]);
}

async fn links_are_removed_by_identity_or_by_login(s: &Stores) {
    s.links
        .create(&link("iss", "alice", "alice", 1))
        .await
        .unwrap()
        .unwrap();
    s.links
        .create(&link("iss", "bob", "bob", 2))
        .await
        .unwrap()
        .unwrap();
    assert!(!s.links.remove("other-iss", "alice").await.unwrap());
    assert!(s.links.remove("iss", "alice").await.unwrap());
    assert!(!s.links.remove("iss", "alice").await.unwrap());
    assert_eq!(s.links.get("iss", "alice").await.unwrap(), None);
    // By login, without case.
    assert!(s.links.remove_login("BOB").await.unwrap());
    assert!(!s.links.remove_login("bob").await.unwrap());
    assert!(s.links.list().await.unwrap().is_empty());
    // Both sides are free again.
    let swapped = link("iss", "alice", "bob", 3);
    assert_eq!(s.links.create(&swapped).await.unwrap(), Ok(()));
}

async fn links_are_listed_oldest_first_with_every_field(s: &Stores) {
    assert!(s.links.list().await.unwrap().is_empty());
    let newer = Link {
        superuser: true,
        last_login_at: Some(1_700_000_000_123),
        ..link("iss", "newer", "newer", 1_700_000_000_000)
    };
    let older = link("iss", "older", "older", 1_600_000_000_000);
    s.links.create(&newer).await.unwrap().unwrap();
    s.links.create(&older).await.unwrap().unwrap();
    assert_eq!(s.links.list().await.unwrap(), vec![older, newer.clone()]);
    assert_eq!(s.links.get_by_login("newer").await.unwrap(), Some(newer));
}

async fn touch_records_the_last_sign_in(s: &Stores) {
    let alice = link("iss", "alice", "alice", 1);
    let bob = link("iss", "bob", "bob", 2);
    s.links.create(&alice).await.unwrap().unwrap();
    s.links.create(&bob).await.unwrap().unwrap();
    let before = now_ms();
    s.links.touch(&alice.id).await.unwrap();
    let after = now_ms();
    let touched = s.links.get("iss", "alice").await.unwrap().unwrap();
    let at = touched.last_login_at.expect("touched");
    assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
    assert_eq!(
        touched,
        Link {
            last_login_at: Some(at),
            ..alice
        }
    );
    // The other link is untouched; an unknown id is no error.
    assert_eq!(s.links.get("iss", "bob").await.unwrap(), Some(bob));
    s.links.touch("no-such-id").await.unwrap();
}

async fn attempts_are_counted_per_key_up_to_the_limit(s: &Stores) {
    let hour = Duration::from_secs(3600);
    for n in 1..=3 {
        assert!(s.attempts.attempt("k1", 3, hour).await.unwrap(), "{n}");
    }
    assert!(!s.attempts.attempt("k1", 3, hour).await.unwrap());
    assert!(!s.attempts.attempt("k1", 3, hour).await.unwrap());
    // Another key counts on its own; a higher limit for the same key lets one more through.
    assert!(s.attempts.attempt("k2", 3, hour).await.unwrap());
    assert!(s.attempts.attempt("k1", 4, hour).await.unwrap());
    assert!(!s.attempts.attempt("k1", 4, hour).await.unwrap());
}

async fn attempts_leave_the_window(s: &Stores) {
    let window = Duration::from_millis(600);
    assert!(s.attempts.attempt("k", 2, window).await.unwrap());
    assert!(s.attempts.attempt("k", 2, window).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Refused, and a refusal is not counted: ...
    assert!(!s.attempts.attempt("k", 2, window).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;
    // ... once the first two have left the window, two more pass.
    assert!(s.attempts.attempt("k", 2, window).await.unwrap());
    assert!(s.attempts.attempt("k", 2, window).await.unwrap());
    assert!(!s.attempts.attempt("k", 2, window).await.unwrap());
}

async fn the_session_index_is_taken_once(s: &Stores) {
    let index = &s.session_index;
    index
        .index_session(&entry("sub", "s1", Some("p1"), None))
        .await
        .unwrap();
    index
        .index_session(&entry("sub", "s2", Some("p2"), None))
        .await
        .unwrap();
    index
        .index_session(&entry("other", "s3", None, None))
        .await
        .unwrap();
    // Indexing a session twice keeps one row.
    index
        .index_session(&entry("sub", "s2", Some("p2"), None))
        .await
        .unwrap();
    assert_eq!(index.list_sessions(Some("sub")).await.unwrap().len(), 2);
    assert_eq!(index.list_sessions(None).await.unwrap().len(), 3);
    assert!(index
        .take_sessions("other-iss", "sub")
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        sorted(index.take_sessions("iss", "sub").await.unwrap()),
        vec!["s1", "s2"]
    );
    assert!(index.take_sessions("iss", "sub").await.unwrap().is_empty());
    assert_eq!(
        index.take_sessions("iss", "other").await.unwrap(),
        vec!["s3"]
    );
    assert!(index.list_sessions(None).await.unwrap().is_empty());
}

async fn the_session_index_is_listed_per_subject_oldest_first(s: &Stores) {
    let at = |e: SessionEntry, created_at: i64| SessionEntry { created_at, ..e };
    let rows = [
        at(entry("b", "s3", None, None), 3_000),
        at(entry("a", "s1", Some("p1"), Some("a-sub")), 1_000),
        at(entry("a", "s2", None, None), 2_000),
    ];
    for r in &rows {
        s.session_index.index_session(r).await.unwrap();
    }
    let all = s.session_index.list_sessions(None).await.unwrap();
    assert_eq!(all, vec![rows[1].clone(), rows[2].clone(), rows[0].clone()]);
    let of_a = s.session_index.list_sessions(Some("a")).await.unwrap();
    assert_eq!(of_a, vec![rows[1].clone(), rows[2].clone()]);
    assert!(s
        .session_index
        .list_sessions(Some("nobody"))
        .await
        .unwrap()
        .is_empty());
}

async fn logout_tokens_end_sessions_by_sid_or_sub(s: &Stores) {
    let index = &s.session_index;
    for e in [
        entry("a", "s1", Some("p1"), Some("a")),
        entry("a", "s2", Some("p1"), Some("a")),
        entry("a", "s3", Some("p2"), Some("a")),
        entry("b", "s4", Some("p3"), Some("b")),
        // Indexed before the ID token's `sub` was kept: found by its subject.
        entry("c", "s5", None, None),
        // The @unikname is not the ID token's `sub` (another `provider.userinfo_id`).
        entry("d", "s6", None, Some("d-sub")),
    ] {
        index.index_session(&e).await.unwrap();
    }
    // By the provider's session: exactly its sessions, whatever `sub` says.
    assert_eq!(
        sorted(
            index
                .take_logout_sessions("iss", Some("p1"), Some("a"))
                .await
                .unwrap()
        ),
        vec!["s1", "s2"]
    );
    assert!(index
        .take_logout_sessions("iss", Some("p1"), None)
        .await
        .unwrap()
        .is_empty());
    // Another issuer's token ends nothing.
    assert!(index
        .take_logout_sessions("other-iss", None, Some("a"))
        .await
        .unwrap()
        .is_empty());
    assert!(index
        .take_logout_sessions("other-iss", Some("p3"), None)
        .await
        .unwrap()
        .is_empty());
    // By `sub`: every session of it left.
    assert_eq!(
        index
            .take_logout_sessions("iss", None, Some("a"))
            .await
            .unwrap(),
        vec!["s3"]
    );
    assert_eq!(
        index
            .take_logout_sessions("iss", None, Some("c"))
            .await
            .unwrap(),
        vec!["s5"]
    );
    assert!(index
        .take_logout_sessions("iss", None, Some("d"))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        index
            .take_logout_sessions("iss", None, Some("d-sub"))
            .await
            .unwrap(),
        vec!["s6"]
    );
    // Neither: nothing.
    assert!(index
        .take_logout_sessions("iss", None, None)
        .await
        .unwrap()
        .is_empty());
    let left = index.list_sessions(None).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|e| e.session_id.as_str())
            .collect::<Vec<_>>(),
        vec!["s4"]
    );
}

async fn each_jti_counts_once_until_forgotten(s: &Stores) {
    let jtis = &s.logout_tokens;
    assert!(jtis.first_use_of_jti("iss", "j1", 0).await.unwrap());
    assert!(!jtis.first_use_of_jti("iss", "j1", 0).await.unwrap());
    // Per issuer.
    assert!(jtis.first_use_of_jti("iss2", "j1", 0).await.unwrap());
    assert!(!jtis.first_use_of_jti("iss2", "j1", 0).await.unwrap());
    // Forgotten once older than the window (a token that old is refused by its iat anyway).
    assert!(jtis
        .first_use_of_jti("iss", "j2", now_ms() + 1)
        .await
        .unwrap());
    assert!(jtis
        .first_use_of_jti("iss", "j1", now_ms() + 1)
        .await
        .unwrap());
    assert!(!jtis.first_use_of_jti("iss", "j1", 0).await.unwrap());
}

async fn the_session_index_is_pruned_by_age(s: &Stores) {
    let at = |e: SessionEntry, created_at: i64| SessionEntry { created_at, ..e };
    for e in [
        at(entry("a", "old", None, None), 1_000),
        at(entry("a", "edge", None, None), 2_000),
        at(entry("b", "new", None, None), 3_000),
    ] {
        s.session_index.index_session(&e).await.unwrap();
    }
    s.session_index.prune_sessions(2_000).await.unwrap();
    let left = s.session_index.list_sessions(None).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|e| e.session_id.as_str())
            .collect::<Vec<_>>(),
        vec!["edge", "new"]
    );
    s.session_index.prune_sessions(now_ms()).await.unwrap();
    assert!(s
        .session_index
        .list_sessions(None)
        .await
        .unwrap()
        .is_empty());
}

async fn links_are_paged_and_filtered(s: &Stores) {
    for i in 0..25 {
        let login = format!("user{i:02}");
        s.links
            .create(&link("iss", &format!("uns-{i:02}"), &login, i))
            .await
            .unwrap()
            .unwrap();
    }
    s.links
        .create(&link("iss", "uns-odd", "a_b%c", 99))
        .await
        .unwrap()
        .unwrap();
    let all = s.links.list_page("", 0, 10).await.unwrap();
    assert_eq!(all.total, 26);
    assert_eq!(all.links.len(), 10);
    assert_eq!(all.links[0].matomo_login, "a_b%c", "by Matomo login");
    let last = s.links.list_page("", 20, 10).await.unwrap();
    assert_eq!(last.links.len(), 6);
    assert_eq!(last.links[5].matomo_login, "user24");
    // By login or subject, case-insensitive; % and _ are taken literally.
    let one = s.links.list_page("USER1", 0, 50).await.unwrap();
    assert_eq!(one.total, 10, "user10..user19");
    let by_subject = s.links.list_page("uns-07", 0, 50).await.unwrap();
    assert_eq!(by_subject.total, 1);
    assert_eq!(by_subject.links[0].matomo_login, "user07");
    assert_eq!(s.links.list_page("_b%", 0, 50).await.unwrap().total, 1);
    assert_eq!(s.links.list_page("%", 0, 50).await.unwrap().total, 1);
    assert_eq!(s.links.list_page("nobody", 0, 50).await.unwrap().total, 0);
    let id = &by_subject.links[0].id;
    assert_eq!(
        s.links.get_by_id(id).await.unwrap().map(|l| l.matomo_login),
        Some("user07".into())
    );
    assert_eq!(s.links.get_by_id("nope").await.unwrap(), None);
}

async fn the_audit_trail_is_kept_filtered_and_pruned(s: &Stores) {
    let ev = |at: i64, event: &str, subject: &str| AuditRecord {
        at,
        event: event.into(),
        subject: Some(subject.into()),
        client_ip: Some("192.0.2.1".into()),
        reason: Some(format!("r{at}")),
        ..Default::default()
    };
    s.audit
        .append(&[
            ev(1000, "sign_in", "uns-a"),
            ev(2000, "refused", "uns-b"),
            ev(3000, "refused", "uns-a"),
            ev(4000, "link", "uns-a"),
        ])
        .await
        .unwrap();
    let q = |subject: Option<&str>, since: Option<i64>, events: &[&str]| AuditQuery {
        subject: subject.map(str::to_string),
        since,
        events: events.iter().map(|e| e.to_string()).collect(),
        offset: 0,
        limit: 100,
    };
    let all = s.audit.list(&q(None, None, &[])).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.at).collect::<Vec<_>>(),
        vec![4000, 3000, 2000, 1000],
        "newest first"
    );
    assert_eq!(all[0], ev(4000, "link", "uns-a"), "every field kept");
    let a = s
        .audit
        .list(&q(Some("uns-a"), Some(2000), &[]))
        .await
        .unwrap();
    assert_eq!(a.iter().map(|r| r.at).collect::<Vec<_>>(), vec![4000, 3000]);
    let refused = s
        .audit
        .list(&q(None, None, &["refused", "link"]))
        .await
        .unwrap();
    assert_eq!(refused.len(), 3);
    let page = s
        .audit
        .list(&AuditQuery {
            offset: 1,
            limit: 2,
            ..q(None, None, &[])
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|r| r.at).collect::<Vec<_>>(),
        vec![3000, 2000]
    );
    assert_eq!(s.audit.prune(2500).await.unwrap(), 2);
    assert_eq!(s.audit.list(&q(None, None, &[])).await.unwrap().len(), 2);
}
