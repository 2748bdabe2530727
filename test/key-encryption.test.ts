import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { createAuthority } from '../libs/core/authority';
import { authorityConfigSchema } from '../libs/core/config';
import { KeyEncryptionError, KeyProtector } from '../libs/core/crypto/key-encryption';
import type { KeyPairRecord } from '../libs/core/model';
import { adminQuery, dropSchema, POSTGRES_URL, randomSchema } from './support/postgres';

const MAIN = resolve(__dirname, '../services/token-authority/main.js');
const CLI = resolve(__dirname, '../services/token-authority/cli.js');
const newKek = () => randomBytes(32).toString('base64');
const quiet = { info: () => {}, warn: () => {} };
const PEM = '-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n';

describe('envelope encryption of private keys', () => {
  it('seals with a per-key data key, opens with the same KEK, and names a wrong or missing one', () => {
    const kek = randomBytes(32);
    const protector = new KeyProtector(kek);
    const stored = { kid: 'k', publicKeyPem: '', createdAt: 0, ...protector.protect(PEM) };
    assert.equal(stored.privateKeyPem, undefined);
    assert.ok(!JSON.stringify(stored).includes('PRIVATE KEY'));
    const again = protector.protect(PEM).sealedPrivateKey!;
    assert.notEqual(again.dataKey, stored.sealedPrivateKey!.dataKey, 'a data key per key');
    assert.equal(protector.privateKeyPem(stored, 'pair'), PEM);
    assert.throws(() => new KeyProtector(randomBytes(32)).privateKeyPem(stored, 'pair'), /wrong key/);
    assert.throws(() => new KeyProtector().privateKeyPem(stored, 'pair'), /set KEY_ENCRYPTION_KEY/);
    const tampered = { ...stored, sealedPrivateKey: { ...stored.sealedPrivateKey!, privateKey: Buffer.alloc(64).toString('base64') } };
    assert.throws(() => protector.privateKeyPem(tampered, 'pair'), /altered/);
    // Rotation: the data key is rewrapped; the new KEK opens it, with the old one only as previous.
    const next = randomBytes(32);
    const rotating = new KeyProtector(next, kek);
    const rewrapped = rotating.reseal(stored, 'pair')!;
    assert.equal(rewrapped.sealedPrivateKey!.privateKey, stored.sealedPrivateKey!.privateKey);
    assert.equal(new KeyProtector(next).privateKeyPem(rewrapped, 'pair'), PEM);
    assert.equal(rotating.reseal(rewrapped, 'pair'), undefined, 'nothing left to do');
    assert.throws(() => KeyProtector.fromSettings({ key: 'too-short' }), KeyEncryptionError);
    assert.throws(() => KeyProtector.fromSettings({ keyFile: '/nonexistent/kek' }), /cannot be read/);
  });

  for (const kind of ['sqlite', 'postgres'] as const) {
    describe(`on ${kind}`, () => {
      const dir = mkdtempSync(join(tmpdir(), 'ta-kek-'));
      const schema = randomSchema('kek');
      const storeSettings = kind === 'postgres' ? { store: { url: POSTGRES_URL, schema } } : {};
      const storeEnv: Record<string, string> = kind === 'postgres' ? { STORE_URL: POSTGRES_URL, STORE_SCHEMA: schema } : {};
      const config = (keyEncryption: Record<string, string> = {}) =>
        authorityConfigSchema.parse({ dataDir: dir, log: { level: 'silent' }, keyEncryption, ...storeSettings });
      /** The stored key pairs, read from the database or file, not through the store. */
      const storedDocs = async (): Promise<string> => {
        if (kind === 'postgres') return JSON.stringify(await adminQuery(`SELECT doc FROM "${schema}".key_pairs`));
        const db = new (require('better-sqlite3'))(join(dir, 'token-authority.sqlite'), { readonly: true });
        try {
          return JSON.stringify(db.prepare('SELECT doc FROM key_pairs').all());
        } finally {
          db.close();
        }
      };
      const run = (script: string, args: string[], env: Record<string, string>) =>
        spawnSync(process.execPath, [script, ...args], {
          env: {
            PATH: process.env.PATH,
            DATA_DIR: dir,
            LOG_LEVEL: 'silent',
            ADMIN_TOKEN: 'kek-test-admin-token-0123',
            ...storeEnv,
            ...env,
          },
          encoding: 'utf8',
          timeout: 20_000,
        });
      after(async () => {
        rmSync(dir, { recursive: true, force: true });
        if (kind === 'postgres') await dropSchema(schema);
      });

      const first = newKek();
      const second = newKek();
      let kid = '';

      it('a store written without a KEK is encrypted by the CLI, keeping its keys', async () => {
        const plain = await createAuthority(config(), quiet, { adminApi: false });
        kid = plain.keyRing.jwks().keys[0].kid;
        await plain.close();
        assert.match(await storedDocs(), /PRIVATE KEY/);
        const encrypted = run(CLI, ['keypairs', 'encrypt'], { KEY_ENCRYPTION_KEY: first });
        assert.equal(encrypted.status, 0, encrypted.stderr);
        assert.deepEqual(JSON.parse(encrypted.stdout).changed, [{ keyPair: 'otoroshi-jwt-signing', versions: 1 }]);
        assert.doesNotMatch(await storedDocs(), /PRIVATE KEY/);
        const sealed = await createAuthority(config({ key: first }), quiet, { adminApi: false });
        try {
          assert.equal(sealed.keyRing.signingKey('otoroshi-jwt-signing')?.kid, kid, 'the same key, opened');
          // New key pairs are sealed when stored.
          await sealed.admin.createKeyPair({ id: 'sealed-ec', algorithm: 'ES256' });
          const record = (await sealed.store.keyPairs.get('sealed-ec')) as KeyPairRecord;
          assert.equal(record.versions[0].privateKeyPem, undefined);
          assert.ok(record.versions[0].sealedPrivateKey);
        } finally {
          await sealed.close();
        }
        assert.doesNotMatch(await storedDocs(), /PRIVATE KEY/);
      });

      it('a wrong key or none fails the start with a clear message', () => {
        const wrong = run(MAIN, [], { KEY_ENCRYPTION_KEY: newKek() });
        assert.equal(wrong.status, 2, wrong.stderr);
        assert.match(wrong.stderr, /encrypted under key-encryption key [0-9a-f]{16}, but KEY_ENCRYPTION_KEY is [0-9a-f]{16}: wrong key/);
        assert.ok(!wrong.stderr.includes(first));
        const none = run(MAIN, [], {});
        assert.equal(none.status, 2, none.stderr);
        assert.match(none.stderr, /encrypted at rest .*set KEY_ENCRYPTION_KEY/);
        const malformed = run(MAIN, [], { KEY_ENCRYPTION_KEY: 'not-32-bytes' });
        assert.equal(malformed.status, 2);
        assert.match(malformed.stderr, /KEY_ENCRYPTION_KEY must be 32 random bytes in base64/);
      });

      it('rotates the KEK: with the old one as previous, the CLI rewraps everything; then the new one alone opens the store', async () => {
        const keyFile = join(dir, 'kek-next');
        writeFileSync(keyFile, `${second}\n`, { mode: 0o600 });
        const rewrapped = run(CLI, ['keypairs', 'encrypt'], { KEY_ENCRYPTION_KEY_FILE: keyFile, KEY_ENCRYPTION_KEY_PREVIOUS: first });
        assert.equal(rewrapped.status, 0, rewrapped.stderr);
        assert.equal(JSON.parse(rewrapped.stdout).changed.length, 2);
        const rotated = await createAuthority(config({ keyFile }), quiet, { adminApi: false });
        try {
          assert.equal(rotated.keyRing.signingKey('otoroshi-jwt-signing')?.kid, kid);
          assert.ok(rotated.keyRing.signingKey('sealed-ec'));
        } finally {
          await rotated.close();
        }
        await assert.rejects(createAuthority(config({ key: first }), quiet, { adminApi: false }), /wrong key/);
      });
    });
  }
});
