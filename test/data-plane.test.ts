import {
  credentials,
  loadPackageDefinition,
  Metadata,
  status as GrpcStatus,
  type ClientReadableStream,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { AuthorityReplica } from '../libs/authz/replica';
import { generateKeyMaterial } from '../libs/core/crypto/key-pairs';
import { DataPlaneFeed, formatVersion, type DataPlaneUpdate } from '../libs/core/data-plane';
import { KeyRing } from '../libs/core/key-ring';
import { validateRoute } from '../libs/core/routes';
import type { AuthorityStore } from '../libs/core/store/repositories';
import { MAX_BUFFERED_ENTRIES } from '../services/token-authority/authority-watch.service';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from '../services/token-authority/grpc-options';
import { ADMIN_TOKEN, startTestAuthority, type TestAuthority } from './support/authority';
import { startTestExtAuthz } from './support/ext-authz';
import { freePort } from './support/ports';
import { openTestStore } from './support/postgres';
import { apiKeyRecord } from './support/records';

async function collect(updates: AsyncGenerator<DataPlaneUpdate>): Promise<DataPlaneUpdate[]> {
  const parts: DataPlaneUpdate[] = [];
  for await (const part of updates) parts.push(part);
  return parts;
}

/** Resolves with the next `count` deltas the feed publishes. */
/**
 * Resolves once the feed has published every change up to the store's head as it stands now:
 * writes made one after the other may reach it in one delta or in several (a shared database's
 * writes take longer than the feed's debounce).
 */
async function publishedThroughHead(feed: DataPlaneFeed, store: AuthorityStore, timeoutMs = 3000): Promise<void> {
  const target = formatVersion(store.changes.storeId, await store.changes.head());
  const started = Date.now();
  // Up to the position (the tag that follows it is the change's own).
  while (!`${feed.version}:`.startsWith(target)) {
    if (Date.now() - started > timeoutMs) throw new Error(`the feed is at ${feed.version}, not ${target}, after ${timeoutMs} ms`);
    await new Promise((done) => setTimeout(done, 5));
  }
}

function nextDeltas(feed: DataPlaneFeed, count = 1, timeoutMs = 3000): Promise<DataPlaneUpdate[]> {
  return new Promise((resolve, reject) => {
    const seen: DataPlaneUpdate[] = [];
    const timer = setTimeout(() => (unsubscribe(), reject(new Error(`only ${seen.length} deltas within ${timeoutMs} ms`))), timeoutMs);
    const unsubscribe = feed.subscribe((update) => {
      if (update === 'resync') return;
      seen.push(update);
      if (seen.length === count) {
        clearTimeout(timer);
        unsubscribe();
        resolve(seen);
      }
    });
  });
}

describe('data plane feed over the store change log', () => {
  const dir = mkdtempSync(join(tmpdir(), 'feed-'));
  // SQLite, or PostgreSQL under TEST_STORE_URL (npm run test:postgres-suites).
  let store: AuthorityStore;
  let keyRing: KeyRing;
  let feed: DataPlaneFeed;
  before(async () => {
    store = await openTestStore(dir);
    keyRing = new KeyRing(store.keyPairs, Date.now);
    feed = new DataPlaneFeed(store, keyRing, { issuer: 'http://issuer', audience: 'otoroshi' }, (error) => assert.fail(error));
    await feed.start();
  });
  after(async () => {
    feed.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('sends only what changed, with the version it applies on', async () => {
    await store.apiKeys.createMany(Array.from({ length: 50 }, (_, index) => apiKeyRecord(`bulk-${String(index).padStart(3, '0')}`)));
    await nextDeltas(feed).catch(() => {});
    const before = feed.version;
    const deltas = nextDeltas(feed);
    await store.apiKeys.modify('bulk-007', (current) => ({ ...current, enabled: false }));
    const [delta] = await deltas;
    assert.equal(delta.baseVersion, before);
    assert.notEqual(delta.version, before);
    assert.equal(delta.reset, false);
    assert.equal(delta.more, false);
    assert.deepEqual(
      delta.apiKeys.map((key) => [key.clientId, key.enabled]),
      [['bulk-007', false]],
    );
    assert.deepEqual([delta.removedApiKeys, delta.revokedTokens, delta.keyPairs], [[], [], []]);

    const removal = nextDeltas(feed);
    await store.apiKeys.delete('bulk-008');
    assert.deepEqual((await removal)[0].removedApiKeys, ['bulk-008']);

    const revocation = nextDeltas(feed);
    const expiresAt = Date.now() + 60_000;
    await store.revocations.revoke('jti-1', expiresAt);
    assert.deepEqual((await revocation)[0].revokedTokens, [{ jti: 'jti-1', expiresAt }]);
  });

  it('coalesces a burst of writes into one delta', async () => {
    const deltas = nextDeltas(feed);
    for (let index = 0; index < 20; index += 1)
      await store.apiKeys.modify('bulk-001', (current) => ({ ...current, description: `v${index}` }));
    const [delta] = await deltas;
    assert.equal(delta.apiKeys.length, 1, 'one entry for twenty changes of one key');
    assert.equal((delta.apiKeys[0] as unknown as { clientId: string }).clientId, 'bulk-001');
  });

  it('reads a snapshot in pages that all carry one version, the first one resetting', async () => {
    await store.apiKeys.createMany(Array.from({ length: 2100 }, (_, index) => apiKeyRecord(`page-${String(index).padStart(5, '0')}`)));
    await new Promise((done) => setTimeout(done, 100));
    const parts = await collect(feed.updatesFrom());
    assert.ok(parts.length >= 3, `${parts.length} parts`);
    assert.deepEqual(
      parts.map((part) => part.reset),
      parts.map((_, index) => index === 0),
    );
    assert.deepEqual(
      parts.map((part) => part.more),
      parts.map((_, index) => index < parts.length - 1),
    );
    assert.equal(new Set(parts.map((part) => part.version)).size, 1);
    assert.equal(parts[0].version, feed.version);
    assert.equal(parts[0].issuer, 'http://issuer');
    const clientIds = parts.flatMap((part) => part.apiKeys.map((key) => key.clientId));
    assert.equal(clientIds.length, 2100 + 49);
    assert.equal(new Set(clientIds).size, clientIds.length);
    assert.ok(parts.every((part) => part.apiKeys.length <= 1000));
    assert.deepEqual(
      parts.flatMap((part) => part.revokedTokens.map((revoked) => revoked.jti)),
      ['jti-1'],
    );
  });

  it('catches a data plane up from its version with only what it missed', async () => {
    await publishedThroughHead(feed, store);
    const from = feed.version;
    const deltas = nextDeltas(feed);
    await store.apiKeys.modify('page-00042', (current) => ({ ...current, tags: ['changed'] }));
    await store.apiKeys.delete('page-00043');
    await deltas;
    await publishedThroughHead(feed, store);
    const parts = await collect(feed.updatesFrom(from));
    assert.ok(parts.every((part) => !part.reset && part.baseVersion === from && part.version === feed.version));
    assert.deepEqual(
      parts.flatMap((part) => part.apiKeys.map((key) => key.clientId)),
      ['page-00042'],
    );
    assert.deepEqual(
      parts.flatMap((part) => part.removedApiKeys),
      ['page-00043'],
    );
  });

  it('answers a version it cannot continue (another store, the future, garbage) with a snapshot', async () => {
    for (const version of [formatVersion('another-store', 1), formatVersion(store.changes.storeId, 10 ** 9), 'garbage', ':']) {
      const [first] = await collect(feed.updatesFrom(version));
      assert.equal(first.reset, true, version);
    }
  });

  it('sees writes of another process sharing the store, with what they changed', async () => {
    const other = await openTestStore(dir);
    try {
      const deltas = nextDeltas(feed, 1, 2000);
      await other.apiKeys.modify('page-00100', (current) => ({ ...current, enabled: false }));
      const [delta] = await deltas;
      assert.deepEqual(
        delta.apiKeys.map((key) => [key.clientId, key.enabled]),
        [['page-00100', false]],
      );
    } finally {
      await other.close();
    }
  });

  it("never sends a cached copy older than the change: another process's write, then one of ours within the poll interval", async () => {
    const other = await openTestStore(dir);
    try {
      assert.equal((await store.apiKeys.get('page-00200'))?.enabled, true, 'cached here');
      const deltas = nextDeltas(feed, 1, 2000);
      await other.apiKeys.modify('page-00200', (current) => ({ ...current, enabled: false }));
      // Our own write publishes at once, before the 250 ms data_version poll has seen theirs.
      await store.revocations.revoke('jti-cache', Date.now() + 60_000);
      const [delta] = await deltas;
      assert.deepEqual(
        delta.apiKeys.map((key) => [key.clientId, key.enabled]),
        [['page-00200', false]],
      );
      assert.equal((await store.apiKeys.get('page-00200'))?.enabled, false, 'and the token path reads it fresh too');
    } finally {
      await other.close();
    }
  });

  it('retries a delta that failed to build, without waiting for another write', async () => {
    let failures = 1;
    const flaky = {
      ...store,
      onChange: store.onChange.bind(store),
      close: async () => {},
      apiKeys: {
        ...store.apiKeys,
        getMany: async (clientIds: string[]) =>
          failures-- > 0 ? Promise.reject(new Error('SQLITE_BUSY')) : store.apiKeys.getMany(clientIds),
      },
    };
    const errors: Error[] = [];
    const flakyFeed = new DataPlaneFeed(flaky, keyRing, { issuer: 'http://issuer', audience: 'otoroshi' }, (error) => errors.push(error));
    await flakyFeed.start();
    try {
      const deltas = nextDeltas(flakyFeed, 1, 3000);
      await store.apiKeys.modify('page-00201', (current) => ({ ...current, description: 'retried' }));
      const [delta] = await deltas;
      assert.deepEqual(
        delta.apiKeys.map((key) => key.clientId),
        ['page-00201'],
      );
      assert.equal(errors.length, 1);
    } finally {
      flakyFeed.close();
    }
  });

  it('splits a snapshot by size as well as by count, so large keys never make a message too big', async () => {
    const large = { huge: 'x'.repeat(900_000) };
    await store.apiKeys.createMany(Array.from({ length: 12 }, (_, index) => apiKeyRecord(`zz-large-${index}`, { metadata: large })));
    const parts = await collect(feed.updatesFrom());
    const sizes = parts.map((part) => part.apiKeys.reduce((sum, key) => sum + JSON.stringify(key).length, 0));
    assert.ok(Math.max(...sizes) < 5 * 1024 * 1024, `largest part ${Math.max(...sizes)} bytes`);
    assert.equal(parts.flatMap((part) => part.apiKeys).filter((key) => key.clientId.startsWith('zz-large-')).length, 12);
    const settled = nextDeltas(feed);
    for (let index = 0; index < 12; index += 1) await store.apiKeys.delete(`zz-large-${index}`);
    await settled;
    await new Promise((done) => setTimeout(done, 100));
  });

  it('a replica applies a multi-part catch-up whole: a key disabled in one part, its key pair deleted in another', async () => {
    // Keys large enough that two of them do not fit one part (UPDATE_BYTES), so the catch-up has several.
    const large = { blob: 'y'.repeat(2_500_000) };
    const material = generateKeyMaterial('EdDSA');
    const now = Date.now();
    await store.keyPairs.create({
      id: 'atomic-kp',
      algorithm: 'EdDSA',
      description: '',
      createdAt: now,
      versions: [{ kid: 'atomic-kp-v1', ...material, createdAt: now }],
    });
    await store.apiKeys.createMany(['atomic-a', 'atomic-b'].map((id) => apiKeyRecord(id, { metadata: large })));
    await publishedThroughHead(feed, store);
    const replica = new AuthorityReplica();
    for (const part of await collect(feed.updatesFrom())) replica.apply(part);
    const from = replica.version;
    const seen = () => ({
      a: replica.apiKey('atomic-a')?.enabled,
      b: replica.apiKey('atomic-b')?.enabled,
      key: replica.verificationKey('atomic-kp-v1') !== undefined,
    });
    assert.deepEqual(seen(), { a: true, b: true, key: true });

    for (const id of ['atomic-a', 'atomic-b']) await store.apiKeys.modify(id, (current) => ({ ...current, enabled: false }));
    await store.keyPairs.delete('atomic-kp');
    await publishedThroughHead(feed, store);
    const parts = await collect(feed.updatesFrom(from));
    assert.ok(parts.length >= 3, `${parts.length} parts`);
    assert.ok(parts.some((part) => part.removedKeyPairs.includes('atomic-kp')));
    for (const part of parts.slice(0, -1)) {
      assert.equal(replica.apply(part), 'partial');
      assert.deepEqual(seen(), { a: true, b: true, key: true }, 'nothing of the update shows before its last part');
    }
    assert.equal(replica.apply(parts[parts.length - 1]), 'applied');
    assert.deepEqual(seen(), { a: false, b: false, key: false });
    for (const id of ['atomic-a', 'atomic-b']) await store.apiKeys.delete(id);
    await publishedThroughHead(feed, store);
  });

  it('a replica follows snapshot then deltas, and refuses a delta that does not follow on', async () => {
    const replica = new AuthorityReplica();
    for (const part of await collect(feed.updatesFrom())) {
      assert.equal(replica.apply(part), part.more ? 'partial' : 'applied');
      assert.equal(replica.ready, !part.more, 'not ready on half a snapshot');
    }
    assert.equal(replica.version, feed.version);
    assert.equal(replica.apiKey('page-00100')?.enabled, false);
    const deltas: DataPlaneUpdate[] = [];
    const unsubscribe = feed.subscribe((update) => update !== 'resync' && deltas.push(update));
    await store.apiKeys.modify('page-00100', (current) => ({ ...current, enabled: true }));
    await store.apiKeys.delete('page-00101');
    await publishedThroughHead(feed, store);
    unsubscribe();
    for (const delta of deltas) assert.equal(replica.apply(delta), 'applied');
    assert.equal(replica.apiKey('page-00100')?.enabled, true);
    assert.equal(replica.apiKey('page-00101'), undefined);
    const last = deltas[deltas.length - 1];
    assert.equal(replica.apply({ ...last, baseVersion: formatVersion(store.changes.storeId, 1) }), 'out_of_sync');
    assert.equal(replica.version, last.version, 'an out-of-sync delta changes nothing');
    assert.deepEqual(replica.applied, { snapshots: 1, deltas: deltas.length });
  });

  it('publishes nothing when only routes changed (they reach Envoy over xDS); the next delta follows on from the last one', async () => {
    await publishedThroughHead(feed, store);
    const before = feed.version;
    const deltas: DataPlaneUpdate[] = [];
    const unsubscribe = feed.subscribe((update) => update !== 'resync' && deltas.push(update));
    try {
      const at = new Date().toISOString();
      const validated = validateRoute({
        id: 'feed-route',
        frontend: { domains: ['feed.oto.tools'] },
        backend: { targets: [{ hostname: '127.0.0.1', port: 8081 }] },
      });
      assert.ok(validated.ok);
      await store.routes.create({ ...validated.route, createdAt: at, updatedAt: at });
      await store.routes.modify('feed-route', (current) => ({ ...current, enabled: false }));
      // Well past the feed's 20 ms debounce (a shared database's notice takes longer).
      await new Promise((done) => setTimeout(done, 500));
      assert.equal(deltas.length, 0, 'no update for route changes');
      assert.equal(feed.version, before);
      const routeOnly = await collect(feed.updatesFrom(before));
      assert.deepEqual(
        routeOnly.map((part) => [part.baseVersion, part.version, part.apiKeys.length]),
        [[before, before, 0]],
      );
      await store.apiKeys.modify('page-00100', (current) => ({ ...current, description: 'after routes' }));
      await publishedThroughHead(feed, store);
      assert.equal(deltas.length, 1);
      assert.equal(deltas[0].baseVersion, before);
      assert.deepEqual(
        deltas[0].apiKeys.map((key) => key.clientId),
        ['page-00100'],
      );
      await store.routes.delete('feed-route');
    } finally {
      unsubscribe();
    }
  });
});

describe('DeltaWatch over gRPC', () => {
  let authority: TestAuthority;
  const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
  const metadata = () => {
    const value = new Metadata();
    value.set('authorization', `Bearer ${ADMIN_TOKEN}`);
    return value;
  };
  before(async () => {
    authority = await startTestAuthority();
  });
  after(() => authority.stop());

  it('answers the deprecated Watch with UNIMPLEMENTED, and DeltaWatch without the token with UNAUTHENTICATED', async () => {
    const client = new definition.token_authority.v1.AuthorityWatch(authority.grpcAddress, credentials.createInsecure());
    const errorOf = (call: ClientReadableStream<unknown>) =>
      new Promise<ServiceError>((resolve) => (call.on('data', () => {}), call.on('error', resolve)));
    assert.equal((await errorOf(client.Watch({}, metadata()))).code, GrpcStatus.UNIMPLEMENTED);
    assert.equal((await errorOf(client.DeltaWatch({}, new Metadata()))).code, GrpcStatus.UNAUTHENTICATED);
    client.close();
  });

  // The client takes the first message and stops reading; the changes come in batches spread over
  // time (each published before the next), not in one burst, on SQLite as on PostgreSQL. A paused
  // grpc-js client still reads ahead until its stream holds 16 messages (its readable high-water
  // mark), plus its 64 KB window: ~18 deltas of 1,000 keys leave the authority before the callbacks
  // stop. After that the authority must end the stream once it holds MAX_BUFFERED_ENTRIES, well
  // before PUBLISH_CAP; an authority that held without bound would keep the stream open.
  it('ends a client that does not read with RESOURCE_EXHAUSTED, holding a bounded amount for it', async () => {
    const PUBLISH_CAP = 3 * MAX_BUFFERED_ENTRIES;
    const BATCH = 2_000;
    const client = new definition.token_authority.v1.AuthorityWatch(authority.grpcAddress, credentials.createInsecure(), {
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    });
    const call: ClientReadableStream<unknown> = client.DeltaWatch({ node_id: 'stuck' }, metadata());
    let messages = 0;
    call.on('data', () => {
      messages += 1;
      if (messages === 1) call.pause();
    });
    const ended = new Promise<ServiceError>((resolve) => call.on('error', resolve));
    const metrics = async () => (await fetch(`${authority.url}/metrics`)).text();
    const streamEnded = async () => /token_authority_watch_streams 0/.test(await metrics());
    const deadline = Date.now() + 10_000;
    while (messages === 0 && Date.now() < deadline) await new Promise((done) => setTimeout(done, 20));
    assert.equal(messages, 1, 'the client read its first update');
    let published = 0;
    while (published < PUBLISH_CAP && !(await streamEnded())) {
      await authority.authority.store.apiKeys.createMany(
        Array.from({ length: BATCH }, (_, index) => apiKeyRecord(`slow-${String(published + index).padStart(6, '0')}`)),
      );
      published += BATCH;
      await publishedThroughHead(authority.authority.dataPlane, authority.authority.store, 10_000);
      await new Promise((done) => setTimeout(done, 20));
    }
    assert.ok(await streamEnded(), `the stream was still open after ${published} changes: the authority holds them without bound`);
    call.resume();
    const error = await ended;
    assert.equal(error.code, GrpcStatus.RESOURCE_EXHAUSTED);
    assert.ok(published > MAX_BUFFERED_ENTRIES, `ended after only ${published} changes`);
    assert.ok(messages < published / 1_000, `${messages} messages reached the client`);
    assert.equal((await fetch(`${authority.url}/health`)).status, 200);
    client.close();
  });

  it('a data plane that reconnects to a restarted authority resumes with what it missed, not a snapshot', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'resume-'));
    const settings = { grpc: { host: '127.0.0.1', port: await freePort() } };
    let restarted = await startTestAuthority(settings, dataDir);
    const extAuthz = await startTestExtAuthz(restarted);
    try {
      await restarted.admin('POST', '/api/apikeys', { clientId: 'resumer', clientSecret: 'resumer-secret' });
      await extAuthz.waitFor(() => extAuthz.replica.apiKey('resumer') !== undefined);
      await restarted.close();
      await extAuthz.waitFor(() => extAuthz.replica.status === 'degraded');
      restarted = await startTestAuthority(settings, dataDir);
      await restarted.admin('PATCH', '/api/apikeys/resumer', { enabled: false });
      await extAuthz.waitFor(() => extAuthz.replica.status === 'synced' && extAuthz.replica.apiKey('resumer')?.enabled === false, 10_000);
      assert.equal(extAuthz.replica.applied.snapshots, 1, 'only the first connection read a snapshot');
      assert.match(await (await fetch(`${extAuthz.url}/metrics`)).text(), /ext_authz_replica_updates_applied\{kind="snapshot"\} 1/);
    } finally {
      await extAuthz.close();
      await restarted.stop();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
