import {
  loadPackageDefinition,
  status as GrpcStatus,
  type sendUnaryData,
  type Server,
  type ServerUnaryCall,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { type Authorizer, type AuthzRequest, policyHeaderNames } from '../../libs/authz/authorizer';
import { denialBody, type Decision } from '../../libs/authz/decision';
import { CheckRequestDecoder, CheckResponseEncoder, INLINE_POLICY_EXTENSION, POLICY_EXTENSION } from '../../libs/authz/check-wire';
import { ENVOY_PROTO_INCLUDE_DIRS, EXT_AUTHZ_PROTO } from '../../libs/envoy/envoy-protos';
import { withTraceparent } from '../../libs/observability/trace-context';

/** The parts of envoy.service.auth.v3.CheckRequest that ext-authz reads. */
export interface CheckRequest {
  attributes?: {
    /** The downstream peer as Envoy sees it. */
    source?: { address?: { socket_address?: { address?: string } }; certificate?: string };
    request?: {
      http?: {
        id?: string;
        method?: string;
        path?: string;
        host?: string;
        scheme?: string;
        headers?: Record<string, string>;
        header_map?: { headers?: { key: string; value?: string; raw_value?: Buffer }[] };
      };
    };
    context_extensions?: Record<string, string>;
  };
}

export { INLINE_POLICY_EXTENSION, POLICY_EXTENSION };
import { requestUrl } from '../../libs/authz/check-wire';

/**
 * Envoy's request attributes, decoded in full by proto-loader, as the core's request: the
 * reference that CheckRequestDecoder (libs/authz/check-wire.ts) is tested against.
 */
export function toAuthzRequest(check: CheckRequest): AuthzRequest {
  const http = check.attributes?.request?.http;
  let headers: Record<string, string> = http?.headers ?? {};
  // With encode_raw_headers Envoy sends header_map (values as bytes) instead of headers.
  if (http?.header_map?.headers?.length) {
    headers = {};
    for (const { key, value, raw_value } of http.header_map.headers) {
      const text = raw_value ? raw_value.toString('utf8') : (value ?? '');
      headers[key.toLowerCase()] = headers[key.toLowerCase()] === undefined ? text : `${headers[key.toLowerCase()]},${text}`;
    }
  }
  const request: AuthzRequest = {
    policy: check.attributes?.context_extensions?.[POLICY_EXTENSION],
    headers,
    sourceAddress: check.attributes?.source?.address?.socket_address?.address,
  };
  const certificate = check.attributes?.source?.certificate;
  if (certificate) request.clientCertificate = certificate;
  if (http?.method) request.method = http.method;
  const url = requestUrl(http?.scheme, http?.host, http?.path);
  if (url !== undefined) request.url = url;
  const inlinePolicy = check.attributes?.context_extensions?.[INLINE_POLICY_EXTENSION];
  if (inlinePolicy !== undefined) request.inlinePolicy = inlinePolicy;
  return request;
}

const OVERWRITE = 'OVERWRITE_IF_EXISTS_OR_ADD';
const RPC_CODE_BY_STATUS = {
  401: GrpcStatus.UNAUTHENTICATED,
  403: GrpcStatus.PERMISSION_DENIED,
  429: GrpcStatus.RESOURCE_EXHAUSTED,
  503: GrpcStatus.UNAVAILABLE,
} as const;

/** The core's decision as Envoy's CheckResponse (the reference for CheckResponseEncoder): status always set, headers with an explicit append action. */
export function toCheckResponse(decision: Decision): object {
  if (decision.allowed) {
    return {
      status: { code: GrpcStatus.OK },
      ok_response: {
        headers: Object.entries(decision.headersToSet).map(([key, value]) => ({ header: { key, value }, append_action: OVERWRITE })),
        headers_to_remove: decision.headersToRemove,
        // Onto the client's response (Otoroshi's remaining-calls headers).
        response_headers_to_add: Object.entries(decision.responseHeaders).map(([key, value]) => ({
          header: { key, value },
          append_action: OVERWRITE,
        })),
      },
    };
  }
  const headers = [{ header: { key: 'content-type', value: 'application/json' }, append_action: OVERWRITE }];
  if (decision.wwwAuthenticate)
    headers.push({ header: { key: 'www-authenticate', value: decision.wwwAuthenticate }, append_action: OVERWRITE });
  if (decision.retryAfter !== undefined)
    headers.push({ header: { key: 'retry-after', value: String(decision.retryAfter) }, append_action: OVERWRITE });
  if (decision.dpopNonce !== undefined)
    headers.push({ header: { key: 'dpop-nonce', value: decision.dpopNonce }, append_action: OVERWRITE });
  return {
    status: { code: RPC_CODE_BY_STATUS[decision.status], message: decision.message },
    denied_response: { status: { code: decision.status }, headers, body: denialBody(decision) },
  };
}

/** Loaded once per process: Envoy's protos as shipped in @grpc/grpc-js-xds. */
export function loadAuthorizationService(): ServiceDefinition {
  const definition = loadSync(EXT_AUTHZ_PROTO, {
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: false,
    oneofs: true,
    includeDirs: [...ENVOY_PROTO_INCLUDE_DIRS],
  });
  // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
  return (loadPackageDefinition(definition) as any).envoy.service.auth.v3.Authorization.service;
}

/** Header names Check reads at most (the config's, traceparent and those of inline policies). */
const MAX_HEADER_NAMES = 256;

export type CheckListener = (decision: Decision, policy: string | undefined) => void;

export const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';
const passThrough = (bytes: Buffer) => bytes;

/**
 * Check with Buffers in and out: the request is read straight from its bytes and the answer
 * written from the decision (libs/authz/check-wire.ts), not through proto-loader's objects.
 */
const PASS_THROUGH_CHECK: ServiceDefinition = {
  Check: {
    path: CHECK_PATH,
    requestStream: false,
    responseStream: false,
    requestSerialize: passThrough,
    requestDeserialize: passThrough,
    responseSerialize: passThrough,
    responseDeserialize: passThrough,
    originalName: 'check',
  },
};

/**
 * Registers Check on a grpc-js server directly (not through Nest's gRPC layer: it is the hot
 * path, see bench/ext-authz.ts). Every CheckRequest is answered with a CheckResponse, never an
 * RPC error; bytes that are not a CheckRequest get INVALID_ARGUMENT (grpc-js itself answers
 * RESOURCE_EXHAUSTED past grpc.max_receive_message_length).
 */
export function addCheckService(
  server: Pick<Server, 'addService'> | { addService(service: ServiceDefinition, implementation: object): void },
  authorizer: Authorizer,
  onDecision: CheckListener,
  onUnexpected: (error: Error) => void,
): void {
  // The authorizer's headers, and the caller's traceparent as Envoy passes it on among them.
  let decoder = new CheckRequestDecoder([...authorizer.headerNames(), 'traceparent']);
  /**
   * An inline policy (xDS) may read headers the config's policies do not: the decoder learns
   * them on the first call that needs them (that call is read again), up to a bound.
   */
  const withPolicyHeaders = (bytes: Buffer, request: AuthzRequest): AuthzRequest => {
    if (request.inlinePolicy === undefined) return request;
    const policy = authorizer.policyOf(request);
    if (!policy) return request;
    const missing = policyHeaderNames(policy).filter((name) => !decoder.headerNames.has(name));
    if (!missing.length || decoder.headerNames.size + missing.length > MAX_HEADER_NAMES) return request;
    decoder = new CheckRequestDecoder([...decoder.headerNames, ...missing]);
    return decoder.decode(bytes);
  };
  const encoder = new CheckResponseEncoder();
  server.addService(PASS_THROUGH_CHECK, {
    Check(call: ServerUnaryCall<Buffer, Buffer>, callback: sendUnaryData<Buffer>) {
      let request: AuthzRequest;
      try {
        request = withPolicyHeaders(call.request, decoder.decode(call.request));
      } catch {
        callback({ code: GrpcStatus.INVALID_ARGUMENT, details: 'malformed CheckRequest' });
        return;
      }
      const answer = (decision: Decision) => {
        onDecision(decision, request.policy);
        callback(null, encoder.encode(decision));
      };
      const fail = (error: Error) => {
        // The authorizer never throws by design; if it does, the call fails closed (Envoy denies).
        onUnexpected(error);
        callback({ code: GrpcStatus.INTERNAL, details: 'internal error' });
      };
      // A warm-cache decision is made and answered in this tick; only a pending one is awaited.
      withTraceparent(request.headers.traceparent, () => {
        let decision: Decision | Promise<Decision>;
        try {
          decision = authorizer.decide(request);
        } catch (error) {
          fail(error as Error);
          return;
        }
        if (decision instanceof Promise) decision.then(answer, fail);
        else answer(decision);
      });
    },
  });
}
