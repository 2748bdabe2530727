import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, it } from 'node:test';
import { parseVersion } from '../libs/core/data-plane';
import { type Route, validateRoute } from '../libs/core/routes';
import { startTestAuthority, storedRows, storeEnv, type TestAuthority } from './support/authority';
import { startTestExtAuthz, type TestExtAuthz } from './support/ext-authz';
import { runNode } from './support/node-process';
import { freePort } from './support/ports';
import { adminQuery, TEST_STORE_URL } from './support/postgres';

/*
 * A restored backup under a running ext-authz (issue 18 item 5). The backup's change log rewinds
 * the positions; once new writes pass the replica's old position, a resume from it would read
 * only the newest changes and keep what the restore took away. A restore gives the store a new
 * id, so the replica reads a snapshot. SQLite: `store backup` / `store restore`; PostgreSQL
 * (TEST_STORE_URL): the tables copied aside and back, as pg_dump / pg_restore would, then
 * `store rotate-id`.
 */

const CLI = resolve(__dirname, '../services/token-authority/cli.js');

function route(id: string): Route {
  const result = validateRoute({
    id,
    frontend: { domains: [`${id}.oto.tools`] },
    backend: { targets: [{ hostname: '127.0.0.1', port: 8081 }] },
  });
  if (!result.ok) throw new Error(JSON.stringify(result.issues));
  const at = new Date().toISOString();
  return { ...result.route, createdAt: at, updatedAt: at };
}

function runCli(authority: TestAuthority, ...args: string[]) {
  return runNode([CLI, ...args], { env: { ...process.env, ...storeEnv(authority) } });
}

async function cli(authority: TestAuthority, ...args: string[]): Promise<Record<string, unknown>> {
  const result = await runCli(authority, ...args);
  assert.equal(result.status, 0, `cli ${args.join(' ')}: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

const TABLES = ['api_keys', 'key_pairs', 'revoked_tokens', 'changes', 'change_head', 'meta', 'audit_log'];

/**
 * A copy of the store's content now, and a way to put it back (the store itself stays open
 * elsewhere). `plain`: as an operator would without the CLI (the SQLite file copied back with the
 * authority stopped; PostgreSQL without rotate-id): the store keeps its id.
 */
async function backup(authority: TestAuthority, file: string, plain = false): Promise<(target: TestAuthority) => Promise<void>> {
  if (!TEST_STORE_URL) {
    await cli(authority, 'store', 'backup', file);
    return async (target) => {
      if (!plain) {
        await cli(target, 'store', 'restore', file);
        return;
      }
      const live = join(target.config.dataDir, 'token-authority.sqlite');
      for (const suffix of ['-wal', '-shm']) rmSync(`${live}${suffix}`, { force: true });
      copyFileSync(file, live);
    };
  }
  const schema = `"${authority.config.store.schema}"`;
  const aside = `"${authority.config.store.schema}_backup"`;
  await adminQuery(`DROP SCHEMA IF EXISTS ${aside} CASCADE; CREATE SCHEMA ${aside}`);
  for (const table of TABLES) await adminQuery(`CREATE TABLE ${aside}.${table} AS SELECT * FROM ${schema}.${table}`);
  return async (target) => {
    await adminQuery(
      `BEGIN; ${TABLES.map((table) => `DELETE FROM ${schema}.${table}; INSERT INTO ${schema}.${table} SELECT * FROM ${aside}.${table};`).join(' ')}
       SELECT setval(pg_get_serial_sequence('${schema}.audit_log', 'id'), coalesce((SELECT max(id) FROM ${schema}.audit_log), 0) + 1, false);
       COMMIT; DROP SCHEMA ${aside} CASCADE`,
    );
    if (!plain) await cli(target, 'store', 'rotate-id');
  };
}

describe('a restored backup under a running ext-authz', () => {
  for (const plain of [false, true]) {
    it(`makes the replica read a snapshot even when new writes have passed its old position (authority stopped for the restore${plain ? '; restored without the CLI, same store id: the change tags tell the histories apart' : ''})`, async () => {
      const dataDir = mkdtempSync(join(tmpdir(), 'restore-'));
      const settings = { grpc: { host: '127.0.0.1', port: await freePort() } };
      let authority = await startTestAuthority(settings, dataDir);
      let extAuthz: TestExtAuthz | undefined;
      try {
        extAuthz = await startTestExtAuthz(authority);
        const replica = extAuthz.replica;
        assert.equal(
          (await authority.admin('POST', '/api/apikeys', { clientId: 'kept', clientSecret: 'kept-secret-long-enough-0123456789' })).status,
          201,
        );
        await extAuthz.waitFor(() => replica.apiKey('kept') !== undefined);
        const restore = await backup(authority, join(dataDir, 'backup.sqlite'), plain);
        const backupSeq = parseVersion(authority.authority.dataPlane.version)!.seq;
        const storeId = authority.authority.store.changes.storeId;

        // After the backup: a key that the restore takes away, and a change it undoes.
        await authority.admin('POST', '/api/apikeys', { clientId: 'lost', clientSecret: 'lost-secret-long-enough-0123456789' });
        await authority.admin('PATCH', '/api/apikeys/kept', { enabled: false });
        await extAuthz.waitFor(() => replica.apiKey('lost') !== undefined && replica.apiKey('kept')?.enabled === false);
        const replicaSeq = parseVersion(replica.version)!.seq;
        assert.ok(replicaSeq > backupSeq);

        await authority.close();
        await extAuthz.waitFor(() => replica.status === 'degraded');
        await restore(authority);
        // New writes on the restored history, past the replica's position.
        for (let index = 0; backupSeq + index <= replicaSeq; index++) await cli(authority, 'apikeys', 'create', '--id', `after-${index}`);
        authority = await startTestAuthority(settings, dataDir);
        assert.ok(parseVersion(authority.authority.dataPlane.version)!.seq > replicaSeq, 'the restored log passed the old position');

        await extAuthz.waitFor(() => replica.status === 'synced' && replica.version === authority.authority.dataPlane.version, 10_000);
        assert.ok(replica.apiKey('after-0'), 'the first write after the restore is there');
        assert.equal(replica.apiKey('lost'), undefined, 'what the restore took away is gone');
        assert.equal(replica.apiKey('kept')?.enabled, true, 'what it undid is undone');
        assert.equal(replica.applied.snapshots, 2, 'the replica read a snapshot after the restore');
        assert.equal(authority.authority.store.changes.storeId === storeId, plain, plain ? 'the same store id' : 'a new store id');
      } finally {
        await extAuthz?.close();
        await authority.stop();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  }

  it('a restore or a new store id while the authority runs: every data plane starts over from a snapshot', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'restore-live-'));
    const authority = await startTestAuthority({}, dataDir);
    let extAuthz: TestExtAuthz | undefined;
    try {
      extAuthz = await startTestExtAuthz(authority);
      const replica = extAuthz.replica;
      await authority.admin('POST', '/api/apikeys', { clientId: 'kept', clientSecret: 'kept-secret-long-enough-0123456789' });
      await extAuthz.waitFor(() => replica.apiKey('kept') !== undefined);
      const restore = await backup(authority, join(dataDir, 'backup.sqlite'));
      await authority.admin('POST', '/api/apikeys', { clientId: 'lost', clientSecret: 'lost-secret-long-enough-0123456789' });
      await extAuthz.waitFor(() => replica.apiKey('lost') !== undefined);
      const before = authority.authority.store.changes.storeId;

      await restore(authority);
      await extAuthz.waitFor(() => replica.apiKey('lost') === undefined && replica.status === 'synced', 10_000);
      assert.notEqual(authority.authority.store.changes.storeId, before, 'the running authority follows the new store id');
      assert.equal(parseVersion(replica.version)!.storeId, authority.authority.store.changes.storeId);
      assert.equal(replica.applied.snapshots, 2);
      // The restored state is served: tokens and writes go on.
      assert.equal((await authority.admin('GET', '/api/apikeys/lost')).status, 404);
      await authority.admin('POST', '/api/apikeys', { clientId: 'next', clientSecret: 'next-secret-long-enough-0123456789' });
      await extAuthz.waitFor(() => replica.apiKey('next') !== undefined);

      const rotated = await cli(authority, 'store', 'rotate-id');
      await extAuthz.waitFor(() => replica.applied.snapshots === 3 && replica.status === 'synced', 10_000);
      assert.equal(parseVersion(replica.version)!.storeId, rotated.storeId);
      assert.ok(replica.apiKey('next') && replica.apiKey('kept'));
    } finally {
      await extAuthz?.close();
      await authority.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

describe('store restore of what is not a store backup (SQLite)', {
  skip: TEST_STORE_URL ? 'store restore works on SQLite only' : false,
}, () => {
  it('refuses a text file, an empty or truncated file, a folder and a missing path in one line (exit 1), the store unchanged; a backup from before change tags restores', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'restore-bad-'));
    const authority = await startTestAuthority({}, dataDir);
    try {
      for (let index = 0; index < 60; index++) {
        const created = await authority.admin('POST', '/api/apikeys', {
          clientId: `key-${index}`,
          clientSecret: `secret-${index}-long-enough-0123456789`,
        });
        assert.equal(created.status, 201);
      }
      // A route, which a backup from before routes does not have (routes-store.test.ts restores them).
      assert.equal(await authority.authority.store.routes.create(route('kept')), true);
      const good = join(dataDir, 'good.sqlite');
      await cli(authority, 'store', 'backup', good);
      const whole = readFileSync(good);
      assert.ok(whole.length >= 8 * 4096, `a backup of several pages (${whole.length} bytes)`);
      const bad: [string, string, RegExp][] = [
        ['a text file', 'text.sqlite', /is not a store backup/],
        ['an empty file', 'empty.sqlite', /is not a store backup \(no api_keys/],
        ['a truncated backup', 'truncated.sqlite', /is not a store backup/],
        ['a folder', 'folder.sqlite', /is not a store backup/],
        ['a missing path', 'missing.sqlite', /no backup at/],
      ];
      writeFileSync(join(dataDir, 'text.sqlite'), 'clientId,secret\nkey-1,abc\n'.repeat(400));
      writeFileSync(join(dataDir, 'empty.sqlite'), '');
      writeFileSync(join(dataDir, 'truncated.sqlite'), whole.subarray(0, Math.floor(whole.length / 2)));
      mkdirSync(join(dataDir, 'folder.sqlite'));
      const tables = ['api_keys', 'key_pairs', 'changes', 'meta', 'audit_log'];
      const before = await Promise.all(tables.map((table) => storedRows(authority, table)));
      for (const [name, file, message] of bad) {
        const result = await runCli(authority, 'store', 'restore', join(dataDir, file));
        assert.equal(result.status, 1, `${name}: ${result.stderr}`);
        assert.match(result.stderr, /^error: /, name);
        assert.match(result.stderr, message, name);
        assert.ok(result.stderr.includes(join(dataDir, file)), `${name}: names the file`);
        assert.equal(result.stderr.trim().split('\n').length, 1, `${name}: one line, no stack: ${result.stderr}`);
        assert.deepEqual(await Promise.all(tables.map((table) => storedRows(authority, table))), before, `${name}: store unchanged`);
      }

      // A backup written before changes had a tag column (68af527), and before routes: restored,
      // its changes untagged, no routes.
      const old = join(dataDir, 'before-tags.sqlite');
      copyFileSync(good, old);
      const db = new DatabaseSync(old);
      db.exec('ALTER TABLE changes DROP COLUMN tag; DROP TABLE route_claims; DROP TABLE routes');
      db.close();
      await authority.admin('POST', '/api/apikeys', { clientId: 'after-backup', clientSecret: 'after-backup-long-enough-0123456789' });
      await cli(authority, 'store', 'restore', old);
      assert.equal((await runCli(authority, 'apikeys', 'get', 'after-backup')).status, 4, 'what came after the backup is gone');
      assert.equal((await cli(authority, 'apikeys', 'get', 'key-59')).clientId, 'key-59');
      const changes = JSON.parse(await storedRows(authority, 'changes')) as { tag: string | null }[];
      assert.ok(changes.length >= 60 && changes.every((change) => change.tag === null), 'the old changes, untagged');
      await cli(authority, 'apikeys', 'create', '--id', 'after-restore');
      const last = (JSON.parse(await storedRows(authority, 'changes')) as { tag: string | null }[]).at(-1);
      assert.ok(last?.tag, 'new changes are tagged');
      assert.equal(await storedRows(authority, 'routes'), '[]', 'a backup from before routes: none left');
      assert.equal(await storedRows(authority, 'route_claims'), '[]');
    } finally {
      await authority.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
