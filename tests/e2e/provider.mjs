// A real OpenID Connect provider (npm oidc-provider) shaped like Unikname Connect:
// issuer <origin>/oidc, endpoints /oidc/authorize, /oidc/accessToken, /oidc/profile, /oidc/jwks,
// discovery under /oidc, client_secret_basic, RS256 ID tokens, opaque per-application subjects.
// Its login page asks for an @unikname and offers Approve / Decline (Unikname approves on a phone).
//
// Env: PORT, ISSUER and LISTEN (default http://127.0.0.1:PORT/oidc on 127.0.0.1), CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS, POST_LOGOUT_REDIRECT_URIS (space-separated),
// BACKCHANNEL_LOGOUT_URI (optional, one URL): turns on OpenID Connect Back-Channel Logout 1.0 for the
// client (ID tokens and logout tokens then carry `sid`; RP-initiated logout sends a logout token).
//
// Scopes and their claims (userinfo at /oidc/profile gives those of the granted scopes only):
// `openid` sub; `email` email, email_verified; `profile` preferred_username; `matomo` (custom)
// matomo_access (strings such as "/matomo/1/view") and groups (strings). An account <login> has by
// default email <login>@example.org, email_verified true and preferred_username <login>; no
// matomo_access, no groups.
//
// Test-only endpoints:
// - POST /oidc/test/end_sessions (form: login, optional sid) ends every provider session of that
//   @unikname, as an administrator's revocation would, and sends the client a back-channel logout
//   token for the subject (sub only, no sid), plus one with `sid` when given.
// - POST /oidc/test/claims (JSON: {"login": "carol", "claims": {"email_verified": false,
//   "matomo_access": ["/matomo/1/view"], "groups": ["staff"]}}) merges those claims over that
//   @unikname's (a claim set to null removes it, defaults included; `sub` cannot be set), before or
//   after the sign-in: the next userinfo answer has them. Answers 204; 400 for a malformed body.
import http from 'node:http';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
// The provider's own in-memory storage, extended below to find the sessions of an account.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';

const port = Number(process.env.PORT || 9090);
// ISSUER and LISTEN: the test provider inside a container (tests/containers/compose.provider.yml).
const issuer = process.env.ISSUER || `http://127.0.0.1:${port}/oidc`;
const listenHost = process.env.LISTEN || '127.0.0.1';
const prefix = '/oidc';
const split = (s) => (s || '').split(' ').filter(Boolean);
const backchannelLogoutUri = process.env.BACKCHANNEL_LOGOUT_URI || '';

// Unikname Connect's subjects are opaque and stable per application.
export const subjectOf = (login) => 'uns-' + crypto.createHash('sha256').update(`unikgate-tests:${login}`).digest('hex').slice(0, 24);

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const pageStyle = 'body{font:16px system-ui,sans-serif;background:#0c2340;color:#fff;display:flex;justify-content:center;padding:8vh 16px;margin:0}'
  + 'main{background:#fff;color:#111;max-width:26rem;width:100%;padding:2rem;border-radius:12px}'
  + 'h1{font-size:1.4rem;margin:0 0 1rem}label{display:block;font-weight:600;margin:.5rem 0 .25rem}'
  + 'input{font:inherit;width:100%;padding:.6rem;border:1px solid #888;border-radius:6px;box-sizing:border-box}'
  + 'button{font:inherit;margin-top:1rem;width:100%;padding:.75rem;border-radius:8px;border:2px solid #0c2340;cursor:pointer}'
  + '.approve{background:#0c2340;color:#fff;font-weight:700}.decline{background:#fff;color:#0c2340}';

// The @unikname of each account id (subjects are opaque hashes), and the claims tests set
// (POST /oidc/test/claims; null marks a removed claim).
const loginByAccount = new Map();
const claimsByAccount = new Map();
function accountClaims(accountId) {
  const login = loginByAccount.get(accountId) || accountId;
  const claims = {
    email: `${login}@example.org`,
    email_verified: true,
    preferred_username: login,
    ...claimsByAccount.get(accountId),
    sub: accountId,
  };
  for (const [k, v] of Object.entries(claims)) if (v === null) delete claims[k];
  return claims;
}

// Session ids by account id, so that an administrator can end a person's sessions.
const sessionsByAccount = new Map();
class TestAdapter extends MemoryAdapter {
  async upsert(id, payload, expiresIn) {
    await super.upsert(id, payload, expiresIn);
    if (this.model === 'Session' && payload.accountId) {
      if (!sessionsByAccount.has(payload.accountId)) sessionsByAccount.set(payload.accountId, new Set());
      sessionsByAccount.get(payload.accountId).add(id);
    }
  }
}

const provider = new Provider(issuer, {
  adapter: TestAdapter,
  clients: [{
    client_id: process.env.CLIENT_ID,
    client_secret: process.env.CLIENT_SECRET,
    redirect_uris: split(process.env.REDIRECT_URIS),
    post_logout_redirect_uris: split(process.env.POST_LOGOUT_REDIRECT_URIS),
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    ...(backchannelLogoutUri ? {
      backchannel_logout_uri: backchannelLogoutUri,
      backchannel_logout_session_required: true,
    } : {}),
  }],
  routes: {
    authorization: '/authorize',
    token: '/accessToken',
    userinfo: '/profile',
    jwks: '/jwks',
    end_session: '/logout',
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username'],
    matomo: ['matomo_access', 'groups'],
  },
  scopes: ['openid', 'email', 'profile', 'matomo'],
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: Boolean(backchannelLogoutUri) },
  },
  // oidc-provider refuses to connect to special-use addresses (SSRF guard: it hands fetch an undici
  // dispatcher that destroys such sockets). The relying party under test listens on 127.0.0.1, so
  // this test provider drops that dispatcher; the 2.5 s timeout oidc-provider sets is kept.
  fetch: (url, options) => {
    delete options.dispatcher;
    return globalThis.fetch(url, options);
  },
  pkce: { required: () => true },
  cookies: { keys: ['unikgate-tests-cookie-key'] },
  interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => accountClaims(id),
  }),
});
provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error', err));
provider.on('backchannel.error', (ctx, err, client, accountId, sid) => console.error('oidc-provider backchannel logout failed', client.clientId, accountId, sid, err));

function readText(req) {
  return new Promise((resolve) => {
    let b = '';
    req.on('data', (c) => { b += c; if (b.length > 65536) req.destroy(); });
    req.on('end', () => resolve(b));
  });
}
const readBody = async (req) => new URLSearchParams(await readText(req));

async function interaction(req, res, uid) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (req.method === 'GET') {
    res.setHeader('Content-Type', 'text/html; charset=utf-8');
    res.end(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Unikname Connect</title><style>${pageStyle}</style></head><body><main>
<h1>Unikname Connect</h1><p>Enter your @unikname, then approve the request of <strong>${esc(details.params.client_id)}</strong> on your phone.</p>
<form method="post" action="${prefix}/interaction/${esc(uid)}">
<label for="login">Your @unikname</label><input id="login" name="login" autocomplete="username" autofocus>
<button class="approve" type="submit" name="decision" value="approve">Approve</button>
<button class="decline" type="submit" name="decision" value="decline">Decline</button>
</form></main></body></html>`);
    return;
  }
  const form = await readBody(req);
  if (form.get('decision') !== 'approve') {
    await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'End-User declined' }, { mergeWithLastSubmission: false });
    return;
  }
  const login = (form.get('login') || '').trim().replace(/^@/, '');
  const accountId = subjectOf(login);
  loginByAccount.set(accountId, login);
  const grant = new provider.Grant({ accountId, clientId: details.params.client_id });
  grant.addOIDCScope(details.params.scope);
  const grantId = await grant.save();
  await provider.interactionFinished(req, res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
}

// An administrator ends every provider session of a person (their grants and tokens go too) and the
// client is told over the back channel: one logout token with the subject only (every session of
// that subject), and one with `sid` too when the form names one.
async function endSessions(req, res) {
  const form = await readBody(req);
  const login = (form.get('login') || '').trim().replace(/^@/, '');
  const sid = form.get('sid') || undefined;
  res.setHeader('Content-Type', 'application/json');
  try {
    if (!login) throw new Error('login is required');
    const accountId = subjectOf(login);
    let ended = 0;
    for (const id of sessionsByAccount.get(accountId) || []) {
      const session = await provider.Session.adapter.find(id);
      if (session && session.accountId === accountId) {
        for (const { grantId } of Object.values(session.authorizations || {})) {
          if (!grantId) continue;
          await provider.Grant.adapter.revokeByGrantId(grantId);
          await provider.Grant.adapter.destroy(grantId);
        }
        await provider.Session.adapter.destroy(id);
        ended += 1;
      }
    }
    sessionsByAccount.delete(accountId);
    let sent = false;
    if (backchannelLogoutUri) {
      const client = await provider.Client.find(process.env.CLIENT_ID);
      await client.backchannelLogout(accountId);
      if (sid) await client.backchannelLogout(accountId, sid);
      sent = true;
    }
    res.end(JSON.stringify({ sent, sessions_ended: ended }));
  } catch (e) {
    console.error('end_sessions failed', e);
    res.statusCode = 500;
    res.end(JSON.stringify({ sent: false, error: String(e && e.cause ? `${e.message}: ${e.cause.message || e.cause}` : e) }));
  }
}

// A test sets claims of an @unikname: merged over what it had, null removing one. 204, or 400 with
// a JSON error for a malformed body.
async function setClaims(req, res) {
  let body;
  try {
    body = JSON.parse(await readText(req));
  } catch {
    body = undefined;
  }
  const login = body && typeof body.login === 'string' ? body.login.trim().replace(/^@/, '') : '';
  const claims = body && body.claims;
  const bad = !login ? 'login is required'
    : (!claims || typeof claims !== 'object' || Array.isArray(claims)) ? 'claims must be an object'
      : ('sub' in claims) ? 'sub cannot be set' : '';
  if (bad) {
    res.statusCode = 400;
    res.setHeader('Content-Type', 'application/json');
    res.end(JSON.stringify({ error: bad }));
    return;
  }
  const accountId = subjectOf(login);
  loginByAccount.set(accountId, login);
  claimsByAccount.set(accountId, { ...claimsByAccount.get(accountId), ...claims });
  res.statusCode = 204;
  res.end();
}

const callback = provider.callback();
const server = http.createServer(async (req, res) => {
  try {
    if (!req.url.startsWith(prefix)) { res.statusCode = 404; res.end('not found'); return; }
    const m = req.url.match(/^\/oidc\/interaction\/([A-Za-z0-9_-]+)$/);
    if (m) { await interaction(req, res, m[1]); return; }
    if (req.method === 'POST' && req.url === `${prefix}/test/end_sessions`) { await endSessions(req, res); return; }
    if (req.method === 'POST' && req.url === `${prefix}/test/claims`) { await setClaims(req, res); return; }
    req.originalUrl = req.url;
    req.url = req.url.slice(prefix.length) || '/';
    callback(req, res);
  } catch (e) {
    console.error('provider error', e);
    res.statusCode = 500;
    res.end('provider error');
  }
});
server.listen(port, listenHost, () => console.log(`oidc-provider listening on ${issuer}`));
for (const s of ['SIGTERM', 'SIGINT']) process.on(s, () => process.exit(0));
