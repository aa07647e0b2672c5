// The seed's journey in a real browser (Debian chromium driven by playwright-core), clicked as a
// person would, in front of the real Matomo 5 (tests/real_matomo.rs starts it), with a screenshot
// of every page at desktop width and at 390 px. Every request the pages make to unikgate/Matomo
// is watched: none may fail (4xx/5xx) while Matomo's pages load.
//
// Env: BASE (unikgate's public URL; with a path, as https://host/analytics: Matomo under it), BASE2
// (a second unikgate with matomo.password_login on, under the same path),
// BASE3 (a third unikgate, under the same path, with [access] allow_email_domains = ["example.org"],
// [provision] mode = "offer" with view on site 1, and [links] allow_unlink = false),
// PROVIDER (the provider's issuer URL), SHOTS (folder for the screenshots), ALICE_PASSWORD,
// BOB_PASSWORD and ADMIN_PASSWORD (their Matomo passwords; admin is a superuser).
// Exits non-zero on the first failed expectation; prints "N passed, M failed" at the end.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const BASE = process.env.BASE;
// A second unikgate with matomo.password_login on (Matomo's own login page shows), and the provider.
const BASE2 = process.env.BASE2;
const BASE3 = process.env.BASE3;
// The path Matomo is served under ('' at the root, '/analytics'): both gates have the same.
const PATH = new URL(BASE).pathname.replace(/\/$/, '');
const PROVIDER = process.env.PROVIDER;
const SECURITY = '/index.php?module=UsersManager&action=userSecurity&idSite=1&period=day&date=yesterday';
const SHOTS = process.env.SHOTS || 'docs/screenshots';
const DEEP = '/index.php?module=CoreHome&action=index&idSite=1&period=day&date=yesterday';
const ALICE_PASSWORD = process.env.ALICE_PASSWORD;
const BOB_PASSWORD = process.env.BOB_PASSWORD;
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD;
const ADMIN_HOME = '/index.php?module=CoreAdminHome&action=home&idSite=1&period=day&date=yesterday';
const SETTINGS = '/index.php?module=UsersManager&action=userSettings&idSite=1&period=day&date=yesterday';
// Matomo keeps the report of a link in the fragment (shared links, e-mailed reports, bookmarks).
const FRAGMENT = '#?idSite=1&period=day&date=yesterday&category=General_Visitors&subcategory=General_Overview';
mkdirSync(SHOTS, { recursive: true });

let passed = 0;
let failed = 0;
const cspViolations = [];
// Uncaught JavaScript errors on any page (Matomo's merged scripts include the plugin's).
const pageErrors = [];
// Requests to unikgate (and so Matomo) that failed while Matomo's pages loaded.
const failedRequests = [];
let watching = false;

async function check(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`ok   ${name}`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function shot(page, name) {
  for (const [suffix, size] of [['desktop', { width: 1280, height: 800 }], ['mobile', { width: 390, height: 844 }]]) {
    await page.setViewportSize(size);
    await page.screenshot({ path: `${SHOTS}/${name}-${suffix}.png`, fullPage: true });
  }
  await page.setViewportSize({ width: 1280, height: 800 });
}

async function newPage(browser) {
  // BASE over https (unikgate's own TLS, a test CA Chromium does not know): its certificate is
  // not what is checked here (tests/tls.rs checks it), the protocol is.
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: BASE.startsWith('https:') });
  const page = await ctx.newPage();
  page.setDefaultTimeout(10000);
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
  });
  page.on('pageerror', (e) => pageErrors.push(`${page.url()}: ${e.message}`));
  page.on('response', (r) => {
    if (watching && r.url().startsWith(BASE) && r.status() >= 400) failedRequests.push(`${r.status()} ${r.request().method()} ${r.url()}`);
  });
  page.on('requestfailed', (r) => {
    if (watching && r.url().startsWith(BASE)) failedRequests.push(`failed ${r.request().method()} ${r.url()}: ${r.failure()?.errorText}`);
  });
  return { ctx, page };
}

// The Matomo user a page was rendered for (Matomo's own piwik.userLogin).
async function matomoUser(page) {
  return page.evaluate(() => (window.piwik && window.piwik.userLogin) || null);
}

// Waits until Matomo's page and its AJAX calls are done.
async function settle(page) {
  await page.waitForLoadState('networkidle', { timeout: 30000 }).catch(() => {});
}

async function providerLogin(page, login, approve = true) {
  await page.waitForSelector('input[name=login]');
  await page.fill('input[name=login]', login);
  await page.click(approve ? 'button[value=approve]' : 'button[value=decline]');
}

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});

try {
  const { page } = await newPage(browser);

  await check('the Matomo URL leads to the sign-in page', async () => {
    await page.goto(BASE + DEEP);
    expect(page.url().includes('/_unikgate/sign_in'), `at ${page.url()}`);
    expect(await page.title() === 'Sign in · Matomo', `title ${await page.title()}`);
    const button = page.getByRole('button', { name: 'Connect with your private @unikname' });
    expect(await button.isVisible(), 'the provider button is visible');
    await shot(page, '01-sign-in');
  });

  await check('the provider asks for the @unikname', async () => {
    await page.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await page.waitForSelector('input[name=login]');
    await shot(page, '02-unikname-connect');
  });

  await check('back from the provider, the link page', async () => {
    await providerLogin(page, 'alice');
    await page.waitForURL(/\/_unikgate\/link/);
    expect(await page.getByLabel('Matomo username').isVisible(), 'labelled username field');
    expect(await page.getByLabel('Matomo password').isVisible(), 'labelled password field');
    await shot(page, '03-link');
  });

  await check('a wrong password says so', async () => {
    await page.getByLabel('Matomo username').fill('alice');
    await page.getByLabel('Matomo password').fill('not-her-password');
    await page.getByRole('button', { name: 'Link this account' }).click();
    await page.waitForSelector('.error');
    expect((await page.textContent('.error')).includes('do not match'), 'message');
    await shot(page, '04-link-wrong-password');
  });

  await check('linking lands in Matomo as alice, on the deep link, with no failed request', async () => {
    await page.getByLabel('Matomo password').fill(ALICE_PASSWORD);
    watching = true;
    await page.getByRole('button', { name: 'Link this account' }).click();
    await page.waitForURL((u) => u.pathname === PATH + '/index.php' && u.search.includes('module=CoreHome'), { timeout: 30000 });
    await settle(page);
    expect(await matomoUser(page) === 'alice', `Matomo shows ${await matomoUser(page)}`);
    const u = new URL(page.url());
    expect(u.pathname + u.search === PATH + DEEP, `the deep link survived: at ${page.url()}`);
    await page.waitForSelector('#dashboardWidgetsArea .widget', { timeout: 30000 });
    await settle(page);
    watching = false;
    expect(failedRequests.length === 0, `failed requests while Matomo loaded:\n${failedRequests.join('\n')}`);
    if (BASE.startsWith('https:')) {
      // The page and every asset and API call it made to unikgate came over HTTP/2.
      const protocols = await page.evaluate(() => [
        ...performance.getEntriesByType('navigation'),
        ...performance.getEntriesByType('resource'),
      ].filter((e) => e.name.startsWith(location.origin)).map((e) => e.nextHopProtocol));
      expect(protocols.length > 10 && protocols.every((p) => p === 'h2'), `protocols: ${[...new Set(protocols)].join(', ')} (${protocols.length} requests)`);
    }
    await shot(page, '05-matomo-as-alice');
  });

  await check("sign out through Matomo's own logout link", async () => {
    const logout = page.locator('a[href*="module=Login&action=logout"]').first();
    expect(await logout.count() === 1, "Matomo's page has its logout link");
    await logout.click({ force: true });
    // RP-initiated logout at the provider: confirm there.
    const yes = page.getByRole('button', { name: /yes|sign me out/i });
    await page.waitForLoadState('load');
    if (await yes.count()) await yes.first().click();
    await page.waitForURL(/\/_unikgate\/signed_out$/);
    expect((await page.textContent('h1')).includes('You are signed out'), 'heading');
    await shot(page, '06-signed-out');
  });

  await check('sign in again: straight into Matomo', async () => {
    await page.getByRole('link', { name: 'Sign in again' }).click();
    await page.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    if (await page.locator('input[name=login]').count() || page.url().includes('/oidc/')) {
      await providerLogin(page, 'alice');
    }
    await page.waitForURL((u) => u.pathname === PATH + '/index.php', { timeout: 30000 });
    await settle(page);
    expect(await matomoUser(page) === 'alice', `Matomo shows ${await matomoUser(page)}`);
  });

  const declined = await newPage(browser);
  await check('consent denied: the declined page, and its retry works', async () => {
    const p = declined.page;
    await p.goto(BASE + DEEP);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'alice', false);
    await p.waitForSelector('h1');
    expect((await p.textContent('h1')).includes('Sign-in declined'), await p.textContent('h1'));
    await shot(p, '07-declined');
    await p.getByRole('link', { name: 'Try again' }).click();
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'alice');
    await p.waitForURL((u) => u.pathname === PATH + '/index.php', { timeout: 30000 });
    expect(p.url().includes('idSite=1') && p.url().includes('date=yesterday'), `the retry kept the deep link: ${p.url()}`);
    expect(await matomoUser(p) === 'alice', `Matomo shows ${await matomoUser(p)}`);
  });

  await check('a report link opened signed out: after sign-in, that report (the fragment kept)', async () => {
    const { page: p } = await newPage(browser);
    await p.goto(BASE + DEEP + FRAGMENT);
    expect(p.url().includes('/_unikgate/sign_in'), `at ${p.url()}`);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'alice');
    await p.waitForURL((u) => u.pathname === PATH + '/index.php', { timeout: 30000 });
    expect(p.url() === BASE + DEEP + FRAGMENT, `at ${p.url()}`);
    expect(await matomoUser(p) === 'alice', `Matomo shows ${await matomoUser(p)}`);
  });

  await check('the same through the link step (a new @unikname linking bob)', async () => {
    const { page: p } = await newPage(browser);
    await p.goto(BASE + DEEP + FRAGMENT);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'bob');
    await p.waitForURL(/\/_unikgate\/link/);
    await p.getByLabel('Matomo username').fill('bob');
    await p.getByLabel('Matomo password').fill(BOB_PASSWORD);
    await p.getByRole('button', { name: 'Link this account' }).click();
    await p.waitForURL((u) => u.pathname === PATH + '/index.php', { timeout: 30000 });
    expect(p.url() === BASE + DEEP + FRAGMENT, `at ${p.url()}`);
    expect(await matomoUser(p) === 'bob', `Matomo shows ${await matomoUser(p)}`);
  });

  const mallory = await newPage(browser);
  await check('the "already linked" page', async () => {
    const p = mallory.page;
    await p.goto(BASE + '/');
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'mallory');
    await p.waitForURL(/\/_unikgate\/link/);
    await p.getByLabel('Matomo username').fill('alice');
    await p.getByLabel('Matomo password').fill(ALICE_PASSWORD);
    await p.getByRole('button', { name: 'Link this account' }).click();
    await p.waitForSelector('h1');
    expect((await p.textContent('h1')).includes('Already linked to another account'), await p.textContent('h1'));
    await shot(p, '08-already-linked');
  });

  await check('the rate-limit page', async () => {
    const p = mallory.page;
    let limited = false;
    for (let i = 0; i < 7 && !limited; i++) {
      await p.goto(BASE + '/_unikgate/link');
      await p.getByLabel('Matomo username').fill('bob');
      await p.getByLabel('Matomo password').fill('wrong-' + i);
      await p.getByRole('button', { name: 'Link this account' }).click();
      await p.waitForSelector('h1');
      limited = (await p.textContent('h1')).includes('Too many attempts');
    }
    expect(limited, 'the limit was reached');
    await shot(p, '09-rate-limited');
  });

  // Inside Matomo's own pages (the UnikGate plugin), through the unikgate with password_login on.
  const m2 = await newPage(browser);
  await check("Matomo's login page: the @unikname button → Unikname → link → Matomo as alice", async () => {
    const p = m2.page;
    await p.goto(BASE2 + DEEP);
    const button = p.locator('#unikgate_login a');
    await button.waitFor();
    expect((await button.textContent()).includes('Connect with your private @unikname'), await button.textContent());
    expect(await p.locator('#login_form_login').isVisible(), "Matomo's own form is there too");
    await shot(p, '10-matomo-login');
    await button.click();
    await p.waitForURL(/\/_unikgate\/sign_in/);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'alice');
    await p.waitForURL(/\/_unikgate\/link/);
    await p.getByLabel('Matomo username').fill('alice');
    await p.getByLabel('Matomo password').fill(ALICE_PASSWORD);
    await p.getByRole('button', { name: 'Link this account' }).click();
    await p.waitForURL((u) => u.pathname === PATH + '/index.php' && u.search.includes('module=CoreHome'), { timeout: 30000 });
    await settle(p);
    expect(await matomoUser(p) === 'alice', `Matomo shows ${await matomoUser(p)}`);
    const u = new URL(p.url());
    expect(u.pathname + u.search === PATH + DEEP, `the page asked for: at ${p.url()}`);
  });

  await check('Personal → Security shows the link', async () => {
    const p = m2.page;
    await p.goto(BASE2 + SECURITY);
    const box = p.locator('#unikgate-security[data-state=linked]');
    await box.waitFor({ timeout: 30000 });
    const text = await box.textContent();
    expect(text.includes('linked to the @unikname') && /since \d{4}-\d{2}-\d{2}/.test(text), text);
    await settle(p);
    await shot(p, '11-security-linked');
  });

  await check("another origin's script cannot read the link status; the page's own can", async () => {
    const p = m2.page;
    const read = (u) => fetch(u, { credentials: 'include' }).then((r) => r.text()).then((t) => 'read ' + t, () => 'blocked');
    const own = await p.evaluate(read, BASE2 + '/_unikgate/status');
    expect(own.includes('"matomo_login":"alice"'), `same origin: ${own}`);
    await p.goto(PROVIDER + '/.well-known/openid-configuration');
    const other = await p.evaluate(read, BASE2 + '/_unikgate/status');
    expect(other === 'blocked', `from ${PROVIDER}: ${other}`);
  });

  await check('"Unlink" there: the next Matomo page asks to link again', async () => {
    const p = m2.page;
    await p.goto(BASE2 + SECURITY);
    await p.locator('#unikgate-unlink').click();
    await p.waitForURL(/\/_unikgate\/link/, { timeout: 30000 });
    expect(new URL(p.url()).searchParams.get('rd').includes('action=userSecurity'), p.url());
    expect(await p.getByLabel('Matomo username').isVisible(), 'the link form');
  });

  await check('Personal → Security for a Matomo password session: not linked, "Link your @unikname"', async () => {
    const { page: p } = await newPage(browser);
    await p.goto(BASE2 + '/index.php?module=Login');
    await p.fill('#login_form_login', 'bob');
    await p.fill('#login_form_password', BOB_PASSWORD);
    await p.click('#login_form_submit');
    await p.waitForLoadState('load');
    await settle(p);
    await p.goto(BASE2 + SECURITY);
    await p.locator('#unikgate-security[data-state=not-linked]').waitFor({ timeout: 30000 });
    expect(await p.locator('#unikgate-link').isVisible(), 'the link button');
    expect(await matomoUser(p) === 'bob', `Matomo shows ${await matomoUser(p)}`);
    await settle(p);
    await shot(p, '12-security-not-linked');
  });

  // Who may come in, and the account made at the first sign-in (BASE3).
  await check('[access]: a person whose e-mail is not verified is refused, and told whom to ask', async () => {
    const set = await fetch(PROVIDER + '/test/claims', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ login: 'oscar', claims: { email_verified: false } }),
    });
    expect(set.status === 204, `claims: ${set.status}`);
    const { page: p } = await newPage(browser);
    await p.goto(BASE3 + DEEP);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'oscar');
    await p.waitForSelector('h1');
    expect((await p.textContent('h1')).includes('Not allowed here'), await p.textContent('h1'));
    const text = await p.textContent('body');
    expect(text.includes('oscar@example.org') && text.includes('administrator of this Matomo'), text);
    await shot(p, '13-not-allowed');
  });

  const frank = await newPage(browser);
  await check('[provision]: no Matomo account yet → "Create my Matomo account" → Matomo, view on site 1 only', async () => {
    const p = frank.page;
    await p.goto(BASE3 + DEEP);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'frank');
    await p.waitForURL(/\/_unikgate\/link/);
    const create = p.getByRole('button', { name: 'Create my Matomo account (frank)' });
    expect(await create.isVisible(), 'the offer');
    expect(await p.getByLabel('Matomo username').isVisible(), 'linking an existing account stays possible');
    await shot(p, '14-link-offer');
    await create.click();
    await p.waitForURL((u) => u.pathname === PATH + '/index.php' && u.search.includes('module=CoreHome'), { timeout: 30000 });
    await settle(p);
    expect(await matomoUser(p) === 'frank', `Matomo shows ${await matomoUser(p)}`);
    const u = new URL(p.url());
    expect(u.pathname + u.search === PATH + DEEP, `the page asked for: at ${p.url()}`);
    const sites = await p.evaluate(async () => {
      const body = new URLSearchParams({ token_auth: window.piwik.token_auth, force_api_session: '1' });
      const r = await fetch('index.php?module=API&method=SitesManager.getSitesIdWithAtLeastViewAccess&format=json', { method: 'POST', body });
      return r.json();
    });
    expect(JSON.stringify(sites.map(Number)) === '[1]', `frank sees the sites ${JSON.stringify(sites)}`);
    await shot(p, '15-matomo-as-a-new-account');
  });

  await check('[links] allow_unlink = false: the Security card shows the link and no Unlink', async () => {
    const p = frank.page;
    await p.goto(BASE3 + SECURITY);
    const box = p.locator('#unikgate-security[data-state=linked]');
    await box.waitFor({ timeout: 30000 });
    expect(await p.locator('#unikgate-unlink').count() === 0, 'an Unlink button');
    expect(await p.locator('#unikgate-unlink-off').isVisible(), 'the note');
    const account = await p.goto(BASE3 + '/_unikgate/account');
    expect(account.status() === 200, `account: ${account.status()}`);
    expect(!(await p.content()).includes('/_unikgate/unlink'), 'an unlink form on the account page');
  });

  // The superusers' page in Matomo's admin (BASE3): frank (view access, made above) cannot reach
  // it; admin sees frank's link and live session and oscar's refusal, ends frank's sessions,
  // unlinks him.
  await check('a user without superuser access: no menu entry, and the admin API answers 403', async () => {
    const p = frank.page;
    await p.goto(BASE3 + SETTINGS);
    await settle(p);
    expect(await matomoUser(p) === 'frank', `Matomo shows ${await matomoUser(p)}`);
    expect(await p.locator('a[href*="module=UnikGate&action=admin"]').count() === 0, 'frank has the menu entry');
    const got = await p.evaluate(async (prefix) => {
      const status = await (await fetch(prefix + '/status')).json();
      const links = await fetch(prefix + '/admin/api/links');
      const body = new URLSearchParams({ csrf: status.csrf, link: 'anything' });
      const unlink = await fetch(prefix + '/admin/api/unlink', { method: 'POST', body });
      return [links.status, await links.text(), unlink.status];
    }, PATH + '/_unikgate');
    expect(got[0] === 403 && !got[1].includes('frank') && got[2] === 403, JSON.stringify(got));
    const page = await p.goto(BASE3 + '/index.php?module=UnikGate&action=admin');
    expect(await p.locator('#unikgate-admin').count() === 0, `frank reached the page (${page.status()})`);
  });

  const admin = await newPage(browser);
  await check("Administration → System → Unikname: every link, its live sessions, the refusals", async () => {
    const p = admin.page;
    await p.goto(BASE3 + ADMIN_HOME);
    await p.getByRole('button', { name: 'Connect with your private @unikname' }).click();
    await providerLogin(p, 'root');
    await p.waitForURL(/\/_unikgate\/link/);
    await p.getByLabel('Matomo username').fill('admin');
    await p.getByLabel('Matomo password').fill(ADMIN_PASSWORD);
    await p.getByRole('button', { name: 'Link this account' }).click();
    await p.waitForURL((u) => u.pathname === PATH + '/index.php', { timeout: 30000 });
    await settle(p);
    expect(await matomoUser(p) === 'admin', `Matomo shows ${await matomoUser(p)}`);
    const entry = p.locator('a[href*="module=UnikGate&action=admin"]').first();
    expect(await entry.count() === 1, "the admin menu's entry");
    // Matomo's admin menu may be folded: follow the entry's own link.
    await p.goto(new URL(await entry.getAttribute('href'), p.url()).href);
    const row = p.locator('#unikgate-links tr[data-login=frank]');
    await row.waitFor({ timeout: 30000 });
    const cells = await row.locator('td').allTextContents();
    expect(cells[1] === 'frank@example.org' && cells[4] === '1', `frank's row: ${JSON.stringify(cells)}`);
    await p.locator('#unikgate-refusals td', { hasText: 'oscar' }).first().waitFor({ timeout: 10000 });
    const refusal = await p.locator('#unikgate-refusals tr', { hasText: 'oscar' }).first().textContent();
    expect(refusal.includes('access.allow_email_domains') && refusal.includes('not verified'), refusal);
    await settle(p);
    await shot(p, '16-admin-links');
    await p.fill('#unikgate-search', 'adm');
    await p.locator('#unikgate-links tr[data-login=frank]').waitFor({ state: 'detached', timeout: 10000 });
    expect(await p.locator('#unikgate-links tr[data-login=admin]').count() === 1, 'the filter keeps admin');
    await p.fill('#unikgate-search', '');
    await row.waitFor({ timeout: 10000 });
  });

  await check('a change without the form token is refused, from the page itself', async () => {
    const status = await admin.page.evaluate(async (prefix) => {
      const r = await fetch(prefix + '/admin/api/end_sessions', { method: 'POST', body: new URLSearchParams({ link: 'x' }) });
      return r.status;
    }, PATH + '/_unikgate');
    expect(status === 403, `status ${status}`);
  });

  await check("'End sessions' signs frank out of unikgate and Matomo; 'Unlink' removes his link", async () => {
    const p = admin.page;
    const row = p.locator('#unikgate-links tr[data-login=frank]');
    await row.locator('.unikgate-end').click();
    await row.locator('.unikgate-end').click();
    await p.locator('#unikgate-message', { hasText: 'ended' }).waitFor({ timeout: 10000 });
    expect((await p.textContent('#unikgate-message')).includes('1 session(s) of frank'), await p.textContent('#unikgate-message'));
    await p.locator('#unikgate-links tr[data-login=frank] td.sessions', { hasText: '0' }).waitFor({ timeout: 10000 });
    await frank.page.goto(BASE3 + DEEP);
    expect(frank.page.url().includes('/_unikgate/sign_in'), `frank is at ${frank.page.url()}`);
    await row.locator('.unikgate-unlink').click();
    await row.locator('.unikgate-unlink').click();
    await p.locator('#unikgate-links tr[data-login=frank]').waitFor({ state: 'detached', timeout: 10000 });
    expect((await p.textContent('#unikgate-message')).includes('frank is unlinked'), await p.textContent('#unikgate-message'));
  });

  await check('with Accept-Language: fr, the sign-in and link pages are in French', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'fr-FR', ignoreHTTPSErrors: BASE.startsWith('https:') });
    const p = await ctx.newPage();
    p.setDefaultTimeout(10000);
    await p.goto(BASE + DEEP);
    expect(await p.getAttribute('html', 'lang') === 'fr', 'html lang');
    expect((await p.textContent('h1')).includes('Se connecter à Matomo'), await p.textContent('h1'));
    await shot(p, '01-sign-in-fr');
    await p.getByRole('button', { name: 'Se connecter avec votre @unikname privé' }).click();
    await providerLogin(p, 'dave');
    await p.waitForURL(/\/_unikgate\/link/);
    expect((await p.textContent('h1')).includes('Associer ce compte'), await p.textContent('h1'));
    expect(await p.getByLabel("Nom d'utilisateur Matomo").isVisible(), 'French labels');
    await shot(p, '03-link-fr');
    await ctx.close();
  });

  await check('no uncaught JavaScript error on any page', async () => {
    expect(pageErrors.length === 0, pageErrors.join('\n'));
  });

  await check('no Content-Security-Policy violation on any page', async () => {
    expect(cspViolations.length === 0, cspViolations.join('\n'));
  });
} finally {
  await browser.close();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
