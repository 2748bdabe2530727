import type { ApiKeyRecord } from '../../libs/core/model';

/** An API key as the store keeps it, for tests that write to a store directly; `fields` override. */
export function apiKeyRecord(clientId: string, fields: Partial<ApiKeyRecord> = {}): ApiKeyRecord {
  return {
    clientId,
    secretHash: 'sha256$x',
    clientName: clientId,
    description: '',
    authorizedEntities: ['route_foo'],
    enabled: true,
    validUntil: null,
    metadata: {},
    tags: [],
    scope: [],
    allowClientIdOnly: false,
    rotation: { enabled: false, rotationEvery: 744, gracePeriod: 168 },
    throttlingQuota: 1,
    dailyQuota: 1,
    monthlyQuota: 1,
    createdAt: 0,
    updatedAt: 0,
    ...fields,
  };
}
