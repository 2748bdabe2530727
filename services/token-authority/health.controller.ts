import { Controller, Get, Inject, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import type { Registry } from 'prom-client';
import type { Authority } from '../../libs/core/authority';
import { StoreUnavailableError } from '../../libs/core/errors';
import { AUTHORITY, METRICS } from './authority.provider';

/** HTTP health for load balancers and compose (the store answers and a key signs), and Prometheus metrics. */
@Controller()
export class HealthController {
  constructor(
    @Inject(AUTHORITY) private readonly authority: Authority,
    @Inject(METRICS) private readonly metrics: Registry,
  ) {}

  @Get('metrics')
  async metricsText(@Res() reply: FastifyReply): Promise<void> {
    await reply
      .header('cache-control', 'no-store')
      .type(this.metrics.contentType)
      .send(await this.metrics.metrics());
  }

  /** 503 while the store is unreachable (a shared database down): a load balancer sends the traffic elsewhere. */
  @Get('health')
  async health(@Res() reply: FastifyReply): Promise<void> {
    reply.header('cache-control', 'no-store');
    const defaultKeyPair = this.authority.keyRing.signingKey(this.authority.config.defaultKeyPair) ? 'active' : 'missing';
    const status = this.authority.store.status?.() ?? { available: true };
    if (!status.available) {
      await reply.status(503).send({ status: 'unavailable', store: 'unreachable', defaultKeyPair });
      return;
    }
    try {
      const keyPairs = await this.authority.store.keyPairs.list();
      await reply.send({ status: 'ok', store: 'ok', defaultKeyPair, keyPairs: keyPairs.length });
    } catch (error) {
      if (!(error instanceof StoreUnavailableError)) throw error;
      await reply.status(503).send({ status: 'unavailable', store: 'unreachable', defaultKeyPair });
    }
  }
}
