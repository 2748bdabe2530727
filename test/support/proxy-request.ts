import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';

export const FOO = 'foo.oto.tools';

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /** Header name (lower case) -> how many times it was sent. */
  counts: Record<string, number>;
  body: string;
}

/**
 * One request to a proxy (nginx, Envoy) with node:http, the path sent byte for byte (no URL
 * normalization, unlike fetch or new URL) and a Host header of our choosing. No keep-alive.
 */
export function send(
  base: string,
  rawPath: string,
  options: { host?: string; method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<Answer> {
  const target = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: target.hostname,
        port: target.port,
        path: rawPath,
        method: options.method ?? 'GET',
        agent: false,
        headers: { host: options.host ?? FOO, ...options.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('error', reject);
        res.on('end', () => {
          const counts: Record<string, number> = {};
          for (let i = 0; i < res.rawHeaders.length; i += 2)
            counts[res.rawHeaders[i].toLowerCase()] = (counts[res.rawHeaders[i].toLowerCase()] ?? 0) + 1;
          resolve({ status: res.statusCode ?? 0, headers: res.headers, counts, body: Buffer.concat(chunks).toString('utf8') });
        });
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/**
 * A request over TLS to a proxy's HTTPS listener on 127.0.0.1 (SNI and Host: `host`), trusting only `ca`,
 * with a client certificate when given one (mTLS). No keep-alive; no answer in 5 s is an error.
 */
export function sendTls(
  port: number,
  pathname: string,
  options: {
    host: string;
    ca: string | Buffer;
    client?: { certificate: string; privateKey: string };
    method?: string;
    headers?: Record<string, string>;
    body?: string;
  },
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(
      {
        host: '127.0.0.1',
        port,
        path: pathname,
        method: options.method ?? 'GET',
        servername: options.host,
        ca: options.ca,
        ...(options.client && { cert: options.client.certificate, key: options.client.privateKey }),
        agent: false,
        timeout: 5000,
        headers: { host: options.host, ...options.headers },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, counts: {}, body: Buffer.concat(chunks).toString('utf8') }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer in 5 s')));
    req.on('error', reject);
    req.end(options.body);
  });
}
