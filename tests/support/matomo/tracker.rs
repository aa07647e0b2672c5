//! The tracker: a hit on `matomo.php`, `piwik.php` or `js/tracker.php` (answered with the number
//! of bytes it carried) and the tracker JavaScript (`matomo.js`, `piwik.js`, anything else under
//! `/js/`). Both are recorded, never as a user: the tracker has no session.

use axum::response::{IntoResponse, Response};
use http::header;

use super::json;
use super::php::Req;

/// The tracker's answer, or None when the path is not the tracker's.
pub(super) fn answer(rq: &Req) -> Option<Response> {
    let path = rq.path.as_str();
    if path == "/matomo.php" || path == "/piwik.php" || path == "/js/tracker.php" {
        rq.record(None);
        return Some(json(
            serde_json::json!({"tracked": true, "bytes": rq.body_len}),
        ));
    }
    if path == "/matomo.js" || path == "/piwik.js" || path.starts_with("/js/") {
        rq.record(None);
        return Some(
            (
                [(header::CONTENT_TYPE, "application/javascript")],
                "/* tracker */",
            )
                .into_response(),
        );
    }
    None
}
