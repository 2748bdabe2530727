import { httpRequest } from './http';

/** One Prometheus text scrape: `name{labels}` (as printed) to value. */
export type Scrape = Map<string, number>;

export async function scrapeMetrics(baseUrl: string): Promise<Scrape> {
  const response = await httpRequest(`${baseUrl}/metrics`);
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  const samples: Scrape = new Map();
  for (const line of response.body.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const cut = line.lastIndexOf(' ');
    samples.set(line.slice(0, cut), Number(line.slice(cut + 1)));
  }
  return samples;
}

/** A series as prom-client prints it: labels in the order given. */
export function series(name: string, labels: Record<string, string> = {}): string {
  const pairs = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  return pairs.length ? `${name}{${pairs.join(',')}}` : name;
}

/** How much a series grew between two scrapes (absent counts as 0). */
export function growth(before: Scrape, after: Scrape, key: string): number {
  return (after.get(key) ?? 0) - (before.get(key) ?? 0);
}
