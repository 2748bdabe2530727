import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DataPlaneFeed, type DataPlaneUpdate, formatVersion, parseVersion, UPDATE_CHUNK } from '../../libs/core/data-plane';
import { KeyRing } from '../../libs/core/key-ring';
import { SqliteStore } from '../../libs/core/store/sqlite-store';
import { apiKeyRecord } from '../support/records';
import { storeKeyPair, TestClock } from './support/fixtures';

/*
 * How the change log becomes data-plane updates (libs/core/data-plane.ts), on an in-memory SQLite
 * store in this process (no file, no server) and an injected clock. A feed started after the
 * writes reads them as a catch-up from an earlier version: the delta building, without timers.
 */

async function collect(updates: AsyncGenerator<DataPlaneUpdate>): Promise<DataPlaneUpdate[]> {
  const parts: DataPlaneUpdate[] = [];
  for await (const part of updates) parts.push(part);
  return parts;
}

describe('delta building', () => {
  const clock = new TestClock();
  let store: SqliteStore;
  const feeds: DataPlaneFeed[] = [];
  before(() => {
    store = new SqliteStore(':memory:');
  });
  after(async () => {
    for (const feed of feeds) feed.close();
    await store.close();
  });

  /** A feed at the head of `on` (the test's store unless given) now; closed after the tests. */
  async function feedAtHead(on: SqliteStore = store): Promise<DataPlaneFeed> {
    const keyRing = new KeyRing(on.keyPairs, clock.now);
    await keyRing.reload();
    const feed = new DataPlaneFeed(
      on,
      keyRing,
      { issuer: 'http://issuer', audience: 'otoroshi' },
      (error) => assert.fail(error),
      clock.now,
    );
    feeds.push(feed);
    await feed.start();
    return feed;
  }

  /** What changed between `from` and the head, as a data plane resuming from `from` gets it. */
  async function catchUp(from: string): Promise<DataPlaneUpdate[]> {
    return collect((await feedAtHead()).updatesFrom(from));
  }

  it('sends the current state of only the entities that changed, once each, on top of the version resumed from', async () => {
    await store.apiKeys.createMany(['a', 'b', 'c'].map((id) => apiKeyRecord(id)));
    const from = (await feedAtHead()).version;
    for (const name of ['one', 'two', 'three']) await store.apiKeys.modify('a', (current) => ({ ...current, clientName: name }));
    await store.apiKeys.delete('b');
    await store.revocations.revoke('live', clock.ms + 60_000);
    await store.revocations.revoke('dead', clock.ms - 1);
    const parts = await catchUp(from);
    const to = (await feedAtHead()).version;
    assert.equal(parseVersion(to)?.seq, await store.changes.head());
    assert.ok(parts.every((part) => part.version === to && part.baseVersion === from && !part.reset));
    assert.deepEqual(
      parts.map((part) => part.more),
      parts.map((_, index) => index < parts.length - 1),
    );
    const all = (field: 'apiKeys' | 'removedApiKeys' | 'revokedTokens') => parts.flatMap((part) => part[field] as unknown[]);
    assert.deepEqual(
      all('apiKeys').map((key) => (key as { clientName: string }).clientName),
      ['three'],
      'one entry, the latest state',
    );
    assert.deepEqual(all('removedApiKeys'), ['b']);
    assert.deepEqual(all('revokedTokens'), [{ jti: 'live', expiresAt: clock.ms + 60_000 }], 'an expired revocation is not sent');
    assert.deepEqual(
      await catchUp(to),
      [{ ...parts[parts.length - 1], apiKeys: [], removedApiKeys: [], revokedTokens: [], baseVersion: to }],
      'nothing new: one empty part',
    );
  });

  it('sends a key pair with its verifying keys, and its id alone once deleted', async () => {
    const from = (await feedAtHead()).version;
    await storeKeyPair(store, clock.ms);
    const created = await catchUp(from);
    assert.deepEqual(
      created
        .flatMap((part) => part.keyPairs)
        .map((pair) => [pair.keyPairId, pair.keys.map((key) => [key.jwk.kid, key.jwk.alg, key.jwk.d])]),
      [['kp', [['kp-1', 'EdDSA', undefined]]]],
      'public members only',
    );
    const between = (await feedAtHead()).version;
    await store.keyPairs.delete('kp');
    const deleted = await catchUp(between);
    assert.deepEqual(
      deleted.flatMap((part) => part.removedKeyPairs),
      ['kp'],
    );
    assert.deepEqual(
      deleted.flatMap((part) => part.keyPairs),
      [],
    );
  });

  it('splits a large change into parts of at most UPDATE_CHUNK keys, with removals counted', async () => {
    const from = (await feedAtHead()).version;
    const ids = Array.from({ length: UPDATE_CHUNK + 10 }, (_, index) => `bulk-${String(index).padStart(5, '0')}`);
    await store.apiKeys.createMany(ids.map((id) => apiKeyRecord(id)));
    await store.apiKeys.delete('c');
    const parts = await catchUp(from);
    assert.ok(parts.every((part) => part.apiKeys.length + part.removedApiKeys.length <= UPDATE_CHUNK));
    assert.equal(parts.flatMap((part) => part.apiKeys).length, ids.length);
    assert.deepEqual(
      parts.flatMap((part) => part.removedApiKeys),
      ['c'],
    );
    assert.ok(parts.length >= 3, `${parts.length} parts`);

    // Removals count towards a part's size too.
    const between = (await feedAtHead()).version;
    for (const id of ids.slice(0, 600)) await store.apiKeys.delete(id);
    await store.apiKeys.createMany(ids.slice(0, 600).map((id) => apiKeyRecord(`${id}-new`)));
    const mixed = await catchUp(between);
    assert.ok(
      mixed.every((part) => part.apiKeys.length + part.removedApiKeys.length <= UPDATE_CHUNK),
      mixed.map((part) => `${part.apiKeys.length}+${part.removedApiKeys.length}`).join(' '),
    );
    assert.equal(mixed.flatMap((part) => part.removedApiKeys).length, 600);
  });

  it('answers with a snapshot what it cannot continue: another store, the future, garbage', async () => {
    const head = await store.changes.head();
    const feed = await feedAtHead();
    for (const version of [formatVersion('another-store', 1), formatVersion(store.changes.storeId, head + 1), 'garbage', '', ':7']) {
      const [first] = await collect(feed.updatesFrom(version));
      assert.equal(first.reset, true, `'${version}'`);
      assert.equal(first.issuer, 'http://issuer');
    }
    const [resumed] = await collect(feed.updatesFrom(feed.version));
    assert.equal(resumed.reset, false);
    // The position, but not the change that was there: another history (a restored backup).
    for (const version of [formatVersion(store.changes.storeId, head, 'other-tag'), `${store.changes.storeId}:${head}`]) {
      const [first] = await collect(feed.updatesFrom(version));
      assert.equal(first.reset, true, `'${version}'`);
    }
  });

  it("waits to read as far as a resuming data plane's version (a replica further along the same store): a resume, not a snapshot", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'delta-reach-'));
    const ahead = new SqliteStore(join(dir, 'store.db'));
    const behind = new SqliteStore(join(dir, 'store.db')); // another process's view: it sees ahead's commits by its poll
    try {
      const feed = await feedAtHead(behind);
      try {
        await ahead.apiKeys.create(apiKeyRecord('late'));
        const head = await ahead.changes.head();
        const version = formatVersion(ahead.changes.storeId, head, await ahead.changes.tagAt(head));
        assert.ok((parseVersion(feed.version)?.seq ?? 0) < head, 'the feed has not read the commit yet');
        const [unready] = await collect(feed.updatesFrom(version));
        assert.equal(unready.reset, true, 'before reach: a snapshot at an older version');

        const started = Date.now();
        await feed.reach(version);
        assert.ok(Date.now() - started < 1000, `reached in ${Date.now() - started} ms`);
        const parts = await collect(feed.updatesFrom(version));
        assert.deepEqual(
          parts.map((part) => [part.reset, part.baseVersion, part.version]),
          [[false, version, version]],
          'resumed where the data plane stands',
        );

        // A position no replica will reach (a forged version): the wait is bounded, then a snapshot.
        const future = formatVersion(ahead.changes.storeId, head + 1000, 'x');
        const waited = Date.now();
        await feed.reach(future, 150);
        assert.ok(Date.now() - waited >= 140 && Date.now() - waited < 1000, `${Date.now() - waited} ms`);
        assert.equal((await collect(feed.updatesFrom(future)))[0].reset, true);
        await feed.reach(formatVersion('another-store', 1)); // nothing to wait for
        await feed.reach('garbage');
      } finally {
        feed.close();
      }
    } finally {
      await behind.close();
      await ahead.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('starts every subscriber over when the store gets a new id (a restored backup)', async () => {
    const feed = await feedAtHead();
    const old = feed.version;
    const seen: string[] = [];
    feed.subscribe((update) => seen.push(update === 'resync' ? 'resync' : update.version));
    const storeId = await store.rotateStoreId();
    await new Promise((done) => setTimeout(done, 60)); // the feed's 20 ms debounce
    assert.deepEqual(seen, ['resync']);
    assert.equal(parseVersion(feed.version)?.storeId, storeId);
    assert.equal(parseVersion(feed.version)?.seq, parseVersion(old)?.seq, 'the same log position, under the new id');
    const [first] = await collect(feed.updatesFrom(old));
    assert.equal(first.reset, true, 'a version of the old id reads a snapshot');
    const [resumed] = await collect(feed.updatesFrom(feed.version));
    assert.equal(resumed.reset, false);
  });

  it('parses only versions it wrote', () => {
    assert.deepEqual(parseVersion(formatVersion('store-1', 42, 'AbC_-9')), { storeId: 'store-1', seq: 42, tag: 'AbC_-9' });
    assert.deepEqual(parseVersion(formatVersion('store-1', 0)), { storeId: 'store-1', seq: 0, tag: '' });
    for (const version of ['', ':', 'x', 'x:', 'x:-1:', 'x:1.5:', ':3:', 'x:1e400:', 'x:0x10:', 'x: 1:', 'x:1e3:', 'x:1:a b', 'x:1:a:b']) {
      assert.equal(parseVersion(version), undefined, `'${version}'`);
    }
    assert.equal(parseVersion('store-1:42'), undefined, 'the form before tags: a snapshot');
  });
});
