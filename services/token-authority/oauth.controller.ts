import { All, Body, Controller, Get, Header, Headers, HttpCode, Inject, Ip, Post, Req, Res, UseGuards } from '@nestjs/common';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { DPOP_NONCE_HEADER } from '../../libs/core/dpop';
import type { Authority } from '../../libs/core/authority';
import { notFound } from '../../libs/core/errors';
import { normalizeParams } from '../../libs/core/params';
import { AUTHORITY } from './authority.provider';
import { OAuthEndpointGuard } from './oauth-endpoint.guard';
import { forwardedClientCertificate } from '../../libs/http/trust-proxy';
import { CERTIFICATE_UNVERIFIED_HEADER } from '../../libs/core/mtls';
import type { OAuthRequest } from '../../libs/core/token-service';

const OTOROSHI = '/.well-known/otoroshi/oauth';

/** REST face of the OAuth endpoints: Otoroshi's paths, RFC 8414 metadata, RFC 7009 revocation. */
@Controller()
@UseGuards(OAuthEndpointGuard)
export class OAuthController {
  /**
   * RFC 8705: the client certificate Envoy forwards (x-forwarded-client-cert), from a trusted proxy
   * only (trustProxy), and whether Envoy said it did not verify it (CERTIFICATE_UNVERIFIED_HEADER).
   */
  private readonly certificateOf: (request: FastifyRequest) => Pick<OAuthRequest, 'clientCertificate' | 'clientCertificateUnverified'>;

  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {
    const read = forwardedClientCertificate(authority.config.trustProxy);
    this.certificateOf = (request) => {
      const clientCertificate = read(request.socket.remoteAddress, request.headers['x-forwarded-client-cert']);
      if (clientCertificate === undefined) return {};
      return request.headers[CERTIFICATE_UNVERIFIED_HEADER] === undefined
        ? { clientCertificate }
        : { clientCertificate, clientCertificateUnverified: true };
    };
  }

  @Get(`${OTOROSHI}/jwks.json`)
  @Header('cache-control', 'public, max-age=60')
  jwks() {
    return this.authority.keyRing.jwks();
  }

  @Post(`${OTOROSHI}/token`)
  @HttpCode(200)
  @Header('cache-control', 'no-store')
  @Header('pragma', 'no-cache')
  token(
    @Body() body: unknown,
    @Ip() clientAddress: string,
    @Req() request: FastifyRequest,
    @Res({ passthrough: true }) reply: FastifyReply,
    @Headers('authorization') authorization?: string,
  ) {
    const proofs = request.headers.dpop;
    // RFC 9449: the proof's htu may name this URL as the client reached us (Host, and the scheme per trustProxy);
    // a proof with the previous nonce gets the current one back (§8.2).
    const dpop =
      proofs === undefined
        ? undefined
        : {
            proofs,
            requestUrl: `${request.protocol}://${request.headers.host ?? ''}${OTOROSHI}/token`,
            onNonce: (nonce: string) => void reply.header(DPOP_NONCE_HEADER, nonce),
          };
    return this.authority.tokens.issueToken({
      params: normalizeParams(body),
      authorization,
      clientAddress,
      dpop,
      ...this.certificateOf(request),
    });
  }

  @Post(`${OTOROSHI}/token/introspect`)
  @HttpCode(200)
  @Header('cache-control', 'no-store')
  introspect(
    @Body() body: unknown,
    @Ip() clientAddress: string,
    @Req() request: FastifyRequest,
    @Headers('authorization') authorization?: string,
  ) {
    return this.authority.tokens.introspect({
      params: normalizeParams(body),
      authorization,
      clientAddress,
      ...this.certificateOf(request),
    });
  }

  @Post(`${OTOROSHI}/token/revoke`)
  @HttpCode(200)
  @Header('cache-control', 'no-store')
  async revoke(
    @Body() body: unknown,
    @Ip() clientAddress: string,
    @Req() request: FastifyRequest,
    @Headers('authorization') authorization?: string,
  ) {
    await this.authority.tokens.revoke({ params: normalizeParams(body), authorization, clientAddress, ...this.certificateOf(request) });
    return {};
  }

  @Get('/.well-known/oauth-authorization-server')
  metadata() {
    return this.authority.tokens.metadata();
  }

  @All(`${OTOROSHI}/*`)
  unknownOtoroshiPath(): never {
    throw notFound('unknown OAuth endpoint');
  }
}
