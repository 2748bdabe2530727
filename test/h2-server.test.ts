import assert from 'node:assert/strict';
import { connect, constants } from 'node:http2';
import { credentials, makeGenericClientConstructor, status as GrpcStatus, type ServiceDefinition } from '@grpc/grpc-js';
import { HealthImplementation, service as healthService } from 'grpc-health-check';
import { after, before, describe, it } from 'node:test';
import { H2GrpcServer } from '../libs/grpc/h2-server';
import { H2WireGrpcServer } from '../libs/grpc/h2-wire-server';
import { describeGrpcResult, grpcFrame, grpcWire } from './support/raw-grpc';

/*
 * The node:http2 gRPC server (libs/grpc/h2-server.ts) against grpc-js clients and raw HTTP/2 on
 * 127.0.0.1: what grpc-js's server did for ext-authz's Check port and must still be done —
 * unary and server-streaming calls, grpc.health.v1 (Check and Watch) on the same port,
 * grpc-timeout, client cancellation (RST_STREAM), oversized and compressed messages, unknown
 * methods, non-gRPC requests, and GOAWAY on shutdown with calls in progress finishing.
 */

const passThrough = (bytes: Buffer) => bytes;
const ECHO: ServiceDefinition = {
  Echo: {
    path: '/test.Echo/Echo',
    requestStream: false,
    responseStream: false,
    requestSerialize: passThrough,
    requestDeserialize: passThrough,
    responseSerialize: passThrough,
    responseDeserialize: passThrough,
    originalName: 'echo',
  },
  Slow: {
    path: '/test.Echo/Slow',
    requestStream: false,
    responseStream: false,
    requestSerialize: passThrough,
    requestDeserialize: passThrough,
    responseSerialize: passThrough,
    responseDeserialize: passThrough,
  },
};

const SERVERS = [
  ['H2GrpcServer (node:http2)', H2GrpcServer],
  ['H2WireGrpcServer (HTTP/2 frames on the socket)', H2WireGrpcServer],
] as const;

for (const [label, GrpcServer] of SERVERS)
  describe(`${label} as a gRPC server`, () => {
    let server: H2GrpcServer | H2WireGrpcServer;
    let address: string;
    const health = new HealthImplementation({ '': 'SERVING', 'test.Echo': 'NOT_SERVING' });
    let slowCancelled = 0;
    const slowCalls: (() => void)[] = [];

    before(async () => {
      server = new GrpcServer({
        maxReceiveMessageLength: 1024,
        maxConcurrentStreams: 100,
        keepaliveTimeMs: 60_000,
        keepaliveTimeoutMs: 20_000,
      });
      server.addService(ECHO as never, {
        Echo(call: { request: Buffer }, callback: (error: null, value: Buffer) => void) {
          callback(null, Buffer.concat([Buffer.from('echo:'), call.request]));
        },
        Slow(
          call: { request: Buffer; on(event: 'cancelled', listener: () => void): void },
          callback: (error: null, value: Buffer) => void,
        ) {
          call.on('cancelled', () => slowCancelled++);
          slowCalls.push(() => callback(null, Buffer.from('late')));
        },
      });
      health.addToServer(server as never);
      address = `127.0.0.1:${await server.listen(0, '127.0.0.1')}`;
    });
    after(() => server.close(100));

    const call = (path: string, message: Buffer, metadata?: Record<string, string>) =>
      grpcWire({ address, path, message, metadata, timeoutMs: 5000 });

    it('answers a unary call: headers, one message, grpc-status 0 in trailers', async () => {
      const result = await call('/test.Echo/Echo', Buffer.from('hi'));
      assert.equal(result.status, GrpcStatus.OK, describeGrpcResult(result));
      assert.deepEqual(result.messages, [Buffer.from('echo:hi')]);
      assert.equal(result.headers?.['content-type'], 'application/grpc');
    });

    it('serves grpc-js clients, and grpc.health.v1 Check and Watch on the same port', async () => {
      const Echo = makeGenericClientConstructor(ECHO, 'Echo');
      const client = new Echo(address, credentials.createInsecure());
      const Health = makeGenericClientConstructor(healthService as never, 'Health');
      const healthClient = new Health(address, credentials.createInsecure());
      try {
        const echoed = await new Promise<Buffer>((resolve, reject) =>
          (client as any).Echo(Buffer.from('x'), (error: Error | null, value: Buffer) => (error ? reject(error) : resolve(value))),
        );
        assert.equal(echoed.toString(), 'echo:x');
        const checked = await new Promise<any>((resolve, reject) =>
          (healthClient as any).check({ service: '' }, (error: Error | null, value: unknown) => (error ? reject(error) : resolve(value))),
        );
        assert.equal(checked.status, 'SERVING');
        const unknown = await new Promise<any>((resolve) =>
          (healthClient as any).check({ service: 'nope' }, (error: any) => resolve(error)),
        );
        assert.equal(unknown.code, GrpcStatus.NOT_FOUND);
        // Watch: the current status, then each change, until the client cancels.
        const watch = (healthClient as any).watch({ service: 'test.Echo' });
        const seen: string[] = [];
        await new Promise<void>((resolve) => {
          watch.on('data', (message: { status: string }) => {
            seen.push(message.status);
            if (seen.length === 1) health.setStatus('test.Echo', 'SERVING');
            else resolve();
          });
        });
        watch.on('error', () => undefined);
        watch.cancel();
        assert.deepEqual(seen, ['NOT_SERVING', 'SERVING']);
      } finally {
        client.close();
        healthClient.close();
      }
    });

    it('unknown methods: UNIMPLEMENTED; not gRPC: 415; compressed: UNIMPLEMENTED; two messages: UNIMPLEMENTED', async () => {
      const unknown = await call('/test.Echo/Nope', Buffer.alloc(0));
      assert.equal(unknown.status, GrpcStatus.UNIMPLEMENTED, describeGrpcResult(unknown));
      const compressed = grpcFrame(Buffer.from('x'));
      compressed[0] = 1;
      const session = connect(`http://${address}`);
      try {
        const answer = (headers: Record<string, string>, body: Buffer) =>
          new Promise<Record<string, unknown>>((resolve, reject) => {
            const stream = session.request({ ':method': 'POST', ':path': '/test.Echo/Echo', te: 'trailers', ...headers });
            stream.on('response', (response) => resolve({ ...response }));
            stream.on('error', reject);
            stream.end(body);
            stream.resume();
          });
        assert.equal((await answer({ 'content-type': 'text/plain' }, Buffer.from('x')))[':status'], 415);
        const zipped = await answer({ 'content-type': 'application/grpc', 'grpc-encoding': 'gzip' }, compressed);
        assert.equal(zipped['grpc-status'], String(GrpcStatus.UNIMPLEMENTED));
        const two = await answer(
          { 'content-type': 'application/grpc' },
          Buffer.concat([grpcFrame(Buffer.from('a')), grpcFrame(Buffer.from('b'))]),
        );
        assert.equal(two['grpc-status'], String(GrpcStatus.UNIMPLEMENTED));
      } finally {
        session.destroy();
      }
    });

    it('a message over maxReceiveMessageLength: RESOURCE_EXHAUSTED, and the connection stays usable', async () => {
      const session = connect(`http://${address}`);
      session.on('error', () => undefined);
      try {
        const big = await grpcWire({ address, session, path: '/test.Echo/Echo', message: Buffer.alloc(1025), timeoutMs: 5000 });
        assert.equal(big.status, GrpcStatus.RESOURCE_EXHAUSTED, describeGrpcResult(big));
        const fine = await grpcWire({ address, session, path: '/test.Echo/Echo', message: Buffer.alloc(1024), timeoutMs: 5000 });
        assert.equal(fine.status, GrpcStatus.OK, describeGrpcResult(fine));
      } finally {
        session.destroy();
      }
    });

    it('grpc-timeout: DEADLINE_EXCEEDED when the handler is late; a client RST_STREAM cancels the call', async () => {
      const before = slowCancelled;
      const late = await call('/test.Echo/Slow', Buffer.alloc(0), { 'grpc-timeout': '50m' });
      assert.equal(late.status, GrpcStatus.DEADLINE_EXCEEDED, describeGrpcResult(late));
      const session = connect(`http://${address}`);
      session.on('error', () => undefined);
      const stream = session.request({ ':method': 'POST', ':path': '/test.Echo/Slow', 'content-type': 'application/grpc', te: 'trailers' });
      stream.on('error', () => undefined);
      stream.end(grpcFrame(Buffer.alloc(0)));
      await new Promise((resolve) => setTimeout(resolve, 50));
      stream.close(constants.NGHTTP2_CANCEL);
      for (let i = 0; i < 50 && slowCancelled < before + 2; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.equal(slowCancelled, before + 2, 'both the late and the reset call were cancelled');
      // Their answers, when they come at last, go nowhere and break nothing.
      for (const answer of slowCalls.splice(0)) answer();
      session.destroy();
      assert.equal((await call('/test.Echo/Echo', Buffer.from('ok'))).status, GrpcStatus.OK);
    });

    it('close(): GOAWAY, a call in progress still gets its answer, new connections are refused', async () => {
      const other = new H2GrpcServer({
        maxReceiveMessageLength: 1024,
        maxConcurrentStreams: 100,
        keepaliveTimeMs: 60_000,
        keepaliveTimeoutMs: 20_000,
      });
      let finishSlow: (() => void) | undefined;
      other.addService(ECHO as never, {
        Echo: (_call: unknown, callback: (error: null, value: Buffer) => void) => callback(null, Buffer.from('e')),
        Slow: (_call: unknown, callback: (error: null, value: Buffer) => void) => {
          finishSlow = () => callback(null, Buffer.from('finished'));
        },
      });
      const port = await other.listen(0, '127.0.0.1');
      const session = connect(`http://127.0.0.1:${port}`);
      session.on('error', () => undefined);
      let goaway = false;
      session.on('goaway', () => {
        goaway = true;
      });
      const pending = grpcWire({
        address: `127.0.0.1:${port}`,
        session,
        path: '/test.Echo/Slow',
        message: Buffer.alloc(0),
        timeoutMs: 5000,
      });
      for (let i = 0; i < 100 && !finishSlow; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      const closed = other.close(5000);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.ok(goaway, 'the client got a GOAWAY');
      finishSlow?.();
      const result = await pending;
      assert.equal(result.status, GrpcStatus.OK, describeGrpcResult(result));
      assert.deepEqual(result.messages, [Buffer.from('finished')]);
      await closed;
      session.destroy();
      const refused = await grpcWire({ address: `127.0.0.1:${port}`, path: '/test.Echo/Echo', message: Buffer.alloc(0), timeoutMs: 2000 });
      assert.equal(refused.status, undefined, 'no server any more');
    });
  });
