import { credentials, loadPackageDefinition, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { LOADER_OPTIONS, TOKEN_AUTHORITY_PROTO } from '../services/token-authority/grpc-options';

/**
 * A small gRPC client of the token authority, to paste from the README:
 *
 *   npm run grpc-client -- token my-id my-secret [scope]
 *   npm run grpc-client -- introspect <token> my-id my-secret
 *   npm run grpc-client -- revoke <token> my-id my-secret
 *   npm run grpc-client -- jwks
 *
 * TOKEN_AUTHORITY_GRPC (default 127.0.0.1:50051) names the server. Credentials go as
 * `authorization: Basic` metadata, as an OAuth2 client would send them over HTTP.
 */
const USAGE = 'usage: grpc-client token <id> <secret> [scope] | introspect <token> <id> <secret> | revoke <token> <id> <secret> | jwks';

function basicMetadata(clientId: string, clientSecret: string): Metadata {
  const metadata = new Metadata();
  const encoded = Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString('base64');
  metadata.set('authorization', `Basic ${encoded}`);
  return metadata;
}

async function main(args: string[]): Promise<number> {
  const address = process.env.TOKEN_AUTHORITY_GRPC ?? '127.0.0.1:50051';
  // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
  const definition = loadPackageDefinition(loadSync(TOKEN_AUTHORITY_PROTO, LOADER_OPTIONS)) as any;
  const client = new definition.token_authority.v1.TokenAuthority(address, credentials.createInsecure());
  const call = (method: string, request: object, metadata = new Metadata()) =>
    new Promise<unknown>((resolve, reject) =>
      client[method](request, metadata, { deadline: Date.now() + 5000 }, (error: ServiceError | null, response: unknown) =>
        error ? reject(error) : resolve(response),
      ),
    );
  const [command, ...rest] = args;
  try {
    let response: unknown;
    if (command === 'token' && rest.length >= 2) {
      response = await call(
        'IssueToken',
        { grant_type: 'client_credentials', ...(rest[2] ? { scope: rest[2] } : {}) },
        basicMetadata(rest[0], rest[1]),
      );
    } else if (command === 'introspect' && rest.length === 3) {
      response = await call('IntrospectToken', { token: rest[0] }, basicMetadata(rest[1], rest[2]));
    } else if (command === 'revoke' && rest.length === 3) {
      response = await call('RevokeToken', { token: rest[0] }, basicMetadata(rest[1], rest[2]));
    } else if (command === 'jwks') {
      response = await call('GetJwks', {});
    } else {
      process.stderr.write(`${USAGE}\n`);
      return 2;
    }
    process.stdout.write(`${JSON.stringify(response, null, 2)}\n`);
    return 0;
  } catch (error) {
    const serviceError = error as ServiceError;
    const oauthError = serviceError.metadata?.get('oauth-error')[0];
    process.stderr.write(`error: ${serviceError.code} ${serviceError.details}${oauthError ? ` (${oauthError})` : ''}\n`);
    return 1;
  } finally {
    client.close();
  }
}

void main(process.argv.slice(2)).then((code) => process.exit(code));
