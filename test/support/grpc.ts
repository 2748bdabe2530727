import { credentials, loadPackageDefinition, Metadata, type Client, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { LOADER_OPTIONS, TOKEN_AUTHORITY_PROTO } from '../../services/token-authority/grpc-options';

export type GrpcOutcome = { ok: true; response: any } | { ok: false; error: ServiceError };

export interface TokenAuthorityClient {
  call(
    method: 'IssueToken' | 'IntrospectToken' | 'GetJwks' | 'RevokeToken',
    request: object,
    metadata?: Record<string, string>,
    deadlineMs?: number,
  ): Promise<GrpcOutcome>;
  raw: Client;
  close(): void;
}

/** A grpc-js client of token_authority.v1.TokenAuthority, loaded with the server's own loader options. */
export function tokenAuthorityClient(address: string): TokenAuthorityClient {
  const definition = loadPackageDefinition(loadSync(TOKEN_AUTHORITY_PROTO, LOADER_OPTIONS)) as any;
  const client: Client & Record<string, Function> = new definition.token_authority.v1.TokenAuthority(address, credentials.createInsecure());
  return {
    raw: client,
    call(method, request, metadata = {}, deadlineMs = 10_000) {
      const md = new Metadata();
      for (const [key, value] of Object.entries(metadata)) md.set(key, value);
      return new Promise((resolve) =>
        client[method](request, md, { deadline: Date.now() + deadlineMs }, (error: ServiceError | null, response: unknown) =>
          resolve(error ? { ok: false, error } : { ok: true, response }),
        ),
      );
    },
    close: () => client.close(),
  };
}
