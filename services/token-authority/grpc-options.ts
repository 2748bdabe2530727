import type { Server } from '@grpc/grpc-js';
import { Transport, type GrpcOptions } from '@nestjs/microservices';
import { HealthImplementation } from 'grpc-health-check';
import { addReflection, DescriptorIndex } from '../../libs/grpc/reflection';
import path from 'node:path';
import type { AuthorityConfig } from '../../libs/core/config';

import {
  LOADER_OPTIONS,
  PROTO_ROOT,
  TOKEN_AUTHORITY_PACKAGE,
  TOKEN_AUTHORITY_PROTO,
  TOKEN_AUTHORITY_SERVICE,
} from '../../libs/grpc/protos';

export {
  AUTHORITY_WATCH_PROTO,
  LOADER_OPTIONS,
  PROTO_ROOT,
  TOKEN_AUTHORITY_PACKAGE,
  TOKEN_AUTHORITY_PROTO,
  TOKEN_AUTHORITY_SERVICE,
} from '../../libs/grpc/protos';
/** Descriptor sets built by `npm run build` (buf) from proto/ and the health proto. */
export const DESCRIPTOR_SETS = ['token_authority.binpb', 'health.binpb'].map((file) => path.resolve(__dirname, '../../proto', file));

/** Largest request message: far below grpc-js's 4 MiB, like the REST body limit. */
export const MAX_MESSAGE_BYTES = 64 * 1024;

/**
 * The gRPC transport of the token authority, shared by main and the tests (as in Nest's
 * sample/04-grpc). Health and reflection are added when the package definition is loaded.
 */
export function tokenAuthorityGrpcOptions(
  config: AuthorityConfig,
  health: HealthImplementation,
  addServices: (server: Server) => void = () => {},
): GrpcOptions {
  return {
    transport: Transport.GRPC,
    options: {
      package: TOKEN_AUTHORITY_PACKAGE,
      // AuthorityWatch is served on grpc-js directly (authority-watch.service.ts), not through Nest.
      protoPath: [path.join(PROTO_ROOT, TOKEN_AUTHORITY_PROTO)],
      url: `${config.grpc.host.includes(':') ? `[${config.grpc.host}]` : config.grpc.host}:${config.grpc.port}`,
      loader: LOADER_OPTIONS,
      maxReceiveMessageLength: MAX_MESSAGE_BYTES,
      // A DeltaWatch message holds at most UPDATE_CHUNK API keys (metadata of up to 4,000 characters a value).
      maxSendMessageLength: 64 * 1024 * 1024,
      gracefulShutdown: true,
      channelOptions: {
        // Ping idle clients so dead peers are noticed; accept client pings no more than every 10 s.
        'grpc.keepalive_time_ms': 60_000,
        'grpc.keepalive_timeout_ms': 20_000,
        'grpc.keepalive_permit_without_calls': 1,
        'grpc.http2.min_ping_interval_without_data_ms': 10_000,
        // Reconnect clients now and then so load spreads over new replicas.
        'grpc.max_connection_age_ms': 30 * 60_000,
        'grpc.max_connection_age_grace_ms': 30_000,
        'grpc.max_concurrent_streams': 1000,
      },
      onLoadPackageDefinition: (_packageDefinition, server) => {
        // addServices first: it may instrument the server for whatever is added after it.
        addServices(server as unknown as Server);
        health.addToServer(server as unknown as Server);
        addReflection(server as unknown as Server, new DescriptorIndex(DESCRIPTOR_SETS));
      },
    },
  };
}

export function createHealth(): HealthImplementation {
  return new HealthImplementation({ '': 'NOT_SERVING', [TOKEN_AUTHORITY_SERVICE]: 'NOT_SERVING' });
}
