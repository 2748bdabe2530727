import { busy, invalidClient, invalidRequest, OAuthError } from './errors';
import { SecretHashBusy, verifySecret } from './crypto/secret-hash';
import { activeSecretHashes, isApiKeyUsable, type ApiKeyRecord } from './model';
import type { ClientAuthFailure } from './observer';
import type { OAuthParams } from './params';
import type { ApiKeyRepository } from './store/repositories';

export type ClientAuthMethod = 'client_secret_basic' | 'client_secret_post';

export interface ClientCredentials {
  clientId: string;
  clientSecret: string;
  method: ClientAuthMethod;
}

/** A client authentication failure: the same answer to the client, with the reason kept for metrics and logs. */
export class ClientAuthError extends OAuthError {
  constructor(
    readonly reason: ClientAuthFailure,
    answer: OAuthError,
  ) {
    super(answer.code, answer.description, answer.status, answer.wwwAuthenticate);
  }
}

const malformedBasic = () => new ClientAuthError('malformed', invalidRequest('malformed HTTP Basic credentials'));

/** RFC 6749 §2.3.1: Basic credentials are form-urlencoded before base64. */
function formDecode(value: string): string {
  try {
    return decodeURIComponent(value.replace(/\+/g, ' '));
  } catch {
    throw malformedBasic();
  }
}

function parseBasic(authorization: string): { clientId: string; clientSecret: string } {
  const encoded = authorization.slice(6).trim();
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(encoded)) throw malformedBasic();
  const decoded = Buffer.from(encoded, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) throw malformedBasic();
  return { clientId: formDecode(decoded.slice(0, colon)), clientSecret: formDecode(decoded.slice(colon + 1)) };
}

/**
 * Finds the client's credentials in an `Authorization: Basic` header or in the parameters.
 * Using both is refused (RFC 6749 §2.3: one method per request); a `client_id` parameter
 * equal to the Basic id is tolerated, as most clients send it.
 */
export function extractClientCredentials(authorization: string | undefined, params: OAuthParams): ClientCredentials | undefined {
  const usesBasic = authorization !== undefined && /^basic /i.test(authorization);
  if (usesBasic) {
    const basic = parseBasic(authorization);
    if (params.client_secret !== undefined || (params.client_id !== undefined && params.client_id !== basic.clientId)) {
      throw new ClientAuthError(
        'multiple_methods',
        invalidRequest('client credentials were sent both in the Authorization header and in the body'),
      );
    }
    return { ...basic, method: 'client_secret_basic' };
  }
  if (params.client_id === undefined && params.client_secret === undefined) return undefined;
  return { clientId: params.client_id ?? '', clientSecret: params.client_secret ?? '', method: 'client_secret_post' };
}

/**
 * Authenticates a client. Every failure (no credentials, unknown id, wrong secret, disabled
 * or expired key) is the same `invalid_client`, after the same work; only its reason (for
 * metrics and logs) differs.
 */
export async function authenticateClient(
  apiKeys: ApiKeyRepository,
  credentials: ClientCredentials | undefined,
  now: number,
): Promise<ApiKeyRecord> {
  if (!credentials) throw new ClientAuthError('no_credentials', invalidClient(false));
  const usedBasic = credentials.method === 'client_secret_basic';
  const apiKey = credentials.clientId ? await apiKeys.get(credentials.clientId) : undefined;
  const hashes = apiKey ? activeSecretHashes(apiKey, now).map((secret) => secret.hash) : [];
  const secretMatches = await verifySecret(credentials.clientSecret, hashes).catch((error: unknown) => {
    // The bounded scrypt queue is full: "busy, retry", the same for every id.
    throw error instanceof SecretHashBusy ? busy() : error;
  });
  const fail = (reason: ClientAuthFailure) => new ClientAuthError(reason, invalidClient(usedBasic));
  if (!apiKey) throw fail('unknown_client');
  if (!secretMatches) throw fail('invalid_secret');
  if (!isApiKeyUsable(apiKey, now)) throw fail(apiKey.enabled ? 'expired' : 'disabled');
  return apiKey;
}
