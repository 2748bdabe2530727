import { z } from 'zod';
import { SIGNING_ALGORITHMS, type AuthorityConfig } from './config';
import { generateKeyMaterial, importKeyMaterial, KeyMaterialError, publicJwk, type KeyMaterial } from './crypto/key-pairs';
import { generateSecret, hashSecret } from './crypto/secret-hash';
import { changedFields, redact, SYSTEM_ACTOR } from './audit';
import { assertMatches, canonicalJson, entityTag, parseIfMatch } from './entity-tags';
import { jwksIssues, jwksUriProblem } from './client-assertion';
import { AdminError, echo, OAuthError } from './errors';
import type { KeyRing } from './key-ring';
import { applyDueRotation, dueSwitch, nextDueAt, nextRotation } from './key-rotation';
import {
  activeVersion,
  pendingVersion,
  SIGN_KEYPAIR_METADATA,
  TOKEN_BINDINGS,
  versionStatus,
  type ApiKeyRecord,
  type KeyPairRecord,
} from './model';
import { dnAttributes, TLS_CLIENT_AUTH_FIELDS } from './mtls';
import { isIP } from 'node:net';
import { type Route, RouteConflictError, routeSchema } from './routes';
import type { AuditDraft, AuditEntity, AuditEntry, AuthorityStore } from './store/repositories';
import { createPublicKey, randomBytes } from 'node:crypto';
import { applyPatch, deepClone, validate as validatePatch, type Operation } from 'fast-json-patch';
import type { QuotaConsumption, QuotaCounters } from '../quotas/quotas';
import { ReplicaQuotaCounters, type ReplicaReading } from '../quotas/replica-counters';

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
/** RFC 7591 `jwks`: public signing keys for private_key_jwt (client-assertion.ts says which). */
const JWKS = z
  .object({
    keys: z
      .array(
        z
          .record(z.string(), z.unknown())
          .meta({ description: 'A public JWK (RFC 7517): RSA (2048 bits or more), EC P-256 or OKP Ed25519' }),
      )
      .min(1)
      .max(20),
  })
  .strict()
  .superRefine((value, context) => {
    for (const issue of jwksIssues(value, ''))
      context.addIssue({ code: 'custom', message: issue.message, path: issue.path ? issue.path.split('.') : [] });
  });
/** RFC 7591 `jwks_uri`: https, or http to a loopback address. */
const JWKS_URI = z.string().superRefine((value, context) => {
  const problem = jwksUriProblem(value);
  if (problem) context.addIssue({ code: 'custom', message: problem });
});
/** RFC 8705 §2.1.2: the certificate attribute a tls_client_auth key is registered with, each checked for its form. */
const TLS_ATTRIBUTE = z.string().min(1).max(1000);
const tlsClientAuthSchemas = {
  tls_client_auth_subject_dn: TLS_ATTRIBUTE.refine(
    (dn) => dnAttributes(dn).every((pair) => /^[A-Z0-9.]+=./i.test(pair)),
    'an RFC 4514 distinguished name, e.g. CN=client,O=Example,C=FR',
  ),
  tls_client_auth_san_dns: TLS_ATTRIBUTE.regex(/^[A-Za-z0-9*]([A-Za-z0-9.*-]*[A-Za-z0-9])?$/, 'a DNS name'),
  tls_client_auth_san_uri: TLS_ATTRIBUTE.refine((uri) => URL.canParse(uri), 'an absolute URI'),
  tls_client_auth_san_ip: TLS_ATTRIBUTE.refine((ip) => isIP(ip) !== 0, 'an IPv4 or IPv6 address'),
  tls_client_auth_san_email: TLS_ATTRIBUTE.regex(/^[^\s@]+@[^\s@]+$/, 'an email address'),
};
const tlsClientAuthFields = Object.fromEntries(Object.entries(tlsClientAuthSchemas).map(([name, schema]) => [name, schema.optional()])) as {
  [K in keyof typeof tlsClientAuthSchemas]: z.ZodOptional<(typeof tlsClientAuthSchemas)[K]>;
};
const tlsClientAuthPatchFields = Object.fromEntries(
  Object.entries(tlsClientAuthSchemas).map(([name, schema]) => [name, z.union([z.null(), schema]).optional()]),
) as { [K in keyof typeof tlsClientAuthSchemas]: z.ZodOptional<z.ZodUnion<[z.ZodNull, (typeof tlsClientAuthSchemas)[K]]>> };

/** RFC 8705 §2.1.2: one attribute, never several (null removes one on updates). */
function assertOneTlsAttribute(apiKey: Record<string, unknown>): void {
  const given = TLS_CLIENT_AUTH_FIELDS.filter((field) => apiKey[field] !== undefined && apiKey[field] !== null);
  if (given.length > 1)
    throw new AdminError(400, 'invalid input', [
      { path: given[1], message: `give one tls_client_auth attribute, not ${given.join(' and ')} (set the others to null)` },
    ]);
}

/** Rotation periods in hours, at most ten years: an unbounded one overflowed the expiry of a replaced secret to Infinity. */
const HOURS = z.number().max(87_600, 'at most 87600 hours (ten years)');

/** The admin API's API key, with Otoroshi's field names. */
const apiKeyFields = {
  clientName: z
    .string()
    .min(1)
    .max(200)
    // biome-ignore lint/suspicious/noControlCharactersInRegex: the control characters are what it refuses
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
      rotationEvery: HOURS.positive().default(744),
      gracePeriod: HOURS.nonnegative().default(168),
    })
    .strict(),
  allowClientIdOnly: z.boolean(),
  throttlingQuota: quota,
  dailyQuota: quota,
  monthlyQuota: quota,
};

/** jwks and jwks_uri: one or the other (RFC 7591 §2); on updates, null takes one away. */
const keySetFields = { jwks: JWKS.optional(), jwks_uri: JWKS_URI.optional() };
const keySetPatchFields = { jwks: z.union([z.null(), JWKS]).optional(), jwks_uri: z.union([z.null(), JWKS_URI]).optional() };

/** How the key's tokens are bound; absent: bearer. */
const TOKEN_BINDING = z.enum(TOKEN_BINDINGS).meta({
  description:
    'bearer (default, Otoroshi): bearer tokens, DPoP-bound when the client sends a proof, certificate-bound when it connects with a client certificate; dpop: tokens are issued only with a DPoP proof (RFC 9449), and ext-authz refuses bearer tokens of the key; mtls: tokens are issued only over a connection with a client certificate, bound to it (RFC 8705)',
});

function assertOneKeySet(apiKey: { jwks?: unknown; jwks_uri?: unknown }): void {
  if (apiKey.jwks !== undefined && apiKey.jwks_uri !== undefined) {
    throw new AdminError(400, 'invalid input', [{ path: 'jwks_uri', message: 'give jwks or jwks_uri, not both (set the other to null)' }]);
  }
}

export const apiKeyCreateSchema = z
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
    ...keySetFields,
    ...tlsClientAuthFields,
    tokenBinding: TOKEN_BINDING.optional(),
  })
  .strict();

export const apiKeyPatchSchema = z
  .object({
    clientId: ID.optional(),
    clientSecret: SECRET.optional(),
    ...Object.fromEntries(Object.entries(apiKeyFields).map(([name, schema]) => [name, schema.optional()])),
    ...keySetPatchFields,
    ...tlsClientAuthPatchFields,
    tokenBinding: z.union([z.null(), TOKEN_BINDING]).optional(),
  })
  .strict() as z.ZodType<
  Partial<Omit<z.input<typeof apiKeyCreateSchema>, 'jwks' | 'jwks_uri' | (typeof TLS_CLIENT_AUTH_FIELDS)[number] | 'tokenBinding'>> & {
    clientSecret?: string;
    clientId?: string;
    jwks?: ApiKeyRecord['jwks'] | null;
    jwks_uri?: string | null;
    tokenBinding?: ApiKeyRecord['tokenBinding'] | null;
  } & { [K in (typeof TLS_CLIENT_AUTH_FIELDS)[number]]?: string | null },
  unknown
>;

/** Query of the API key list (strings, as a query string gives them). */
export const apiKeyListQuerySchema = z
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

/** Query of the audit log (strings, as a query string gives them). */
export const auditListQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(1000).default(100),
    after: z
      .string()
      .regex(/^\d{1,15}$/, 'the id of the last entry of the previous page')
      .transform(Number)
      .optional(),
    entity: z.enum(['apikey', 'keypair', 'route']).optional(),
    entityId: z.string().max(128).optional(),
  })
  .strict();

/** Query of the route list (strings, as a query string gives them). */
export const routeListQuerySchema = z
  .object({
    limit: z.coerce.number().int().min(1).max(1000).default(100),
    after: z.string().max(128).optional(),
    enabled: z
      .enum(['true', 'false'])
      .transform((value) => value === 'true')
      .optional(),
    /** Routes listing this domain pattern. */
    domain: z
      .string()
      .max(253)
      .transform((value) => value.toLowerCase())
      .optional(),
  })
  .strict();

/** Fields of a route the store sets: a body may carry them unchanged. */
export const ROUTE_READ_ONLY = ['createdAt', 'updatedAt'] as const;
/** What GET shows beside the route and a write ignores: `status` (what Envoy made of it; never stored). */
export const ROUTE_IGNORED_ON_WRITE = ['status'] as const;

export const rotateSecretSchema = z.object({ clientSecret: SECRET.optional(), gracePeriod: HOURS.nonnegative().optional() }).strict();

/** Durations of a key rotation schedule, in whole seconds, at most ten years. */
const SECONDS = z.number().int().nonnegative().max(315_360_000, 'at most 315360000 seconds (ten years)');

/** A key pair's rotation schedule (KeyRotationPolicy); null to remove it. */
export const keyRotationSchema = z
  .object({
    rotateEvery: SECONDS.min(1).meta({ description: 'Seconds from the start of one key to the start of the next (2592000: 30 days).' }),
    publishAhead: SECONDS.meta({
      description:
        'Seconds the next key is in the JWKS (and at every ext-authz) before it signs; at least the JWKS max-age (60 s) plus what your other caches hold it.',
    }),
    leeway: SECONDS.max(86_400)
      .default(60)
      .meta({ description: 'Seconds added to the token lifetime before a replaced key leaves the JWKS (clock skew between replicas).' }),
  })
  .strict()
  .refine((policy) => policy.publishAhead < policy.rotateEvery, {
    message: 'publishAhead must be shorter than rotateEvery',
    path: ['publishAhead'],
  })
  .nullable();

export const keyPairCreateSchema = z
  .object({
    id: ID,
    algorithm: z.enum(SIGNING_ALGORITHMS).default('RS256'),
    description: z.string().max(2000).default(''),
    privateKey: z.string().max(20_000).optional(),
    publicKey: z.string().max(20_000).optional(),
    rotation: keyRotationSchema.optional(),
  })
  .strict();

export const keyPairUpdateSchema = z
  .object({ description: z.string().max(2000).optional(), rotation: keyRotationSchema.optional() })
  .strict();

/**
 * Fields GET returns that no write can change. A body may carry them (GET, edit, PUT works) as
 * long as they equal the stored values; a changed one is refused with 400 naming it.
 */
export const API_KEY_READ_ONLY = ['createdAt', 'updatedAt', 'previousSecretValidUntil'] as const;
export const KEY_PAIR_READ_ONLY = ['id', 'algorithm', 'createdAt', 'status', 'activeKid', 'nextRotation', 'versions'] as const;

/** `input` without the read-only fields, and those fields apart (left for the check against the stored record). */
function splitReadOnly(input: unknown, readOnly: readonly string[]): { rest: unknown; given: Record<string, unknown> } {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) return { rest: input, given: {} };
  const rest: Record<string, unknown> = {};
  const given: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(input)) (readOnly.includes(key) ? given : rest)[key] = value;
  return { rest, given };
}

/** `input` without the fields a route write ignores (ROUTE_IGNORED_ON_WRITE): a route sent back as GET showed it is accepted. */
function withoutIgnored(input: unknown): unknown {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) return input;
  const rest: Record<string, unknown> = { ...(input as Record<string, unknown>) };
  for (const field of ROUTE_IGNORED_ON_WRITE) delete rest[field];
  return rest;
}

function assertReadOnlyUnchanged(given: Record<string, unknown>, stored: Record<string, unknown>): void {
  for (const [field, value] of Object.entries(given)) {
    if (canonicalJson(value) === canonicalJson(stored[field])) continue;
    throw new AdminError(
      400,
      `${field} is read-only: leave it out or send it unchanged (stored: ${echo(canonicalJson(stored[field] ?? null) ?? 'null')}); if it changed since you read it, read it again`,
      [{ path: field, message: 'read-only; cannot be changed' }],
    );
  }
}

/** Who makes a change and on which condition: what each transport passes to the admin writes. */
export interface AdminContext {
  /** Recorded in the audit log: see audit.ts for the forms. Default `system`. */
  actor?: string;
  /** The raw If-Match header, if any: the write happens only if the stored record still matches. */
  ifMatch?: string | string[];
}

/** An answer with the strong ETag of the stored record it shows. */
export interface Tagged<T> {
  body: T;
  etag: string;
}

/** A page of a list, and the cursor of the next one when the page is full (the admin lists' shared shape). */
export interface Page<T> {
  items: T[];
  next?: string;
}

function pageOf<R, T>(rows: R[], limit: number, view: (row: R) => T, cursor: (row: R) => string): Page<T> {
  const items = rows.map(view);
  return rows.length === limit ? { items, next: cursor(rows[rows.length - 1]) } : { items };
}

export const keyPairRotateSchema = z
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
  // No body is an empty one; a JSON null is not an object and is refused like any other non-object.
  const result = schema.safeParse(input === undefined ? {} : input);
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

/** `operations` applied to a copy of `document`; every failure as an AdminError. */
function applyJsonPatch(document: object, operations: Operation[], what = 'an API key'): Record<string, unknown> {
  let patched: unknown;
  try {
    // validate() returns most problems but throws some (a `__proto__` path): both become 400s.
    const invalid = validatePatch(operations, document);
    if (invalid) throw invalid;
    patched = applyPatch(deepClone(document), operations, false, false).newDocument;
  } catch (error) {
    throw patchError(error);
  }
  if (typeof patched !== 'object' || patched === null || Array.isArray(patched)) {
    throw new AdminError(400, `invalid JSON Patch: the result is not ${what} object`);
  }
  const removed = Object.keys(document).filter((field) => !(field in patched));
  if (removed.length) throw new AdminError(400, `invalid JSON Patch: ${removed.join(', ')} cannot be removed, only replaced`);
  return patched as Record<string, unknown>;
}

/** RFC 7396 JSON Merge Patch: objects merge member by member, null removes, anything else replaces. */
export function applyMergePatch(target: unknown, patch: unknown): unknown {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const result: Record<string, unknown> =
    target !== null && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = applyMergePatch(result[key], value);
  }
  return result;
}

function patchError(error: unknown): AdminError {
  const failure = error as { name?: string; message?: string; index?: number };
  if (failure.name === 'TEST_OPERATION_FAILED') return new AdminError(409, `JSON Patch test operation ${failure.index} failed`);
  const where = failure.index === undefined ? '' : ` (operation ${failure.index})`;
  return new AdminError(400, `invalid JSON Patch${where}: ${(failure.message ?? String(error)).split('\n')[0]}`);
}

/** GET /api/apikeys/:clientId/quotas: Otoroshi's RemainingQuotas and what the figures mean. */
export type QuotaReport = QuotaConsumption & {
  /** True: one limit shared by every ext-authz (Redis). False: each replica enforces alone, the figures are their sum. */
  sharedEnforcement: boolean;
  /** In memory only: the replicas whose counters are summed. */
  replicas?: number;
  /** In memory only: replicas asked that did not answer within 2 s (their calls are missing from the sum). */
  replicasUnanswered?: number;
};

function replicaReport(reading: ReplicaReading): QuotaReport {
  return { ...reading.consumption, sharedEnforcement: false, replicas: reading.replicas, replicasUnanswered: reading.replicasUnanswered };
}

function quotasOf(apiKey: ApiKeyRecord) {
  return { throttlingQuota: apiKey.throttlingQuota, dailyQuota: apiKey.dailyQuota, monthlyQuota: apiKey.monthlyQuota };
}

export type KeyPairView = ReturnType<typeof keyPairView>;

/** A key pair is active while a version signs or one is about to (pending). */
function keyPairStatus(keyPair: KeyPairRecord, now: number): 'active' | 'retired' {
  return activeVersion(keyPair, now) || pendingVersion(keyPair, now) ? 'active' : 'retired';
}

/** What the admin API shows of a key pair at `now` (statuses follow the clock): never a private key. */
export function keyPairView(keyPair: KeyPairRecord, now: number) {
  const active = activeVersion(keyPair, now);
  const next = nextRotation(keyPair, now);
  return {
    id: keyPair.id,
    algorithm: keyPair.algorithm,
    description: keyPair.description,
    createdAt: keyPair.createdAt,
    status: keyPairStatus(keyPair, now),
    activeKid: active?.kid ?? null,
    rotation: keyPair.rotation ?? null,
    nextRotation: next ? { publishAt: next.publishAt, switchAt: next.switchAt, kid: next.kid ?? null } : null,
    versions: keyPair.versions.map((version) => ({
      kid: version.kid,
      status: versionStatus(version, now),
      createdAt: version.createdAt,
      activatesAt: version.activatesAt ?? null,
      retiredAt: version.retiredAt ?? null,
      verifyUntil: version.verifyUntil ?? null,
      publicKey: version.publicKeyPem,
      jwk: publicJwk(createPublicKey(version.publicKeyPem), version.kid, keyPair.algorithm),
    })),
  };
}

/** What the audit log keeps of a key pair: no key material, the kids tell the versions apart. */
function keyPairSummary(keyPair: KeyPairRecord, now: number) {
  const active = activeVersion(keyPair, now);
  return {
    id: keyPair.id,
    algorithm: keyPair.algorithm,
    description: keyPair.description,
    createdAt: keyPair.createdAt,
    status: keyPairStatus(keyPair, now),
    activeKid: active?.kid ?? null,
    rotation: keyPair.rotation ?? null,
    kids: keyPair.versions.map((version) => version.kid),
  };
}

/** A new kid: `<id>#<n>-<6 hex>`, n one more than the highest so far (versions may have been dropped). */
function nextKid(keyPair: KeyPairRecord): string {
  let highest = keyPair.versions.length;
  for (const { kid } of keyPair.versions) {
    const n = Number(/#(\d{1,9})-/.exec(kid)?.[1] ?? 0);
    if (n > highest) highest = n;
  }
  return `${keyPair.id}#${highest + 1}-${randomBytes(3).toString('hex')}`;
}

/**
 * Creates, changes and deletes API keys and key pairs; the key ring is reloaded after each key
 * pair change. Every write takes an AdminContext: its actor goes to the audit log entry written
 * in the write's transaction, its If-Match is checked in that transaction too.
 */
export class AdminService {
  constructor(
    private readonly config: AuthorityConfig,
    private readonly store: AuthorityStore,
    private readonly keyRing: KeyRing,
    private readonly now: () => number = Date.now,
    /** Shared quota counters (Redis), or the replicas that each count in their own memory. */
    private readonly quotaCounters: QuotaCounters | ReplicaQuotaCounters = new ReplicaQuotaCounters(),
  ) {}

  /** Called after a rotation schedule is set or changed here (the scheduler looks again at once). */
  onSchedule?: () => void;

  /**
   * One page of API keys in client id order: `limit` (default 100, at most 1000) after the
   * `after` cursor, optionally filtered. `next` is the cursor of the following page, if any.
   */
  async listApiKeys(query: unknown = {}): Promise<Page<ApiKeyView>> {
    const { limit, after, enabled, tag, authorizedEntity } = parseInput(apiKeyListQuerySchema, query);
    const rows = await this.store.apiKeys.listPage({ limit, after, enabled, tag, authorizedEntity });
    return pageOf(
      rows,
      limit,
      (apiKey) => apiKeyView(apiKey),
      (apiKey) => apiKey.clientId,
    );
  }

  /** One page of the audit log, oldest first: `limit`, `after` (an entry id), `entity`, `entityId`. */
  async listAudit(query: unknown = {}): Promise<Page<AuditEntry>> {
    const { limit, after, entity, entityId } = parseInput(auditListQuerySchema, query);
    const rows = await this.store.audit.listPage({ limit, after, entity, entityId });
    return pageOf(
      rows,
      limit,
      (entry) => entry,
      (entry) => String(entry.id),
    );
  }

  async getApiKey(clientId: string): Promise<Tagged<ApiKeyView>> {
    const apiKey = await this.requireApiKey(clientId);
    return { body: apiKeyView(apiKey), etag: entityTag(apiKey) };
  }

  /** The audit entry of a change, made inside the write's transaction (see AuditedWrite). */
  private auditEntry(context: AdminContext, action: string, entity: AuditEntity, entityId: string, change: unknown): AuditDraft {
    return {
      at: new Date(this.now()).toISOString(),
      actor: context.actor ?? SYSTEM_ACTOR,
      action,
      entity,
      entityId,
      change: redact(change),
    };
  }

  /**
   * Creates a key; the secret (given or generated) is in the answer, and never again. A key given
   * a jwks or jwks_uri, or a tls_client_auth_* attribute, and no clientSecret gets no secret: it
   * authenticates by private_key_jwt or its TLS client certificate only.
   */
  async createApiKey(input: unknown, context: AdminContext = {}): Promise<Tagged<ApiKeyView>> {
    const fields = parseInput(apiKeyCreateSchema, input);
    assertOneKeySet(fields);
    assertOneTlsAttribute(fields);
    const clientId = fields.clientId ?? randomBytes(12).toString('base64url');
    // Keys (private_key_jwt, self_signed_tls_client_auth) or a certificate attribute (tls_client_auth) and no secret: none made.
    const keysOnly =
      fields.clientSecret === undefined &&
      (fields.jwks !== undefined || fields.jwks_uri !== undefined || TLS_CLIENT_AUTH_FIELDS.some((field) => fields[field] !== undefined));
    const clientSecret = keysOnly ? undefined : (fields.clientSecret ?? generateSecret());
    await this.assertKeyPairReference(fields.metadata);
    const now = this.now();
    const { clientSecret: _ignored, ...rest } = fields;
    const apiKey: ApiKeyRecord = {
      ...rest,
      clientId,
      clientName: fields.clientName ?? clientId,
      secretHash: clientSecret === undefined ? '' : await hashSecret(clientSecret),
      createdAt: now,
      updatedAt: now,
    };
    const created = await this.store.apiKeys.create(apiKey, {
      audit: () => this.auditEntry(context, 'apikey.create', 'apikey', clientId, apiKeyView(apiKey)),
    });
    if (!created) throw new AdminError(409, `API key '${clientId}' already exists`);
    return { body: apiKeyView(apiKey, clientSecret), etag: entityTag(apiKey) };
  }

  /**
   * PUT and PATCH: the fields given replace the stored ones (the others are kept); a new
   * clientSecret replaces the old at once. Read-only fields may be sent unchanged. A write that
   * changes nothing is not made: updatedAt, the ETag and the audit log stay as they were.
   */
  async updateApiKey(clientId: string, input: unknown, context: AdminContext = {}): Promise<Tagged<ApiKeyView>> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const { rest, given: readOnly } = splitReadOnly(input, API_KEY_READ_ONLY);
    const changes = parseInput(apiKeyPatchSchema, rest);
    if (changes.clientId !== undefined && changes.clientId !== clientId) throw new AdminError(400, 'clientId cannot be changed');
    const { clientSecret, clientId: _id, ...fields } = changes;
    if (fields.metadata) await this.assertKeyPairReference(fields.metadata);
    // Slow work (a short secret's scrypt) before the atomic read-change-write, so concurrent
    // changes of the same key never overwrite each other with stale copies.
    const secretHash = clientSecret === undefined ? undefined : await hashSecret(clientSecret);
    const next = await this.store.apiKeys.modify(
      clientId,
      (current) => {
        assertMatches(ifMatch, current, `API key '${clientId}'`);
        assertReadOnlyUnchanged(readOnly, apiKeyView(current));
        const changed: ApiKeyRecord = { ...current, ...(fields as Partial<ApiKeyRecord>) };
        if (fields.jwks === null) delete changed.jwks;
        if (fields.jwks_uri === null) delete changed.jwks_uri;
        for (const field of [...TLS_CLIENT_AUTH_FIELDS, 'tokenBinding'] as const)
          if ((fields as Record<string, unknown>)[field] === null) delete changed[field];
        assertOneKeySet(changed);
        assertOneTlsAttribute(changed as unknown as Record<string, unknown>);
        if (secretHash !== undefined) {
          changed.secretHash = secretHash;
          delete changed.previousSecretHash;
          delete changed.previousSecretValidUntil;
        }
        if (canonicalJson(changed) === canonicalJson(current)) return current;
        changed.updatedAt = this.now();
        return changed;
      },
      { audit: (before, after) => this.auditEntry(context, 'apikey.update', 'apikey', clientId, this.apiKeyChanges(before, after)) },
    );
    if (!next) throw new AdminError(404, `API key '${clientId}' does not exist`);
    return { body: apiKeyView(next), etag: entityTag(next) };
  }

  /** What an update changed; secret hashes show as changed, redacted. */
  private apiKeyChanges(before: ApiKeyRecord | undefined, after: ApiKeyRecord | undefined) {
    return changedFields({ ...before }, { ...after }, ['updatedAt']);
  }

  /**
   * RFC 6902 JSON Patch (Otoroshi's PATCH with an array, as its quotas tutorial does) on the key as
   * GET shows it, then the same write as PUT: same validation (read-only fields may not change),
   * same audit entry, same If-Match. The patch applies to a snapshot that is written only if the
   * key is still that snapshot: with the client's If-Match, a 412 otherwise; without, the patch is
   * applied again to the new state. A failed `test` operation is 409; a malformed patch 400.
   */
  async patchApiKey(clientId: string, operations: unknown, context: AdminContext = {}): Promise<Tagged<ApiKeyView>> {
    if (!Array.isArray(operations)) throw new AdminError(400, 'a JSON Patch (RFC 6902) body is an array of operations');
    const ifMatch = parseIfMatch(context.ifMatch);
    for (let attempt = 1; ; attempt++) {
      const current = await this.requireApiKey(clientId);
      assertMatches(ifMatch, current, `API key '${clientId}'`);
      const patched = applyJsonPatch(apiKeyView(current), operations as Operation[]);
      try {
        return await this.updateApiKey(clientId, patched, { ...context, ifMatch: entityTag(current) });
      } catch (error) {
        const raced = error instanceof AdminError && error.status === 412;
        if (!raced || ifMatch !== undefined || attempt >= 5) throw error;
      }
    }
  }

  /**
   * Otoroshi's RemainingQuotas of a key, with where it comes from: `sharedEnforcement` true when
   * the counters are shared on Redis (one limit for every replica); false when each ext-authz
   * counts in its own memory, and then the figures are the sum of the `replicas` that answered
   * (each enforces the quota alone) and `replicasUnanswered` says how many did not in time.
   */
  async getQuotas(clientId: string): Promise<QuotaReport> {
    const apiKey = await this.requireApiKey(clientId);
    const counters = this.quotaCounters;
    if (counters instanceof ReplicaQuotaCounters) return replicaReport(await counters.read(clientId, quotasOf(apiKey)));
    return { ...(await counters.consumption(clientId, quotasOf(apiKey), this.now())), sharedEnforcement: true };
  }

  /**
   * Resets a key's counters (second, day, month); answers the consumption afterwards. In memory,
   * a reset that a connected replica does not confirm in time is 503 (retry: it is idempotent).
   */
  async resetQuotas(clientId: string): Promise<QuotaReport> {
    const apiKey = await this.requireApiKey(clientId);
    const counters = this.quotaCounters;
    if (counters instanceof ReplicaQuotaCounters) {
      const reading = await counters.reset(clientId, quotasOf(apiKey));
      if (reading.replicasUnanswered > 0)
        throw new OAuthError(
          'temporarily_unavailable',
          `${reading.replicasUnanswered} ext-authz replica(s) did not confirm the reset in time; retry`,
          503,
          undefined,
          1,
        );
      return replicaReport(reading);
    }
    await counters.reset(clientId, this.now());
    return { ...(await counters.consumption(clientId, quotasOf(apiKey), this.now())), sharedEnforcement: true };
  }

  /** Replaces the secret; the old one keeps working for the grace period (hours, default the key's rotation.gracePeriod). */
  async rotateApiKeySecret(clientId: string, input: unknown, context: AdminContext = {}): Promise<Tagged<ApiKeyView>> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const { clientSecret = generateSecret(), gracePeriod } = parseInput(rotateSecretSchema, input);
    await this.requireApiKey(clientId);
    const secretHash = await hashSecret(clientSecret);
    const next = await this.store.apiKeys.modify(
      clientId,
      (current) => {
        assertMatches(ifMatch, current, `API key '${clientId}'`);
        const now = this.now();
        return {
          ...current,
          secretHash,
          previousSecretHash: current.secretHash,
          previousSecretValidUntil: now + Math.floor((gracePeriod ?? current.rotation.gracePeriod) * 3_600_000),
          updatedAt: now,
        };
      },
      { audit: (before, after) => this.auditEntry(context, 'apikey.rotate-secret', 'apikey', clientId, this.apiKeyChanges(before, after)) },
    );
    if (!next) throw new AdminError(404, `API key '${clientId}' does not exist`);
    return { body: apiKeyView(next, clientSecret), etag: entityTag(next) };
  }

  async deleteApiKey(clientId: string, context: AdminContext = {}): Promise<void> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const deleted = await this.store.apiKeys.delete(clientId, {
      check: (current) => assertMatches(ifMatch, current, `API key '${clientId}'`),
      audit: (before) => this.auditEntry(context, 'apikey.delete', 'apikey', clientId, before && apiKeyView(before)),
    });
    if (!deleted) throw new AdminError(404, `API key '${clientId}' does not exist`);
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
    if (!keyPair || keyPairStatus(keyPair, this.now()) !== 'active') {
      throw new AdminError(400, `metadata ${SIGN_KEYPAIR_METADATA}: key pair '${id}' does not exist or is retired`);
    }
  }

  async listKeyPairs() {
    const now = this.now();
    return (await this.store.keyPairs.list()).map((keyPair) => keyPairView(keyPair, now));
  }

  async getKeyPair(id: string): Promise<Tagged<KeyPairView>> {
    return this.taggedKeyPair(await this.requireKeyPair(id));
  }

  private taggedKeyPair(keyPair: KeyPairRecord): Tagged<KeyPairView> {
    return { body: keyPairView(keyPair, this.now()), etag: entityTag(keyPair) };
  }

  async createKeyPair(input: unknown, context: AdminContext = {}): Promise<Tagged<KeyPairView>> {
    const fields = parseInput(keyPairCreateSchema, input);
    const material = this.material(fields.algorithm, fields.privateKey, fields.publicKey);
    const now = this.now();
    const keyPair: KeyPairRecord = {
      id: fields.id,
      algorithm: fields.algorithm,
      description: fields.description,
      createdAt: now,
      versions: [{ kid: fields.id, ...this.stored(material), createdAt: now }],
    };
    if (fields.rotation) keyPair.rotation = fields.rotation;
    const action = fields.privateKey === undefined ? 'keypair.create' : 'keypair.import';
    const created = await this.store.keyPairs.create(keyPair, {
      audit: () => this.auditEntry(context, action, 'keypair', fields.id, keyPairSummary(keyPair, now)),
    });
    if (!created) throw new AdminError(409, `key pair '${fields.id}' already exists`);
    await this.keyRing.reload();
    if (keyPair.rotation) this.onSchedule?.();
    return this.taggedKeyPair(keyPair);
  }

  /**
   * PUT and PATCH of a key pair: its description and rotation schedule change (null removes the
   * schedule; a key already published ahead still takes over); the other fields are read-only
   * (sent unchanged, or left out).
   */
  async updateKeyPair(id: string, input: unknown, context: AdminContext = {}): Promise<Tagged<KeyPairView>> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const { rest, given: readOnly } = splitReadOnly(input, KEY_PAIR_READ_ONLY);
    const { description, rotation } = parseInput(keyPairUpdateSchema, rest);
    const updated = await this.changeKeyPair(id, 'keypair.update', context, (keyPair) => {
      assertMatches(ifMatch, keyPair, `key pair '${id}'`);
      assertReadOnlyUnchanged(readOnly, keyPairView(keyPair, this.now()));
      let changed = false;
      if (description !== undefined && description !== keyPair.description) {
        keyPair.description = description;
        changed = true;
      }
      if (rotation !== undefined && canonicalJson(rotation) !== canonicalJson(keyPair.rotation ?? null)) {
        if (rotation === null) delete keyPair.rotation;
        else keyPair.rotation = rotation;
        changed = true;
      }
      return changed ? keyPair : undefined;
    });
    if (rotation !== undefined) this.onSchedule?.();
    return updated;
  }

  /**
   * Generates (or imports) a new version with a new kid that signs at once; the old version is
   * retired but keeps verifying. A version published ahead of a scheduled rotation is dropped
   * (it signed nothing); the schedule counts from this new version.
   */
  async rotateKeyPair(id: string, input: unknown, context: AdminContext = {}): Promise<Tagged<KeyPairView>> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const fields = parseInput(keyPairRotateSchema, input);
    const { algorithm } = await this.requireKeyPair(id);
    const material = this.material(algorithm, fields.privateKey, fields.publicKey);
    return this.changeKeyPair(id, 'keypair.rotate', context, (keyPair) => {
      assertMatches(ifMatch, keyPair, `key pair '${id}'`);
      const now = this.now();
      this.retireActive(keyPair, now);
      keyPair.versions.push({ kid: nextKid(keyPair), ...this.stored(material), createdAt: now });
      return keyPair;
    });
  }

  /** Retires the key pair: it signs nothing more, and its keys verify until their tokens have expired. */
  async retireKeyPair(id: string, context: AdminContext = {}): Promise<Tagged<KeyPairView>> {
    const ifMatch = parseIfMatch(context.ifMatch);
    return this.changeKeyPair(id, 'keypair.retire', context, (keyPair) => {
      assertMatches(ifMatch, keyPair, `key pair '${id}'`);
      if (keyPairStatus(keyPair, this.now()) !== 'active') throw new AdminError(409, `key pair '${id}' is already retired`);
      this.retireActive(keyPair, this.now());
      return keyPair;
    });
  }

  /** Deleting stops verification at once; refused while the key pair is the default or an API key names it. */
  async deleteKeyPair(id: string, context: AdminContext = {}): Promise<void> {
    const ifMatch = parseIfMatch(context.ifMatch);
    await this.requireKeyPair(id);
    if (id === this.config.defaultKeyPair) throw new AdminError(409, `key pair '${id}' is the defaultKeyPair`);
    const users = await this.store.apiKeys.listPage({ signKeyPair: id, limit: 20 });
    if (users.length) {
      throw new AdminError(409, `key pair '${id}' is used by API keys: ${users.map((apiKey) => apiKey.clientId).join(', ')}`);
    }
    const deleted = await this.store.keyPairs.delete(id, {
      check: (current) => assertMatches(ifMatch, current, `key pair '${id}'`),
      audit: (before) => this.auditEntry(context, 'keypair.delete', 'keypair', id, before && keyPairSummary(before, this.now())),
    });
    if (!deleted) throw new AdminError(404, `key pair '${id}' does not exist`);
    await this.keyRing.reload();
  }

  /** Ends signing now: the signing version is retired, a version published ahead (which signed nothing) dropped. */
  private retireActive(keyPair: KeyPairRecord, now: number): void {
    keyPair.versions = keyPair.versions.filter((version) => versionStatus(version, now) !== 'pending');
    const active = activeVersion(keyPair, now);
    if (!active) return;
    active.retiredAt = now;
    active.verifyUntil = now + this.config.expiration;
  }

  /**
   * Publishes every scheduled rotation that is due (see key-rotation.ts), each in one atomic store
   * change that re-checks it is still due, so of processes racing for one slot only the first
   * writes. Resolves to the rotated key pairs and when to look again.
   */
  async rotateDueKeyPairs(): Promise<{ rotated: { keyPair: string; kid: string; switchAt: number }[]; nextDueAt?: number }> {
    const rotated: { keyPair: string; kid: string; switchAt: number }[] = [];
    for (const keyPair of await this.store.keyPairs.list()) {
      if (dueSwitch(keyPair, this.now()) === undefined) continue;
      // Made outside the transaction (RSA takes a while); thrown away when another process was first.
      const stored = this.stored(generateKeyMaterial(keyPair.algorithm));
      let published: { kid: string; switchAt: number } | undefined;
      await this.store.keyPairs.modify(
        keyPair.id,
        (current) => {
          published = undefined;
          const kid = nextKid(current);
          const changed = applyDueRotation(current, this.now(), { kid, ...stored }, this.config.expiration);
          const switchAt = changed?.versions.at(-1)?.activatesAt;
          if (changed && switchAt !== undefined) published = { kid, switchAt };
          return changed ?? current;
        },
        {
          audit: (before, after) =>
            this.auditEntry(
              {},
              'keypair.rotate-scheduled',
              'keypair',
              keyPair.id,
              changedFields(before ? keyPairSummary(before, this.now()) : {}, after ? keyPairSummary(after, this.now()) : {}),
            ),
        },
      );
      if (published) rotated.push({ keyPair: keyPair.id, ...published });
    }
    if (rotated.length) await this.keyRing.reload();
    return { rotated, nextDueAt: nextDueAt(await this.store.keyPairs.list(), this.now()) };
  }

  /**
   * An atomic change of a stored key pair (audited), then the key ring picks it up. `change`
   * works on a copy; it returns undefined when there is nothing to change.
   */
  private async changeKeyPair(
    id: string,
    action: string,
    context: AdminContext,
    change: (keyPair: KeyPairRecord) => KeyPairRecord | undefined,
  ): Promise<Tagged<KeyPairView>> {
    const changed = await this.store.keyPairs.modify(id, (current) => change(structuredClone(current)) ?? current, {
      audit: (before, after) =>
        this.auditEntry(
          context,
          action,
          'keypair',
          id,
          changedFields(before ? keyPairSummary(before, this.now()) : {}, after ? keyPairSummary(after, this.now()) : {}),
        ),
    });
    if (!changed) throw new AdminError(404, `key pair '${id}' does not exist`);
    await this.keyRing.reload();
    return this.taggedKeyPair(changed);
  }

  private async requireKeyPair(id: string): Promise<KeyPairRecord> {
    const keyPair = await this.store.keyPairs.get(id);
    if (!keyPair) throw new AdminError(404, `key pair '${id}' does not exist`);
    return keyPair;
  }

  /** Key material as the store keeps it: the private key sealed when a key-encryption key is set. */
  private stored(material: KeyMaterial) {
    return { publicKeyPem: material.publicKeyPem, ...this.keyRing.protector.protect(material.privateKeyPem) };
  }

  // ---- Routes (libs/core/routes.ts): validated whole, claims checked by the store in the write's transaction ----

  /** One page of routes in id order: `limit`, `after`, `enabled`, `domain`. */
  async listRoutes(query: unknown = {}): Promise<Page<Route>> {
    const { limit, after, enabled, domain } = parseInput(routeListQuerySchema, query);
    const rows = await this.store.routes.listPage({ limit, after, enabled, domain });
    return pageOf(
      rows,
      limit,
      (route) => route,
      (route) => route.id,
    );
  }

  async getRoute(id: string): Promise<Tagged<Route>> {
    const route = await this.requireRoute(id);
    return { body: route, etag: entityTag(route) };
  }

  /** Creates a route; 409 when the id is taken, 400 naming the field for bad input or a claimed (domain, pathPrefix). */
  async createRoute(input: unknown, context: AdminContext = {}): Promise<Tagged<Route>> {
    const { rest } = splitReadOnly(withoutIgnored(input), ROUTE_READ_ONLY);
    const spec = parseInput(routeSchema, rest);
    const at = new Date(this.now()).toISOString();
    const route: Route = { ...spec, createdAt: at, updatedAt: at };
    const created = await routeWrite(() =>
      this.store.routes.create(route, { audit: () => this.auditEntry(context, 'route.create', 'route', route.id, route) }),
    );
    if (!created) throw new AdminError(409, `route '${route.id}' already exists`);
    return { body: route, etag: entityTag(route) };
  }

  /**
   * PUT: the body is the whole route (fields left out take their defaults); `id` may be left out
   * or sent unchanged, createdAt/updatedAt too. A write that changes nothing is not made.
   */
  async replaceRoute(id: string, input: unknown, context: AdminContext = {}): Promise<Tagged<Route>> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const { rest, given: readOnly } = splitReadOnly(withoutIgnored(input), ROUTE_READ_ONLY);
    if (rest !== null && typeof rest === 'object' && !Array.isArray(rest)) {
      const given = (rest as Record<string, unknown>).id;
      if (given !== undefined && given !== id)
        throw new AdminError(400, 'id cannot be changed', [{ path: 'id', message: 'read-only; cannot be changed' }]);
    }
    const spec = parseInput(routeSchema, rest !== null && typeof rest === 'object' && !Array.isArray(rest) ? { ...rest, id } : rest);
    const next = await routeWrite(() =>
      this.store.routes.modify(
        id,
        (current) => {
          assertMatches(ifMatch, current, `route '${id}'`);
          assertReadOnlyUnchanged(readOnly, current as unknown as Record<string, unknown>);
          const changed: Route = { ...spec, createdAt: current.createdAt, updatedAt: current.updatedAt };
          if (canonicalJson(changed) === canonicalJson(current)) return current;
          changed.updatedAt = new Date(this.now()).toISOString();
          return changed;
        },
        {
          audit: (before, after) =>
            this.auditEntry(context, 'route.update', 'route', id, changedFields({ ...before }, { ...after }, ['updatedAt'])),
        },
      ),
    );
    if (!next) throw new AdminError(404, `route '${id}' does not exist`);
    return { body: next, etag: entityTag(next) };
  }

  /**
   * PATCH: an RFC 7396 JSON Merge Patch (an object: nested objects merge, null resets a field to
   * its default) or an RFC 6902 JSON Patch (an array), applied to the route as GET shows it, then
   * written as PUT writes (same validation, audit, If-Match; retried on a concurrent change when
   * the client sent no If-Match).
   */
  async patchRoute(id: string, patch: unknown, context: AdminContext = {}, jsonPatch = Array.isArray(patch)): Promise<Tagged<Route>> {
    if (jsonPatch && !Array.isArray(patch)) throw new AdminError(400, 'a JSON Patch (RFC 6902) body is an array of operations');
    if (!jsonPatch && (patch === null || typeof patch !== 'object'))
      throw new AdminError(400, 'a JSON Merge Patch (RFC 7396) body is an object');
    const ifMatch = parseIfMatch(context.ifMatch);
    for (let attempt = 1; ; attempt++) {
      const current = await this.requireRoute(id);
      assertMatches(ifMatch, current, `route '${id}'`);
      const patched = jsonPatch ? applyJsonPatch(current, patch as Operation[], 'a route') : applyMergePatch(current, patch);
      try {
        return await this.replaceRoute(id, patched, { ...context, ifMatch: entityTag(current) });
      } catch (error) {
        const raced = error instanceof AdminError && error.status === 412;
        if (!raced || ifMatch !== undefined || attempt >= 5) throw error;
      }
    }
  }

  async deleteRoute(id: string, context: AdminContext = {}): Promise<void> {
    const ifMatch = parseIfMatch(context.ifMatch);
    const deleted = await this.store.routes.delete(id, {
      check: (current) => assertMatches(ifMatch, current, `route '${id}'`),
      audit: (before) => this.auditEntry(context, 'route.delete', 'route', id, before),
    });
    if (!deleted) throw new AdminError(404, `route '${id}' does not exist`);
  }

  private async requireRoute(id: string): Promise<Route> {
    const route = await this.store.routes.get(id);
    if (!route) throw new AdminError(404, `route '${id}' does not exist`);
    return route;
  }

  /**
   * Seals every private key still in plaintext and rewraps those sealed under another (previous)
   * key-encryption key, each key pair atomically. Returns what it changed.
   */
  async sealPrivateKeys(): Promise<{ keyPair: string; versions: number }[]> {
    const changed: { keyPair: string; versions: number }[] = [];
    for (const { id } of await this.store.keyPairs.list()) {
      let count = 0;
      await this.store.keyPairs.modify(id, (keyPair) => {
        count = 0;
        const versions = keyPair.versions.map((version) => {
          const resealed = this.keyRing.protector.reseal(version, id);
          if (resealed) count += 1;
          return resealed ?? version;
        });
        return { ...keyPair, versions };
      });
      if (count) changed.push({ keyPair: id, versions: count });
    }
    await this.keyRing.reload();
    return changed;
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

/** A route write whose (domain, pathPrefix) another enabled route holds: 400 naming the domain, nothing written. */
async function routeWrite<T>(write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (error) {
    if (error instanceof RouteConflictError) throw new AdminError(400, 'invalid input', error.issues);
    throw error;
  }
}
