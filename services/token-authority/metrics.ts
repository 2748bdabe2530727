import { collectDefaultMetrics, Gauge, Registry } from 'prom-client';
import type { Authority } from '../../libs/core/authority';
import { registerUnexpectedErrors } from '../../libs/observability/unexpected-errors';

/**
 * Prometheus metrics of the token authority (prom-client), one registry per instance: the
 * process (event-loop delay percentiles, memory), the data plane feed and unexpected errors.
 */
export function authorityMetrics(authority: Authority, watch: { openStreams: number }): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'token_authority_' });
  registerUnexpectedErrors(registry);
  new Gauge({
    name: 'token_authority_watch_streams',
    help: 'Open DeltaWatch streams (data planes following this authority).',
    registers: [registry],
    collect() {
      this.set(watch.openStreams);
    },
  });
  new Gauge({
    name: 'token_authority_data_plane_position',
    help: 'Change-log position of the last data plane update published.',
    registers: [registry],
    collect() {
      this.set(Number(authority.dataPlane.version.split(':').pop()));
    },
  });
  return registry;
}
