import { All, Controller, Get, Header, Inject, Param, Req, Res } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { type Allow, denialBody } from '../../libs/authz/decision';
import type { AuthzRequest } from '../../libs/authz/authorizer';
import { requestUrl } from '../../libs/authz/check-wire';
import { forwardedClientCertificate, proxiedClientAddress, type TrustProxy } from '../../libs/http/trust-proxy';
import { EXT_AUTHZ, type ExtAuthz } from './ext-authz.provider';

/**
 * HTTP mode, for Envoy's http_service (path_prefix /authz/<policy>) and nginx auth_request
 * (proxy_pass .../authz/<policy>). The policy is the first path segment after /authz, set by the
 * proxy's configuration; the client's path that follows is cut off before routing (app.ts).
 * Only a 200 allows.
 */
@Controller()
export class HttpModeController {
  /** RFC 8705: the client certificate Envoy forwards (x-forwarded-client-cert), believed from a trusted peer only (TRUST_PROXY). */
  private readonly certificateOf: ReturnType<typeof forwardedClientCertificate>;

  constructor(@Inject(EXT_AUTHZ) private readonly extAuthz: ExtAuthz) {
    this.certificateOf = forwardedClientCertificate(extAuthz.trustProxy);
  }

  @All('authz/:policy')
  async check(@Param('policy') policy: string, @Req() request: FastifyRequest, @Res() reply: FastifyReply): Promise<void> {
    const headers = request.headers as Record<string, string | undefined>;
    // A warm-cache decision is synchronous (Authorizer.decide): awaited only when it is pending.
    const authzRequest: AuthzRequest = {
      policy,
      headers,
      sourceAddress: clientAddress(request, this.extAuthz.trustProxy),
      method: request.method,
      url: forwardedUrl(request, policy),
    };
    const certificate = this.certificateOf(request.socket.remoteAddress, request.headers['x-forwarded-client-cert']);
    if (certificate) authzRequest.clientCertificate = certificate;
    const decided = this.extAuthz.authorizer.decide(authzRequest);
    const decision = decided instanceof Promise ? await decided : decided;
    this.extAuthz.decided('http', policy, decision);
    if (decision.allowed) {
      await reply.headers(allowHeaders(decision)).status(200).send();
      return;
    }
    reply.header('cache-control', 'no-store');
    if (decision.wwwAuthenticate) reply.header('www-authenticate', decision.wwwAuthenticate);
    if (decision.retryAfter !== undefined) reply.header('retry-after', String(decision.retryAfter));
    if (decision.dpopNonce !== undefined) reply.header('dpop-nonce', decision.dpopNonce);
    // For nginx, which cannot pass an auth_request body on: the message, to rebuild the body.
    reply.header('x-authz-error', decision.message);
    await reply.status(decision.status).type('application/json').send(denialBody(decision));
  }

  /** 200 once a state from the authority is loaded (synced or degraded), 503 before. */
  @Get('health')
  @Header('cache-control', 'no-store')
  health(@Res() reply: FastifyReply): void {
    const replica = this.extAuthz.replica;
    void reply.status(replica.ready ? 200 : 503).send({
      status: replica.status === 'synced' ? 'ok' : replica.status,
      authority: {
        connected: replica.status === 'synced',
        version: replica.version || null,
        lastUpdateAt: replica.lastUpdateAt ? new Date(replica.lastUpdateAt).toISOString() : null,
        reconnects: this.extAuthz.watch.reconnects,
        ...replica.counts,
      },
    });
  }

  @Get('metrics')
  async metrics(@Res() reply: FastifyReply): Promise<void> {
    await reply.type(this.extAuthz.metrics.registry.contentType).send(await this.extAuthz.metrics.registry.metrics());
  }
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
 * The URL the client asked for, as Envoy's http_service forwards it (a DPoP proof's htu): the
 * path after /authz/<policy>, the Host header, and X-Forwarded-Proto (http without one). nginx's
 * auth_request forwards no path of its own, so a proof there must name the root.
 */
function forwardedUrl(request: FastifyRequest, policy: string): string | undefined {
  const host = request.headers.host;
  if (!host) return undefined;
  const forwardedProto = request.headers['x-forwarded-proto'];
  const scheme = (Array.isArray(forwardedProto) ? forwardedProto[0] : forwardedProto)?.split(',')[0].trim() || 'http';
  const rest = request.originalUrl.slice(`/authz/${policy}`.length);
  const path = rest.startsWith('/') ? rest : `/${rest}`;
  return requestUrl(scheme, host, path);
}

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
