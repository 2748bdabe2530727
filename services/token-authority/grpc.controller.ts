import { Metadata, type ServerUnaryCall } from '@grpc/grpc-js';
import { Controller, Inject } from '@nestjs/common';
import { GrpcMethod } from '@nestjs/microservices';
import type { Authority } from '../../libs/core/authority';
import { normalizeParams, type OAuthParams } from '../../libs/core/params';
import { AUTHORITY } from './authority.provider';

interface ClientCredentials {
  client_id?: string;
  client_secret?: string;
  client_assertion_type?: string;
  client_assertion?: string;
}

/**
 * gRPC face of the OAuth endpoints (token_authority.v1.TokenAuthority). Each method turns its
 * message into the same parameters the REST face passes, so both run the same core code.
 */
@Controller()
export class TokenAuthorityGrpcController {
  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {}

  @GrpcMethod('TokenAuthority', 'IssueToken')
  issueToken(
    request: { grant_type?: string; client?: ClientCredentials; scope?: string; audience?: string; resource?: string },
    metadata: Metadata,
    call: ServerUnaryCall<unknown, unknown>,
  ) {
    const params = toParams(
      { grant_type: request.grant_type, scope: request.scope, audience: request.audience, resource: request.resource },
      request.client,
    );
    // RFC 9449 over gRPC: the proof as `dpop` metadata (as the REST endpoint's DPoP header), its
    // htu the token endpoint's published URL; a fresh nonce goes back as initial metadata.
    const proofs = metadata.get('dpop').filter((value): value is string => typeof value === 'string');
    const dpop =
      proofs.length === 0
        ? undefined
        : {
            proofs,
            onNonce: (nonce: string) => {
              const answer = new Metadata();
              answer.set('dpop-nonce', nonce);
              call.sendMetadata(answer);
            },
          };
    return this.authority.tokens
      .issueToken({ params, authorization: authorizationOf(metadata), clientAddress: peerAddress(call), dpop })
      .then((response) => ({ ...response, scope: response.scope ?? '' }));
  }

  @GrpcMethod('TokenAuthority', 'IntrospectToken')
  introspectToken(
    request: { token?: string; token_type_hint?: string; client?: ClientCredentials },
    metadata: Metadata,
    call: ServerUnaryCall<unknown, unknown>,
  ) {
    const params = toParams({ token: request.token, token_type_hint: request.token_type_hint }, request.client);
    return this.authority.tokens
      .introspect({ params, authorization: authorizationOf(metadata), clientAddress: peerAddress(call) })
      .then((response) => {
        if (!response.active) return { active: false };
        const { clientName, ...claims } = response;
        return { ...claims, client_name: clientName };
      });
  }

  @GrpcMethod('TokenAuthority', 'GetJwks')
  getJwks() {
    return this.authority.keyRing.jwks();
  }

  @GrpcMethod('TokenAuthority', 'RevokeToken')
  async revokeToken(
    request: { token?: string; token_type_hint?: string; client?: ClientCredentials },
    metadata: Metadata,
    call: ServerUnaryCall<unknown, unknown>,
  ) {
    const params = toParams({ token: request.token, token_type_hint: request.token_type_hint }, request.client);
    await this.authority.tokens.revoke({ params, authorization: authorizationOf(metadata), clientAddress: peerAddress(call) });
    return {};
  }
}

/** Message fields to OAuth2 parameters: unset fields are absent, as in a form that omits them. */
function toParams(fields: Record<string, string | undefined>, client: ClientCredentials | undefined): OAuthParams {
  return normalizeParams({
    ...fields,
    client_id: client?.client_id,
    client_secret: client?.client_secret,
    client_assertion_type: client?.client_assertion_type,
    client_assertion: client?.client_assertion,
  });
}

function authorizationOf(metadata: Metadata): string | undefined {
  const [value] = metadata.get('authorization');
  return typeof value === 'string' ? value : undefined;
}

/** The peer's address without its port: grpc-js says `ipv4:127.0.0.1:5000`, `ipv6:[::1]:5000` or `127.0.0.1:5000`. */
export function peerAddress(call: { getPeer?(): string } | undefined): string | undefined {
  const peer = call?.getPeer?.();
  if (!peer) return undefined;
  const bare = peer.replace(/^ipv[46]:/, '');
  const bracketed = /^\[([^\]]+)\]/.exec(bare);
  if (bracketed) return bracketed[1];
  const colon = bare.lastIndexOf(':');
  return colon > 0 && bare.indexOf(':') === colon ? bare.slice(0, colon) : bare;
}
