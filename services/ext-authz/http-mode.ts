import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import { type Allow, denialBody } from '../../libs/authz/decision';
import type { AuthzRequest } from '../../libs/authz/authorizer';
import { requestUrl } from '../../libs/authz/check-wire';
import { forwardedClientCertificate, proxiedClientAddress, type TrustProxy } from '../../libs/http/trust-proxy';
import type { ExtAuthz } from './ext-authz.provider';

/**
 * HTTP mode, for Envoy's http_service (path_prefix /authz/<policy>) and nginx auth_request
 * (proxy_pass .../authz/<policy>), with /health and /metrics: routes on the Fastify instance
 * (app.ts), each a translation of the request into a core call. The policy is the first path
 * segment after /authz, set by the proxy's configuration; the client's path that follows is cut
 * off before routing (app.ts). Only a 200 allows.
 *
 * No Nest here (the authority's REST is Nest's): three routes need no modules or injection, and
 * loading @nestjs/core and @nestjs/platform-fastify cost ext-authz about 20 MB of RSS and 9 MB of
 * heap for as long as it ran (issue 18 item 3).
 */
export function addHttpModeRoutes(fastify: FastifyInstance, extAuthz: ExtAuthz, onUnexpected: (error: Error) => void): void {
  /** RFC 8705: the client certificate Envoy forwards (x-forwarded-client-cert), believed from a trusted peer only (TRUST_PROXY). */
  const certificateOf = forwardedClientCertificate(extAuthz.trustProxy);

  fastify.all<{ Params: { policy: string } }>('/authz/:policy', async (request, reply) => {
    const policy = request.params.policy;
    const headers = request.headers as Record<string, string | undefined>;
    // A warm-cache decision is synchronous (Authorizer.decide): awaited only when it is pending.
    const authzRequest: AuthzRequest = {
      policy,
      headers,
      sourceAddress: clientAddress(request, extAuthz.trustProxy),
      ...forwardedRequest(request, policy),
    };
    const certificate = certificateOf(request.socket.remoteAddress, request.headers['x-forwarded-client-cert']);
    if (certificate) authzRequest.clientCertificate = certificate;
    const decided = extAuthz.authorizer.decide(authzRequest);
    const decision = decided instanceof Promise ? await decided : decided;
    extAuthz.decided('http', policy, decision);
    if (decision.allowed) return reply.headers(allowHeaders(decision)).status(200).send();
    reply.header('cache-control', 'no-store');
    if (decision.wwwAuthenticate) reply.header('www-authenticate', decision.wwwAuthenticate);
    if (decision.retryAfter !== undefined) reply.header('retry-after', String(decision.retryAfter));
    if (decision.dpopNonce !== undefined) reply.header('dpop-nonce', decision.dpopNonce);
    // For nginx, which cannot pass an auth_request body on: the message, to rebuild the body.
    reply.header('x-authz-error', decision.message);
    return reply.status(decision.status).type('application/json').send(denialBody(decision));
  });

  /** 200 once a state from the authority is loaded (synced or degraded), 503 before. */
  fastify.get('/health', (_request, reply) => {
    const replica = extAuthz.replica;
    void reply
      .header('cache-control', 'no-store')
      .status(replica.ready ? 200 : 503)
      .send({
        status: replica.status === 'synced' ? 'ok' : replica.status,
        authority: {
          connected: replica.status === 'synced',
          version: replica.version || null,
          lastUpdateAt: replica.lastUpdateAt ? new Date(replica.lastUpdateAt).toISOString() : null,
          reconnects: extAuthz.watch.reconnects,
          ...replica.counts,
        },
      });
  });

  fastify.get('/metrics', async (_request, reply) =>
    reply.type(extAuthz.metrics.registry.contentType).send(await extAuthz.metrics.registry.metrics()),
  );

  // Errors in the authority's shape (RFC 6749 §5.2 style): Fastify's own 4xx (a body over the
  // limit, a bad Content-Length, no such route) say what was wrong; anything else is a logged,
  // counted 500 that reveals nothing.
  fastify.setNotFoundHandler((_request, reply) => {
    void reply.status(404).header('cache-control', 'no-store').send({ error: 'not_found', error_description: 'not found' });
  });
  fastify.setErrorHandler((error: FastifyError, _request, reply) => {
    reply.header('cache-control', 'no-store');
    const status = error.statusCode ?? 500;
    if (status >= 400 && status < 500) {
      void reply.status(status).send({ error: 'invalid_request', error_description: error.message });
      return;
    }
    onUnexpected(error);
    void reply.status(500).send({ error: 'server_error', error_description: 'internal error' });
  });
}

/** An allow's answer headers, by its shared (frozen) identity headers, as long as the authorizer keeps them. */
const sharedAllowHeaders = new WeakMap<object, { headersToRemove: readonly string[]; headers: Record<string, string> }>();

/** An allow's answer headers: made once for the parts the authorizer shares, with this call's remaining calls (quotas). */
function allowHeaders(decision: Allow): Record<string, string> {
  const shared = Object.isFrozen(decision.headersToSet) && Object.isFrozen(decision.headersToRemove);
  let fixed = shared ? sharedAllowHeaders.get(decision.headersToSet) : undefined;
  if (fixed?.headersToRemove !== decision.headersToRemove) {
    const headers: Record<string, string> = { 'cache-control': 'no-store', ...decision.headersToSet };
    // Envoy removes these from the upstream request (spoofed identity headers, a stripped credential).
    if (decision.headersToRemove.length) headers['x-envoy-auth-headers-to-remove'] = decision.headersToRemove.join(',');
    fixed = { headersToRemove: decision.headersToRemove, headers };
    if (shared) sharedAllowHeaders.set(decision.headersToSet, fixed);
  }
  // For the client's response: Envoy copies them (allowed_client_headers_on_success), nginx
  // through auth_request_set + add_header.
  for (const _ in decision.responseHeaders) return { ...fixed.headers, ...decision.responseHeaders };
  return fixed.headers;
}

/**
 * The method and URL the client asked for (a DPoP proof's htm and htu). Envoy's http_service
 * forwards the client's method, its path after /authz/<policy>, and its Host; the scheme is
 * X-Forwarded-Proto (http without one). nginx's auth_request subrequest is a GET of
 * /authz/<policy> and nothing after it: the shipped template sends the client's method, URI and
 * Host as X-Original-Method, X-Original-URI and Host, read only when the path ends at the policy
 * (Envoy always forwards at least "/", and does not pass those headers on: allowed_headers). With
 * either header there, a URI that is not one (nginx's "*" never gets here) leaves no URL, and no
 * proof passes.
 */
function forwardedRequest(request: FastifyRequest, policy: string): Pick<AuthzRequest, 'method' | 'url'> {
  const host = request.headers.host;
  const forwardedProto = request.headers['x-forwarded-proto'];
  const scheme = (Array.isArray(forwardedProto) ? forwardedProto[0] : forwardedProto)?.split(',')[0].trim() || 'http';
  const rest = request.originalUrl.slice(`/authz/${policy}`.length);
  if (rest === '') {
    const method = single(request.headers['x-original-method']);
    const uri = single(request.headers['x-original-uri']);
    // Once the proxy names the client's request, it is that one or none (no DPoP proof passes):
    // never the subrequest's own GET /. nginx's $request_uri of an absolute-form target without a
    // path (`DELETE http://host?x`) is "?x", the path "/" with a query; anything else is no URI.
    if (method !== undefined || uri !== undefined) {
      const path = uri?.startsWith('/') ? uri : uri?.startsWith('?') ? `/${uri}` : undefined;
      return { method, url: host && path ? requestUrl(scheme, host, path) : undefined };
    }
  }
  const path = rest.startsWith('/') ? rest : `/${rest}`;
  return { method: request.method, url: host ? requestUrl(scheme, host, path) : undefined };
}

const single = (value: string | string[] | undefined): string | undefined => (Array.isArray(value) ? undefined : value);

/**
 * The client's address as the proxy in front reports it, believed only from a trusted peer
 * (TRUST_PROXY, by default 1): nginx's X-Real-IP (set in the shipped template), else the last
 * X-Forwarded-For entry (the one Envoy appended), else the peer.
 */
function clientAddress(request: FastifyRequest, trust: TrustProxy): string {
  return proxiedClientAddress(trust, request.socket.remoteAddress || 'unknown', {
    realIp: request.headers['x-real-ip'],
    forwardedFor: request.headers['x-forwarded-for'],
  });
}
