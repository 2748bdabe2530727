import { createHash } from 'node:crypto';
import type { PublicJwk } from './crypto/key-pairs';
import type { KeyRing } from './key-ring';
import { activeSecretHashes, grantableScopes } from './model';
import type { AuthorityStore } from './store/repositories';

/**
 * What a data plane (ext-authz) needs to decide alone: the shape both sides share, whatever
 * carries it (token_authority.v1.AuthorityWatch on the wire). Times are epoch milliseconds.
 */
export interface DataPlaneState {
  version: string;
  issuer: string;
  audience: string;
  keys: { jwk: PublicJwk; verifyUntil?: number }[];
  apiKeys: DataPlaneApiKey[];
  revokedTokens: { jti: string; expiresAt: number }[];
  generatedAt: number;
}

export interface DataPlaneApiKey {
  clientId: string;
  clientName: string;
  enabled: boolean;
  validUntil?: number;
  authorizedEntities: string[];
  scopes: string[];
  metadata: Record<string, string>;
  tags: string[];
  secrets: { hash: string; validUntil?: number }[];
  allowClientIdOnly: boolean;
}

export async function buildDataPlaneState(store: AuthorityStore, keyRing: KeyRing, token: { issuer: string; audience: string }, now: number): Promise<DataPlaneState> {
  const apiKeys: DataPlaneApiKey[] = (await store.apiKeys.list()).map((apiKey) => ({
    clientId: apiKey.clientId,
    clientName: apiKey.clientName,
    enabled: apiKey.enabled,
    validUntil: apiKey.validUntil ?? undefined,
    authorizedEntities: apiKey.authorizedEntities,
    scopes: [...grantableScopes(apiKey)],
    metadata: apiKey.metadata,
    tags: apiKey.tags,
    secrets: activeSecretHashes(apiKey, now),
    allowClientIdOnly: apiKey.allowClientIdOnly ?? false,
  }));
  const content = { issuer: token.issuer, audience: token.audience, keys: keyRing.verificationKeys(), apiKeys, revokedTokens: await store.revocations.listActive(now) };
  // The version names the content, so an unchanged state is never sent again.
  const version = createHash('sha256').update(JSON.stringify(content)).digest('base64url').slice(0, 16);
  return { version, ...content, generatedAt: now };
}

/** How long changes are gathered before one new state is built (a burst of writes is one update). */
const DEBOUNCE_MS = 20;

/**
 * The current data plane state, rebuilt after every store change and handed to subscribers
 * (the Watch streams). A failed rebuild keeps the last good state and retries on the next change.
 */
export class DataPlaneFeed {
  private state: DataPlaneState | undefined;
  private readonly listeners = new Set<(state: DataPlaneState) => void>();
  private pending: NodeJS.Timeout | undefined;
  private readonly unsubscribeStore: () => void;

  constructor(
    private readonly store: AuthorityStore,
    private readonly keyRing: KeyRing,
    private readonly token: { issuer: string; audience: string },
    private readonly onError: (error: Error) => void,
  ) {
    this.unsubscribeStore = store.onChange(() => this.schedule());
  }

  async current(): Promise<DataPlaneState> {
    this.state ??= await this.rebuild();
    return this.state;
  }

  subscribe(listener: (state: DataPlaneState) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private schedule(): void {
    if (this.pending) return;
    this.pending = setTimeout(() => {
      this.pending = undefined;
      this.rebuild().then(
        (state) => {
          if (state.version === this.state?.version) return;
          this.state = state;
          this.listeners.forEach((listener) => listener(state));
        },
        (error: Error) => this.onError(error),
      );
    }, DEBOUNCE_MS);
  }

  private async rebuild(): Promise<DataPlaneState> {
    // Key pairs may have been changed by another process: pick that up before publishing.
    await this.keyRing.reload();
    return buildDataPlaneState(this.store, this.keyRing, this.token, Date.now());
  }

  close(): void {
    clearTimeout(this.pending);
    this.unsubscribeStore();
    this.listeners.clear();
  }
}
