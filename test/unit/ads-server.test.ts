import { status } from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { describe, it } from 'node:test';
import { validateRoute, type RouteInput, type RouteSpec } from '../../libs/core/routes';
import { AdsServer, reasonOf } from '../../libs/xds/ads-server';
import { CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION } from '../../libs/xds/envoy-types';
import { XdsResourceBuilder } from '../../libs/xds/resources';

/*
 * The ADS protocol state of libs/xds/ads-server.ts, on streams driven by hand (no network):
 * what each request makes the server send, ACK/NACK handling, resuming with the versions held.
 */

function route(id: string, port: number, extra: Partial<RouteInput> = {}): RouteSpec {
  const validated = validateRoute({
    id,
    frontend: { domains: [`${id}.oto.tools`] },
    backend: { targets: [{ hostname: '127.0.0.1', port }] },
    ...extra,
  });
  if (!validated.ok) throw new Error(JSON.stringify(validated.issues));
  return validated.route;
}

type Response = Record<string, any>;

/** A grpc-js duplex call as the server sees it: requests in by 'data', responses out by write. */
class FakeCall extends EventEmitter {
  readonly written: Response[] = [];
  ended = false;
  error: { code: number } | undefined;
  constructor(readonly metadata = { get: (_key: string) => ['Bearer data-plane'] as unknown[] }) {
    super();
    this.on('error', (error) => {
      this.error = error;
    });
  }
  write(message: Response) {
    this.written.push(message);
    return true;
  }
  end() {
    this.ended = true;
  }
  /** The responses written since the last call. */
  take(): Response[] {
    return this.written.splice(0);
  }
}

function setup(routes: RouteSpec[]) {
  const ads = new AdsServer(
    new XdsResourceBuilder({ listener: { address: '127.0.0.1', port: 8080 }, extAuthz: { cluster: 'ext_authz' } }),
    routes,
    { authorize: (metadata) => metadata.get('authorization')[0] === 'Bearer data-plane' },
  );
  const handlers: Record<string, (call: FakeCall) => void> = {};
  ads.addTo({
    addService: (_definition: unknown, implementation: Record<string, (call: FakeCall) => void>) => Object.assign(handlers, implementation),
  } as never);
  const open = (method: 'DeltaAggregatedResources' | 'StreamAggregatedResources', call = new FakeCall()) => {
    handlers[method](call);
    return call;
  };
  return { ads, open };
}

const names = (response: Response) => (response.resources ?? []).map((each: Response) => each.name).sort();
const versionsOf = (responses: Response[]) =>
  Object.fromEntries(responses.flatMap((response) => (response.resources ?? []).map((each: Response) => [each.name, each.version])));

/** Envoy's first requests on a delta stream, each ACKed; what it then holds, by type. */
function subscribeDelta(call: FakeCall, held: Record<string, Record<string, string>> = {}) {
  const got: Record<string, Response[]> = {};
  const request = (type_url: string, subscribe: string[]) => {
    call.emit('data', {
      node: { id: 'envoy-1' },
      type_url,
      resource_names_subscribe: subscribe,
      initial_resource_versions: held[type_url] ?? {},
    });
    const responses = call.take();
    got[type_url] = responses;
    for (const response of responses) call.emit('data', { type_url, response_nonce: response.nonce });
  };
  request(CLUSTER, []);
  request(CLUSTER_LOAD_ASSIGNMENT, ['route_a', 'route_b']);
  request(LISTENER, []);
  request(ROUTE_CONFIGURATION, ['ingress_http']);
  return got;
}

describe('ADS, delta', () => {
  it('sends each subscribed type once, then only what a change moved, in make-before-break order', async () => {
    const { ads, open } = setup([route('a', 1), route('b', 2)]);
    const call = open('DeltaAggregatedResources');
    const got = subscribeDelta(call);
    assert.deepEqual(names(got[CLUSTER][0]), ['route_a', 'route_b']);
    assert.deepEqual(names(got[CLUSTER_LOAD_ASSIGNMENT][0]), ['route_a', 'route_b']);
    assert.deepEqual(names(got[LISTENER][0]), ['ingress_http']);
    assert.deepEqual(names(got[ROUTE_CONFIGURATION][0]), ['ingress_http']);
    // A's targets move: its endpoints only (an EDS cluster, the same route entries).
    ads.apply([route('a', 3), route('b', 2)]);
    let sent = call.take();
    assert.deepEqual(
      sent.map((response) => [response.type_url, names(response), response.removed_resources]),
      [[CLUSTER_LOAD_ASSIGNMENT, ['route_a'], []]],
    );
    // B goes, C comes: its cluster and endpoints first, the routes, and B's cluster removed last.
    ads.apply([route('a', 3), route('c', 4)]);
    sent = call.take();
    assert.deepEqual(
      sent.map((response) => [response.type_url, names(response), response.removed_resources]),
      [
        [CLUSTER, ['route_c'], []],
        [CLUSTER_LOAD_ASSIGNMENT, [], ['route_b']],
        [ROUTE_CONFIGURATION, ['ingress_http'], []],
        [CLUSTER, [], ['route_b']],
      ],
    );
    // Nothing changed: nothing sent.
    ads.apply([route('a', 3), route('c', 4)]);
    assert.deepEqual(call.take(), []);
  });

  it('a change of one route among 1,000 looks at its resources only: delta gets that cluster, state of the world that type', () => {
    const routes = Array.from({ length: 1000 }, (_, index) => route(`r${index}`, 1000 + index));
    const { ads, open } = setup(routes);
    const delta = open('DeltaAggregatedResources');
    subscribeDelta(delta);
    const sotw = open('StreamAggregatedResources');
    for (const type_url of [CLUSTER, ROUTE_CONFIGURATION]) {
      const resource_names = type_url === CLUSTER ? [] : ['ingress_http'];
      sotw.emit('data', { type_url, resource_names });
      const [response] = sotw.take();
      sotw.emit('data', { type_url, resource_names, response_nonce: response.nonce, version_info: response.version_info });
    }
    assert.deepEqual(sotw.take(), []);
    const changed = [...routes];
    changed[500] = { ...routes[500], backend: { ...routes[500].backend, connectTimeoutMs: 900 } };
    ads.apply(changed);
    assert.deepEqual(
      delta.take().map((response) => [response.type_url, names(response), response.removed_resources]),
      [[CLUSTER, ['route_r500'], []]],
    );
    assert.deepEqual(
      sotw.take().map((response) => [response.type_url, response.resources.length]),
      [[CLUSTER, 1000]],
    );
  });

  it('changes queued in one turn are one push: a whole set, then deltas on top of it', async () => {
    const { ads, open } = setup([route('a', 1), route('b', 2)]);
    const call = open('DeltaAggregatedResources');
    subscribeDelta(call);
    ads.changeRoutes([route('a', 9)], []);
    ads.setRoutes([route('a', 1), route('b', 2), route('c', 3)]);
    ads.changeRoutes([route('b', 5)], ['c']);
    ads.changeRoutes([route('d', 4, { enabled: false })], []);
    assert.deepEqual(call.take(), [], 'nothing before the next turn');
    await new Promise((done) => setImmediate(done));
    // The delta before the whole set is dropped (a stays on 1); c came and went within the turn.
    assert.deepEqual(
      call.take().map((response) => [response.type_url, names(response), response.removed_resources]),
      [[CLUSTER_LOAD_ASSIGNMENT, ['route_b'], []]],
    );
    assert.deepEqual([...(ads.current().get(CLUSTER)?.keys() ?? [])].sort(), ['route_a', 'route_b']);
  });

  it('records a NACK on the routes of the rejected response and does not send it again; an ACK of a later one clears it', () => {
    const { ads, open } = setup([route('a', 1), route('b', 2)]);
    const call = open('DeltaAggregatedResources');
    subscribeDelta(call);
    ads.apply([route('a', 1), route('b', 2, { backend: { targets: [{ hostname: '127.0.0.1', port: 2 }], requestTimeoutMs: 5 } })]);
    const [rds] = call.take();
    assert.equal(rds.type_url, ROUTE_CONFIGURATION);
    call.emit('data', {
      type_url: ROUTE_CONFIGURATION,
      response_nonce: rds.nonce,
      error_detail: { code: 3, message: 'dump: Proto constraint validation failed (RouteValidationError.Timeout: bad)' },
    });
    assert.equal(ads.nackCount, 1);
    assert.deepEqual([...ads.nacks().keys()], ['b']);
    assert.equal(ads.nacks().get('b')?.reason, 'RouteValidationError.Timeout: bad');
    assert.equal(ads.nacks().get('b')?.node, 'envoy-1');
    // Another route changes: its resources go, the rejected RouteConfiguration is replaced by the new one (not resent as it was).
    ads.apply([route('a', 5), route('b', 2, { backend: { targets: [{ hostname: '127.0.0.1', port: 2 }], requestTimeoutMs: 5 } })]);
    assert.deepEqual(
      call.take().map((response) => response.type_url),
      [CLUSTER_LOAD_ASSIGNMENT],
    );
    // B fixed: a new RouteConfiguration, accepted.
    ads.apply([route('a', 5), route('b', 2)]);
    const [fixed] = call.take();
    call.emit('data', { type_url: ROUTE_CONFIGURATION, response_nonce: fixed.nonce });
    assert.equal(ads.nacks().size, 0);
  });

  it("keeps an Envoy's node id bounded and escaped: a megabyte id with a new line is not what a NACK records", () => {
    const { ads, open } = setup([route('a', 1)]);
    const call = open('DeltaAggregatedResources');
    subscribeDelta(call);
    call.emit('data', { node: { id: `forged\nline${'x'.repeat(1_000_000)}` }, type_url: CLUSTER });
    ads.apply([route('a', 1, { backend: { targets: [{ hostname: '127.0.0.1', port: 1 }], requestTimeoutMs: 5 } })]);
    const [rds] = call.take();
    call.emit('data', { type_url: ROUTE_CONFIGURATION, response_nonce: rds.nonce, error_detail: { code: 3, message: 'bad' } });
    const node = ads.nacks().get('a')?.node ?? '';
    assert.ok(node.startsWith('forged\\u000aline'), node.slice(0, 40));
    assert.ok(node.length < 200, `${node.length} characters`);
  });

  it('a reconnecting Envoy that states the versions it holds gets nothing it already has', () => {
    const { ads, open } = setup([route('a', 1), route('b', 2)]);
    const first = subscribeDelta(open('DeltaAggregatedResources'));
    const held = Object.fromEntries(Object.entries(first).map(([type, responses]) => [type, versionsOf(responses)]));
    ads.endAll();
    const again = subscribeDelta(open('DeltaAggregatedResources'), held);
    for (const [type, responses] of Object.entries(again)) {
      assert.equal(responses.length, 1, `${type}: one (empty) answer to the first request`);
      assert.deepEqual(responses[0].resources, [], type);
    }
    // Held something that is gone: told it is removed.
    const stale = { ...held, [CLUSTER]: { ...held[CLUSTER], route_gone: 'x' } };
    const third = subscribeDelta(open('DeltaAggregatedResources'), stale);
    assert.deepEqual(third[CLUSTER][0].removed_resources, ['route_gone']);
  });

  it('refuses a stream without the data plane token (UNAUTHENTICATED), and ends on a request it cannot read', () => {
    const { ads, open } = setup([route('a', 1)]);
    const refused = open('DeltaAggregatedResources', new FakeCall({ get: () => [] }));
    assert.equal(refused.error?.code, status.UNAUTHENTICATED);
    assert.equal(ads.connectedStreams, 0);
    const call = open('DeltaAggregatedResources');
    assert.equal(ads.connectedStreams, 1);
    call.emit('data', { type_url: CLUSTER, resource_names_subscribe: 42 });
    assert.equal(call.error?.code, status.INVALID_ARGUMENT);
    assert.equal(ads.connectedStreams, 0);
    // An unknown type is ignored.
    const other = open('DeltaAggregatedResources');
    other.emit('data', { type_url: 'type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig' });
    assert.deepEqual(other.take(), []);
  });
});

describe('ADS, state of the world', () => {
  it('sends a type whole when its version moves; ignores replies to older nonces; does not resend after a NACK', () => {
    const { ads, open } = setup([route('a', 1), route('b', 2)]);
    const call = open('StreamAggregatedResources');
    call.emit('data', { node: { id: 'envoy-2' }, type_url: CLUSTER, resource_names: [] });
    const [cds] = call.take();
    assert.equal(cds.resources.length, 2);
    call.emit('data', { type_url: CLUSTER, response_nonce: cds.nonce, version_info: cds.version_info });
    assert.deepEqual(call.take(), [], 'an ACK asks for nothing');
    ads.apply([route('a', 1), route('b', 2), route('c', 3)]);
    const [next] = call.take();
    assert.equal(next.resources.length, 3, 'the whole set');
    // A late reply to the first nonce: ignored.
    call.emit('data', { type_url: CLUSTER, response_nonce: cds.nonce, error_detail: { message: 'late' } });
    assert.equal(ads.nackCount, 0);
    call.emit('data', { type_url: CLUSTER, response_nonce: next.nonce, error_detail: { message: 'no' } });
    assert.equal(ads.nackCount, 1);
    assert.deepEqual(call.take(), [], 'the rejected set is not sent again');
    assert.deepEqual([...ads.nacks().keys()].sort(), ['a', 'b', 'c']);
  });
});

describe("Envoy's NACK message", () => {
  it('gives the validation error, a word on a message Envoy cut, or the last line', () => {
    assert.equal(
      reasonOf('x {\n}\n: Proto constraint validation failed (VirtualHostValidationError.Domains[0]: bad)'),
      'VirtualHostValidationError.Domains[0]: bad',
    );
    assert.match(reasonOf('name: "x"\n  routes {...(truncated)'), /cut its error at 4 KiB/);
    assert.equal(reasonOf('first\nunknown cluster route_x\n'), 'unknown cluster route_x');
  });
});
