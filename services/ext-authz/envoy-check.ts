import {
  loadPackageDefinition,
  status as GrpcStatus,
  type sendUnaryData,
  type Server,
  type ServerUnaryCall,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { Authorizer, AuthzRequest } from '../../libs/authz/authorizer';
import { denialBody, type Decision } from '../../libs/authz/decision';
import { ENVOY_PROTO_INCLUDE_DIRS, EXT_AUTHZ_PROTO } from '../../libs/envoy/envoy-protos';
import { withTraceparent } from '../../libs/observability/trace-context';

/** The parts of envoy.service.auth.v3.CheckRequest that ext-authz reads. */
export interface CheckRequest {
  attributes?: {
    /** The downstream peer as Envoy sees it. */
    source?: { address?: { socket_address?: { address?: string } } };
    request?: {
      http?: {
        id?: string;
        method?: string;
        path?: string;
        host?: string;
        headers?: Record<string, string>;
        header_map?: { headers?: { key: string; value?: string; raw_value?: Buffer }[] };
      };
    };
    context_extensions?: Record<string, string>;
  };
}

/** The context_extensions key that names the route policy (set per route in envoy.yaml). */
export const POLICY_EXTENSION = 'route';

/** Envoy's request attributes as the core's request. */
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
  return {
    policy: check.attributes?.context_extensions?.[POLICY_EXTENSION],
    headers,
    sourceAddress: check.attributes?.source?.address?.socket_address?.address,
  };
}

const OVERWRITE = 'OVERWRITE_IF_EXISTS_OR_ADD';
const RPC_CODE_BY_STATUS = {
  401: GrpcStatus.UNAUTHENTICATED,
  403: GrpcStatus.PERMISSION_DENIED,
  429: GrpcStatus.RESOURCE_EXHAUSTED,
  503: GrpcStatus.UNAVAILABLE,
} as const;

/** The core's decision as Envoy's CheckResponse: status always set, headers with an explicit append action. */
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

export type CheckListener = (decision: Decision, policy: string | undefined) => void;

/**
 * Registers Check on a grpc-js server directly (not through Nest's gRPC layer: it is the hot
 * path, see bench/ext-authz.ts). Every call is answered with a CheckResponse, never an RPC error.
 */
export function addCheckService(
  server: Server,
  authorizer: Authorizer,
  onDecision: CheckListener,
  onUnexpected: (error: Error) => void,
): void {
  server.addService(loadAuthorizationService(), {
    Check(call: ServerUnaryCall<CheckRequest, object>, callback: sendUnaryData<object>) {
      const request = toAuthzRequest(call.request);
      // The client's traceparent as Envoy passes it on among the request's headers.
      void withTraceparent(request.headers.traceparent, () =>
        authorizer.check(request).then(
          (decision) => {
            onDecision(decision, request.policy);
            callback(null, toCheckResponse(decision));
          },
          (error: Error) => {
            // The authorizer never throws by design; if it does, the call fails closed (Envoy denies).
            onUnexpected(error);
            callback({ code: GrpcStatus.INTERNAL, details: 'internal error' });
          },
        ),
      );
    },
  });
}
