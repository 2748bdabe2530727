import {
  loadPackageDefinition,
  status as GrpcStatus,
  type Server,
  type ServerDuplexStream,
  type ServerWritableStream,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { Logger } from 'pino';
import type { Authority } from '../../libs/core/authority';
import { clientText } from '../../libs/core/client-text';
import type { DataPlaneUpdate } from '../../libs/core/data-plane';
import { richError } from '../../libs/grpc/rich-status';
import type { ReplicaHandle } from '../../libs/quotas/replica-counters';
import { serializeUpdate } from '../../libs/grpc/watch-codec';
import { ERROR_DOMAIN, toGrpcError } from './grpc-errors';
import { peerAddress } from './grpc.controller';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from './grpc-options';

/**
 * Entries (API keys, revocations, key pairs) a stream may hold while its client does not read,
 * queued here or written to grpc-js but not yet sent: past this the client is too slow to
 * follow and is ended with RESOURCE_EXHAUSTED; it reconnects and resumes from its version.
 *
 * "Sent" is grpc-js's write callback, which Node's http2 calls once it has sent the bytes on the
 * socket, and it sends only within the client's HTTP/2 flow-control window: a client that stops
 * reading closes its window and the callbacks stop, however the deltas are spread over time, so
 * this count is what the authority holds for it. What the client's side took before its window
 * closed (its window, socket buffers) is not held here and not counted.
 */
export const MAX_BUFFERED_ENTRIES = 20_000;

const entriesOf = (update: DataPlaneUpdate) =>
  1 +
  update.apiKeys.length +
  update.removedApiKeys.length +
  update.revokedTokens.length +
  update.keyPairs.length +
  update.removedKeyPairs.length;

type WatchCall = ServerWritableStream<{ node_id?: string; resume_from_version?: string }, Buffer>;

/** AuthorityWatch.QuotaCounters as proto-loader decodes it (LOADER_OPTIONS: oneofs, longs as numbers). */
interface QuotaCountersRequest {
  message?: 'hello' | 'counts';
  hello?: { node_id?: string };
  counts?: { request_id?: number; client_id?: string; calls_per_second?: number; calls_today?: number; calls_this_month?: number };
}
type QuotaCountersCall = ServerDuplexStream<QuotaCountersRequest, object>;

/** A data plane must say hello this soon after opening QuotaCounters. */
const QUOTA_HELLO_TIMEOUT_MS = 10_000;
/** Bytes a QuotaCounters stream may hold unsent (a data plane that stops reading): queries past it count as unanswered. */
const QUOTA_MAX_UNSENT_BYTES = 1024 * 1024;

/** One DeltaWatch stream: the first update (snapshot or catch-up), then every delta, in order, with backpressure. */
class UpdateStream {
  private readonly queue: DataPlaneUpdate[] = [];
  /** Entries queued, or written and not yet sent to the client (see MAX_BUFFERED_ENTRIES). */
  private bufferedEntries = 0;
  private initialSent = false;
  private flushing = false;
  ended = false;

  constructor(
    private readonly call: WatchCall,
    private readonly onEnd: () => void,
  ) {
    for (const event of ['cancelled', 'close', 'error', 'finish'] as const) call.once(event, () => this.finish());
  }

  async sendInitial(parts: AsyncGenerator<DataPlaneUpdate>): Promise<void> {
    for await (const part of parts) {
      if (this.ended) return;
      this.bufferedEntries += entriesOf(part);
      await this.write(part);
    }
    this.initialSent = true;
    await this.flush();
  }

  enqueue(update: DataPlaneUpdate): void {
    if (this.ended) return;
    this.queue.push(update);
    this.bufferedEntries += entriesOf(update);
    if (this.bufferedEntries > MAX_BUFFERED_ENTRIES) {
      this.fail(GrpcStatus.RESOURCE_EXHAUSTED, 'the data plane reads updates too slowly; reconnect with resume_from_version');
      return;
    }
    if (this.initialSent) void this.flush();
  }

  fail(code: GrpcStatus, message: string): void {
    if (this.ended) return;
    this.finish();
    this.call.emit('error', richError(code, message, code === GrpcStatus.RESOURCE_EXHAUSTED ? 'slow_consumer' : 'resync', ERROR_DOMAIN));
  }

  end(): void {
    if (this.ended) return;
    this.finish();
    this.call.end();
  }

  private async flush(): Promise<void> {
    if (this.flushing) return;
    this.flushing = true;
    try {
      while (this.queue.length && !this.ended) {
        await this.write(this.queue.shift()!);
      }
    } finally {
      this.flushing = false;
    }
  }

  /** Writes one update; resolves at once, or once grpc-js can take more. */
  private async write(update: DataPlaneUpdate): Promise<void> {
    const entries = entriesOf(update);
    const sent = () => {
      this.bufferedEntries -= entries;
    };
    if (this.call.write(serializeUpdate(update), sent)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        this.call.off('drain', done);
        this.call.off('close', done);
        resolve();
      };
      this.call.once('drain', done);
      this.call.once('close', done);
      if (this.ended) done();
    });
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.queue.length = 0;
    this.bufferedEntries = 0;
    this.onEnd();
  }
}

/**
 * token_authority.v1.AuthorityWatch on grpc-js directly (like ext-authz's Check): a stream must
 * follow its client's pace, which Nest's Observable streams cannot do.
 */
export class AuthorityWatchService {
  private readonly streams = new Set<UpdateStream>();
  private readonly quotaStreams = new Set<QuotaCountersCall>();

  constructor(
    private readonly authority: Authority,
    private readonly logger: Logger,
  ) {}

  get openStreams(): number {
    return this.streams.size;
  }

  addTo(server: Server): void {
    // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
    const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
    const loaded = definition.token_authority.v1.AuthorityWatch.service as ServiceDefinition;
    // Updates are written already encoded (serializeUpdate): grpc-js passes the bytes through.
    const service = { ...loaded, DeltaWatch: { ...loaded.DeltaWatch, responseSerialize: (bytes: Buffer) => bytes } };
    server.addService(service, {
      Watch: (call: WatchCall) => {
        call.emit('error', richError(GrpcStatus.UNIMPLEMENTED, 'Watch is replaced by DeltaWatch', 'deprecated', ERROR_DOMAIN));
      },
      DeltaWatch: (call: WatchCall) => this.deltaWatch(call),
      QuotaCounters: (call: QuotaCountersCall) => this.quotaCounters(call),
    });
  }

  /**
   * One data plane's quota counters (see libs/quotas/replica-counters.ts): it says hello, the
   * authority acknowledges, then sends it the admin API's queries and takes its answers.
   */
  private quotaCounters(call: QuotaCountersCall): void {
    // The client's messages wait in the stream until a 'data' listener is attached.
    void this.admitted(call, 'QuotaCounters').then((admitted) => {
      if (admitted) this.serveQuotaCounters(call);
    });
  }

  /**
   * Whether the caller presented the data plane or admin token, behind the wrong-token budget
   * (Authority.authorizeDataPlane); when not, the call has been failed (UNAUTHENTICATED, or
   * RESOURCE_EXHAUSTED with retry-after past the budget). False too for a call cancelled meanwhile.
   */
  private async admitted(call: WatchCall | QuotaCountersCall, method: string): Promise<boolean> {
    const [authorization] = call.metadata.get('authorization');
    try {
      const allowed = await this.authority.authorizeDataPlane(
        typeof authorization === 'string' ? authorization : undefined,
        peerAddress(call) ?? 'unknown',
      );
      if (call.cancelled) return false;
      if (allowed) return true;
      call.emit(
        'error',
        richError(GrpcStatus.UNAUTHENTICATED, `${method} needs the data plane or admin bearer token`, 'invalid_token', ERROR_DOMAIN, {
          'oauth-error': 'invalid_token',
        }),
      );
    } catch (error) {
      if (!call.cancelled) call.emit('error', toGrpcError(error));
    }
    return false;
  }

  private serveQuotaCounters(call: QuotaCountersCall): void {
    const fail = (code: GrpcStatus, message: string, reason: string) => call.emit('error', richError(code, message, reason, ERROR_DOMAIN));
    const counters = this.authority.replicaQuotas;
    if (!counters) {
      fail(GrpcStatus.FAILED_PRECONDITION, 'the quota counters are shared on Redis: the authority reads them there', 'quotas_shared');
      return;
    }
    let replica: ReplicaHandle | undefined;
    let ended = false;
    const helloTimer = setTimeout(
      () => fail(GrpcStatus.INVALID_ARGUMENT, `no hello within ${QUOTA_HELLO_TIMEOUT_MS} ms`, 'hello_expected'),
      QUOTA_HELLO_TIMEOUT_MS,
    );
    const finish = () => {
      if (ended) return;
      ended = true;
      clearTimeout(helloTimer);
      this.quotaStreams.delete(call);
      if (replica) {
        replica.disconnect();
        this.logger.info({ node: replica.node }, 'data plane quota counters disconnected');
      }
    };
    for (const event of ['cancelled', 'close', 'error', 'finish'] as const) call.once(event, finish);
    this.quotaStreams.add(call);
    call.on('data', (message: QuotaCountersRequest) => {
      if (ended) return;
      if (!replica) {
        if (message.message !== 'hello') {
          fail(GrpcStatus.INVALID_ARGUMENT, 'the first message must be hello', 'hello_expected');
          return;
        }
        clearTimeout(helloTimer);
        const node = clientText(message.hello?.node_id || 'unnamed');
        replica = counters.connect(node, (query) => {
          if (ended || call.writableLength > QUOTA_MAX_UNSENT_BYTES) throw new Error('the data plane does not read its queries');
          call.write({
            query: {
              request_id: query.requestId,
              client_id: query.clientId,
              quotas: {
                throttling_quota: query.quotas.throttlingQuota,
                daily_quota: query.quotas.dailyQuota,
                monthly_quota: query.quotas.monthlyQuota,
              },
              reset: query.reset,
            },
          });
        });
        const now = Date.now();
        call.write({ hello_ack: { accepted_at: { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 } } });
        this.logger.info({ node }, 'data plane quota counters connected');
        return;
      }
      // Anything but an answer (a second hello, an empty message) is ignored.
      if (message.message !== 'counts' || !message.counts) return;
      const counts = message.counts;
      replica.answer({
        requestId: counts.request_id ?? 0,
        clientId: counts.client_id ?? '',
        callsPerSecond: counts.calls_per_second ?? 0,
        callsToday: counts.calls_today ?? 0,
        callsThisMonth: counts.calls_this_month ?? 0,
      });
    });
    // The data plane half-closed: nothing more to ask it.
    call.on('end', () => {
      finish();
      call.end();
    });
  }

  private deltaWatch(call: WatchCall): void {
    void this.admitted(call, 'DeltaWatch').then(async (admitted) => {
      if (!admitted) return;
      // A data plane coming from a replica further along resumes here once this one has read as far.
      await this.authority.dataPlane.reach(call.request.resume_from_version || undefined).catch(() => undefined);
      if (!call.cancelled) this.serveDeltaWatch(call);
    });
  }

  private serveDeltaWatch(call: WatchCall): void {
    const node = clientText(call.request.node_id || 'unnamed');
    const feed = this.authority.dataPlane;
    let unsubscribe = () => {};
    const stream = new UpdateStream(call, () => {
      unsubscribe();
      this.streams.delete(stream);
      this.logger.info({ node }, 'data plane disconnected');
    });
    this.streams.add(stream);
    // Subscribe and pick the first update in the same tick: every later delta follows on from it.
    unsubscribe = feed.subscribe((update) => {
      if (update === 'resync') stream.fail(GrpcStatus.ABORTED, 'the data plane must read a fresh snapshot; reconnect');
      else stream.enqueue(update);
    });
    const resumeFrom = call.request.resume_from_version || undefined;
    const initial = feed.updatesFrom(resumeFrom);
    this.logger.info({ node, resumeFrom, version: feed.version }, 'data plane connected');
    stream.sendInitial(initial).catch((error: Error) => {
      this.logger.error({ err: error, node }, 'data plane update failed');
      stream.fail(GrpcStatus.UNAVAILABLE, 'the authority could not read its state; reconnect');
    });
  }

  /** Ends every stream (shutdown): data planes reconnect elsewhere and resume. */
  endAll(): void {
    for (const stream of [...this.streams]) stream.end();
    for (const call of [...this.quotaStreams]) call.end();
  }
}
