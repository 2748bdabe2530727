import 'reflect-metadata';
import { Module, type DynamicModule, type INestApplication } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter, type NestFastifyApplication } from '@nestjs/platform-fastify';
import { createAuthority, type Authority } from '../../libs/core/authority';
import type { AuthorityConfig } from '../../libs/core/config';
import { AdminController, AdminTokenGuard } from './admin.controller';
import { AUTHORITY } from './authority.provider';
import { HttpErrorFilter } from './http-errors';
import { OAuthEndpointGuard } from './oauth-endpoint.guard';
import { OAuthController } from './oauth.controller';
import { createLogger, NestPinoLogger } from '../../libs/logging';

@Module({})
class TokenAuthorityModule {
  static forAuthority(authority: Authority): DynamicModule {
    return {
      module: TokenAuthorityModule,
      controllers: [OAuthController, AdminController],
      providers: [
        { provide: AUTHORITY, useValue: authority },
        { provide: APP_FILTER, useClass: HttpErrorFilter },
        OAuthEndpointGuard,
        AdminTokenGuard,
      ],
    };
  }
}

export interface TokenAuthorityApp {
  app: NestFastifyApplication;
  authority: Authority;
  /** Base URL of the REST face once listening. */
  url: string;
  close(): Promise<void>;
}

/** Builds and starts the token authority (REST) on the configured host and port. */
export async function startTokenAuthority(config: AuthorityConfig): Promise<TokenAuthorityApp> {
  const logger = createLogger('token-authority', config.log.level);
  const authority = await createAuthority(config, {
    info: (message) => logger.info(message),
    warn: (message) => logger.warn(message),
  });
  const adapter = new FastifyAdapter({
    loggerInstance: config.log.requests ? logger : undefined,
    bodyLimit: config.http.bodyLimit,
    trustProxy: config.trustProxy,
    // Slow or stuck clients must not hold sockets forever.
    connectionTimeout: 30_000,
    requestTimeout: 30_000,
  });
  const app = await NestFactory.create<NestFastifyApplication>(TokenAuthorityModule.forAuthority(authority), adapter, {
    logger: new NestPinoLogger(logger),
  });
  // Only form and JSON bodies are OAuth2 requests; anything else is refused as an unsupported type.
  app.getHttpAdapter().getInstance().removeContentTypeParser('text/plain');
  app.enableShutdownHooks();
  await app.listen(config.http.port, config.http.host);
  const address = app.getHttpServer().address();
  const port = typeof address === 'object' && address ? address.port : config.http.port;
  const host = config.http.host === '0.0.0.0' || config.http.host === '::' ? '127.0.0.1' : config.http.host;
  logger.info({ port, issuer: config.issuer }, 'token authority listening (REST)');
  return {
    app,
    authority,
    url: `http://${host}:${port}`,
    async close() {
      await app.close();
      await authority.close();
    },
  };
}

export type { INestApplication };
