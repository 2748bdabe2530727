import { credentials, loadPackageDefinition, Metadata, status as GrpcStatus, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { Logger } from 'pino';
import type { AuthorityReplica } from '../../libs/authz/replica';
import type { ExtAuthzConfig } from '../../libs/authz/config';
import { decodeWatchResponse, type WatchResponseMessage } from '../../libs/grpc/watch-codec';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from '../token-authority/grpc-options';

/**
 * Keeps the replica current from the authority's Watch stream. When the stream breaks, the
 * replica keeps its last state (ext-authz goes on deciding, and says it is degraded) while this
 * reconnects with exponential backoff and jitter.
 */
export class AuthorityWatchClient {
  private readonly client: any;
  private call: ClientReadableStream<WatchResponseMessage> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private attempt = 0;
  private stopped = false;
  /** Reconnections since start, for metrics. */
  reconnects = 0;

  constructor(
    private readonly config: ExtAuthzConfig,
    private readonly replica: AuthorityReplica,
    private readonly logger: Logger,
    private readonly nodeId: string,
  ) {
    const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
    this.client = new definition.token_authority.v1.AuthorityWatch(config.authority.url, credentials.createInsecure(), {
      // Notice a silently dead authority (no FIN, no RST) within about 30 s.
      'grpc.keepalive_time_ms': 20_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.keepalive_permit_without_calls': 1,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    });
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  private connect(): void {
    const metadata = new Metadata();
    if (this.config.authority.token) metadata.set('authorization', `Bearer ${this.config.authority.token}`);
    const call: ClientReadableStream<WatchResponseMessage> = this.client.Watch({ node_id: this.nodeId }, metadata);
    this.call = call;
    call.on('data', (message: WatchResponseMessage) => {
      if (this.attempt > 0 || this.replica.status !== 'synced') this.logger.info({ version: message.version }, 'authority state received');
      this.attempt = 0;
      this.replica.setConnected(true);
      try {
        this.replica.apply(decodeWatchResponse(message));
      } catch (error) {
        this.logger.error({ err: error }, 'authority state could not be applied; keeping the previous one');
      }
    });
    call.on('error', (error: ServiceError) => this.retry(error.code === GrpcStatus.UNAUTHENTICATED ? `refused: ${error.details}` : error.details));
    call.on('end', () => this.retry('stream ended'));
  }

  private retry(why: string): void {
    this.call?.removeAllListeners();
    this.call = undefined;
    this.replica.setConnected(false);
    if (this.stopped || this.retryTimer) return;
    const { initialBackoff, maxBackoff } = this.config.authority;
    // A stream that was delivering ends now and then by design (the server's max connection
    // age, a rolling restart): reconnect at once and quietly. Backoff starts when that fails.
    const delay = this.attempt === 0 ? 0 : Math.min(maxBackoff, initialBackoff * 2 ** (this.attempt - 1)) * (0.5 + Math.random() / 2);
    this.attempt += 1;
    this.reconnects += 1;
    const log = this.attempt > 1 && this.replica.ready ? this.logger.warn.bind(this.logger) : this.logger.info.bind(this.logger);
    log({ why, retryInMs: Math.round(delay), status: this.replica.status }, 'authority watch disconnected; deciding from the last state');
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (!this.stopped) this.connect();
    }, delay);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.call?.removeAllListeners();
    this.call?.on('error', () => {});
    this.call?.cancel();
    this.client.close();
  }
}
