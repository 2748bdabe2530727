import { assertionSubject, CLIENT_ASSERTION_TYPE, verifyClientAssertion, type AssertionContext } from './client-assertion';
import { busy, echo, invalidClient, invalidRequest, OAuthError } from './errors';
import { SecretHashBusy, verifySecret } from './crypto/secret-hash';
import { activeSecretHashes, isApiKeyUsable, type ApiKeyRecord } from './model';
import type { ClientAuthFailure } from './observer';
import type { OAuthParams } from './params';
import type { ApiKeyRepository } from './store/repositories';
import { certificateKeyInJwks, type ClientCertificate, tlsClientAuthField, tlsClientAuthMatches } from './mtls';

export type ClientAuthMethod =
  | 'client_secret_basic'
  | 'client_secret_post'
  | 'private_key_jwt'
  | 'tls_client_auth'
  | 'self_signed_tls_client_auth';

export type ClientCredentials =
  | { clientId: string; clientSecret: string; method: 'client_secret_basic' | 'client_secret_post' }
  /** RFC 7523 §2.2: `clientId` is the `client_id` parameter if given, else the assertion's (unverified) `sub`. */
  | { clientId: string; assertion: string; method: 'private_key_jwt' }
  /**
   * RFC 8705 §2: a `client_id` and a client certificate, nothing else. Whether it is
   * tls_client_auth or self_signed_tls_client_auth is the key's registration (authenticateClient).
   */
  | { clientId: string; certificate: ClientCertificate; method: 'tls_client_auth' };

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
export function extractClientCredentials(
  authorization: string | undefined,
  params: OAuthParams,
  certificate?: ClientCertificate,
): ClientCredentials | undefined {
  const usesBasic = authorization !== undefined && /^basic /i.test(authorization);
  if (params.client_assertion !== undefined || params.client_assertion_type !== undefined) {
    return assertionCredentials(usesBasic, params);
  }
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
  // RFC 8705 §2: a client id without a secret over a connection with a client certificate.
  if (certificate && params.client_secret === undefined && params.client_id)
    return { clientId: params.client_id, certificate, method: 'tls_client_auth' };
  return { clientId: params.client_id ?? '', clientSecret: params.client_secret ?? '', method: 'client_secret_post' };
}

/** RFC 7521 §4.2 / RFC 7523 §2.2: `client_assertion_type` and `client_assertion`, and no other method beside them. */
function assertionCredentials(usesBasic: boolean, params: OAuthParams): ClientCredentials {
  if (usesBasic || params.client_secret !== undefined) {
    throw new ClientAuthError(
      'multiple_methods',
      invalidRequest('a client assertion was sent with a client secret or HTTP Basic credentials'),
    );
  }
  const type = params.client_assertion_type;
  if (type !== CLIENT_ASSERTION_TYPE) {
    const description =
      type === undefined
        ? 'client_assertion without client_assertion_type'
        : `client_assertion_type '${echo(type)}' is not supported; use ${CLIENT_ASSERTION_TYPE}`;
    throw new ClientAuthError('malformed', invalidRequest(description));
  }
  const assertion = params.client_assertion;
  if (!assertion) throw new ClientAuthError('malformed', invalidRequest("missing parameter 'client_assertion'"));
  return { clientId: params.client_id ?? assertionSubject(assertion), assertion, method: 'private_key_jwt' };
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
  assertions?: AssertionContext,
): Promise<ApiKeyRecord> {
  if (!credentials) throw new ClientAuthError('no_credentials', invalidClient(false));
  if (credentials.method === 'private_key_jwt') return authenticateByAssertion(apiKeys, credentials, now, assertions);
  if (credentials.method === 'tls_client_auth') return authenticateByCertificate(apiKeys, credentials, now, assertions);
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

/**
 * private_key_jwt: the key named by the assertion must hold (or point to) public keys, and the
 * assertion must be valid for it (client-assertion.ts). A key without keys, an unknown id and
 * every invalid assertion are the same `invalid_client`. The jti is used up only by an assertion
 * that passed every other check, the key's state included.
 */
async function authenticateByAssertion(
  apiKeys: ApiKeyRepository,
  credentials: { clientId: string; assertion: string },
  now: number,
  context: AssertionContext | undefined,
): Promise<ApiKeyRecord> {
  const fail = (reason: ClientAuthFailure) => new ClientAuthError(reason, invalidClient(false));
  const apiKey = credentials.clientId ? await apiKeys.get(credentials.clientId) : undefined;
  if (!apiKey) throw fail('unknown_client');
  if (!context) throw fail('no_jwks');
  if (!isApiKeyUsable(apiKey, now)) throw fail(apiKey.enabled ? 'expired' : 'disabled');
  const failure = await verifyClientAssertion(credentials.assertion, apiKey, context, now);
  if (failure) throw fail(failure);
  return apiKey;
}

/**
 * RFC 8705 §2: the key is registered for tls_client_auth (one of its tls_client_auth_* fields,
 * which the certificate must hold; its chain is the proxy's to verify, and one the proxy says it did
 * not verify is refused) or, with a jwks or
 * jwks_uri and no such field, for self_signed_tls_client_auth (the certificate's public key is one
 * of those keys). The TLS handshake proved the client holds the certificate's private key.
 */
async function authenticateByCertificate(
  apiKeys: ApiKeyRepository,
  credentials: { clientId: string; certificate: ClientCertificate },
  now: number,
  context: AssertionContext | undefined,
): Promise<ApiKeyRecord> {
  const fail = (reason: ClientAuthFailure) => new ClientAuthError(reason, invalidClient(false));
  const apiKey = await apiKeys.get(credentials.clientId);
  if (!apiKey) throw fail('unknown_client');
  if (!isApiKeyUsable(apiKey, now)) throw fail(apiKey.enabled ? 'expired' : 'disabled');
  const { x509 } = credentials.certificate;
  if (tlsClientAuthField(apiKey)) {
    // The names in a certificate nobody verified are the client's word.
    if (credentials.certificate.unverified) throw fail('certificate_unverified');
    if (!tlsClientAuthMatches(apiKey, x509)) throw fail('certificate_mismatch');
    return apiKey;
  }
  let jwks = apiKey.jwks;
  if (!jwks && apiKey.jwks_uri && context?.remoteJwks) {
    jwks = await context.remoteJwks(apiKey.jwks_uri, false).catch(() => {
      throw fail('jwks_unavailable');
    });
    if (!certificateKeyInJwks(x509, jwks)) {
      // The client may have added the key since we cached its set (the cache bounds how often we look again).
      jwks = await context.remoteJwks(apiKey.jwks_uri, true).catch(() => {
        throw fail('jwks_unavailable');
      });
    }
  }
  if (!jwks) throw fail('no_certificate_auth');
  if (!certificateKeyInJwks(x509, jwks)) throw fail('certificate_mismatch');
  return apiKey;
}
