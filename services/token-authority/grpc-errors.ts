import { status as GrpcStatus } from '@grpc/grpc-js';
import { AdminError, OAuthError, type OAuthErrorCode } from '../../libs/core/errors';
import { richError, type RichError } from '../../libs/grpc/rich-status';

/** RFC 6749 §5.2 codes to gRPC status codes (documented in token_authority.proto). */
const STATUS_BY_OAUTH_CODE: Record<OAuthErrorCode, GrpcStatus> = {
  invalid_client: GrpcStatus.UNAUTHENTICATED,
  invalid_token: GrpcStatus.UNAUTHENTICATED,
  invalid_request: GrpcStatus.INVALID_ARGUMENT,
  invalid_scope: GrpcStatus.INVALID_ARGUMENT,
  invalid_target: GrpcStatus.INVALID_ARGUMENT,
  invalid_grant: GrpcStatus.INVALID_ARGUMENT,
  unsupported_grant_type: GrpcStatus.INVALID_ARGUMENT,
  unsupported_token_type: GrpcStatus.INVALID_ARGUMENT,
  invalid_dpop_proof: GrpcStatus.INVALID_ARGUMENT,
  use_dpop_nonce: GrpcStatus.INVALID_ARGUMENT,
  unauthorized_client: GrpcStatus.PERMISSION_DENIED,
  access_denied: GrpcStatus.PERMISSION_DENIED,
  not_found: GrpcStatus.NOT_FOUND,
  temporarily_unavailable: GrpcStatus.UNAVAILABLE,
  server_error: GrpcStatus.INTERNAL,
};

export const ERROR_DOMAIN = 'token-authority';

/** The gRPC form of a core error: status code, description, and the OAuth2 code in trailers and details. */
export function toGrpcError(exception: unknown): RichError {
  if (exception instanceof OAuthError) {
    // Too many failures is a quota of attempts: RESOURCE_EXHAUSTED, with the HTTP face's Retry-After.
    const code = exception.status === 429 ? GrpcStatus.RESOURCE_EXHAUSTED : STATUS_BY_OAUTH_CODE[exception.code];
    const trailers: Record<string, string> = { 'oauth-error': exception.code, 'oauth-error-description': exception.description };
    if (exception.retryAfter !== undefined) trailers['retry-after'] = String(exception.retryAfter);
    for (const [name, value] of Object.entries(exception.headers ?? {})) trailers[name.toLowerCase()] = value;
    return richError(code, exception.description, exception.code, ERROR_DOMAIN, trailers);
  }
  if (exception instanceof AdminError) {
    const code =
      exception.status === 404
        ? GrpcStatus.NOT_FOUND
        : exception.status === 409
          ? GrpcStatus.ALREADY_EXISTS
          : exception.status === 412
            ? GrpcStatus.FAILED_PRECONDITION
            : GrpcStatus.INVALID_ARGUMENT;
    return richError(code, exception.message, 'invalid_request', ERROR_DOMAIN);
  }
  return richError(GrpcStatus.INTERNAL, 'internal error', 'server_error', ERROR_DOMAIN, { 'oauth-error': 'server_error' });
}
