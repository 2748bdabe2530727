import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import {
  API_KEY_READ_ONLY,
  apiKeyCreateSchema,
  apiKeyListQuerySchema,
  apiKeyPatchSchema,
  auditListQuerySchema,
  KEY_PAIR_READ_ONLY,
  keyPairCreateSchema,
  keyPairRotateSchema,
  keyPairUpdateSchema,
  ROUTE_READ_ONLY,
  routeListQuerySchema,
  rotateSecretSchema,
} from '../../libs/core/admin-service';
import { routeSchema } from '../../libs/core/routes';
import { ASSERTION_ALGORITHMS, CLIENT_ASSERTION_TYPE } from '../../libs/core/client-assertion';
import { SIGNING_ALGORITHMS } from '../../libs/core/config';
import { TOKEN_BINDINGS } from '../../libs/core/model';
import { CONSOLE_PREFIX } from './console';

/**
 * The REST contract of the token authority as an OpenAPI 3.1 document, built from the zod
 * schemas the admin API validates with, so the document follows the code. Served at
 * GET /openapi.json, committed as docs/openapi.json (`npm run openapi`), and checked against
 * the routes the running app registers by test/openapi.test.ts.
 */

type JsonSchema = Record<string, unknown>;

/** A request schema as a client sees it (defaults make fields optional, transforms take their input). */
const requestSchema = (schema: z.ZodType): JsonSchema => withoutDialect(z.toJSONSchema(schema, { io: 'input', target: 'draft-2020-12' }));
const responseSchema = (schema: z.ZodType): JsonSchema => withoutDialect(z.toJSONSchema(schema, { io: 'output', target: 'draft-2020-12' }));

/** OpenAPI 3.1's default dialect is 2020-12: the `$schema` of each piece is noise. */
function withoutDialect(schema: JsonSchema): JsonSchema {
  const { $schema: _dialect, ...rest } = schema;
  return rest;
}

// ---- Response bodies (the shapes apiKeyView, keyPairView and TokenService return) ----

const jwk = z
  .object({
    kty: z.string(),
    kid: z.string(),
    alg: z.enum(SIGNING_ALGORITHMS),
    use: z.literal('sig'),
    n: z.string().optional(),
    e: z.string().optional(),
    crv: z.string().optional(),
    x: z.string().optional(),
    y: z.string().optional(),
  })
  .meta({ description: 'A public JWK (never private members).' });

const apiKey = z
  .object({
    clientId: z.string(),
    clientName: z.string(),
    description: z.string(),
    authorizedEntities: z.array(z.string()),
    enabled: z.boolean(),
    validUntil: z.number().int().nullable().meta({ description: 'Epoch ms; null for never.' }),
    metadata: z.record(z.string(), z.string()),
    tags: z.array(z.string()),
    scope: z.array(z.string()),
    allowClientIdOnly: z.boolean(),
    rotation: z.object({ enabled: z.boolean(), rotationEvery: z.number(), gracePeriod: z.number() }),
    throttlingQuota: z.number().int(),
    dailyQuota: z.number().int(),
    monthlyQuota: z.number().int(),
    createdAt: z.number().int(),
    updatedAt: z.number().int(),
    previousSecretValidUntil: z.number().int().optional().meta({ description: 'Epoch ms until which the replaced secret still works.' }),
    clientSecret: z.string().optional().meta({ description: 'Only in the answer of a create or a secret rotation; never again.' }),
    jwks: z
      .object({ keys: z.array(z.record(z.string(), z.unknown())) })
      .optional()
      .meta({ description: 'RFC 7591: the public keys of the private_key_jwt assertions.' }),
    jwks_uri: z.string().optional().meta({ description: 'RFC 7591: where those keys are fetched from instead.' }),
    tls_client_auth_subject_dn: z
      .string()
      .optional()
      .meta({ description: 'RFC 8705 tls_client_auth: the subject DN (RFC 4514) its client certificate must have.' }),
    tls_client_auth_san_dns: z.string().optional().meta({ description: 'RFC 8705 tls_client_auth: a dNSName SAN of its certificate.' }),
    tls_client_auth_san_uri: z.string().optional().meta({ description: 'RFC 8705 tls_client_auth: a URI SAN of its certificate.' }),
    tls_client_auth_san_ip: z.string().optional().meta({ description: 'RFC 8705 tls_client_auth: an iPAddress SAN of its certificate.' }),
    tls_client_auth_san_email: z
      .string()
      .optional()
      .meta({ description: 'RFC 8705 tls_client_auth: an rfc822Name SAN of its certificate.' }),
    tokenBinding: z.enum(TOKEN_BINDINGS).optional().meta({
      description:
        'How its access tokens are bound: absent or bearer (Otoroshi; certificate-bound when a client certificate is presented), dpop (no token without a DPoP proof; ext-authz takes no bearer token of it), mtls (no token without a client certificate: every token certificate-bound).',
    }),
  })
  .strict()
  .meta({ description: 'An API key with Otoroshi field names; never a secret hash.' });

const keyPair = z
  .object({
    id: z.string(),
    algorithm: z.enum(SIGNING_ALGORITHMS),
    description: z.string(),
    createdAt: z.number().int(),
    status: z.enum(['active', 'retired']),
    activeKid: z.string().nullable().meta({ description: 'The kid that signs now.' }),
    rotation: z
      .object({ rotateEvery: z.number().int(), publishAhead: z.number().int(), leeway: z.number().int() })
      .strict()
      .nullable()
      .meta({ description: 'The rotation schedule (seconds); null: rotates only when asked.' }),
    nextRotation: z
      .object({
        publishAt: z.number().int().meta({ description: 'Epoch ms the next key is (or was) published in the JWKS.' }),
        switchAt: z.number().int().meta({ description: 'Epoch ms it starts signing.' }),
        kid: z.string().nullable().meta({ description: 'Its kid once published (status pending), else null.' }),
      })
      .strict()
      .nullable()
      .meta({ description: 'With a schedule: the next rotation; null without one, or once retired.' }),
    versions: z.array(
      z
        .object({
          kid: z.string(),
          status: z
            .enum(['pending', 'active', 'retired'])
            .meta({ description: 'pending: published ahead of a scheduled rotation, signs from activatesAt.' }),
          createdAt: z.number().int(),
          activatesAt: z
            .number()
            .int()
            .nullable()
            .meta({ description: 'Epoch ms it signs from (scheduled rotation); null: since createdAt.' }),
          retiredAt: z.number().int().nullable().meta({ description: 'Epoch ms it stops (or stopped) signing.' }),
          verifyUntil: z.number().int().nullable(),
          publicKey: z.string().meta({ description: 'SPKI PEM.' }),
          jwk,
        })
        .strict(),
    ),
  })
  .strict()
  .meta({ description: 'A signing key pair with its versions; never a private key.' });

const auditEntry = z
  .object({
    id: z.number().int().meta({ description: 'Increases in commit order; the `after` cursor.' }),
    at: z.string().meta({ description: 'ISO 8601 time of the change.' }),
    actor: z.string().meta({ examples: ['admin-token:0123456789ab', 'cli:root', 'system'] }),
    action: z.string().meta({ examples: ['apikey.create', 'keypair.rotate'] }),
    entity: z.enum(['apikey', 'keypair', 'route']),
    entityId: z.string(),
    change: z.unknown().meta({ description: 'The created or deleted entity, or `{field: {before, after}}`; secrets redacted.' }),
  })
  .strict();

/** A route as stored: what routeSchema gives, with the store's timestamps. */
const route = z
  .object({
    id: z.string(),
    name: z.string(),
    description: z.string(),
    enabled: z.boolean(),
    frontend: z.object({ domains: z.array(z.string()), pathPrefix: z.string() }).strict(),
    backend: z
      .object({
        targets: z.array(z.object({ hostname: z.string(), port: z.number().int(), tls: z.boolean(), weight: z.number().int() }).strict()),
        connectTimeoutMs: z.number().int(),
        requestTimeoutMs: z.number().int().meta({ description: '0: no timeout.' }),
      })
      .strict(),
    apikeys: z
      .object({
        enabled: z.boolean(),
        extractors: z.array(z.enum(['bearer', 'basic', 'customHeaders', 'clientId'])),
        authorizedEntities: z.array(z.string()),
        requiredScopes: z.array(z.string()),
        audiences: z.array(z.string()),
        stripCredential: z.boolean(),
        clientIdHeader: z.string(),
        clientSecretHeader: z.string(),
        quotas: z.boolean(),
        quotaFailure: z.enum(['open', 'closed']),
        publicPathPrefixes: z.array(z.string()),
      })
      .strict(),
    metadata: z.record(z.string(), z.string()),
    createdAt: z.string().meta({ description: 'ISO 8601.' }),
    updatedAt: z.string().meta({ description: 'ISO 8601.' }),
    status: z
      .object({
        xds: z
          .object({
            state: z.enum(['accepted', 'rejected', 'pending']).meta({
              description:
                'accepted: an Envoy is connected to this authority and none refused the config carrying the route; rejected: an Envoy refused it (NACK) and serves its last accepted config; pending: no Envoy is connected here.',
            }),
            envoys: z.number().int().meta({ description: 'Envoy streams (ADS) connected to this authority.' }),
            error: z.string().optional().meta({ description: "Envoy's reason (rejected)." }),
            message: z.string().optional().meta({ description: "Envoy's whole error_detail, bounded (rejected)." }),
            type: z.string().optional().meta({ description: 'The resource type Envoy refused, e.g. RouteConfiguration (rejected).' }),
            node: z.string().optional().meta({ description: "The refusing Envoy's node id (rejected)." }),
            at: z.string().optional().meta({ description: 'When Envoy refused it, ISO 8601 (rejected).' }),
          })
          .strict(),
      })
      .strict()
      .optional()
      .meta({
        description:
          'GET only, when the authority is Envoy’s control plane (xds.enabled): what its Envoys made of the route, never stored; a write ignores it.',
      }),
  })
  .strict()
  .meta({ description: "A route in Otoroshi's shape: the domains and path prefix it serves, its backend, its API key policy." });

const tokenResponse = z
  .object({
    access_token: z.string().meta({
      description:
        'An RFC 9068 JWT (typ at+jwt); with a DPoP proof it carries cnf.jkt, over a connection with a client certificate cnf.x5t#S256.',
    }),
    token_type: z.enum(['Bearer', 'DPoP']).meta({ description: 'DPoP when the request carried a valid DPoP proof (RFC 9449).' }),
    expires_in: z.number().int(),
    scope: z.string().optional(),
  })
  .strict();

const introspection = z.union([
  z.object({ active: z.literal(false) }).strict(),
  z
    .object({
      active: z.literal(true),
      token_type: z.enum(['Bearer', 'DPoP']),
      iss: z.string(),
      sub: z.string(),
      client_id: z.string(),
      cid: z.string(),
      aud: z.string(),
      iat: z.number().int(),
      nbf: z.number().int(),
      exp: z.number().int(),
      jti: z.string(),
      scope: z.string().optional(),
      cnf: z.object({ jkt: z.string().optional(), 'x5t#S256': z.string().optional() }).strict().optional().meta({
        description:
          'RFC 9449 §6.2: the token is bound to the DPoP key with this RFC 7638 thumbprint (jkt); RFC 8705 §3.2: to the client certificate with this SHA-256 thumbprint (x5t#S256).',
      }),
      clientName: z.string(),
      metadata: z.record(z.string(), z.string()),
      tags: z.array(z.string()),
      access_type: z.literal('apikey'),
    })
    .strict(),
]);

const authMethods = z.array(
  z.enum(['none', 'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth']),
);
const authSigningAlgorithms = z.array(z.enum(ASSERTION_ALGORITHMS));
const serverMetadata = z
  .object({
    issuer: z.string(),
    token_endpoint: z.string(),
    jwks_uri: z.string(),
    introspection_endpoint: z.string(),
    revocation_endpoint: z.string(),
    grant_types_supported: z.array(z.literal('client_credentials')),
    response_types_supported: z.array(z.string()),
    token_endpoint_auth_methods_supported: authMethods,
    token_endpoint_auth_signing_alg_values_supported: authSigningAlgorithms,
    introspection_endpoint_auth_methods_supported: authMethods,
    introspection_endpoint_auth_signing_alg_values_supported: authSigningAlgorithms,
    revocation_endpoint_auth_methods_supported: authMethods,
    dpop_signing_alg_values_supported: z.array(z.enum(['ES256', 'RS256', 'PS256', 'EdDSA'])),
    tls_client_certificate_bound_access_tokens: z.literal(true),
    revocation_endpoint_auth_signing_alg_values_supported: authSigningAlgorithms,
  })
  .strict();

const health = z
  .object({
    status: z.literal('ok'),
    store: z.literal('ok'),
    defaultKeyPair: z.enum(['active', 'missing']),
    keyPairs: z.number().int().nonnegative(),
  })
  .strict();
const unhealthy = z
  .object({ status: z.literal('unavailable'), store: z.literal('unreachable'), defaultKeyPair: z.enum(['active', 'missing']) })
  .strict();

/** RFC 6749 §5.2; also what the framework answers (not_found, unauthorized, invalid_request, server_error). */
const oauthError = z
  .object({ error: z.string().meta({ examples: ['invalid_request', 'invalid_client', 'not_found'] }), error_description: z.string() })
  .strict();
/** The admin API's errors: the RFC 6749 shape, with `details` naming each bad field of a 400. */
const adminError = z
  .object({
    error: z.string().meta({ examples: ['invalid_request', 'not_found', 'conflict', 'precondition_failed', 'invalid_token'] }),
    error_description: z.string(),
    details: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  })
  .strict();

// ---- OAuth request parameters (what normalizeParams and TokenService read) ----

const param = (description: string) => ({ type: 'string', maxLength: 8192, description });
const clientParams = {
  client_id: param(
    "client_secret_post; or the same id as HTTP Basic; with private_key_jwt optional, the assertion's sub; alone over a connection with a client certificate (forwarded by a trusted proxy as x-forwarded-client-cert): tls_client_auth or self_signed_tls_client_auth (RFC 8705)",
  ),
  client_secret: param('client_secret_post; not with HTTP Basic'),
  client_assertion_type: {
    type: 'string',
    enum: [CLIENT_ASSERTION_TYPE],
    description: 'private_key_jwt (RFC 7523 §2.2), with client_assertion',
  },
  client_assertion: param(
    "private_key_jwt: a JWT signed with a key of the API key's jwks (RS256, PS256, ES256, EdDSA): iss = sub = client id, aud = the token endpoint URL or the issuer, exp at most 5 minutes ahead, a jti used once",
  ),
};
/** Parameters are strings; unknown ones are ignored, repeated ones refused. */
const paramsObject = (properties: Record<string, JsonSchema>, required: string[]): JsonSchema => ({
  type: 'object',
  properties,
  required,
  additionalProperties: { type: 'string' },
});

const tokenParams = paramsObject(
  {
    grant_type: { type: 'string', enum: ['client_credentials'] },
    ...clientParams,
    scope: param('space-separated scopes, each granted to the key; none asked means all of them'),
    audience: param('an allowed audience'),
    resource: param('RFC 8707: an allowed audience'),
  },
  ['grant_type'],
);
const tokenParamsWithHint = paramsObject({ token: param('the access token'), token_type_hint: param('ignored'), ...clientParams }, [
  'token',
]);

// ---- Building blocks of operations ----

const OAUTH_ERROR = { $ref: '#/components/schemas/OAuthError' };
const ADMIN_ERROR = { $ref: '#/components/schemas/AdminError' };
const json = (schema: JsonSchema) => ({ 'application/json': { schema } });
const noStore = { 'Cache-Control': { schema: { type: 'string', const: 'no-store' } } };

function errorResponse(description: string, schema: JsonSchema = OAUTH_ERROR, headers: Record<string, unknown> = {}) {
  return { description, headers: { ...noStore, ...headers }, content: json(schema) };
}

/** A shared store (PostgreSQL) out of reach: the request needed it (libs/core/errors.ts StoreUnavailableError). */
const storeUnavailable = (schema: JsonSchema) =>
  errorResponse('temporarily_unavailable: the shared store is out of reach; retry after Retry-After seconds.', schema, {
    'Retry-After': { schema: { type: 'string' } },
  });

/** Every answer of a body-taking endpoint that its body can cause before the handler runs. */
const bodyErrors = (schema: JsonSchema) => ({
  '413': errorResponse('The body is larger than http.bodyLimit.', schema),
});

const oauthGuardErrors = {
  '400': errorResponse('`secure` is set and the request did not come over HTTPS (invalid_request).'),
  '404': errorResponse('No OAuth endpoint on this host (`domain`).'),
};

function oauthBody(schema: JsonSchema) {
  return {
    required: true,
    content: { 'application/x-www-form-urlencoded': { schema }, 'application/json': { schema } },
  };
}

const clientSecurity = [{ clientBasic: [] }, {}];

function oauthPost(
  operationId: string,
  summary: string,
  params: JsonSchema,
  ok: JsonSchema,
  okDescription: string,
  extra: {
    parameters?: JsonSchema[];
    badRequest?: string;
    headers400?: Record<string, unknown>;
    headers200?: Record<string, unknown>;
  } = {},
) {
  return {
    post: {
      operationId,
      summary,
      tags: ['oauth'],
      security: clientSecurity,
      ...(extra.parameters ? { parameters: extra.parameters } : {}),
      requestBody: oauthBody(params),
      responses: {
        '200': { description: okDescription, headers: { ...noStore, ...extra.headers200 }, content: json(ok) },
        '400': errorResponse(
          `invalid_request (missing, repeated or malformed parameter, malformed or empty body, unsupported content type, Basic and body credentials together, not over HTTPS with \`secure\`), unsupported_grant_type, invalid_scope, invalid_target, unauthorized_client${extra.badRequest ?? ''}.`,
          OAUTH_ERROR,
          extra.headers400,
        ),
        '401': errorResponse('invalid_client: client authentication failed.', OAUTH_ERROR, {
          'WWW-Authenticate': {
            description: 'Present when the client used HTTP Basic (RFC 6749 §5.2).',
            schema: { type: 'string', examples: ['Basic realm="token-authority", charset="UTF-8"'] },
          },
        }),
        '404': oauthGuardErrors['404'],
        ...bodyErrors(OAUTH_ERROR),
        '429': errorResponse('Too many failed client authentications from this address (or for this client from it).', OAUTH_ERROR, {
          'Retry-After': { required: true, schema: { type: 'string' } },
        }),
        '503': storeUnavailable(OAUTH_ERROR),
      },
    },
  };
}

const adminSecurity = [{ adminBearer: [] }];
const adminUnauthorized = errorResponse('invalid_token: no valid admin bearer token.', OAUTH_ERROR, {
  'WWW-Authenticate': { required: true, schema: { type: 'string', const: 'Bearer realm="admin"' } },
});
const adminTooManyFailures = errorResponse(
  'Too many wrong admin tokens from this address (or, past the admin budget, from an address not seen with the right one); the token was not checked.',
  OAUTH_ERROR,
  { 'Retry-After': { required: true, schema: { type: 'string' } } },
);

function pathParam(name: string, description: string) {
  return { name, in: 'path', required: true, description, schema: { type: 'string', minLength: 1 } };
}
const CLIENT_ID = pathParam('clientId', 'The API key’s client id.');
const KEY_PAIR_ID = pathParam('id', 'The key pair’s id.');
const ROUTE_ID = pathParam('id', 'The route’s id.');

interface AdminOperation {
  operationId: string;
  summary: string;
  tag: 'apikeys' | 'keypairs' | 'routes' | 'audit';
  parameters?: unknown[];
  body?: JsonSchema;
  ok: [status: string, description: string, schema?: JsonSchema, headers?: Record<string, unknown>];
  /** OpenAPI links from the success answer: what a client (and Schemathesis's stateful phase) can call next. */
  links?: Record<string, unknown>;
  /** The answer carries the strong ETag of the stored record. */
  etag?: boolean;
  /** A write that takes If-Match (412 when the record changed since). */
  ifMatch?: boolean;
  /** Codes the operation answers besides 401, and 400/413 for a body. */
  errors: Partial<Record<'400' | '404' | '409', string>>;
  /** What 503 means here besides the shared store out of reach. */
  unavailable?: string;
}

/** RFC 6902 operations, as PATCH takes them. */
const JSON_PATCH = {
  type: 'array',
  items: {
    type: 'object',
    required: ['op', 'path'],
    properties: {
      op: { enum: ['add', 'remove', 'replace', 'move', 'copy', 'test'] },
      path: { type: 'string' },
      from: { type: 'string' },
      value: {},
    },
  },
};

/** PATCH also takes the JSON Patch media type (RFC 6902 §6), and for routes the JSON Merge Patch one (RFC 7396 §4). */
function withJsonPatch<T extends { requestBody?: { required: boolean; content: Record<string, unknown> } }>(
  operation: T,
  mergePatch?: JsonSchema,
): T {
  const content: Record<string, unknown> = { ...operation.requestBody?.content, 'application/json-patch+json': { schema: JSON_PATCH } };
  if (mergePatch) content['application/merge-patch+json'] = { schema: mergePatch };
  return { ...operation, requestBody: { required: false, content } };
}

/** Otoroshi's RemainingQuotas, and what the figures mean (libs/core/admin-service.ts QuotaReport). */
const QUOTA_REPORT = {
  type: 'object',
  additionalProperties: false,
  required: [
    'sharedEnforcement',
    'authorizedCallsPerSec',
    'currentCallsPerSec',
    'remainingCallsPerSec',
    'authorizedCallsPerDay',
    'currentCallsPerDay',
    'remainingCallsPerDay',
    'authorizedCallsPerMonth',
    'currentCallsPerMonth',
    'remainingCallsPerMonth',
  ],
  properties: {
    ...Object.fromEntries(
      ['Sec', 'Day', 'Month'].flatMap((unit) =>
        ['authorized', 'current', 'remaining'].map((kind) => [`${kind}CallsPer${unit}`, { type: 'number' }]),
      ),
    ),
    sharedEnforcement: {
      type: 'boolean',
      description:
        'true: the counters are shared on Redis, one limit for every ext-authz. false: each ext-authz counts and enforces in its own memory; the figures are the sum over the replicas that answered, and N replicas may admit up to N times the quota together.',
    },
    replicas: { type: 'integer', minimum: 0, description: 'In memory only: the ext-authz replicas whose counters are summed.' },
    replicasUnanswered: {
      type: 'integer',
      minimum: 0,
      description:
        'In memory only: replicas connected to the authority that did not answer within 2 s (their calls are missing from the sum).',
    },
  },
};

const ETAG_HEADER = {
  ETag: {
    required: true,
    description: 'Strong entity tag of the stored record (RFC 9110 §8.8.3): send it in If-Match.',
    schema: { type: 'string' },
  },
};
const IF_MATCH = {
  name: 'If-Match',
  in: 'header',
  required: false,
  description:
    '`*` or entity tags (RFC 9110 §13.1.1): the write happens only if the stored record still has one of them (strong comparison).',
  schema: { type: 'string' },
};

function adminOperation(operation: AdminOperation) {
  const [status, description, schema, okHeaders] = operation.ok;
  const headers = operation.etag ? { ...okHeaders, ...ETAG_HEADER } : okHeaders;
  const responses: Record<string, unknown> = {
    [status]: schema
      ? { description, ...(headers ? { headers } : {}), content: json(schema), ...(operation.links ? { links: operation.links } : {}) }
      : { description },
    '401': adminUnauthorized,
  };
  const errors: Record<string, string> = { ...operation.errors };
  if (operation.body)
    errors['400'] ??= 'Invalid input: malformed JSON, a repeated key, an unsupported content type or bad fields (details).';
  if (operation.ifMatch) {
    errors['400'] ??= 'A malformed If-Match header.';
    errors['412'] = 'precondition_failed: the record changed since the ETag sent in If-Match.';
  }
  for (const [code, text] of Object.entries(errors)) responses[code] = errorResponse(text, ADMIN_ERROR);
  if (operation.body) Object.assign(responses, bodyErrors(ADMIN_ERROR));
  responses['429'] = adminTooManyFailures;
  responses['503'] = operation.unavailable
    ? errorResponse(operation.unavailable, OAUTH_ERROR, { 'Retry-After': { schema: { type: 'string' } } })
    : storeUnavailable(OAUTH_ERROR);
  const parameters = [...(operation.parameters ?? []), ...(operation.ifMatch ? [IF_MATCH] : [])];
  return {
    operationId: operation.operationId,
    summary: operation.summary,
    tags: [operation.tag],
    security: adminSecurity,
    ...(parameters.length ? { parameters } : {}),
    ...(operation.body ? { requestBody: { required: false, content: json(operation.body) } } : {}),
    responses,
  };
}

/** Query parameters from the zod object the code validates the query with. */
function queryParameters(schema: z.ZodType): unknown[] {
  const object = requestSchema(schema) as { properties: Record<string, JsonSchema>; required?: string[] };
  return Object.entries(object.properties).map(([name, property]) => ({
    name,
    in: 'query',
    required: object.required?.includes(name) ?? false,
    schema: property,
  }));
}

/** Links to the operations on the entity an answer names, with its id taken from the answer. */
function linksTo(operationIds: string[], parameter: string, pointer: string): Record<string, unknown> {
  return Object.fromEntries(
    operationIds.map((operationId) => [operationId, { operationId, parameters: { [parameter]: `$response.body#${pointer}` } }]),
  );
}
const API_KEY_LINKS = linksTo(
  ['getApiKey', 'updateApiKey', 'replaceApiKey', 'rotateApiKeySecret', 'deleteApiKey'],
  'clientId',
  '/clientId',
);
const ROUTE_LINKS = linksTo(['getRoute', 'updateRoute', 'replaceRoute', 'deleteRoute'], 'id', '/id');
const KEY_PAIR_LINKS = linksTo(
  ['getKeyPair', 'updateKeyPair', 'replaceKeyPair', 'rotateKeyPair', 'retireKeyPair', 'deleteKeyPair'],
  'id',
  '/id',
);

/**
 * A PUT/PATCH body: the fields a write may change, plus the read-only fields GET shows, which
 * a body may carry unchanged (GET, edit, PUT) and which are refused (400) when changed.
 */
function editBody(writable: z.ZodType, view: z.ZodObject, readOnly: readonly string[]): JsonSchema {
  const body = requestSchema(writable) as { properties: Record<string, JsonSchema> };
  const shown = (responseSchema(view) as { properties: Record<string, JsonSchema> }).properties;
  for (const field of readOnly) {
    body.properties[field] = { ...shown[field], description: 'Read-only: accepted only unchanged (400 otherwise).' };
  }
  return body;
}

const API_KEY = { $ref: '#/components/schemas/ApiKey' };
const LINK_HEADER = {
  Link: { description: 'RFC 8288 `<…&after=…>; rel="next"` when the page is full.', schema: { type: 'string' } },
};
const KEY_PAIR = { $ref: '#/components/schemas/KeyPair' };
const ROUTE = { $ref: '#/components/schemas/Route' };

/** What the admin API's API keys, routes and key pairs share: their tag, schema and id parameter. */
interface Entity {
  tag: AdminOperation['tag'];
  schema: JsonSchema;
  id: JsonSchema;
  /** What the descriptions call one: "The <noun> as stored." */
  noun: string;
  /** The 404's description. */
  missing: string;
}
const API_KEYS: Entity = { tag: 'apikeys', schema: API_KEY, id: CLIENT_ID, noun: 'key', missing: 'No such API key.' };
const ROUTES: Entity = { tag: 'routes', schema: ROUTE, id: ROUTE_ID, noun: 'route', missing: 'No such route.' };
const KEY_PAIRS: Entity = { tag: 'keypairs', schema: KEY_PAIR, id: KEY_PAIR_ID, noun: 'key pair', missing: 'No such key pair.' };

type EntityOperation = Pick<AdminOperation, 'operationId' | 'summary'> & Partial<Pick<AdminOperation, 'body' | 'links' | 'errors'>>;

/** A page of an entity in id order, as `limit` and `after` ask. */
function listOperation(entity: Entity, operation: EntityOperation & { query: z.ZodType; description: string }) {
  return adminOperation({
    operationId: operation.operationId,
    summary: operation.summary,
    tag: entity.tag,
    parameters: queryParameters(operation.query),
    ok: ['200', operation.description, { type: 'array', items: entity.schema }, LINK_HEADER],
    errors: { '400': 'A bad or unknown query parameter (details).' },
  });
}

/** Creates one: 201 with the entity and its ETag. */
function createOperation(
  entity: Entity,
  operation: EntityOperation & { description: string; body: JsonSchema; links: Record<string, unknown> },
) {
  const { description, ...rest } = operation;
  return adminOperation({ ...rest, tag: entity.tag, ok: ['201', description, entity.schema], etag: true, errors: operation.errors ?? {} });
}

/** An operation on one, named by its id in the path: 404 when there is none. */
function onOne(entity: Entity, operation: EntityOperation, answer: Pick<AdminOperation, 'ok' | 'etag' | 'ifMatch'>) {
  return adminOperation({
    ...operation,
    ...answer,
    tag: entity.tag,
    parameters: [entity.id],
    errors: { '404': entity.missing, ...operation.errors },
  });
}

/** Reads one, with its ETag. */
function readOperation(entity: Entity, { description, ...operation }: EntityOperation & { description: string }) {
  return onOne(entity, operation, { ok: ['200', description, entity.schema], etag: true });
}

/** A write on one under If-Match: answers it as stored, with its new ETag. */
function writeOperation(entity: Entity, { description, ...operation }: EntityOperation & { description?: string }) {
  return onOne(entity, operation, {
    ok: ['200', description ?? `The ${entity.noun} as stored.`, entity.schema],
    etag: true,
    ifMatch: true,
  });
}

/** Deletes one under If-Match. */
function deleteOperation(entity: Entity, operation: EntityOperation) {
  return onOne(entity, operation, { ok: ['204', 'Deleted.'], ifMatch: true });
}

/** A route body (PUT, POST): what routeSchema takes, and the store's timestamps, accepted unchanged. */
/** A route body; `status` (what GET shows of Envoy) may come back with it and is ignored. */
const ROUTE_BODY = (() => {
  const body = editBody(routeSchema, route, ROUTE_READ_ONLY) as { properties: Record<string, JsonSchema> };
  body.properties.status = { type: 'object', description: 'What GET shows of Envoy (status.xds): ignored on writes.' };
  return body as JsonSchema;
})();
const ROUTE_SERVED = 'Invalid input, or an enabled route already serves one of the (domain, pathPrefix) pairs (details name the field).';

/** A merge patch of a route: any part of a route body; null resets a field to its default (RFC 7396). */
const ROUTE_MERGE_PATCH: JsonSchema = {
  type: 'object',
  description: 'RFC 7396 JSON Merge Patch of the route as GET shows it; the result is validated as a PUT body.',
};
const OTOROSHI = '/.well-known/otoroshi/oauth';

/**
 * Routes that are no API operation, which OpenAPI paths cannot describe: what any other path
 * below the OAuth prefix answers, and the admin console's static files (registered when built).
 */
export const CATCH_ALL_ROUTES = [
  { path: `${OTOROSHI}/*`, methods: 'all', description: 'Any other path under /.well-known/otoroshi/oauth/: 404 not_found (OAuthError).' },
];
export const STATIC_ROUTES = [
  { path: CONSOLE_PREFIX, methods: 'GET, HEAD', description: '301 to /console/.' },
  { path: `${CONSOLE_PREFIX}/*`, methods: 'GET, HEAD', description: 'The admin console (HTML, JS, CSS), when built.' },
];

export function openApiDocument(): Record<string, unknown> {
  return {
    openapi: '3.1.1',
    info: {
      title: 'Token authority (Otoroshi client credentials)',
      version: '0.1.0',
      description:
        'OAuth2 client-credentials token authority with Otoroshi’s endpoints, RFC 8414 metadata, RFC 7662 introspection, RFC 7009 revocation and an admin API. Generated from the code (services/token-authority/openapi.ts); errors are RFC 6749 §5.2 JSON with Cache-Control: no-store. A path asked with a method it does not document answers 405 method_not_allowed with Allow; an unknown path 404 not_found.',
      license: { name: 'Apache-2.0', identifier: 'Apache-2.0' },
    },
    'x-catch-all-routes': CATCH_ALL_ROUTES,
    'x-static-routes': STATIC_ROUTES,
    tags: [
      { name: 'oauth', description: 'OAuth2 endpoints (Otoroshi’s paths), subject to `domain` and `secure`.' },
      { name: 'apikeys', description: 'Admin API: API keys.' },
      { name: 'keypairs', description: 'Admin API: signing key pairs.' },
      { name: 'routes', description: 'Admin API: routes (domains and path prefix, backend, API key policy), served by Envoy.' },
      { name: 'audit', description: 'Admin API: the audit log of admin changes.' },
      { name: 'operations', description: 'Health, metrics and this document.' },
    ],
    paths: {
      [`${OTOROSHI}/jwks.json`]: {
        get: {
          operationId: 'jwks',
          summary: 'Every public key that can still verify a live token',
          tags: ['oauth'],
          security: [],
          responses: {
            '200': {
              description: 'JWK set.',
              headers: { 'Cache-Control': { schema: { type: 'string', const: 'public, max-age=60' } } },
              content: json({ $ref: '#/components/schemas/Jwks' }),
            },
            ...oauthGuardErrors,
          },
        },
      },
      [`${OTOROSHI}/token`]: oauthPost(
        'token',
        'Client credentials grant (RFC 6749 §4.4); credentials by HTTP Basic or in the body',
        tokenParams,
        { $ref: '#/components/schemas/TokenResponse' },
        'An access token.',
        {
          parameters: [
            {
              name: 'DPoP',
              in: 'header',
              required: false,
              description:
                'A DPoP proof (RFC 9449 §4): typ dpop+jwt, alg ES256/RS256/PS256/EdDSA, the public jwk, htm POST, htu this URL, iat within 60 s, a jti used once. The token is then bound to that key (token_type DPoP, cnf.jkt).',
              schema: { type: 'string' },
            },
          ],
          badRequest:
            ', invalid_dpop_proof (a DPoP header that is not exactly one valid, unused proof for this request), use_dpop_nonce (dpop.requireNonce: the proof has no current nonce; use the one in DPoP-Nonce, RFC 9449 §8)',
          headers400: {
            'DPoP-Nonce': { description: 'With use_dpop_nonce: the nonce the next proof must carry.', schema: { type: 'string' } },
          },
          headers200: {
            'DPoP-Nonce': {
              description: "When the proof's nonce was the previous one: the current nonce, for the next proof (RFC 9449 §8.2).",
              schema: { type: 'string' },
            },
          },
        },
      ),
      [`${OTOROSHI}/token/introspect`]: oauthPost(
        'introspect',
        'Token introspection (RFC 7662); the caller authenticates unless introspection.requireClientAuth is false',
        tokenParamsWithHint,
        { $ref: '#/components/schemas/Introspection' },
        'Whether the token is active, with its claims when it is.',
      ),
      [`${OTOROSHI}/token/revoke`]: oauthPost(
        'revoke',
        'Token revocation (RFC 7009); a client revokes its own tokens',
        tokenParamsWithHint,
        { type: 'object', additionalProperties: false },
        'Revoked, or nothing to revoke (RFC 7009 §2.2).',
      ),
      '/.well-known/oauth-authorization-server': {
        get: {
          operationId: 'serverMetadata',
          summary: 'RFC 8414 authorization server metadata',
          tags: ['oauth'],
          security: [],
          responses: {
            '200': { description: 'Metadata built from `issuer`.', content: json({ $ref: '#/components/schemas/ServerMetadata' }) },
            ...oauthGuardErrors,
          },
        },
      },
      '/api/apikeys': {
        get: listOperation(API_KEYS, {
          operationId: 'listApiKeys',
          summary: 'A page of API keys in clientId order',
          query: apiKeyListQuerySchema,
          description: 'A page of keys.',
        }),
        post: createOperation(API_KEYS, {
          operationId: 'createApiKey',
          summary: 'Create an API key (the secret, given or generated, is shown once)',
          body: requestSchema(apiKeyCreateSchema),
          description: 'Created; clientSecret included.',
          links: API_KEY_LINKS,
          errors: { '409': 'An API key with this clientId exists.' },
        }),
      },
      '/api/apikeys/{clientId}': {
        get: readOperation(API_KEYS, { operationId: 'getApiKey', summary: 'Read an API key', description: 'The key.' }),
        put: writeOperation(API_KEYS, {
          operationId: 'replaceApiKey',
          summary: 'Change the given fields (as PATCH); a body read with GET may be sent back edited',
          body: editBody(apiKeyPatchSchema, apiKey, API_KEY_READ_ONLY),
        }),
        patch: withJsonPatch(
          writeOperation(API_KEYS, {
            operationId: 'updateApiKey',
            summary:
              'Change the given fields (a JSON object), or apply an RFC 6902 JSON Patch (an array, or application/json-patch+json) as Otoroshi does; a new clientSecret replaces the old one at once',
            body: { anyOf: [editBody(apiKeyPatchSchema, apiKey, API_KEY_READ_ONLY), JSON_PATCH] },
            errors: { '409': 'A JSON Patch `test` operation failed: the key is not what the patch expects.' },
          }),
        ),
        delete: deleteOperation(API_KEYS, {
          operationId: 'deleteApiKey',
          summary: 'Delete an API key; its tokens stop introspecting as active at once',
        }),
      },
      '/api/apikeys/{clientId}/quotas': {
        get: adminOperation({
          operationId: 'getApiKeyQuotas',
          summary:
            "The key's quota consumption (Otoroshi's RemainingQuotas): from the counters ext-authz shares on Redis, or else the sum of what every connected ext-authz counted in memory",
          tag: 'apikeys',
          parameters: [CLIENT_ID],
          ok: ['200', 'Consumption now.', QUOTA_REPORT],
          errors: { '404': 'No such API key.' },
        }),
        delete: adminOperation({
          operationId: 'resetApiKeyQuotas',
          summary: "Reset the key's counters (second, day, month), on Redis or in every connected ext-authz",
          tag: 'apikeys',
          parameters: [CLIENT_ID],
          ok: ['200', 'Consumption after the reset.', QUOTA_REPORT],
          errors: { '404': 'No such API key.' },
          unavailable:
            'temporarily_unavailable: the shared store is out of reach, or (counters in ext-authz memory) a connected ext-authz did not confirm the reset within 2 s; retry after Retry-After seconds (a reset is idempotent).',
        }),
      },
      '/api/apikeys/{clientId}/rotate-secret': {
        post: writeOperation(API_KEYS, {
          operationId: 'rotateApiKeySecret',
          summary: 'New secret; the old one works for gracePeriod hours',
          body: requestSchema(rotateSecretSchema),
          description: 'The key with its new clientSecret.',
          links: API_KEY_LINKS,
        }),
      },
      '/api/routes': {
        get: listOperation(ROUTES, {
          operationId: 'listRoutes',
          summary: 'A page of routes in id order',
          query: routeListQuerySchema,
          description: 'A page of routes.',
        }),
        post: createOperation(ROUTES, {
          operationId: 'createRoute',
          summary: 'Create a route',
          body: ROUTE_BODY,
          description: 'Created.',
          links: ROUTE_LINKS,
          errors: { '400': ROUTE_SERVED, '409': 'A route with this id exists.' },
        }),
      },
      '/api/routes/{id}': {
        get: readOperation(ROUTES, { operationId: 'getRoute', summary: 'Read a route', description: 'The route.' }),
        put: writeOperation(ROUTES, {
          operationId: 'replaceRoute',
          summary: 'Replace a route (fields left out take their defaults); a body read with GET may be sent back edited',
          body: ROUTE_BODY,
          errors: { '400': ROUTE_SERVED },
        }),
        patch: withJsonPatch(
          writeOperation(ROUTES, {
            operationId: 'updateRoute',
            summary: 'Apply an RFC 7396 JSON Merge Patch (an object) or an RFC 6902 JSON Patch (an array) to the route',
            body: { anyOf: [ROUTE_MERGE_PATCH, JSON_PATCH] },
            errors: {
              '400': 'Invalid input or patch, or an enabled route already serves one of the (domain, pathPrefix) pairs (details).',
              '409': 'A JSON Patch `test` operation failed: the route is not what the patch expects.',
            },
          }),
          ROUTE_MERGE_PATCH,
        ),
        delete: deleteOperation(ROUTES, { operationId: 'deleteRoute', summary: 'Delete a route; Envoy stops serving it' }),
      },
      '/api/keypairs': {
        get: adminOperation({
          operationId: 'listKeyPairs',
          summary: 'Every key pair',
          tag: 'keypairs',
          ok: ['200', 'Key pairs.', { type: 'array', items: KEY_PAIR }],
          errors: {},
        }),
        post: createOperation(KEY_PAIRS, {
          operationId: 'createKeyPair',
          summary: 'Generate or import (PEM) a key pair',
          body: requestSchema(keyPairCreateSchema),
          description: 'Created.',
          links: KEY_PAIR_LINKS,
          errors: { '409': 'A key pair with this id exists.' },
        }),
      },
      '/api/keypairs/{id}': {
        get: readOperation(KEY_PAIRS, { operationId: 'getKeyPair', summary: 'Read a key pair', description: 'The key pair.' }),
        put: writeOperation(KEY_PAIRS, {
          operationId: 'replaceKeyPair',
          summary: 'Change the description or the rotation schedule (as PATCH); a body read with GET may be sent back edited',
          body: editBody(keyPairUpdateSchema, keyPair, KEY_PAIR_READ_ONLY),
        }),
        patch: writeOperation(KEY_PAIRS, {
          operationId: 'updateKeyPair',
          summary: 'Change the description or the rotation schedule (rotation: null removes it)',
          body: editBody(keyPairUpdateSchema, keyPair, KEY_PAIR_READ_ONLY),
        }),
        delete: deleteOperation(KEY_PAIRS, {
          operationId: 'deleteKeyPair',
          summary: 'Delete a key pair; its tokens stop verifying at once',
          errors: { '409': 'It is the defaultKeyPair, or API keys name it.' },
        }),
      },
      '/api/keypairs/{id}/rotate': {
        post: writeOperation(KEY_PAIRS, {
          operationId: 'rotateKeyPair',
          summary: 'A new version with a new kid signs from now on (a key published ahead of a scheduled rotation is dropped)',
          body: requestSchema(keyPairRotateSchema),
          description: 'The key pair with its new version.',
          links: KEY_PAIR_LINKS,
        }),
      },
      '/api/keypairs/{id}/retire': {
        post: writeOperation(KEY_PAIRS, {
          operationId: 'retireKeyPair',
          summary: 'The key pair signs nothing more',
          description: 'The retired key pair.',
          errors: { '409': 'Already retired.' },
        }),
      },
      '/api/audit': {
        get: adminOperation({
          operationId: 'listAudit',
          summary: 'Every admin change (API, CLI), oldest first, paged as the API keys are',
          tag: 'audit',
          parameters: queryParameters(auditListQuerySchema),
          ok: ['200', 'A page of audit entries.', { type: 'array', items: { $ref: '#/components/schemas/AuditEntry' } }, LINK_HEADER],
          errors: { '400': 'A bad or unknown query parameter (details).' },
        }),
      },
      '/health': {
        get: {
          operationId: 'health',
          summary: 'The store answers and the default key pair can sign',
          tags: ['operations'],
          security: [],
          responses: {
            '200': { description: 'Healthy.', headers: noStore, content: json({ $ref: '#/components/schemas/Health' }) },
            '503': {
              description: 'The shared store (PostgreSQL) is out of reach: a load balancer should send traffic elsewhere.',
              headers: noStore,
              content: json(responseSchema(unhealthy)),
            },
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          summary: 'Prometheus metrics',
          tags: ['operations'],
          security: [],
          responses: {
            '200': {
              description: 'Prometheus text exposition format 0.0.4.',
              headers: noStore,
              content: { 'text/plain': { schema: { type: 'string' } } },
            },
          },
        },
      },
      '/openapi.json': {
        get: {
          operationId: 'openApi',
          summary: 'This document',
          tags: ['operations'],
          security: [],
          responses: {
            '200': {
              description: 'The OpenAPI 3.1 document.',
              headers: { 'Cache-Control': { schema: { type: 'string', const: 'public, max-age=3600' } } },
              content: json({ type: 'object' }),
            },
          },
        },
      },
    },
    components: {
      securitySchemes: {
        clientBasic: {
          type: 'http',
          scheme: 'basic',
          description: 'client_secret_basic: client_id and client_secret, form-urlencoded, then base64 (RFC 6749 §2.3.1).',
        },
        adminBearer: { type: 'http', scheme: 'bearer', description: 'The admin token (ADMIN_TOKEN, or generated on first start).' },
      },
      schemas: {
        ApiKey: responseSchema(apiKey),
        KeyPair: responseSchema(keyPair),
        Route: responseSchema(route),
        Jwks: responseSchema(z.object({ keys: z.array(jwk) }).strict()),
        TokenResponse: responseSchema(tokenResponse),
        Introspection: responseSchema(introspection),
        ServerMetadata: responseSchema(serverMetadata),
        Health: responseSchema(health),
        OAuthError: responseSchema(oauthError),
        AdminError: responseSchema(adminError),
        AuditEntry: responseSchema(auditEntry),
      },
    },
  };
}

/** The document as served and committed: stable key order, two-space indent, final newline. */
export function openApiJson(): string {
  return `${JSON.stringify(openApiDocument(), null, 2)}\n`;
}

/** Where the committed copy lives, from dist/services/token-authority or services/token-authority. */
export const COMMITTED_OPENAPI = path.resolve(
  __dirname,
  __dirname.includes(`${path.sep}dist${path.sep}`) ? '../../../docs/openapi.json' : '../../docs/openapi.json',
);

// `npm run openapi`: regenerate docs/openapi.json.
if (require.main === module) {
  writeFileSync(COMMITTED_OPENAPI, openApiJson());
  process.stdout.write(`wrote ${COMMITTED_OPENAPI}\n`);
}
