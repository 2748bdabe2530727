import { status as GrpcStatus } from '@grpc/grpc-js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Authority } from '../../libs/core/authority';
import type { SigningAlgorithm } from '../../libs/core/config';
import type { OAuthErrorCode } from '../../libs/core/errors';
import type { AuthorityObserver, ClientAuthFailure, OAuthEndpoint } from '../../libs/core/observer';
import type { GrpcObserver } from '../../libs/observability/grpc-instrument';
import type { HttpObserver } from '../../libs/observability/http-instrument';
import { registerUnexpectedErrors } from '../../libs/observability/unexpected-errors';
import { parseVersion } from '../../libs/core/data-plane';
import { nextRotation } from '../../libs/core/key-rotation';

/** Latency buckets in seconds: sub-millisecond cache hits up to a slow scrypt under load. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/**
 * Prometheus metrics of the token authority (prom-client), one registry per instance: OAuth2
 * outcomes as the core reports them (AuthorityObserver: the same counts for REST and gRPC),
 * request latency per REST route and gRPC method, the process, the data plane feed and
 * unexpected errors.
 */
export class AuthorityMetrics implements AuthorityObserver, HttpObserver, GrpcObserver {
  readonly registry = new Registry();
  private readonly tokens: Counter<'algorithm' | 'outcome'>;
  private readonly clientAuthFailures: Counter<'endpoint' | 'reason'>;
  private readonly introspections: Counter<'outcome'>;
  private readonly revocations: Counter<'outcome'>;
  private readonly httpDuration: Histogram<'method' | 'route' | 'status_class'>;
  private readonly grpcDuration: Histogram<'service' | 'method' | 'code'>;
  private readonly grpcStreamsOpened: Counter<'service' | 'method'>;
  private readonly grpcStreamsClosed: Counter<'service' | 'method' | 'code'>;

  constructor() {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'token_authority_' });
    registerUnexpectedErrors(this.registry);
    this.tokens = new Counter({
      name: 'token_authority_token_requests_total',
      help: 'Token requests (REST and gRPC), by signing algorithm ("none" before one was chosen) and outcome: issued, or the OAuth2 error code.',
      labelNames: ['algorithm', 'outcome'],
      registers,
    });
    this.clientAuthFailures = new Counter({
      name: 'token_authority_client_auth_failures_total',
      help: 'Client authentication failures, by endpoint and reason (the client is told only invalid_client or invalid_request).',
      labelNames: ['endpoint', 'reason'],
      registers,
    });
    this.introspections = new Counter({
      name: 'token_authority_introspections_total',
      help: 'Introspections, by outcome: active, inactive, or the OAuth2 error code.',
      labelNames: ['outcome'],
      registers,
    });
    this.revocations = new Counter({
      name: 'token_authority_revocations_total',
      help: 'Revocations, by outcome: revoked, ignored (not a valid token of ours), or the OAuth2 error code.',
      labelNames: ['outcome'],
      registers,
    });
    this.httpDuration = new Histogram({
      name: 'token_authority_http_request_duration_seconds',
      help: 'REST request latency, by method, route template ("(unmatched)" for unknown paths) and status class.',
      labelNames: ['method', 'route', 'status_class'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.grpcDuration = new Histogram({
      name: 'token_authority_grpc_request_duration_seconds',
      help: 'Unary gRPC call latency, by service, method and status code name.',
      labelNames: ['service', 'method', 'code'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.grpcStreamsOpened = new Counter({
      name: 'token_authority_grpc_streams_opened_total',
      help: 'gRPC streams opened (DeltaWatch, health Watch), by service and method.',
      labelNames: ['service', 'method'],
      registers,
    });
    this.grpcStreamsClosed = new Counter({
      name: 'token_authority_grpc_streams_closed_total',
      help: 'gRPC streams ended, by service, method and the status code they ended with (CANCELLED: the client left).',
      labelNames: ['service', 'method', 'code'],
      registers,
    });
  }

  /** Gauges of the state: added once the authority and its watch service exist. */
  watchState(authority: Authority, watch: { openStreams: number }): void {
    new Gauge({
      name: 'token_authority_watch_streams',
      help: 'Open DeltaWatch streams (data planes following this authority).',
      registers: [this.registry],
      collect() {
        this.set(watch.openStreams);
      },
    });
    new Gauge({
      name: 'token_authority_data_plane_position',
      help: 'Change-log position of the last data plane update published.',
      registers: [this.registry],
      collect() {
        this.set(parseVersion(authority.dataPlane.version)?.seq ?? 0);
      },
    });
    new Gauge({
      name: 'token_authority_key_pair_next_switch_timestamp_seconds',
      help: 'Key pairs with a rotation schedule: when the next key starts signing (Unix time).',
      labelNames: ['key_pair'],
      registers: [this.registry],
      collect() {
        this.reset();
        const now = Date.now();
        for (const keyPair of authority.keyRing.keyPairRecords()) {
          const next = nextRotation(keyPair, now);
          if (next) this.set({ key_pair: keyPair.id }, next.switchAt / 1000);
        }
      },
    });
    new Gauge({
      name: 'token_authority_key_pair_published_keys',
      help: 'Keys of each key pair in the JWKS now (signing, published ahead of a rotation, or retired with live tokens).',
      labelNames: ['key_pair'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const { keyPairId, keys } of authority.keyRing.keyPairKeys()) this.set({ key_pair: keyPairId }, keys.length);
      },
    });
  }

  /** The xDS control plane: Envoy streams, rejected configs (NACKs) by type, routes whose last config was rejected. */
  xdsState(ads: {
    connectedStreams: number;
    nacks(): ReadonlyMap<string, unknown>;
    resourcesSent: ReadonlyMap<string, number>;
  }): (typeUrl: string) => void {
    new Gauge({
      name: 'token_authority_xds_streams',
      help: 'Open ADS streams (Envoys taking their config from this authority).',
      registers: [this.registry],
      collect() {
        this.set(ads.connectedStreams);
      },
    });
    new Gauge({
      name: 'token_authority_xds_rejected_routes',
      help: 'Routes whose last config Envoy rejected (NACK) and has not accepted since.',
      registers: [this.registry],
      collect() {
        this.set(ads.nacks().size);
      },
    });
    new Counter({
      name: 'token_authority_xds_resources_sent_total',
      help: 'Resources sent to Envoys over ADS, by type: an Envoy resuming on this replica (delta) is sent only what it lacks.',
      labelNames: ['type'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [typeUrl, count] of ads.resourcesSent) this.inc({ type: typeUrl.slice(typeUrl.lastIndexOf('.') + 1) }, count);
      },
    });
    const nacks = new Counter({
      name: 'token_authority_xds_nack_total',
      help: 'Configs Envoy rejected (NACK), by resource type (Listener, RouteConfiguration, Cluster, ClusterLoadAssignment).',
      labelNames: ['type'],
      registers: [this.registry],
    });
    return (typeUrl) => nacks.inc({ type: typeUrl.slice(typeUrl.lastIndexOf('.') + 1) });
  }

  tokenRequest(outcome: 'issued' | OAuthErrorCode, algorithm: SigningAlgorithm | undefined): void {
    this.tokens.inc({ algorithm: algorithm ?? 'none', outcome });
  }

  clientAuthFailed(endpoint: OAuthEndpoint, reason: ClientAuthFailure): void {
    this.clientAuthFailures.inc({ endpoint, reason });
  }

  introspection(outcome: 'active' | 'inactive' | OAuthErrorCode): void {
    this.introspections.inc({ outcome });
  }

  revocation(outcome: 'revoked' | 'ignored' | OAuthErrorCode): void {
    this.revocations.inc({ outcome });
  }

  request(method: string, route: string, statusClass: string, seconds: number): void {
    this.httpDuration.observe({ method, route, status_class: statusClass }, seconds);
  }

  unary(service: string, method: string, code: GrpcStatus, seconds: number): void {
    this.grpcDuration.observe({ service, method, code: codeName(code) }, seconds);
  }

  streamOpened(service: string, method: string): void {
    this.grpcStreamsOpened.inc({ service, method });
  }

  streamClosed(service: string, method: string, code: GrpcStatus): void {
    this.grpcStreamsClosed.inc({ service, method, code: codeName(code) });
  }
}

/** OK, UNAUTHENTICATED, ...: one of the 17 codes, whatever number an error carried. */
const codeName = (code: number) => GrpcStatus[code] ?? 'UNKNOWN';
