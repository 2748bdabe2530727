import {
  type ClientDuplexStream,
  credentials,
  loadPackageDefinition,
  Metadata,
  status as GrpcStatus,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { Logger } from 'pino';
import type { ExtAuthzConfig } from '../../libs/authz/config';
import type { MemoryQuotaCounters, QuotaEnforcer } from '../../libs/quotas/quotas';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from '../../libs/grpc/protos';
import { AUTHORITY_CHANNEL_OPTIONS, currentAuthorityToken, reconnectDelay } from './authority-connection';

/** AuthorityWatch.QuotaCounters as proto-loader decodes the authority's messages. */
interface QuotaCountersResponse {
  message?: 'hello_ack' | 'query';
  query?: {
    request_id?: number;
    client_id?: string;
    quotas?: { throttling_quota?: number; daily_quota?: number; monthly_quota?: number };
    reset?: boolean;
  };
}

/**
 * Lets the authority read and reset the quota counters this ext-authz keeps in memory (GET and
 * DELETE /api/apikeys/:clientId/quotas without Redis): a stream to the authority
 * (AuthorityWatch.QuotaCounters) on which it answers each query from MemoryQuotaCounters.peek,
 * which creates no entry. Opened only when quotas are counted in memory. An authority that
 * answers FAILED_PRECONDITION (its counters are on Redis) or UNIMPLEMENTED (an older one) is not
 * asked again; any other break reconnects with the watch's backoff.
 */
export class QuotaCountersClient {
  // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
  private readonly client: any;
  private call: ClientDuplexStream<object, QuotaCountersResponse> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private stopped = false;
  /** True once the authority acknowledged the hello, until the stream breaks. */
  connected = false;
  /** Set when the authority said it has nothing to ask (Redis, or an older authority). */
  refusedWith: string | undefined;
  /** Streams opened since start (one, plus one per reconnection). */
  opened = 0;

  constructor(
    private readonly config: ExtAuthzConfig,
    private readonly counters: MemoryQuotaCounters,
    private readonly enforcer: QuotaEnforcer | undefined,
    private readonly logger: Logger,
    private readonly nodeId: string,
    private readonly now: () => number = Date.now,
  ) {
    // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
    const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
    this.client = new definition.token_authority.v1.AuthorityWatch(config.authority.url, credentials.createInsecure(), {
      ...AUTHORITY_CHANNEL_OPTIONS,
      'grpc.max_receive_message_length': 64 * 1024,
    });
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  private connect(): void {
    const metadata = new Metadata();
    const token = currentAuthorityToken(this.config.authority, this.logger);
    if (token) metadata.set('authorization', `Bearer ${token}`);
    const call: ClientDuplexStream<object, QuotaCountersResponse> = this.client.QuotaCounters(metadata);
    this.call = call;
    this.opened += 1;
    call.on('data', (message: QuotaCountersResponse) => {
      if (message.message === 'hello_ack') {
        this.attempt = 0;
        this.connected = true;
        this.logger.info('quota counters readable by the authority');
      } else if (message.message === 'query' && message.query) {
        this.answer(call, message.query);
      }
    });
    call.on('error', (error: ServiceError) => {
      if (error.code === GrpcStatus.FAILED_PRECONDITION || error.code === GrpcStatus.UNIMPLEMENTED) {
        // Nothing to report to this authority: do not ask again (no reconnect storm).
        this.refusedWith = GrpcStatus[error.code];
        this.logger.info({ why: error.details, code: this.refusedWith }, 'the authority does not read quota counters from ext-authz');
        this.drop();
        return;
      }
      this.retry(error.details);
    });
    call.on('end', () => this.retry('stream ended'));
    call.write({ hello: { node_id: this.nodeId } });
  }

  private answer(call: ClientDuplexStream<object, QuotaCountersResponse>, query: NonNullable<QuotaCountersResponse['query']>): void {
    const clientId = query.client_id ?? '';
    const quotas = {
      throttlingQuota: query.quotas?.throttling_quota ?? 0,
      dailyQuota: query.quotas?.daily_quota ?? 0,
      monthlyQuota: query.quotas?.monthly_quota ?? 0,
    };
    if (query.reset) {
      void this.counters.reset(clientId);
      this.enforcer?.forget(clientId);
    }
    const figures = this.counters.peek(clientId, quotas, this.now());
    call.write({
      counts: {
        request_id: query.request_id ?? 0,
        client_id: clientId,
        calls_per_second: figures.perSecond,
        calls_today: figures.daily,
        calls_this_month: figures.monthly,
      },
    });
  }

  private drop(): void {
    const call = this.call;
    this.call = undefined;
    this.connected = false;
    if (!call) return;
    call.removeAllListeners();
    call.on('error', () => {});
    call.cancel();
  }

  private retry(why: string): void {
    this.drop();
    if (this.stopped || this.retryTimer) return;
    const delay = reconnectDelay(this.config.authority, this.attempt);
    this.attempt += 1;
    this.logger.debug({ why, retryInMs: Math.round(delay) }, 'quota counters stream disconnected');
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.stopped) this.connect();
    }, delay);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.drop();
    this.client.close();
  }
}
