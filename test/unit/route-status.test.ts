import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { XdsNack } from '../../libs/xds/ads-server';
import { routeXdsStatus } from '../../libs/xds/route-status';

const nack: XdsNack = {
  typeUrl: 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  routeIds: ['bad'],
  message: 'Proto constraint validation failed (invalid header)',
  reason: 'invalid header',
  node: 'envoy-1',
  at: '2026-12-07T12:00:00.000Z',
};

describe('routeXdsStatus: what the routes API shows of Envoy', () => {
  it('rejected with Envoy’s reason, type, node and time for a route with a NACK outstanding', () => {
    assert.deepEqual(routeXdsStatus({ connectedStreams: 2, nacks: () => new Map([['bad', nack]]) }, 'bad'), {
      state: 'rejected',
      envoys: 2,
      error: 'invalid header',
      message: nack.message,
      type: 'RouteConfiguration',
      node: 'envoy-1',
      at: nack.at,
    });
  });

  it('accepted when an Envoy is connected and none refused the route, pending when none is connected', () => {
    const nacks = () => new Map([['bad', nack]]);
    assert.deepEqual(routeXdsStatus({ connectedStreams: 1, nacks }, 'foo'), { state: 'accepted', envoys: 1 });
    assert.deepEqual(routeXdsStatus({ connectedStreams: 0, nacks }, 'foo'), { state: 'pending', envoys: 0 });
  });
});
