import { Controller, Get, Header, Inject, Res } from '@nestjs/common';
import type { FastifyReply } from 'fastify';
import type { Registry } from 'prom-client';
import type { Authority } from '../../libs/core/authority';
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

  @Get('health')
  @Header('cache-control', 'no-store')
  async health() {
    const keyPairs = await this.authority.store.keyPairs.list();
    return {
      status: 'ok',
      defaultKeyPair: this.authority.keyRing.signingKey(this.authority.config.defaultKeyPair) ? 'active' : 'missing',
      keyPairs: keyPairs.length,
    };
  }
}
