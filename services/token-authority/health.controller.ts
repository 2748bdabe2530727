import { Controller, Get, Header, Inject } from '@nestjs/common';
import type { Authority } from '../../libs/core/authority';
import { AUTHORITY } from './authority.provider';

/** HTTP health for load balancers and compose: the store answers and a key signs. */
@Controller()
export class HealthController {
  constructor(@Inject(AUTHORITY) private readonly authority: Authority) {}

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
