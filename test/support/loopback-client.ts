import { Agent, request } from 'node:http';

export interface FormReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  ms: number;
}

const agents = new Map<string, Agent>();

/**
 * A request from a loopback address of our choosing (127.0.0.0/8 is all loopback on Linux), so
 * each address is another "client address" to the failure limits. Keep-alive, one agent per address.
 */
export function requestFrom(
  localAddress: string,
  base: string,
  options: { method: string; path: string; headers?: Record<string, string | number>; body?: string },
): Promise<FormReply> {
  let agent = agents.get(localAddress);
  if (!agent) agents.set(localAddress, (agent = new Agent({ keepAlive: true, localAddress, maxSockets: 64 })));
  const url = new URL(base);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const req = request(
      { host: url.hostname, port: url.port, path: options.path, method: options.method, agent, headers: options.headers ?? {} },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks).toString(),
            ms: performance.now() - started,
          }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

/** A form POST from a loopback address of our choosing (see requestFrom). */
export function postFrom(
  localAddress: string,
  base: string,
  path: string,
  form: Record<string, string>,
  /** Extra request headers (a Host for Envoy's virtual hosts, a made-up X-Forwarded-For...). */
  headers: Record<string, string> = {},
): Promise<FormReply> {
  const body = new URLSearchParams(form).toString();
  return requestFrom(localAddress, base, {
    method: 'POST',
    path,
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body), ...headers },
    body,
  });
}

/** Closes the kept-alive sockets of every address (between phases, and before the server stops). */
export function closeLoopbackAgents(): void {
  for (const agent of agents.values()) agent.destroy();
  agents.clear();
}

/** The p-th percentile (nearest rank, rounding down) of `values`, in any order; NaN when empty. */
export function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN;
}
