import {
  credentials,
  loadPackageDefinition,
  Metadata,
  status as GrpcStatus,
  type ClientReadableStream,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { Logger } from 'pino';
import type { AuthorityReplica } from '../../libs/authz/replica';
import type { ExtAuthzConfig } from '../../libs/authz/config';
import type { DataPlaneUpdate } from '../../libs/core/data-plane';
import { deserializeUpdate } from '../../libs/grpc/watch-codec';
import { AUTHORITY_WATCH_PROTO, LOADER_OPTIONS } from '../../libs/grpc/protos';
import { AUTHORITY_CHANNEL_OPTIONS, currentAuthorityToken, reconnectDelay } from './authority-connection';

/**
 * Keeps the replica current from the authority's DeltaWatch stream. When the stream breaks, the
 * replica keeps its last state (ext-authz goes on deciding, and says it is degraded) while this
 * reconnects with exponential backoff and jitter, then resumes from its version (the authority
 * sends what was missed, or a snapshot when it no longer can).
 */
export class AuthorityWatchClient {
  // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
  private readonly client: any;
  private call: ClientReadableStream<DataPlaneUpdate> | undefined;
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
    // biome-ignore lint/suspicious/noExplicitAny: a package loaded from .proto at run time has no static type
    const definition = loadPackageDefinition(loadSync(AUTHORITY_WATCH_PROTO, LOADER_OPTIONS)) as any;
    this.client = new definition.token_authority.v1.AuthorityWatch(config.authority.url, credentials.createInsecure(), {
      ...AUTHORITY_CHANNEL_OPTIONS,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
      // A snapshot is ~100 messages of ~200 KB: with HTTP/2's default 64 KB window the authority
      // waits for a WINDOW_UPDATE several times per message (100,000 keys: 4 s instead of 2 s).
      'grpc-node.flow_control_window': 8 * 1024 * 1024,
    });
  }

  start(): void {
    this.stopped = false;
    this.connect();
  }

  private connect(resume = true): void {
    const metadata = new Metadata();
    const token = currentAuthorityToken(this.config.authority, this.logger);
    if (token) metadata.set('authorization', `Bearer ${token}`);
    const resumeFrom = resume && this.replica.ready ? this.replica.version : '';
    // Decoded by protobufjs directly into updates (watch-codec.ts), not through proto-loader.
    const method = this.client.DeltaWatch as { path: string; requestSerialize: (value: object) => Buffer };
    const call: ClientReadableStream<DataPlaneUpdate> = this.client.makeServerStreamRequest(
      method.path,
      method.requestSerialize,
      deserializeUpdate,
      { node_id: this.nodeId, resume_from_version: resumeFrom },
      metadata,
    );
    this.call = call;
    call.on('data', (message: DataPlaneUpdate) => {
      this.attempt = 0;
      this.replica.setConnected(true);
      let outcome: ReturnType<AuthorityReplica['apply']>;
      try {
        outcome = this.replica.apply(message);
      } catch (error) {
        this.logger.error({ err: error }, 'authority update could not be applied; reading a snapshot');
        outcome = 'out_of_sync';
      }
      if (outcome === 'out_of_sync') {
        this.logger.warn(
          { version: this.replica.version, base: message.baseVersion },
          'authority update does not follow on; reading a snapshot',
        );
        this.replace(() => this.connect(false));
      } else if (outcome === 'applied' && message.reset) {
        this.logger.info({ version: message.version, ...this.replica.counts }, 'authority snapshot applied');
      }
    });
    call.on('error', (error: ServiceError) =>
      this.retry(error.code === GrpcStatus.UNAUTHENTICATED ? `refused: ${error.details}` : error.details),
    );
    call.on('end', () => this.retry('stream ended'));
  }

  /** Ends the current stream quietly and opens another. */
  private replace(open: () => void): void {
    this.dropCall();
    if (!this.stopped) open();
  }

  private dropCall(): void {
    const call = this.call;
    this.call = undefined;
    if (!call) return;
    call.removeAllListeners();
    call.on('error', () => {});
    call.cancel();
    this.replica.abandonPartial();
  }

  private retry(why: string): void {
    this.call?.removeAllListeners();
    this.call = undefined;
    this.replica.abandonPartial();
    this.replica.setConnected(false);
    if (this.stopped || this.retryTimer) return;
    // A stream that was delivering ends now and then by design (the server's max connection
    // age, a rolling restart): reconnect at once and quietly. Backoff starts when that fails.
    const delay = this.attempt === 0 ? 0 : reconnectDelay(this.config.authority, this.attempt - 1);
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
    this.dropCall();
    this.client.close();
  }
}
