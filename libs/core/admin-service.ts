import { z } from 'zod';
import { SIGNING_ALGORITHMS, type AuthorityConfig } from './config';
import { generateKeyMaterial, importKeyMaterial, KeyMaterialError, publicJwk, type KeyMaterial } from './crypto/key-pairs';
import { generateSecret, hashSecret } from './crypto/secret-hash';
import { AdminError } from './errors';
import type { KeyRing } from './key-ring';
import { activeVersion, SIGN_KEYPAIR_METADATA, type ApiKeyRecord, type KeyPairRecord } from './model';
import type { AuthorityStore } from './store/repositories';
import { createPublicKey, randomBytes } from 'node:crypto';
import { applyPatch, deepClone, validate as validatePatch, type Operation } from 'fast-json-patch';
import type { QuotaConsumption, QuotaCounters } from '../authz/quotas';

/** Ids we accept for API keys and key pairs: printable, URL- and header-safe, no `:` (Basic auth) or `#` (kids). */
const ID = z.string().regex(/^[A-Za-z0-9._~@+-]{1,128}$/, 'use 1 to 128 of A-Z a-z 0-9 . _ ~ @ + -');
const SECRET = z
  .string()
  .min(8, 'must be at least 8 characters')
  .max(512)
  .regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');
const SCOPE_TOKEN = z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'not a valid scope token (RFC 6749 §3.3)');
const validUntil = z.union([
  z.number().int().nonnegative(),
  z.iso.datetime({ offset: true }).transform((value) => Date.parse(value)),
  z.null(),
]);
const quota = z.number().int().nonnegative();

/** The admin API's API key, with Otoroshi's field names. */
const apiKeyFields = {
  clientName: z
    .string()
    .min(1)
    .max(200)
    // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point
    .regex(/^[^\u0000-\u001f\u007f]*$/, 'no control characters'),
  description: z.string().max(2000),
  authorizedEntities: z.array(z.string().regex(/^(route|group|service)_[A-Za-z0-9._~@+-]+$/, 'use route_<name> or group_<name>')).max(1000),
  enabled: z.boolean(),
  validUntil,
  metadata: z
    .record(z.string().max(200), z.string().max(4000))
    .refine((metadata) => metadata.scope === undefined || /^[\x21\x23-\x5b\x5d-\x7e, ]*$/.test(metadata.scope), {
      message: 'metadata scope: scope tokens (RFC 6749 §3.3) separated by spaces or commas',
    }),
  tags: z.array(z.string().max(200)).max(200),
  scope: z
    .union([z.string().transform((value) => value.split(' ').filter(Boolean)), z.array(z.string())])
    .pipe(z.array(SCOPE_TOKEN).max(200)),
  rotation: z
    .object({
      enabled: z.boolean().default(false),
      rotationEvery: z.number().positive().default(744),
      gracePeriod: z.number().nonnegative().default(168),
    })
    .strict(),
  allowClientIdOnly: z.boolean(),
  throttlingQuota: quota,
  dailyQuota: quota,
  monthlyQuota: quota,
};

const apiKeyCreateSchema = z
  .object({
    clientId: ID.optional(),
    clientSecret: SECRET.optional(),
    clientName: apiKeyFields.clientName.optional(),
    description: apiKeyFields.description.default(''),
    authorizedEntities: apiKeyFields.authorizedEntities.default([]),
    enabled: apiKeyFields.enabled.default(true),
    validUntil: apiKeyFields.validUntil.default(null),
    metadata: apiKeyFields.metadata.default({}),
    tags: apiKeyFields.tags.default([]),
    scope: apiKeyFields.scope.default([]),
    rotation: apiKeyFields.rotation.prefault({}),
    allowClientIdOnly: apiKeyFields.allowClientIdOnly.default(false),
    throttlingQuota: quota.default(10_000_000),
    dailyQuota: quota.default(10_000_000),
    monthlyQuota: quota.default(10_000_000),
  })
  .strict();

const apiKeyPatchSchema = z
  .object({
    clientId: ID.optional(),
    clientSecret: SECRET.optional(),
    ...Object.fromEntries(Object.entries(apiKeyFields).map(([name, schema]) => [name, schema.optional()])),
  })
  .strict() as z.ZodType<Partial<z.input<typeof apiKeyCreateSchema>> & { clientSecret?: string; clientId?: string }, unknown>;

/** Query of the API key list (strings, as a query string gives them). */
const apiKeyListQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(1000).default(100),
    after: z.string().max(128).optional(),
    enabled: z
      .enum(['true', 'false'])
      .transform((value) => value === 'true')
      .optional(),
    tag: z.string().max(200).optional(),
    authorizedEntity: z.string().max(200).optional(),
  })
  .strict();

const rotateSecretSchema = z.object({ clientSecret: SECRET.optional(), gracePeriod: z.number().nonnegative().optional() }).strict();

const keyPairCreateSchema = z
  .object({
    id: ID,
    algorithm: z.enum(SIGNING_ALGORITHMS).default('RS256'),
    description: z.string().max(2000).default(''),
    privateKey: z.string().max(20_000).optional(),
    publicKey: z.string().max(20_000).optional(),
  })
  .strict();

const keyPairRotateSchema = z
  .object({ privateKey: z.string().max(20_000).optional(), publicKey: z.string().max(20_000).optional() })
  .strict();

/** The path of the first string (key or value) in `input` with a lone surrogate, which has no UTF-8 form. */
function illFormedPath(input: unknown, path: string[] = []): string[] | undefined {
  if (typeof input === 'string') return input.isWellFormed() ? undefined : path;
  if (typeof input !== 'object' || input === null) return undefined;
  for (const [key, value] of Object.entries(input)) {
    if (!key.isWellFormed()) return [...path, key.toWellFormed()];
    const found = illFormedPath(value, [...path, key]);
    if (found) return found;
  }
  return undefined;
}

function parseInput<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  // Stored text must survive every transport (protobuf strings are UTF-8): refused here, once.
  const illFormed = illFormedPath(input);
  if (illFormed)
    throw new AdminError(400, 'invalid input', [{ path: illFormed.join('.'), message: 'not well-formed Unicode (a lone surrogate)' }]);
  const result = schema.safeParse(input ?? {});
  if (!result.success) {
    throw new AdminError(
      400,
      'invalid input',
      result.error.issues.map((issue) => ({ path: issue.path.join('.'), message: issue.message })),
    );
  }
  return result.data;
}

/** What the admin API shows of an API key: never a hash. */
export type ApiKeyView = Omit<ApiKeyRecord, 'secretHash' | 'previousSecretHash'> & { clientSecret?: string };

export function apiKeyView(apiKey: ApiKeyRecord, clientSecret?: string): ApiKeyView {
  const { secretHash: _secret, previousSecretHash: _previous, ...view } = apiKey;
  return clientSecret === undefined ? view : { ...view, clientSecret };
}

/** The fields a JSON Patch may touch: the view without read-only fields. */
function editableView(apiKey: ApiKeyRecord): Record<string, unknown> {
  const { createdAt: _created, updatedAt: _updated, previousSecretValidUntil: _previous, ...editable } = apiKeyView(apiKey);
  return editable as Record<string, unknown>;
}

function patchError(error: unknown): AdminError {
  const failure = error as { name?: string; message?: string; index?: number };
  if (failure.name === 'TEST_OPERATION_FAILED') return new AdminError(409, `JSON Patch test operation ${failure.index} failed`);
  const where = failure.index === undefined ? '' : ` (operation ${failure.index})`;
  return new AdminError(400, `invalid JSON Patch${where}: ${(failure.message ?? String(error)).split('\n')[0]}`);
}

function quotasOf(apiKey: ApiKeyRecord) {
  return { throttlingQuota: apiKey.throttlingQuota, dailyQuota: apiKey.dailyQuota, monthlyQuota: apiKey.monthlyQuota };
}

/** What the admin API shows of a key pair: never a private key. */
export function keyPairView(keyPair: KeyPairRecord) {
  const active = activeVersion(keyPair);
  return {
    id: keyPair.id,
    algorithm: keyPair.algorithm,
    description: keyPair.description,
    createdAt: keyPair.createdAt,
    status: active ? 'active' : 'retired',
    activeKid: active?.kid ?? null,
    versions: keyPair.versions.map((version) => ({
      kid: version.kid,
      status: version.retiredAt === undefined ? 'active' : 'retired',
      createdAt: version.createdAt,
      retiredAt: version.retiredAt ?? null,
      verifyUntil: version.verifyUntil ?? null,
      publicKey: version.publicKeyPem,
      jwk: publicJwk(createPublicKey(version.publicKeyPem), version.kid, keyPair.algorithm),
    })),
  };
}

/** Creates, changes and deletes API keys and key pairs; the key ring is reloaded after each key pair change. */
export class AdminService {
  constructor(
    private readonly config: AuthorityConfig,
    private readonly store: AuthorityStore,
    private readonly keyRing: KeyRing,
    private readonly now: () => number = Date.now,
    /** Shared quota counters (Redis); undefined when each ext-authz counts in its own memory. */
    private readonly quotaCounters?: QuotaCounters,
  ) {}

  /**
   * One page of API keys in client id order: `limit` (default 100, at most 1000) after the
   * `after` cursor, optionally filtered. `next` is the cursor of the following page, if any.
   */
  async listApiKeys(query: unknown = {}): Promise<{ items: ApiKeyView[]; next?: string }> {
    const { limit, after, enabled, tag, authorizedEntity } = parseInput(apiKeyListQuerySchema, query);
    const page = await this.store.apiKeys.listPage({ limit, after, enabled, tag, authorizedEntity });
    const items = page.map((apiKey) => apiKeyView(apiKey));
    return page.length === limit ? { items, next: page[page.length - 1].clientId } : { items };
  }

  async getApiKey(clientId: string): Promise<ApiKeyView> {
    return apiKeyView(await this.requireApiKey(clientId));
  }

  /** Creates a key; the secret (given or generated) is in the answer, and never again. */
  async createApiKey(input: unknown): Promise<ApiKeyView> {
    const fields = parseInput(apiKeyCreateSchema, input);
    const clientId = fields.clientId ?? randomBytes(12).toString('base64url');
    const clientSecret = fields.clientSecret ?? generateSecret();
    await this.assertKeyPairReference(fields.metadata);
    const now = this.now();
    const { clientSecret: _ignored, ...rest } = fields;
    const apiKey: ApiKeyRecord = {
      ...rest,
      clientId,
      clientName: fields.clientName ?? clientId,
      secretHash: await hashSecret(clientSecret),
      createdAt: now,
      updatedAt: now,
    };
    if (!(await this.store.apiKeys.create(apiKey))) throw new AdminError(409, `API key '${clientId}' already exists`);
    return apiKeyView(apiKey, clientSecret);
  }

  /** PATCH semantics: the fields given replace the stored ones; a new clientSecret replaces the old at once. */
  async updateApiKey(clientId: string, input: unknown): Promise<ApiKeyView> {
    const changes = parseInput(apiKeyPatchSchema, input);
    if (changes.clientId !== undefined && changes.clientId !== clientId) throw new AdminError(400, 'clientId cannot be changed');
    const { clientSecret, clientId: _id, ...fields } = changes;
    if (fields.metadata) await this.assertKeyPairReference(fields.metadata);
    // Slow work (a short secret's scrypt) before the atomic read-change-write, so concurrent
    // changes of the same key never overwrite each other with stale copies.
    const secretHash = clientSecret === undefined ? undefined : await hashSecret(clientSecret);
    const next = await this.store.apiKeys.modify(clientId, (current) => {
      const changed: ApiKeyRecord = { ...current, ...(fields as Partial<ApiKeyRecord>), updatedAt: this.now() };
      if (secretHash !== undefined) {
        changed.secretHash = secretHash;
        delete changed.previousSecretHash;
        delete changed.previousSecretValidUntil;
      }
      return changed;
    });
    if (!next) throw new AdminError(404, `API key '${clientId}' does not exist`);
    return apiKeyView(next);
  }

  /**
   * RFC 6902 JSON Patch (Otoroshi's PATCH with an array, as its quotas tutorial does) on the key
   * as the admin API shows it; the result is validated exactly as a PUT body, then written the
   * same way. A failed `test` operation is 409; a malformed patch or result is 400.
   */
  async patchApiKey(clientId: string, operations: unknown): Promise<ApiKeyView> {
    if (!Array.isArray(operations)) throw new AdminError(400, 'a JSON Patch (RFC 6902) body is an array of operations');
    const document = editableView(await this.requireApiKey(clientId));
    const invalid = validatePatch(operations as Operation[], document);
    if (invalid) throw patchError(invalid);
    let patched: Record<string, unknown>;
    try {
      patched = applyPatch(deepClone(document), operations as Operation[], false, false).newDocument;
    } catch (error) {
      throw patchError(error);
    }
    if (typeof patched !== 'object' || patched === null || Array.isArray(patched)) {
      throw new AdminError(400, 'invalid JSON Patch: the result is not an API key object');
    }
    const removed = Object.keys(document).filter((field) => !(field in patched));
    if (removed.length) throw new AdminError(400, `invalid JSON Patch: ${removed.join(', ')} cannot be removed, only replaced`);
    return this.updateApiKey(clientId, patched);
  }

  /** Otoroshi's RemainingQuotas of a key, read from the shared counters. */
  async getQuotas(clientId: string): Promise<QuotaConsumption> {
    const apiKey = await this.requireApiKey(clientId);
    return this.requireQuotaCounters().consumption(clientId, quotasOf(apiKey), this.now());
  }

  /** Resets a key's counters (second, day, month); answers the consumption afterwards. */
  async resetQuotas(clientId: string): Promise<QuotaConsumption> {
    const apiKey = await this.requireApiKey(clientId);
    const counters = this.requireQuotaCounters();
    await counters.reset(clientId, this.now());
    return counters.consumption(clientId, quotasOf(apiKey), this.now());
  }

  private requireQuotaCounters(): QuotaCounters {
    if (!this.quotaCounters) {
      throw new AdminError(
        501,
        'quota counters are not shared: each ext-authz counts in its own memory. Set REDIS_URL (and the same REDIS_KEY_PREFIX) on ext-authz and on the token authority to read and reset them here',
      );
    }
    return this.quotaCounters;
  }

  /** Replaces the secret; the old one keeps working for the grace period (hours, default the key's rotation.gracePeriod). */
  async rotateApiKeySecret(clientId: string, input: unknown): Promise<ApiKeyView> {
    const { clientSecret = generateSecret(), gracePeriod } = parseInput(rotateSecretSchema, input);
    await this.requireApiKey(clientId);
    const secretHash = await hashSecret(clientSecret);
    const next = await this.store.apiKeys.modify(clientId, (current) => {
      const now = this.now();
      return {
        ...current,
        secretHash,
        previousSecretHash: current.secretHash,
        previousSecretValidUntil: now + (gracePeriod ?? current.rotation.gracePeriod) * 3_600_000,
        updatedAt: now,
      };
    });
    if (!next) throw new AdminError(404, `API key '${clientId}' does not exist`);
    return apiKeyView(next, clientSecret);
  }

  async deleteApiKey(clientId: string): Promise<void> {
    if (!(await this.store.apiKeys.delete(clientId))) throw new AdminError(404, `API key '${clientId}' does not exist`);
  }

  private async requireApiKey(clientId: string): Promise<ApiKeyRecord> {
    const apiKey = await this.store.apiKeys.get(clientId);
    if (!apiKey) throw new AdminError(404, `API key '${clientId}' does not exist`);
    return apiKey;
  }

  /** A key pair named by `jwt-sign-keypair` must exist and be able to sign, now rather than at token time. */
  private async assertKeyPairReference(metadata: Record<string, string>): Promise<void> {
    const id = metadata[SIGN_KEYPAIR_METADATA];
    if (id === undefined) return;
    const keyPair = await this.store.keyPairs.get(id);
    if (!keyPair || !activeVersion(keyPair)) {
      throw new AdminError(400, `metadata ${SIGN_KEYPAIR_METADATA}: key pair '${id}' does not exist or is retired`);
    }
  }

  async listKeyPairs() {
    return (await this.store.keyPairs.list()).map(keyPairView);
  }

  async getKeyPair(id: string) {
    return keyPairView(await this.requireKeyPair(id));
  }

  async createKeyPair(input: unknown) {
    const fields = parseInput(keyPairCreateSchema, input);
    const material = this.material(fields.algorithm, fields.privateKey, fields.publicKey);
    const now = this.now();
    const keyPair: KeyPairRecord = {
      id: fields.id,
      algorithm: fields.algorithm,
      description: fields.description,
      createdAt: now,
      versions: [{ kid: fields.id, ...material, createdAt: now }],
    };
    if (!(await this.store.keyPairs.create(keyPair))) throw new AdminError(409, `key pair '${fields.id}' already exists`);
    await this.keyRing.reload();
    return keyPairView(keyPair);
  }

  /** Generates (or imports) a new version with a new kid; the old version is retired but keeps verifying. */
  async rotateKeyPair(id: string, input: unknown) {
    const fields = parseInput(keyPairRotateSchema, input);
    const { algorithm } = await this.requireKeyPair(id);
    const material = this.material(algorithm, fields.privateKey, fields.publicKey);
    return this.changeKeyPair(id, (keyPair) => {
      const now = this.now();
      this.retireActive(keyPair, now);
      keyPair.versions.push({ kid: `${id}#${keyPair.versions.length + 1}-${randomBytes(3).toString('hex')}`, ...material, createdAt: now });
      return keyPair;
    });
  }

  /** Retires the key pair: it signs nothing more, and its keys verify until their tokens have expired. */
  async retireKeyPair(id: string) {
    return this.changeKeyPair(id, (keyPair) => {
      if (!activeVersion(keyPair)) throw new AdminError(409, `key pair '${id}' is already retired`);
      this.retireActive(keyPair, this.now());
      return keyPair;
    });
  }

  /** Deleting stops verification at once; refused while the key pair is the default or an API key names it. */
  async deleteKeyPair(id: string): Promise<void> {
    await this.requireKeyPair(id);
    if (id === this.config.defaultKeyPair) throw new AdminError(409, `key pair '${id}' is the defaultKeyPair`);
    const users = await this.store.apiKeys.listPage({ signKeyPair: id, limit: 20 });
    if (users.length) {
      throw new AdminError(409, `key pair '${id}' is used by API keys: ${users.map((apiKey) => apiKey.clientId).join(', ')}`);
    }
    await this.store.keyPairs.delete(id);
    await this.keyRing.reload();
  }

  private retireActive(keyPair: KeyPairRecord, now: number): void {
    const active = activeVersion(keyPair);
    if (!active) return;
    active.retiredAt = now;
    active.verifyUntil = now + this.config.expiration;
  }

  /** An atomic change of a stored key pair, then the key ring picks it up. */
  private async changeKeyPair(id: string, change: (keyPair: KeyPairRecord) => KeyPairRecord) {
    const changed = await this.store.keyPairs.modify(id, change);
    if (!changed) throw new AdminError(404, `key pair '${id}' does not exist`);
    await this.keyRing.reload();
    return keyPairView(changed);
  }

  private async requireKeyPair(id: string): Promise<KeyPairRecord> {
    const keyPair = await this.store.keyPairs.get(id);
    if (!keyPair) throw new AdminError(404, `key pair '${id}' does not exist`);
    return keyPair;
  }

  private material(algorithm: KeyPairRecord['algorithm'], privateKey?: string, publicKey?: string): KeyMaterial {
    if (privateKey === undefined) {
      if (publicKey !== undefined) throw new AdminError(400, 'publicKey given without privateKey');
      return generateKeyMaterial(algorithm);
    }
    try {
      return importKeyMaterial(algorithm, privateKey, publicKey);
    } catch (error) {
      if (error instanceof KeyMaterialError) throw new AdminError(400, error.message);
      throw error;
    }
  }
}
