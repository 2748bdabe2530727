import type { Metadata } from '@grpc/grpc-js';
import { Controller, Inject, Logger } from '@nestjs/common';
import { GrpcMethod } from '@nestjs/microservices';
import { Observable, type Subscriber } from 'rxjs';
import type { Authority } from '../../libs/core/authority';
import { OAuthError } from '../../libs/core/errors';
import { encodeWatchResponse, type WatchResponseMessage } from '../../libs/grpc/watch-codec';
import { AUTHORITY } from './authority.provider';

/** The open Watch streams, so shutdown can end them before waiting for calls to finish. */
export class WatchStreams {
  private readonly open = new Set<Subscriber<unknown>>();
  add(subscriber: Subscriber<unknown>): () => void {
    this.open.add(subscriber);
    return () => this.open.delete(subscriber);
  }
  endAll(): void {
    for (const subscriber of this.open) subscriber.complete();
    this.open.clear();
  }
}

/** token_authority.v1.AuthorityWatch: the data plane state, then every change. */
@Controller()
export class WatchGrpcController {
  private readonly logger = new Logger('AuthorityWatch');

  constructor(
    @Inject(AUTHORITY) private readonly authority: Authority,
    private readonly streams: WatchStreams,
  ) {}

  @GrpcMethod('AuthorityWatch', 'Watch')
  watch(request: { node_id?: string }, metadata: Metadata): Observable<WatchResponseMessage> {
    const [authorization] = metadata.get('authorization');
    if (!this.authority.isDataPlane(typeof authorization === 'string' ? authorization : undefined)) {
      throw new OAuthError('invalid_token', 'Watch needs the data plane or admin bearer token', 401);
    }
    const node = request.node_id || 'unnamed';
    return new Observable<WatchResponseMessage>((subscriber) => {
      this.logger.log(`data plane '${node}' connected`);
      const forget = this.streams.add(subscriber);
      const unsubscribe = this.authority.dataPlane.subscribe((state) => subscriber.next(encodeWatchResponse(state)));
      this.authority.dataPlane.current().then(
        (state) => subscriber.next(encodeWatchResponse(state)),
        (error: Error) => subscriber.error(error),
      );
      return () => {
        unsubscribe();
        forget();
        this.logger.log(`data plane '${node}' disconnected`);
      };
    });
  }
}
