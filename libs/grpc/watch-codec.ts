import path from 'node:path';
import { Root, type Type } from 'protobufjs';
import type { PublicJwk } from '../core/crypto/key-pairs';
import type { DataPlaneApiKey, DataPlaneKey, DataPlaneUpdate } from '../core/data-plane';

/** token_authority.v1.DeltaWatchResponse with snake_case fields (keepCase), as protobufjs encodes and decodes it. */
interface Timestamp {
  /** A number when we build it; protobufjs decodes int64 as a Long. */
  seconds: number | { toNumber(): number };
  nanos?: number;
}
interface VerificationKeyMessage {
  jwk: Record<string, string>;
  verify_until?: Timestamp | null;
}
interface ApiKeyStateMessage {
  client_id: string;
  client_name?: string;
  enabled?: boolean;
  valid_until?: Timestamp | null;
  authorized_entities?: string[];
  scopes?: string[];
  metadata?: Record<string, string>;
  tags?: string[];
  secrets?: { hash: string; valid_until?: Timestamp | null }[];
  allow_client_id_only?: boolean;
  quotas?: { throttling_quota?: Int64; daily_quota?: Int64; monthly_quota?: Int64 } | null;
  token_binding?: string;
}
/** int64 as we build it (number) or as protobufjs decodes it (a Long). */
type Int64 = number | { toNumber(): number };
const fromInt64 = (value: Int64 | undefined): number => (value === undefined ? 0 : typeof value === 'number' ? value : value.toNumber());
export interface DeltaWatchResponseMessage {
  version: string;
  base_version?: string;
  reset?: boolean;
  more?: boolean;
  issuer?: string;
  audience?: string;
  key_pairs?: { key_pair_id: string; keys?: VerificationKeyMessage[] }[];
  removed_key_pairs?: string[];
  api_keys?: ApiKeyStateMessage[];
  removed_api_keys?: string[];
  revoked_tokens?: { jti: string; expires_at?: Timestamp | null }[];
  generated_at?: Timestamp | null;
}

const toTimestamp = (ms: number | undefined): Timestamp | undefined =>
  ms === undefined ? undefined : { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
const fromTimestamp = (timestamp: Timestamp | null | undefined): number | undefined => {
  if (timestamp === undefined || timestamp === null) return undefined;
  const seconds = typeof timestamp.seconds === 'number' ? timestamp.seconds : timestamp.seconds.toNumber();
  return seconds * 1000 + Math.floor((timestamp.nanos ?? 0) / 1_000_000);
};

const encodeKey = (key: DataPlaneKey): VerificationKeyMessage => ({
  jwk: key.jwk as unknown as Record<string, string>,
  verify_until: toTimestamp(key.verifyUntil),
});

const encodeApiKey = (apiKey: DataPlaneApiKey): ApiKeyStateMessage => ({
  client_id: apiKey.clientId,
  client_name: apiKey.clientName,
  enabled: apiKey.enabled,
  valid_until: toTimestamp(apiKey.validUntil),
  authorized_entities: apiKey.authorizedEntities,
  scopes: apiKey.scopes,
  metadata: apiKey.metadata,
  tags: apiKey.tags,
  secrets: apiKey.secrets.map((secret) => ({ hash: secret.hash, valid_until: toTimestamp(secret.validUntil) })),
  allow_client_id_only: apiKey.allowClientIdOnly,
  quotas: apiKey.quotas && {
    throttling_quota: apiKey.quotas.throttlingQuota,
    daily_quota: apiKey.quotas.dailyQuota,
    monthly_quota: apiKey.quotas.monthlyQuota,
  },
  token_binding: apiKey.tokenBinding ?? '',
});

const decodeApiKey = (apiKey: ApiKeyStateMessage): DataPlaneApiKey => ({
  clientId: apiKey.client_id,
  clientName: apiKey.client_name ?? apiKey.client_id,
  enabled: apiKey.enabled ?? false,
  validUntil: fromTimestamp(apiKey.valid_until),
  authorizedEntities: apiKey.authorized_entities ?? [],
  scopes: apiKey.scopes ?? [],
  metadata: apiKey.metadata ?? {},
  tags: apiKey.tags ?? [],
  secrets: (apiKey.secrets ?? []).map((secret) => ({ hash: secret.hash, validUntil: fromTimestamp(secret.valid_until) })),
  allowClientIdOnly: apiKey.allow_client_id_only ?? false,
  quotas: apiKey.quotas
    ? {
        throttlingQuota: fromInt64(apiKey.quotas.throttling_quota),
        dailyQuota: fromInt64(apiKey.quotas.daily_quota),
        monthlyQuota: fromInt64(apiKey.quotas.monthly_quota),
      }
    : undefined,
  // An unknown binding (a newer authority's) is kept: the data plane then takes no token of the key.
  ...(apiKey.token_binding ? { tokenBinding: apiKey.token_binding } : {}),
});

export function encodeUpdate(update: DataPlaneUpdate): DeltaWatchResponseMessage {
  return {
    version: update.version,
    base_version: update.baseVersion,
    reset: update.reset,
    more: update.more,
    issuer: update.issuer,
    audience: update.audience,
    key_pairs: update.keyPairs.map((keyPair) => ({ key_pair_id: keyPair.keyPairId, keys: keyPair.keys.map(encodeKey) })),
    removed_key_pairs: update.removedKeyPairs,
    api_keys: update.apiKeys.map(encodeApiKey),
    removed_api_keys: update.removedApiKeys,
    revoked_tokens: update.revokedTokens.map((revoked) => ({ jti: revoked.jti, expires_at: toTimestamp(revoked.expiresAt) })),
    generated_at: toTimestamp(update.generatedAt),
  };
}

export function decodeUpdate(message: DeltaWatchResponseMessage): DataPlaneUpdate {
  return {
    version: message.version,
    baseVersion: message.base_version ?? '',
    reset: message.reset ?? false,
    more: message.more ?? false,
    issuer: message.issuer || undefined,
    audience: message.audience || undefined,
    keyPairs: (message.key_pairs ?? []).map((keyPair) => ({
      keyPairId: keyPair.key_pair_id,
      // Own properties only: a decoded message answers '' for every field it did not carry.
      keys: (keyPair.keys ?? []).map((key) => ({
        jwk: { ...key.jwk } as unknown as PublicJwk,
        verifyUntil: fromTimestamp(key.verify_until),
      })),
    })),
    removedKeyPairs: message.removed_key_pairs ?? [],
    apiKeys: (message.api_keys ?? []).map(decodeApiKey),
    removedApiKeys: message.removed_api_keys ?? [],
    revokedTokens: (message.revoked_tokens ?? []).map((revoked) => ({
      jti: revoked.jti,
      expiresAt: fromTimestamp(revoked.expires_at) ?? 0,
    })),
    generatedAt: fromTimestamp(message.generated_at) ?? 0,
  };
}

/**
 * DeltaWatch messages are (de)serialized with protobufjs directly rather than through
 * @grpc/proto-loader's fromObject/toObject: a 100,000-key snapshot is the one large message
 * flow we have, and the conversions cost about as much as the encoding itself.
 */
const PROTO_ROOT = path.resolve(__dirname, '../../../proto');
let responseType: Type | undefined;
function deltaWatchResponseType(): Type {
  if (!responseType) {
    const root = new Root();
    // google/protobuf/* are protobufjs's own common types.
    root.resolvePath = (_origin, target) => (target.startsWith('google/protobuf/') ? target : path.join(PROTO_ROOT, target));
    root.loadSync('token_authority/v1/authority_watch.proto', { keepCase: true });
    responseType = root.lookupType('token_authority.v1.DeltaWatchResponse');
  }
  return responseType;
}

export function serializeUpdate(update: DataPlaneUpdate): Buffer {
  const bytes = deltaWatchResponseType()
    .encode(encodeUpdate(update) as unknown as Record<string, unknown>)
    .finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Absent fields read as protobuf defaults ('' , false, [], {}, null) from the decoded message. */
export function deserializeUpdate(bytes: Buffer): DataPlaneUpdate {
  return decodeUpdate(deltaWatchResponseType().decode(bytes) as unknown as DeltaWatchResponseMessage);
}
