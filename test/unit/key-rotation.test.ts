import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { AdminService } from '../../libs/core/admin-service';
import { authorityConfigSchema } from '../../libs/core/config';
import { hashSecret } from '../../libs/core/crypto/secret-hash';
import { KeyRing } from '../../libs/core/key-ring';
import { applyDueRotation, dueSwitch, nextRotation, RotationScheduler } from '../../libs/core/key-rotation';
import type { KeyPairRecord } from '../../libs/core/model';
import { SqliteStore } from '../../libs/core/store/sqlite-store';
import { TokenService } from '../../libs/core/token-service';
import { apiKeyRecord } from '../support/records';
import { TestClock } from './support/fixtures';

/*
 * Scheduled key rotation (libs/core/key-rotation.ts and AdminService.rotateDueKeyPairs) on an
 * in-memory SQLite store and an injected clock: a day's schedule runs in milliseconds.
 */

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const SECRET = 'S'.repeat(43);
/** Token lifetime of these tests: 10 minutes. */
const EXPIRATION = 600_000;
const LEEWAY = 60;
const claimsOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()) as { exp: number };
const kidOf = (token: string) => (JSON.parse(Buffer.from(token.split('.')[0], 'base64url').toString()) as { kid: string }).kid;

describe('scheduled key rotation', () => {
  let clock: TestClock;
  let store: SqliteStore;
  let keyRing: KeyRing;
  let admin: AdminService;
  let tokens: TokenService;
  const config = authorityConfigSchema.parse({ defaultKeyPair: 'kp', expiration: EXPIRATION });

  /** A fresh store with key pair `kp` (EdDSA, rotating daily, published 1 h ahead) created at the clock's time. */
  async function setUp(rotation: unknown = { rotateEvery: 86_400, publishAhead: 3_600, leeway: LEEWAY }) {
    await store?.close();
    clock = new TestClock();
    store = new SqliteStore(':memory:');
    keyRing = new KeyRing(store.keyPairs, clock.now);
    admin = new AdminService(config, store, keyRing, clock.now);
    tokens = new TokenService(config, store, keyRing, clock);
    await store.apiKeys.createMany([apiKeyRecord('app', { secretHash: await hashSecret(SECRET) })]);
    await admin.createKeyPair({ id: 'kp', algorithm: 'EdDSA', rotation });
    await keyRing.reload();
  }
  after(() => store?.close());

  const issue = async () =>
    (await tokens.issueToken({ params: { grant_type: 'client_credentials', client_id: 'app', client_secret: SECRET } })).access_token;
  const jwksKids = () => keyRing.jwks().keys.map((key) => key.kid);
  const stored = async () => (await store.keyPairs.get('kp')) as KeyPairRecord;

  it('publishes the next key publishAhead before it signs, in the JWKS and to the data planes, without signing with it', async () => {
    await setUp();
    const start = clock.ms;
    // Due a tenth of publishAhead early, at most a minute (1 min here): a late timer does not move the switch.
    const early = 60_000;
    clock.advance(DAY - HOUR - early - 1);
    assert.deepEqual((await admin.rotateDueKeyPairs()).rotated, [], 'not due 1 ms before');
    assert.equal((await admin.rotateDueKeyPairs()).nextDueAt, start + DAY - HOUR - early, 'told when to look next');
    clock.advance(1);
    const { rotated } = await admin.rotateDueKeyPairs();
    assert.equal(rotated.length, 1);
    assert.equal(rotated[0].switchAt, start + DAY);
    const next = rotated[0].kid;
    assert.match(next, /^kp#2-[0-9a-f]{6}$/);
    assert.deepEqual(jwksKids(), ['kp', next], 'both published');
    assert.deepEqual(
      keyRing.keyPairKeys('kp')[0].keys.map((key) => [key.jwk.kid, key.verifyUntil]),
      [
        ['kp', start + DAY + EXPIRATION + LEEWAY * 1000],
        [next, undefined],
      ],
      'the data plane gets the new key, and the old one with the end of its window',
    );
    assert.ok(keyRing.verificationKey(next), 'verifies before it signs');
    assert.equal(keyRing.signingKey('kp')?.kid, 'kp', 'the old key still signs');
    assert.equal(kidOf(await issue()), 'kp');
    const view = (await admin.getKeyPair('kp')).body;
    assert.deepEqual(
      view.versions.map((version) => [version.kid, version.status, version.activatesAt, version.retiredAt]),
      [
        ['kp', 'active', null, start + DAY],
        [next, 'pending', start + DAY, null],
      ],
    );
    assert.deepEqual(
      view.nextRotation,
      { publishAt: start + DAY - HOUR - early, switchAt: start + DAY, kid: next },
      'when it was published',
    );
    assert.deepEqual(view.rotation, { rotateEvery: 86_400, publishAhead: 3_600, leeway: LEEWAY });
    assert.equal(view.activeKid, 'kp');
  });

  it('switches at the scheduled instant by each key ring own clock, with no write at the switch', async () => {
    await setUp();
    const start = clock.ms;
    clock.advance(DAY - HOUR);
    const [{ kid: next }] = (await admin.rotateDueKeyPairs()).rotated;
    const changes = await store.changes.head();
    clock.advance(HOUR - 1);
    const lastOld = await issue();
    assert.equal(kidOf(lastOld), 'kp', '1 ms before the switch');
    clock.advance(1);
    assert.equal(clock.ms, start + DAY);
    const firstNew = await issue();
    assert.equal(kidOf(firstNew), next, 'at the switch');
    assert.equal(await store.changes.head(), changes, 'nothing written at the switch');
    const view = (await admin.getKeyPair('kp')).body;
    assert.deepEqual(
      view.versions.map((version) => version.status),
      ['retired', 'active'],
    );
    assert.equal(view.activeKid, next);
    assert.equal((await tokens.validateAccessToken(lastOld)).valid, true, "the old key's last token still verifies after the switch");
    assert.equal((await tokens.validateAccessToken(firstNew)).valid, true);
    assert.deepEqual(
      view.nextRotation,
      { publishAt: start + 2 * DAY - HOUR, switchAt: start + 2 * DAY, kid: null },
      'the next one is a period on',
    );
  });

  it('keeps a replaced key in the JWKS until its last token has expired (lifetime + leeway), then drops it', async () => {
    await setUp();
    const start = clock.ms;
    clock.advance(DAY - HOUR);
    const [{ kid: second }] = (await admin.rotateDueKeyPairs()).rotated;
    clock.advance(HOUR - 1);
    const lastOld = await issue();
    const verifyUntil = start + DAY + EXPIRATION + LEEWAY * 1000;
    assert.ok(claimsOf(lastOld).exp * 1000 <= verifyUntil, 'no token it signed outlives its window');
    clock.ms = verifyUntil - 1;
    assert.deepEqual(jwksKids(), ['kp', second]);
    clock.ms = verifyUntil;
    assert.deepEqual(jwksKids(), [second], 'gone from the JWKS');
    assert.equal(keyRing.verificationKey('kp'), undefined, 'and verifies nothing more');
    // The next rotation drops the version from the record too, and numbers on.
    clock.ms = start + 2 * DAY - HOUR;
    const [{ kid: third }] = (await admin.rotateDueKeyPairs()).rotated;
    assert.match(third, /^kp#3-/);
    assert.deepEqual(
      (await stored()).versions.map((version) => version.kid),
      [second, third],
    );
  });

  it('rotates exactly once for one slot however many replicas try at once, and only when due', async () => {
    await setUp();
    clock.advance(DAY - HOUR);
    const replicas = [admin, ...[1, 2, 3].map(() => new AdminService(config, store, new KeyRing(store.keyPairs, clock.now), clock.now))];
    const results = await Promise.all(replicas.map((replica) => replica.rotateDueKeyPairs()));
    assert.equal(results.flatMap((result) => result.rotated).length, 1, 'one rotation among four replicas');
    assert.deepEqual((await admin.rotateDueKeyPairs()).rotated, [], 'a second run in the same slot does nothing');
    assert.equal((await stored()).versions.length, 2);
    const audit = await admin.listAudit({ entity: 'keypair' });
    assert.deepEqual(
      audit.items.map((entry) => [entry.action, entry.actor]),
      [
        ['keypair.create', 'system'],
        ['keypair.rotate-scheduled', 'system'],
      ],
    );
    // The slot is re-checked inside the write: a record already rotated is left alone.
    const record = await stored();
    assert.equal(dueSwitch(record, clock.ms), undefined);
    assert.equal(applyDueRotation(record, clock.ms, { kid: 'x', publicKeyPem: '' }, EXPIRATION), undefined);
    clock.advance(HOUR);
    assert.deepEqual((await admin.rotateDueKeyPairs()).rotated, [], 'nor at the switch');
  });

  it('publishes late rotations publishAhead from now, never a key that signs unannounced', async () => {
    await setUp();
    // No authority ran for three days.
    clock.advance(3 * DAY);
    const [{ switchAt }] = (await admin.rotateDueKeyPairs()).rotated;
    assert.equal(switchAt, clock.ms + HOUR);
    assert.equal(keyRing.signingKey('kp')?.kid, 'kp');
    // A schedule set on an old key without one behaves the same.
    await setUp(null);
    clock.advance(30 * DAY);
    assert.equal(nextRotation(await stored(), clock.ms), undefined, 'no schedule, no rotation');
    assert.deepEqual((await admin.rotateDueKeyPairs()).rotated, []);
    await admin.updateKeyPair('kp', { rotation: { rotateEvery: 7 * 86_400, publishAhead: 600 } });
    const [late] = (await admin.rotateDueKeyPairs()).rotated;
    assert.equal(late.switchAt, clock.ms + 600_000);
    assert.equal((await admin.getKeyPair('kp')).body.rotation?.leeway, 60, 'leeway defaults to 60 s');
  });

  it('a manual rotation or retirement drops a key published ahead (it signed nothing) and the schedule counts anew', async () => {
    await setUp();
    clock.advance(DAY - HOUR);
    const [{ kid: pending }] = (await admin.rotateDueKeyPairs()).rotated;
    const rotated = (await admin.rotateKeyPair('kp', {})).body;
    assert.deepEqual(
      rotated.versions.map((version) => version.status),
      ['retired', 'active'],
    );
    assert.ok(!rotated.versions.some((version) => version.kid === pending));
    assert.notEqual(rotated.activeKid, pending);
    assert.equal(keyRing.signingKey('kp')?.kid, rotated.activeKid);
    assert.equal(rotated.nextRotation?.switchAt, clock.ms + DAY);
    clock.advance(DAY - HOUR);
    const [{ kid: pendingAgain }] = (await admin.rotateDueKeyPairs()).rotated;
    const retired = (await admin.retireKeyPair('kp')).body;
    assert.equal(retired.status, 'retired');
    // The first key's tokens have all expired (the rotation dropped it); the pending one is dropped too.
    assert.deepEqual(
      retired.versions.map((version) => [version.kid, version.status]),
      [[rotated.activeKid, 'retired']],
    );
    assert.ok(!jwksKids().includes(pendingAgain));
    assert.equal(retired.nextRotation, null);
    assert.equal(keyRing.signingKey('kp'), undefined);
    clock.advance(2 * DAY);
    assert.deepEqual((await admin.rotateDueKeyPairs()).rotated, [], 'a retired key pair does not rotate');
    await assert.rejects(admin.retireKeyPair('kp'), { status: 409 });
  });

  it('refuses schedules that cannot work, with the field named', async () => {
    await setUp();
    for (const rotation of [
      { rotateEvery: 3_600, publishAhead: 3_600 },
      { rotateEvery: 0, publishAhead: 0 },
      { rotateEvery: 86_400.5, publishAhead: 60 },
      { rotateEvery: 86_400, publishAhead: -1 },
      { rotateEvery: 86_400, publishAhead: 60, leeway: 90_000 },
      { rotateEvery: 86_400, publishAhead: 60, extra: 1 },
      { rotateEvery: 1e12, publishAhead: 60 },
      { publishAhead: 60 },
    ]) {
      await assert.rejects(admin.updateKeyPair('kp', { rotation }), (error: { status: number; details?: { path: string }[] }) => {
        assert.equal(error.status, 400, JSON.stringify(rotation));
        assert.match(error.details?.[0]?.path ?? '', /^rotation/);
        return true;
      });
    }
    await admin.updateKeyPair('kp', { rotation: null });
    assert.equal((await admin.getKeyPair('kp')).body.rotation, null, 'null removes the schedule');
  });
});

describe('RotationScheduler', () => {
  it('runs at start, again when the run says, and coalesces pokes during a run into one more run', async () => {
    let runs = 0;
    let release: () => void = () => {};
    const scheduler = new RotationScheduler({
      now: Date.now,
      idleCheck: 60_000,
      run: async () => {
        runs += 1;
        if (runs === 1) await new Promise<void>((done) => (release = done));
        return runs === 2 ? Date.now() + 20 : undefined;
      },
    });
    scheduler.start();
    scheduler.poke();
    scheduler.poke();
    assert.equal(runs, 1);
    release();
    await new Promise((done) => setTimeout(done, 5));
    assert.equal(runs, 2, 'the pokes made one more run');
    await new Promise((done) => setTimeout(done, 60));
    assert.equal(runs, 3, 'the due time it returned made another');
    await scheduler.close();
    scheduler.poke();
    assert.equal(runs, 3, 'nothing after close');
  });
});
