import type { PublicJwk } from '../core/crypto/key-pairs';
import type { DataPlaneApiKey, DataPlaneState } from '../core/data-plane';

/** token_authority.v1.WatchResponse as @grpc/proto-loader gives it (keepCase, longs as numbers). */
interface Timestamp {
  seconds: number;
  nanos?: number;
}
export interface WatchResponseMessage {
  version: string;
  issuer: string;
  audience?: string;
  keys?: { jwk: Record<string, string>; verify_until?: Timestamp }[];
  api_keys?: {
    client_id: string;
    client_name?: string;
    enabled?: boolean;
    valid_until?: Timestamp;
    authorized_entities?: string[];
    scopes?: string[];
    metadata?: Record<string, string>;
    tags?: string[];
    secrets?: { hash: string; valid_until?: Timestamp }[];
    allow_client_id_only?: boolean;
  }[];
  revoked_tokens?: { jti: string; expires_at?: Timestamp }[];
  generated_at?: Timestamp;
}

const toTimestamp = (ms: number | undefined): Timestamp | undefined =>
  ms === undefined ? undefined : { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1_000_000 };
const fromTimestamp = (timestamp: Timestamp | undefined): number | undefined =>
  timestamp === undefined ? undefined : Number(timestamp.seconds) * 1000 + Math.floor((timestamp.nanos ?? 0) / 1_000_000);

export function encodeWatchResponse(state: DataPlaneState): WatchResponseMessage {
  return {
    version: state.version,
    issuer: state.issuer,
    audience: state.audience,
    keys: state.keys.map((key) => ({ jwk: key.jwk, verify_until: toTimestamp(key.verifyUntil) })),
    api_keys: state.apiKeys.map((apiKey) => ({
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
    })),
    revoked_tokens: state.revokedTokens.map((revoked) => ({ jti: revoked.jti, expires_at: toTimestamp(revoked.expiresAt) })),
    generated_at: toTimestamp(state.generatedAt),
  };
}

export function decodeWatchResponse(message: WatchResponseMessage): DataPlaneState {
  const apiKeys: DataPlaneApiKey[] = (message.api_keys ?? []).map((apiKey) => ({
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
  }));
  return {
    version: message.version,
    issuer: message.issuer,
    audience: message.audience ?? '',
    keys: (message.keys ?? []).map((key) => ({ jwk: key.jwk as PublicJwk, verifyUntil: fromTimestamp(key.verify_until) })),
    apiKeys,
    revokedTokens: (message.revoked_tokens ?? []).map((revoked) => ({ jti: revoked.jti, expiresAt: fromTimestamp(revoked.expires_at) ?? 0 })),
    generatedAt: fromTimestamp(message.generated_at) ?? 0,
  };
}
