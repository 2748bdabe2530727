import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { userInfo, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DatabaseSync } from 'node:sqlite';
import { ADMIN_TOKEN, startTestAuthority, type TestAuthority } from './support/authority';

const CLI = resolve(__dirname, '../services/token-authority/cli.js');
const DATA_PLANE_TOKEN = 'contract-data-plane-token-0123';
const ACTOR = `admin-token:${createHash('sha256').update(ADMIN_TOKEN).digest('hex').slice(0, 12)}`;

/** The audit table's rows as the database holds them (node:sqlite: a reader independent of the store's driver). */
function auditRows(dataDir: string): string {
  const db = new DatabaseSync(join(dataDir, 'token-authority.sqlite'), { readOnly: true });
  try {
    return JSON.stringify(db.prepare('SELECT * FROM audit_log').all());
  } finally {
    db.close();
  }
}

interface Answer {
  status: number;
  etag: string | null;
  link: string | null;
  body: any;
}

describe('admin API contract: read-only fields, ETag / If-Match, audit log', () => {
  let authority: TestAuthority;
  before(async () => {
    authority = await startTestAuthority({ dataPlaneToken: DATA_PLANE_TOKEN });
  });
  after(() => authority.stop());

  /** An admin call that also returns the ETag and Link headers; `headers` adds If-Match and the like. */
  const call = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> => {
    const response = await fetch(`${authority.url}${path}`, {
      method,
      headers: {
        authorization: `Bearer ${ADMIN_TOKEN}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return {
      status: response.status,
      etag: response.headers.get('etag'),
      link: response.headers.get('link'),
      body: text ? JSON.parse(text) : undefined,
    };
  };
  const audit = async (query: string) => (await call('GET', `/api/audit?${query}`)).body as any[];

  describe('GET, edit, PUT round trip', () => {
    it('an API key GET body PUT back unchanged: 200, nothing changes (not even updatedAt or the ETag), nothing audited', async () => {
      await call('POST', '/api/apikeys', {
        clientId: 'round-trip',
        clientSecret: 'round-trip-secret',
        scope: 'a b',
        metadata: { team: 'x' },
      });
      // After a rotation GET also shows previousSecretValidUntil: a read-only field too.
      await call('POST', '/api/apikeys/round-trip/rotate-secret', { gracePeriod: 1 });
      const read = await call('GET', '/api/apikeys/round-trip');
      assert.equal(typeof read.body.previousSecretValidUntil, 'number');
      const auditBefore = await audit('entityId=round-trip');
      for (const method of ['PUT', 'PATCH']) {
        const written = await call(method, '/api/apikeys/round-trip', read.body);
        assert.equal(written.status, 200, JSON.stringify(written.body));
        assert.deepEqual(written.body, read.body);
        assert.equal(written.etag, read.etag);
      }
      assert.deepEqual(await audit('entityId=round-trip'), auditBefore);
    });

    it('an edited field in the GET body is applied; updatedAt moves, createdAt does not', async () => {
      const read = await call('GET', '/api/apikeys/round-trip');
      await new Promise((done) => setTimeout(done, 5));
      const written = await call('PUT', '/api/apikeys/round-trip', { ...read.body, description: 'edited' });
      assert.equal(written.status, 200);
      assert.equal(written.body.description, 'edited');
      assert.equal(written.body.createdAt, read.body.createdAt);
      assert.ok(written.body.updatedAt > read.body.updatedAt);
      assert.notEqual(written.etag, read.etag);
      assert.equal((await call('GET', '/api/apikeys/round-trip')).etag, written.etag);
    });

    it('a changed read-only field is refused with 400 naming it, and nothing is written', async () => {
      const read = await call('GET', '/api/apikeys/round-trip');
      for (const [field, value] of [
        ['createdAt', read.body.createdAt + 1],
        ['updatedAt', 0],
        ['previousSecretValidUntil', null],
      ] as const) {
        for (const method of ['PUT', 'PATCH']) {
          const refused = await call(method, '/api/apikeys/round-trip', { ...read.body, description: 'not applied', [field]: value });
          assert.equal(refused.status, 400, `${method} ${field}`);
          assert.equal(refused.body.error, 'invalid_request');
          assert.match(refused.body.error_description, new RegExp(`^${field} is read-only`));
          assert.equal(refused.body.details[0].path, field);
        }
      }
      const changedId = await call('PUT', '/api/apikeys/round-trip', { ...read.body, clientId: 'other' });
      assert.equal(changedId.status, 400);
      assert.match(changedId.body.error_description, /clientId/);
      assert.deepEqual((await call('GET', '/api/apikeys/round-trip')).body, read.body);
    });

    it('a key pair GET body PUT back unchanged: 200 and the same ETag; description editable, the rest read-only', async () => {
      assert.equal((await call('POST', '/api/keypairs', { id: 'kp-round', algorithm: 'ES256', description: 'first' })).status, 201);
      const read = await call('GET', '/api/keypairs/kp-round');
      assert.ok(read.etag);
      const same = await call('PUT', '/api/keypairs/kp-round', read.body);
      assert.equal(same.status, 200, JSON.stringify(same.body));
      assert.deepEqual(same.body, read.body);
      assert.equal(same.etag, read.etag);
      const edited = await call('PATCH', '/api/keypairs/kp-round', { ...read.body, description: 'second' });
      assert.equal(edited.status, 200);
      assert.equal(edited.body.description, 'second');
      assert.notEqual(edited.etag, read.etag);
      for (const [field, value] of [
        ['createdAt', 1],
        ['algorithm', 'RS256'],
        ['activeKid', 'other'],
        ['versions', []],
      ] as const) {
        const refused = await call('PUT', '/api/keypairs/kp-round', { ...edited.body, [field]: value });
        assert.equal(refused.status, 400, field);
        assert.equal(refused.body.details[0].path, field);
      }
      assert.equal((await call('PUT', '/api/keypairs/nobody', { description: 'x' })).status, 404);
    });
  });

  describe('ETag and If-Match', () => {
    it('every read and write of one API key carries a strong ETag that changes with the record', async () => {
      const created = await call('POST', '/api/apikeys', { clientId: 'tagged', clientSecret: 'tagged-secret' });
      assert.equal(created.status, 201);
      assert.match(created.etag ?? '', /^"[A-Za-z0-9_-]+"$/);
      const read = await call('GET', '/api/apikeys/tagged');
      assert.equal(read.etag, created.etag);
      const patched = await call('PATCH', '/api/apikeys/tagged', { enabled: false }, { 'if-match': read.etag! });
      assert.equal(patched.status, 200);
      const rotated = await call('POST', '/api/apikeys/tagged/rotate-secret', {}, { 'if-match': patched.etag! });
      assert.equal(rotated.status, 200);
      assert.equal((await call('GET', '/api/apikeys/tagged')).etag, rotated.etag);
      assert.equal(new Set([created.etag, patched.etag, rotated.etag]).size, 3);
    });

    it('a stale tag gets 412 with the admin error shape on PUT, PATCH, rotate-secret and DELETE; nothing is written', async () => {
      const stale = (await call('GET', '/api/apikeys/tagged')).etag!;
      await call('PATCH', '/api/apikeys/tagged', { description: 'moved on' });
      const current = await call('GET', '/api/apikeys/tagged');
      for (const [method, path, body] of [
        ['PUT', '/api/apikeys/tagged', { description: 'lost update' }],
        ['PATCH', '/api/apikeys/tagged', { description: 'lost update' }],
        ['POST', '/api/apikeys/tagged/rotate-secret', {}],
        ['DELETE', '/api/apikeys/tagged', undefined],
      ] as const) {
        const refused = await call(method, path, body, { 'if-match': stale });
        assert.equal(refused.status, 412, `${method} ${path}`);
        assert.equal(refused.body.error, 'precondition_failed');
        assert.match(refused.body.error_description, /has changed.*read it again/);
      }
      const after = await call('GET', '/api/apikeys/tagged');
      assert.deepEqual(after.body, current.body);
      assert.equal(after.etag, current.etag);
    });

    it('If-Match: *, tag lists, weak tags, malformed headers, no header', async () => {
      const { etag } = await call('GET', '/api/apikeys/tagged');
      const opaque = etag!.slice(1, -1);
      const tries: [string, number][] = [
        ['*', 200],
        [`"nope", ${(await call('GET', '/api/apikeys/tagged')).etag}`, 200],
        [`W/${etag}`, 412],
        ['"a,b", "c"', 412],
        [opaque, 400],
        ['"unterminated', 400],
      ];
      for (const [header, status] of tries) {
        const current = (await call('GET', '/api/apikeys/tagged')).etag!;
        const value = header.includes('nope') ? `"nope", ${current}` : header.startsWith('W/') ? `W/${current}` : header;
        const answer = await call('PATCH', '/api/apikeys/tagged', { description: `if-match ${header}` }, { 'if-match': value });
        assert.equal(answer.status, status, `If-Match: ${value} → ${JSON.stringify(answer.body)}`);
        if (status === 400) assert.match(answer.body.error_description, /If-Match/);
      }
      assert.equal((await call('PATCH', '/api/apikeys/tagged', { description: 'no precondition' })).status, 200);
      // A missing resource is a 404 whatever If-Match says (RFC 9110 §13.2.1).
      assert.equal((await call('PATCH', '/api/apikeys/nobody', { description: 'x' }, { 'if-match': '*' })).status, 404);
      assert.equal((await call('DELETE', '/api/apikeys/tagged', undefined, { 'if-match': '*' })).status, 204);
    });

    it('key pair writes: rotate, PATCH, retire and DELETE honour If-Match', async () => {
      const created = await call('POST', '/api/keypairs', { id: 'kp-tagged', algorithm: 'ES256' });
      assert.ok(created.etag);
      assert.equal((await call('GET', '/api/keypairs/kp-tagged')).etag, created.etag);
      const rotated = await call('POST', '/api/keypairs/kp-tagged/rotate', {}, { 'if-match': created.etag! });
      assert.equal(rotated.status, 200);
      assert.notEqual(rotated.etag, created.etag);
      for (const [method, path, body] of [
        ['POST', '/api/keypairs/kp-tagged/rotate', {}],
        ['PATCH', '/api/keypairs/kp-tagged', { description: 'x' }],
        ['POST', '/api/keypairs/kp-tagged/retire', undefined],
        ['DELETE', '/api/keypairs/kp-tagged', undefined],
      ] as const) {
        assert.equal((await call(method, path, body, { 'if-match': created.etag! })).status, 412, `${method} ${path}`);
      }
      const retired = await call('POST', '/api/keypairs/kp-tagged/retire', undefined, { 'if-match': rotated.etag! });
      assert.equal(retired.status, 200);
      assert.equal(retired.body.status, 'retired');
      assert.equal((await call('DELETE', '/api/keypairs/kp-tagged', undefined, { 'if-match': retired.etag! })).status, 204);
    });

    it('20 concurrent PUTs holding the same ETag: exactly one succeeds, the others get 412', async () => {
      await call('POST', '/api/apikeys', { clientId: 'raced', clientSecret: 'raced-secret' });
      for (let round = 0; round < 3; round += 1) {
        // Round 0 has no async work between request and write; rounds 1 and 2 do.
        const { etag } = await call('GET', '/api/apikeys/raced');
        const answers = await Promise.all(
          Array.from({ length: 20 }, (_, writer) =>
            call(
              'PUT',
              '/api/apikeys/raced',
              // A new secret means a slow hash between reading the request and writing: a check
              // made before it (rather than in the write's transaction) lets several writers through.
              { description: `round ${round} writer ${writer}`, ...(round > 0 ? { clientSecret: `raced-secret-${writer}` } : {}) },
              { 'if-match': etag! },
            ),
          ),
        );
        const statuses = answers.map((answer) => answer.status).sort();
        assert.deepEqual(statuses, [200, ...Array(19).fill(412)], `round ${round}`);
        const winner = answers.find((answer) => answer.status === 200)!;
        const stored = await call('GET', '/api/apikeys/raced');
        assert.equal(stored.body.description, winner.body.description);
        assert.equal(stored.etag, winner.etag);
      }
    });

    it('concurrent DELETE and PATCH with the same ETag: exactly one wins', async () => {
      await call('POST', '/api/apikeys', { clientId: 'raced-delete', clientSecret: 'raced-secret' });
      const { etag } = await call('GET', '/api/apikeys/raced-delete');
      const answers = await Promise.all([
        ...Array.from({ length: 5 }, () => call('DELETE', '/api/apikeys/raced-delete', undefined, { 'if-match': etag! })),
        ...Array.from({ length: 5 }, () => call('PATCH', '/api/apikeys/raced-delete', { enabled: false }, { 'if-match': etag! })),
      ]);
      const wins = answers.filter((answer) => answer.status === 200 || answer.status === 204);
      assert.equal(wins.length, 1, JSON.stringify(answers.map((answer) => answer.status)));
      assert.ok(answers.every((answer) => [200, 204, 404, 412].includes(answer.status)));
    });
  });

  describe('audit log', () => {
    it('records each API key change with actor, action and what changed, oldest first', async () => {
      const secret = 'audited-secret-that-must-not-leak';
      await call('POST', '/api/apikeys', { clientId: 'audited', clientSecret: secret, metadata: { apiToken: 'meta-token-value-42' } });
      await call('PATCH', '/api/apikeys/audited', { enabled: false, clientSecret: `${secret}-2` });
      await call('PUT', '/api/apikeys/audited', { description: 'described' });
      const rotated = await call('POST', '/api/apikeys/audited/rotate-secret', {});
      await call('DELETE', '/api/apikeys/audited');
      const entries = await audit('entity=apikey&entityId=audited');
      assert.deepEqual(
        entries.map((entry) => entry.action),
        ['apikey.create', 'apikey.update', 'apikey.update', 'apikey.rotate-secret', 'apikey.delete'],
      );
      for (const entry of entries) {
        assert.equal(entry.actor, ACTOR);
        assert.equal(entry.entity, 'apikey');
        assert.equal(entry.entityId, 'audited');
        assert.ok(!Number.isNaN(Date.parse(entry.at)) && entry.at.endsWith('Z'));
      }
      const ids = entries.map((entry) => entry.id);
      assert.deepEqual(
        ids,
        [...ids].sort((a, b) => a - b),
      );
      assert.equal(entries[0].change.clientId, 'audited');
      assert.equal(entries[0].change.metadata.apiToken, '[redacted]');
      assert.deepEqual(entries[1].change.enabled, { before: true, after: false });
      assert.equal(entries[1].change.secretHash, '[redacted]');
      assert.deepEqual(entries[2].change, { description: { before: '', after: 'described' } });
      assert.equal(entries[3].change.secretHash, '[redacted]');
      assert.equal(entries[3].change.previousSecretHash, '[redacted]');

      // No secret, hash or secret-like metadata anywhere: not in the API's answer, not in the rows.
      const everything = JSON.stringify(await audit('limit=1000'));
      const stored = auditRows(authority.dataDir);
      for (const leak of [secret, `${secret}-2`, rotated.body.clientSecret, 'meta-token-value-42', 'scrypt', '$']) {
        assert.ok(!everything.includes(leak), `audit API shows ${leak}`);
        assert.ok(!stored.includes(leak), `audit rows hold ${leak}`);
      }
      assert.ok(stored.includes('audited'), 'the rows are where this test looks');
    });

    it('records key pair changes without key material (the default key pair as made by the system)', async () => {
      const first = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      const second = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      assert.equal((await call('POST', '/api/keypairs', { id: 'kp-audited', algorithm: 'ES256', privateKey: first })).status, 201);
      assert.equal((await call('PATCH', '/api/keypairs/kp-audited', { description: 'imported' })).status, 200);
      const rotated = await call('POST', '/api/keypairs/kp-audited/rotate', { privateKey: second });
      assert.equal(rotated.status, 200);
      assert.equal((await call('POST', '/api/keypairs/kp-audited/retire')).status, 200);
      assert.equal((await call('DELETE', '/api/keypairs/kp-audited')).status, 204);
      const entries = await audit('entity=keypair&entityId=kp-audited');
      assert.deepEqual(
        entries.map((entry) => entry.action),
        ['keypair.import', 'keypair.update', 'keypair.rotate', 'keypair.retire', 'keypair.delete'],
      );
      assert.ok(entries.every((entry) => entry.actor === ACTOR));
      assert.deepEqual(entries[2].change.activeKid, { before: 'kp-audited', after: rotated.body.activeKid });
      assert.deepEqual(entries[3].change.status, { before: 'active', after: 'retired' });
      const [system] = await audit(`entity=keypair&entityId=${authority.config.defaultKeyPair}`);
      assert.equal(system.actor, 'system');
      assert.equal(system.action, 'keypair.create');
      const everything = JSON.stringify(await audit('limit=1000'));
      const stored = auditRows(authority.dataDir);
      for (const pem of [first, second]) {
        const body = pem.split('\n')[1];
        for (const text of [everything, stored]) assert.ok(!text.includes(body) && !text.includes('PRIVATE KEY'));
      }
    });

    it('pages like GET /api/apikeys (JSON array, Link rel=next), filters, and refuses bad queries', async () => {
      for (let index = 0; index < 5; index += 1)
        await call('POST', '/api/apikeys', { clientId: `paged-${index}`, clientSecret: 'paged-secret' });
      const seen: number[] = [];
      let path: string | undefined = '/api/audit?limit=2&entity=apikey';
      let pages = 0;
      while (path && pages < 100) {
        const page: Answer = await call('GET', path);
        assert.equal(page.status, 200);
        assert.ok(Array.isArray(page.body));
        seen.push(...page.body.map((entry: { id: number }) => entry.id));
        assert.ok(page.body.every((entry: { entity: string }) => entry.entity === 'apikey'));
        const next = /^<([^>]+)>; rel="next"$/.exec(page.link ?? '');
        if (next) assert.equal(page.body.length, 2);
        path = next?.[1];
        pages += 1;
      }
      const all = (await audit('limit=1000&entity=apikey')).map((entry) => entry.id);
      assert.deepEqual(seen, all);
      assert.ok(all.length >= 5);
      for (const query of ['limit=0', 'limit=1001', 'after=x', 'entity=user', 'unknown=1']) {
        const refused = await call('GET', `/api/audit?${query}`);
        assert.equal(refused.status, 400, query);
        assert.equal(refused.body.error, 'invalid_request');
      }
    });

    it('is readable with the admin token only, not the data plane token', async () => {
      for (const authorization of [undefined, `Bearer ${DATA_PLANE_TOKEN}`]) {
        const response = await fetch(`${authority.url}/api/audit`, { headers: authorization ? { authorization } : {} });
        assert.equal(response.status, 401);
      }
    });

    it('the CLI audits as the operating system user', () => {
      const result = spawnSync(process.execPath, [CLI, 'apikeys', 'create', '--id', 'from-cli', '--secret', 'cli-audited-secret'], {
        env: { ...process.env, DATA_DIR: authority.dataDir, ADMIN_TOKEN: undefined },
        encoding: 'utf8',
        timeout: 15_000,
      });
      assert.equal(result.status, 0, result.stderr);
      return audit('entityId=from-cli').then((entries) => {
        assert.equal(entries.length, 1);
        assert.equal(entries[0].actor, `cli:${userInfo().username}`);
        assert.equal(entries[0].action, 'apikey.create');
        assert.ok(!JSON.stringify(entries).includes('cli-audited-secret'));
        const listed = spawnSync(process.execPath, [CLI, 'audit', 'list', '--type', 'apikey', '--id', 'from-cli'], {
          env: { ...process.env, DATA_DIR: authority.dataDir, ADMIN_TOKEN: undefined },
          encoding: 'utf8',
          timeout: 15_000,
        });
        assert.equal(listed.status, 0, listed.stderr);
        assert.deepEqual(JSON.parse(listed.stdout), entries);
      });
    });
  });
});

describe('audit log on a database made before it existed', () => {
  it('creates the table on start and audits from then on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ta-old-db-'));
    try {
      const old = new DatabaseSync(join(dir, 'token-authority.sqlite'));
      old.exec(`
        CREATE TABLE api_keys (client_id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
        CREATE TABLE key_pairs (id TEXT PRIMARY KEY, doc TEXT NOT NULL) STRICT;
        CREATE TABLE revoked_tokens (jti TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) STRICT;
        CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, entity TEXT NOT NULL, id TEXT NOT NULL) STRICT;
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
      `);
      old.close();
      const authority = await startTestAuthority({}, dir);
      try {
        assert.equal(
          (await authority.admin('POST', '/api/apikeys', { clientId: 'after-upgrade', clientSecret: 'upgrade-secret' })).status,
          201,
        );
        const entries = (await authority.admin('GET', '/api/audit?entityId=after-upgrade')).body;
        assert.equal(entries.length, 1);
      } finally {
        await authority.stop();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
