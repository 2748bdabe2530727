import type { Options as LoaderOptions } from '@grpc/proto-loader';
import path from 'node:path';

/**
 * Where the project's protos are and how they are loaded: shared by the authority's servers
 * (services/token-authority/grpc-options.ts, which re-exports them), ext-authz's clients of
 * AuthorityWatch, the tests and the example client. Nothing here loads Nest, so ext-authz does
 * not carry @nestjs/microservices for these constants.
 */
export const PROTO_ROOT = path.resolve(__dirname, '../../../proto');
export const TOKEN_AUTHORITY_PROTO = 'token_authority/v1/token_authority.proto';
export const AUTHORITY_WATCH_PROTO = 'token_authority/v1/authority_watch.proto';
export const TOKEN_AUTHORITY_PACKAGE = 'token_authority.v1';
export const TOKEN_AUTHORITY_SERVICE = 'token_authority.v1.TokenAuthority';

/** One set of loader options for the server, the clients in tests and the shipped example client. */
export const LOADER_OPTIONS: LoaderOptions = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: false,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};
