import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { extAuthzConfigSchema, type ExtAuthzConfig } from '../../../libs/authz/config';
import { AuthorityReplica } from '../../../libs/authz/replica';
import type { SigningAlgorithm } from '../../../libs/core/config';
import { signJwt } from '../../../libs/core/crypto/jws';
import { generateKeyMaterial, type KeyMaterial, publicJwk } from '../../../libs/core/crypto/key-pairs';
import type { DataPlaneApiKey, DataPlaneKeyPair, DataPlaneUpdate } from '../../../libs/core/data-plane';
import type { KeyPairRepository } from '../../../libs/core/store/repositories';

/* Fixtures of the fast tier: everything in memory, no process, network or store. */

export const ISSUER = 'http://oauth.oto.tools:8080';
export const AUDIENCE = 'otoroshi';

/** A clock the test moves by hand (epoch ms). */
export class TestClock {
  constructor(public ms = Date.UTC(2026, 0, 15, 12, 0, 0)) {}
  readonly now = (): number => this.ms;
  get seconds(): number {
    return Math.floor(this.ms / 1000);
  }
  advance(ms: number): void {
    this.ms += ms;
  }
}

/** Stores key pair `kp` in a store of the test (EdDSA, one version `kp-1`, made at `createdAt`) and answers its material. */
export async function storeKeyPair(store: { keyPairs: KeyPairRepository }, createdAt: number): Promise<KeyMaterial> {
  const material = generateKeyMaterial('EdDSA');
  await store.keyPairs.create({
    id: 'kp',
    algorithm: 'EdDSA',
    description: '',
    createdAt,
    versions: [{ kid: 'kp-1', ...material, createdAt }],
  });
  return material;
}

export interface TestKeyPair {
  keyPairId: string;
  kid: string;
  algorithm: SigningAlgorithm;
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** As the feed sends it. */
  dataPlane: DataPlaneKeyPair;
}

/** An Ed25519 pair unless told otherwise (generated in well under a millisecond). */
export function testKeyPair(keyPairId: string, algorithm: SigningAlgorithm = 'EdDSA', verifyUntil?: number): TestKeyPair {
  const generated =
    algorithm === 'EdDSA'
      ? generateKeyPairSync('ed25519')
      : algorithm === 'ES256'
        ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
        : generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `${keyPairId}-v1`;
  const privateKey = createPrivateKey(generated.privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const publicKey = createPublicKey(privateKey);
  return {
    keyPairId,
    kid,
    algorithm,
    privateKey,
    publicKey,
    dataPlane: { keyPairId, keys: [{ jwk: publicJwk(publicKey, kid, algorithm), verifyUntil }] },
  };
}

export function apiKey(clientId: string, overrides: Partial<DataPlaneApiKey> = {}): DataPlaneApiKey {
  return {
    clientId,
    clientName: `${clientId} app`,
    enabled: true,
    authorizedEntities: [],
    scopes: ['read'],
    metadata: {},
    tags: [],
    secrets: [],
    allowClientIdOnly: false,
    ...overrides,
  };
}

export function update(fields: Partial<DataPlaneUpdate> & { version: string }): DataPlaneUpdate {
  return {
    baseVersion: '',
    reset: false,
    more: false,
    keyPairs: [],
    removedKeyPairs: [],
    apiKeys: [],
    removedApiKeys: [],
    revokedTokens: [],
    generatedAt: 0,
    ...fields,
  };
}

/** A replica that holds one snapshot (version `s:1`) of these key pairs and keys. */
export function replicaWith(keyPairs: TestKeyPair[], apiKeys: DataPlaneApiKey[], now: () => number = Date.now): AuthorityReplica {
  const replica = new AuthorityReplica(now);
  const outcome = replica.apply(
    update({ version: 's:1', reset: true, issuer: ISSUER, audience: AUDIENCE, keyPairs: keyPairs.map((pair) => pair.dataPlane), apiKeys }),
  );
  if (outcome !== 'applied') throw new Error(`snapshot: ${outcome}`);
  return replica;
}

export function accessClaims(clientId: string, nowSeconds: number, overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    iss: ISSUER,
    sub: clientId,
    client_id: clientId,
    cid: clientId,
    aud: AUDIENCE,
    iat: nowSeconds,
    nbf: nowSeconds,
    exp: nowSeconds + 600,
    jti: `jti-${clientId}-${nowSeconds}`,
    scope: 'read',
    ...overrides,
  };
}

/** A token as the authority signs it: `typ: at+jwt`, the pair's alg and kid (both overridable). */
export function signAccessToken(pair: TestKeyPair, claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  return signJwt(
    { kid: (header.kid as string) ?? pair.kid, algorithm: pair.algorithm, privateKey: pair.privateKey },
    { typ: 'at+jwt', ...header },
    claims,
  );
}

/** ext-authz's settings with one policy `api` (bearer, basic, custom headers, client id) unless given. */
export function authzConfig(
  policies: Record<string, unknown> = { api: { extractors: ['bearer', 'basic', 'customHeaders', 'clientId'] } },
  settings: Record<string, unknown> = {},
): ExtAuthzConfig {
  return extAuthzConfigSchema.parse({ policies, ...settings });
}
