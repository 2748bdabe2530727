import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** What the echo backend answers: the request as it reached the backend. */
export interface EchoResponse {
  method: string;
  /** Path and query string, as received. */
  path: string;
  /** Request headers, names lower-cased (as node gives them). */
  headers: Record<string, string | string[] | undefined>;
}

export interface EchoBackend {
  url: string;
  close(): Promise<void>;
}

/**
 * The tutorial's backend (mirror.otoroshi.io): answers every request with its method, path and
 * headers as JSON, so a call through the gateway shows what the gateway forwarded (the
 * Authorization header, the identity headers ext-authz added). No dependencies on purpose.
 */
export function startEchoBackend(port: number, host: string): Promise<EchoBackend> {
  // As large a request head as Envoy lets through (max_request_headers_kb: 96).
  const server = createServer({ maxHeaderSize: 96 * 1024 }, (request: IncomingMessage, response: ServerResponse) => {
    const body: EchoResponse = { method: request.method ?? '', path: request.url ?? '', headers: request.headers };
    const json = JSON.stringify(body);
    // Drain the request body (never echoed) before answering, so keep-alive connections stay usable.
    request.resume();
    request.on('end', () => {
      response.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(json) });
      response.end(json);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const { address, port: boundPort } = server.address() as AddressInfo;
      const urlHost = address.includes(':') ? `[${address}]` : address;
      resolve({
        url: `http://${urlHost}:${boundPort}`,
        close: () => new Promise<void>((done, fail) => server.close((error) => (error ? fail(error) : done()))),
      });
    });
  });
}
