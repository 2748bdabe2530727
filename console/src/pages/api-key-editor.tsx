import { useEffect, useState } from 'preact/hooks';
import { admin, adminOptional, type ApiKey, ApiError, type KeyPair, SIGN_KEYPAIR_METADATA, type TokenBinding } from '../api';
import { CheckField, RadioGroup, TextField } from '../fields';
import { go, href } from '../router';
import { ConfirmDialog, errorNotice, formatTime, type Notice, NoticeLine, PageTitle, SecretOnce, splitList } from '../ui';

/** The form's fields as typed (strings for lists and numbers), turned into the API's JSON on save. */
interface Draft {
  clientId: string;
  secretMode: 'generate' | 'given';
  clientSecret: string;
  clientName: string;
  description: string;
  enabled: boolean;
  scope: string;
  authorizedEntities: string;
  tags: string;
  validUntil: string;
  signKeyPair: string;
  metadata: { key: string; value: string }[];
  throttlingQuota: string;
  dailyQuota: string;
  monthlyQuota: string;
  rotationEnabled: boolean;
  rotationEvery: string;
  gracePeriod: string;
  allowClientIdOnly: boolean;
  /** private_key_jwt: no keys, a pasted JWKS, or a URL it is fetched from. */
  keysMode: 'none' | 'jwks' | 'uri';
  jwks: string;
  jwksUri: string;
  tokenBinding: TokenBinding;
  /** tls_client_auth: which certificate attribute (RFC 8705 §2.1.2) is expected, and its value. */
  certificateField: CertificateField | 'none';
  certificateValue: string;
}

const CERTIFICATE_FIELDS = [
  { value: 'tls_client_auth_subject_dn', label: 'Subject DN', hint: 'RFC 4514, e.g. CN=client-1,O=Example' },
  { value: 'tls_client_auth_san_dns', label: 'DNS host (SAN)', hint: 'e.g. client.example.com' },
  { value: 'tls_client_auth_san_uri', label: 'URI (SAN)', hint: 'e.g. spiffe://example.com/client-1' },
  { value: 'tls_client_auth_san_ip', label: 'IP address (SAN)', hint: 'IPv4 or IPv6' },
  { value: 'tls_client_auth_san_email', label: 'Email (SAN)', hint: 'e.g. ops@example.com' },
] as const;
type CertificateField = (typeof CERTIFICATE_FIELDS)[number]['value'];

const DEFAULT_QUOTA = '10000000';

const EMPTY: Draft = {
  clientId: '',
  secretMode: 'generate',
  clientSecret: '',
  clientName: '',
  description: '',
  enabled: true,
  scope: '',
  authorizedEntities: '',
  tags: '',
  validUntil: '',
  signKeyPair: '',
  metadata: [],
  throttlingQuota: DEFAULT_QUOTA,
  dailyQuota: DEFAULT_QUOTA,
  monthlyQuota: DEFAULT_QUOTA,
  rotationEnabled: false,
  rotationEvery: '744',
  gracePeriod: '168',
  allowClientIdOnly: false,
  keysMode: 'none',
  jwks: '',
  jwksUri: '',
  certificateField: 'none',
  certificateValue: '',
  tokenBinding: 'bearer',
};

/** A date as <input type="datetime-local"> shows it, in the browser's time zone. */
function localInput(epochMs: number | null): string {
  if (epochMs === null) return '';
  const date = new Date(epochMs);
  return new Date(epochMs - date.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

function draftOf(apiKey: ApiKey): Draft {
  const { [SIGN_KEYPAIR_METADATA]: signKeyPair = '', ...metadata } = apiKey.metadata;
  return {
    ...EMPTY,
    clientId: apiKey.clientId,
    clientName: apiKey.clientName,
    description: apiKey.description,
    enabled: apiKey.enabled,
    scope: apiKey.scope.join(' '),
    authorizedEntities: apiKey.authorizedEntities.join(', '),
    tags: apiKey.tags.join(', '),
    validUntil: localInput(apiKey.validUntil),
    signKeyPair,
    metadata: Object.entries(metadata).map(([key, value]) => ({ key, value })),
    throttlingQuota: String(apiKey.throttlingQuota),
    dailyQuota: String(apiKey.dailyQuota),
    monthlyQuota: String(apiKey.monthlyQuota),
    rotationEnabled: apiKey.rotation.enabled,
    rotationEvery: String(apiKey.rotation.rotationEvery),
    gracePeriod: String(apiKey.rotation.gracePeriod),
    allowClientIdOnly: apiKey.allowClientIdOnly,
    keysMode: apiKey.jwks ? 'jwks' : apiKey.jwks_uri ? 'uri' : 'none',
    jwks: apiKey.jwks ? JSON.stringify(apiKey.jwks, null, 2) : '',
    jwksUri: apiKey.jwks_uri ?? '',
    ...certificateDraft(apiKey),
    tokenBinding: apiKey.tokenBinding ?? 'bearer',
  };
}

function certificateDraft(apiKey: ApiKey): Pick<Draft, 'certificateField' | 'certificateValue'> {
  const field = CERTIFICATE_FIELDS.find((each) => apiKey[each.value] !== undefined);
  return field
    ? { certificateField: field.value, certificateValue: apiKey[field.value] ?? '' }
    : { certificateField: 'none', certificateValue: '' };
}

/** The pasted JWKS as JSON, or a message saying why it is not (the server names what is wrong inside it). */
class JwksTextError extends Error {}

function parseJwksText(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new JwksTextError('The JWKS is not valid JSON: paste a key set such as {"keys": [{"kty": "EC", ...}]}.');
  }
}

/** The JSON the admin API takes; numbers stay as typed when not numbers, so the server names the field. */
function bodyOf(draft: Draft, creating: boolean): Record<string, unknown> {
  const number = (text: string) => (text.trim() !== '' && Number.isFinite(Number(text)) ? Number(text) : text);
  const metadata: Record<string, string> = {};
  for (const entry of draft.metadata) if (entry.key.trim()) metadata[entry.key.trim()] = entry.value;
  if (draft.signKeyPair) metadata[SIGN_KEYPAIR_METADATA] = draft.signKeyPair;
  const body: Record<string, unknown> = {
    clientName: draft.clientName.trim() || undefined,
    description: draft.description,
    enabled: draft.enabled,
    scope: splitList(draft.scope),
    authorizedEntities: splitList(draft.authorizedEntities),
    tags: splitList(draft.tags),
    validUntil: draft.validUntil ? new Date(draft.validUntil).getTime() : null,
    metadata,
    throttlingQuota: number(draft.throttlingQuota),
    dailyQuota: number(draft.dailyQuota),
    monthlyQuota: number(draft.monthlyQuota),
    rotation: { enabled: draft.rotationEnabled, rotationEvery: number(draft.rotationEvery), gracePeriod: number(draft.gracePeriod) },
    allowClientIdOnly: draft.allowClientIdOnly,
    tokenBinding: draft.tokenBinding,
  };
  // One of jwks and jwks_uri; on an edit, null takes away the one not chosen.
  const none = creating ? undefined : null;
  body.jwks = draft.keysMode === 'jwks' ? parseJwksText(draft.jwks) : none;
  body.jwks_uri = draft.keysMode === 'uri' ? draft.jwksUri.trim() : none;
  // One tls_client_auth attribute at most; on an edit, null takes away the others.
  for (const field of CERTIFICATE_FIELDS) body[field.value] = draft.certificateField === field.value ? draft.certificateValue.trim() : none;
  if (creating) {
    if (draft.clientId.trim()) body.clientId = draft.clientId.trim();
    if (draft.secretMode === 'given') body.clientSecret = draft.clientSecret;
  }
  return body;
}

/** Creates an API key, or edits every field of one (with rotate and delete). */
export function ApiKeyEditor({ clientId }: { clientId?: string }) {
  const creating = clientId === undefined;
  const [draft, setDraft] = useState<Draft>(EMPTY);
  const [loaded, setLoaded] = useState<{ apiKey: ApiKey; etag?: string }>();
  const [keyPairs, setKeyPairs] = useState<KeyPair[]>([]);
  const [consumption, setConsumption] = useState<Record<string, unknown>>();
  const [notice, setNotice] = useState<Notice>();
  const [secret, setSecret] = useState<{ clientId: string; secret: string }>();
  const [dialog, setDialog] = useState<'rotate' | 'delete'>();
  const [busy, setBusy] = useState(false);
  const [rotation, setRotation] = useState({ gracePeriod: '', secret: '' });
  // A write refused with 412: someone changed the key since it was read; offer to read it again.
  const [stale, setStale] = useState(false);
  const failed = (error: unknown) => {
    setStale(error instanceof ApiError && error.status === 412);
    setNotice(
      error instanceof ApiError && error.status === 404 ? { kind: 'error', text: 'That API key no longer exists.' } : errorNotice(error),
    );
  };

  const load = async () => {
    if (creating) return;
    setStale(false);
    try {
      const answer = await admin<ApiKey>('GET', `/api/apikeys/${encodeURIComponent(clientId)}`);
      setLoaded({ apiKey: answer.data, etag: answer.etag });
      setDraft(draftOf(answer.data));
      // Current consumption, when the server counts it.
      const quotas = await adminOptional<Record<string, unknown>>(`/api/apikeys/${encodeURIComponent(clientId)}/quotas`).catch(
        () => undefined,
      );
      setConsumption(quotas?.data);
    } catch (error) {
      setNotice(errorNotice(error));
    }
  };

  useEffect(() => {
    void load();
    admin<KeyPair[]>('GET', '/api/keypairs').then(
      (answer) => setKeyPairs(answer.data),
      () => undefined,
    );
  }, [clientId]);

  const set = <K extends keyof Draft>(name: K, value: Draft[K]) => setDraft((current) => ({ ...current, [name]: value }));

  const save = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setNotice(undefined);
    try {
      if (creating) {
        const answer = await admin<ApiKey>('POST', '/api/apikeys', bodyOf(draft, true));
        if (answer.data.clientSecret === undefined) {
          // Keys and no secret of its own: nothing to show once; it authenticates with signed assertions.
          go('keys', answer.data.clientId);
          return;
        }
        setSecret({ clientId: answer.data.clientId, secret: answer.data.clientSecret });
        setNotice({ kind: 'success', text: `API key ${answer.data.clientId} created.` });
      } else {
        const answer = await admin<ApiKey>('PATCH', `/api/apikeys/${encodeURIComponent(clientId)}`, bodyOf(draft, false), {
          ifMatch: loaded?.etag,
        });
        setLoaded({ apiKey: answer.data, etag: answer.etag ?? loaded?.etag });
        setDraft(draftOf(answer.data));
        setNotice({ kind: 'success', text: `API key ${clientId} saved.` });
      }
    } catch (error) {
      if (error instanceof JwksTextError) setNotice({ kind: 'error', text: error.message });
      else failed(error);
    } finally {
      setBusy(false);
    }
  };

  const rotate = async () => {
    setDialog(undefined);
    setNotice(undefined);
    try {
      const body: Record<string, unknown> = {};
      if (rotation.gracePeriod.trim() !== '') body.gracePeriod = Number(rotation.gracePeriod);
      if (rotation.secret) body.clientSecret = rotation.secret;
      const answer = await admin<ApiKey>('POST', `/api/apikeys/${encodeURIComponent(clientId!)}/rotate-secret`, body, {
        ifMatch: loaded?.etag,
      });
      setSecret({ clientId: answer.data.clientId, secret: answer.data.clientSecret ?? '' });
      setNotice({
        kind: 'success',
        text: `Secret rotated. The previous secret works until ${formatTime(answer.data.previousSecretValidUntil)}.`,
      });
      setRotation({ gracePeriod: '', secret: '' });
      await load();
    } catch (error) {
      failed(error);
    }
  };

  const remove = async () => {
    setDialog(undefined);
    try {
      await admin('DELETE', `/api/apikeys/${encodeURIComponent(clientId!)}`, undefined, { ifMatch: loaded?.etag });
      go('keys');
    } catch (error) {
      failed(error);
    }
  };

  if (secret) {
    return (
      <>
        <PageTitle>{creating ? 'API key created' : 'Secret rotated'}</PageTitle>
        <NoticeLine notice={notice} />
        <SecretOnce
          clientId={secret.clientId}
          secret={secret.secret}
          onDone={() => {
            setSecret(undefined);
            go('keys', secret.clientId);
          }}
        />
      </>
    );
  }

  const signingChoices = keyPairs.filter((keyPair) => keyPair.status === 'active' || keyPair.id === draft.signKeyPair);
  return (
    <>
      <PageTitle>{creating ? 'Create an API key' : `API key ${clientId}`}</PageTitle>
      <p>
        <a href={href('keys')}>Back to API keys</a>
      </p>
      <NoticeLine notice={notice} />
      {stale && (
        <p>
          <button
            type="button"
            onClick={() => void load().then(() => setNotice({ kind: 'success', text: `Reloaded ${clientId}: make your changes again.` }))}
          >
            Reload API key
          </button>
        </p>
      )}
      {(creating || loaded) && (
        <form class="editor" onSubmit={(event) => void save(event)} novalidate>
          <fieldset>
            <legend>Identity</legend>
            {creating ? (
              <TextField
                id="clientId"
                label="Client id"
                value={draft.clientId}
                onValue={(value) => set('clientId', value)}
                autocomplete="off"
                hint="Leave empty to have one generated."
              />
            ) : (
              <p>
                Client id: <code>{clientId}</code> (created {formatTime(loaded?.apiKey.createdAt)}, last change{' '}
                {formatTime(loaded?.apiKey.updatedAt)})
              </p>
            )}
            {creating && (
              <RadioGroup
                name="secretMode"
                label="Client secret"
                value={draft.secretMode}
                options={[
                  { value: 'generate', label: 'Generate a secret' },
                  { value: 'given', label: 'Use my own secret' },
                ]}
                onValue={(value) => set('secretMode', value)}
              />
            )}
            {creating && draft.secretMode === 'given' && (
              <TextField
                id="clientSecret"
                label="Secret"
                type="password"
                autocomplete="new-password"
                value={draft.clientSecret}
                onValue={(value) => set('clientSecret', value)}
              />
            )}
            <TextField id="clientName" label="Name" value={draft.clientName} onValue={(value) => set('clientName', value)} />
            <TextField
              id="description"
              label="Description"
              rows={2}
              value={draft.description}
              onValue={(value) => set('description', value)}
            />
            <CheckField id="enabled" label="Enabled" checked={draft.enabled} onChecked={(checked) => set('enabled', checked)} />
          </fieldset>
          <fieldset>
            <legend>Access</legend>
            <TextField
              id="scope"
              label="Scopes"
              value={draft.scope}
              onValue={(value) => set('scope', value)}
              autocomplete="off"
              hint="Separated by spaces, e.g. read write."
            />
            <TextField
              id="authorizedEntities"
              label="Authorized entities"
              value={draft.authorizedEntities}
              onValue={(value) => set('authorizedEntities', value)}
              autocomplete="off"
              hint="route_<name> or group_<name>, separated by commas."
            />
            <TextField id="tags" label="Tags" value={draft.tags} onValue={(value) => set('tags', value)} autocomplete="off" />
            <TextField
              id="validUntil"
              label="Valid until"
              type="datetime-local"
              value={draft.validUntil}
              onValue={(value) => set('validUntil', value)}
              hint="Empty: never expires."
            />
            <CheckField
              id="allowClientIdOnly"
              label="Allow the client id alone (no secret) at gateways"
              checked={draft.allowClientIdOnly}
              onChecked={(checked) => set('allowClientIdOnly', checked)}
            />
            <RadioGroup
              name="tokenBinding"
              label="Access tokens"
              value={draft.tokenBinding}
              options={[
                { value: 'bearer', label: 'Bearer allowed (Otoroshi)' },
                { value: 'dpop', label: 'DPoP required (RFC 9449)' },
                { value: 'mtls', label: 'mTLS required (RFC 8705): tokens only over a connection with a client certificate, bound to it' },
              ]}
              onValue={(value) => set('tokenBinding', value)}
            />
          </fieldset>
          <fieldset>
            <legend>Client keys (private_key_jwt)</legend>
            <RadioGroup
              name="keysMode"
              label="Signed client assertions (RFC 7523)"
              value={draft.keysMode}
              options={[
                { value: 'none', label: 'No keys: secret only' },
                { value: 'jwks', label: 'Paste a JWKS' },
                { value: 'uri', label: 'Fetch the keys from a URL' },
              ]}
              onValue={(value) => set('keysMode', value)}
            />
            {draft.keysMode === 'jwks' && (
              <TextField
                id="jwks"
                label="JWKS (public keys)"
                rows={6}
                spellcheck={false}
                value={draft.jwks}
                onValue={(value) => set('jwks', value)}
                hint={'{"keys": [...]}: RSA (2048 bits or more), EC P-256 or Ed25519 public keys, never a private one.'}
              />
            )}
            {draft.keysMode === 'uri' && (
              <TextField
                id="jwksUri"
                label="JWKS URL"
                type="url"
                value={draft.jwksUri}
                onValue={(value) => set('jwksUri', value)}
                autocomplete="off"
                hint="https, or http to this machine (127.0.0.1, localhost); fetched within 2 s and cached 5 minutes."
              />
            )}
            {creating && draft.keysMode !== 'none' && draft.secretMode === 'generate' && (
              <p class="hint">With keys and no secret of your own, the key gets no secret: it authenticates with signed assertions only.</p>
            )}
          </fieldset>
          <fieldset>
            <legend>Client certificate (mTLS, RFC 8705)</legend>
            <RadioGroup
              name="certificateField"
              label="tls_client_auth: the client's certificate must have"
              value={draft.certificateField}
              options={[
                { value: 'none', label: 'Nothing: no certificate authentication (with keys above: self_signed_tls_client_auth)' },
                ...CERTIFICATE_FIELDS.map(({ value, label }) => ({ value, label })),
              ]}
              onValue={(value) => set('certificateField', value)}
            />
            {draft.certificateField !== 'none' && (
              <TextField
                id="certificateValue"
                label={CERTIFICATE_FIELDS.find((field) => field.value === draft.certificateField)?.label ?? ''}
                value={draft.certificateValue}
                onValue={(value) => set('certificateValue', value)}
                autocomplete="off"
                hint={CERTIFICATE_FIELDS.find((field) => field.value === draft.certificateField)?.hint}
              />
            )}
            <p class="hint">
              A token issued over a connection with a client certificate is bound to it (cnf.x5t#S256) whatever the access token setting.
            </p>
          </fieldset>
          <fieldset>
            <legend>Signing and metadata</legend>
            <p>
              <label for="signKeyPair">Signing key pair ({SIGN_KEYPAIR_METADATA})</label>
              <select id="signKeyPair" value={draft.signKeyPair} onChange={(event) => set('signKeyPair', event.currentTarget.value)}>
                <option value="">The default key pair</option>
                {signingChoices.map((keyPair) => (
                  <option key={keyPair.id} value={keyPair.id}>
                    {keyPair.id} ({keyPair.algorithm})
                  </option>
                ))}
              </select>
            </p>
            <table class="metadata">
              <caption>Metadata</caption>
              <thead>
                <tr>
                  <th scope="col">Key</th>
                  <th scope="col">Value</th>
                  <th scope="col">
                    <span class="visually-hidden">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {draft.metadata.map((entry, index) => (
                  <tr key={index}>
                    <td>
                      <input
                        aria-label={`Metadata key ${index + 1}`}
                        value={entry.key}
                        onInput={(event) =>
                          set(
                            'metadata',
                            draft.metadata.map((item, at) => (at === index ? { ...item, key: event.currentTarget.value } : item)),
                          )
                        }
                      />
                    </td>
                    <td>
                      <input
                        aria-label={`Metadata value ${index + 1}`}
                        value={entry.value}
                        onInput={(event) =>
                          set(
                            'metadata',
                            draft.metadata.map((item, at) => (at === index ? { ...item, value: event.currentTarget.value } : item)),
                          )
                        }
                      />
                    </td>
                    <td>
                      <button
                        type="button"
                        aria-label={`Remove metadata ${entry.key || index + 1}`}
                        onClick={() =>
                          set(
                            'metadata',
                            draft.metadata.filter((_, at) => at !== index),
                          )
                        }
                      >
                        Remove
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
            <p>
              <button type="button" onClick={() => set('metadata', [...draft.metadata, { key: '', value: '' }])}>
                Add metadata
              </button>
            </p>
          </fieldset>
          <fieldset>
            <legend>Quotas</legend>
            <div class="row">
              <TextField
                id="throttlingQuota"
                label="Calls per second"
                inputMode="numeric"
                value={draft.throttlingQuota}
                onValue={(value) => set('throttlingQuota', value)}
              />
              <TextField
                id="dailyQuota"
                label="Calls per day"
                inputMode="numeric"
                value={draft.dailyQuota}
                onValue={(value) => set('dailyQuota', value)}
              />
              <TextField
                id="monthlyQuota"
                label="Calls per month"
                inputMode="numeric"
                value={draft.monthlyQuota}
                onValue={(value) => set('monthlyQuota', value)}
              />
            </div>
            {consumption && (
              <section aria-labelledby="consumption-title">
                <h3 id="consumption-title">Current consumption</h3>
                <p class="hint">
                  {consumption.sharedEnforcement === false
                    ? `The sum over ${String(consumption.replicas ?? 0)} ext-authz replica(s) counting in their own memory: each enforces the quotas on its own, not shared${
                        Number(consumption.replicasUnanswered) > 0
                          ? `; ${String(consumption.replicasUnanswered)} did not answer in time`
                          : ''
                      }.`
                    : 'Counted on Redis: one limit shared by every ext-authz.'}
                </p>
                <dl class="consumption">
                  {Object.entries(consumption).map(([name, value]) => (
                    <div key={name}>
                      <dt>{name}</dt>
                      <dd>{typeof value === 'object' ? JSON.stringify(value) : String(value)}</dd>
                    </div>
                  ))}
                </dl>
              </section>
            )}
          </fieldset>
          <fieldset>
            <legend>Secret rotation</legend>
            <CheckField
              id="rotationEnabled"
              label="Rotate automatically"
              checked={draft.rotationEnabled}
              onChecked={(checked) => set('rotationEnabled', checked)}
            />
            <div class="row">
              <TextField
                id="rotationEvery"
                label="Rotate every (hours)"
                inputMode="numeric"
                value={draft.rotationEvery}
                onValue={(value) => set('rotationEvery', value)}
              />
              <TextField
                id="gracePeriod"
                label="Grace period (hours)"
                inputMode="numeric"
                value={draft.gracePeriod}
                onValue={(value) => set('gracePeriod', value)}
              />
            </div>
          </fieldset>
          <p class="actions">
            <button type="submit" class="primary" disabled={busy}>
              {creating ? 'Create API key' : 'Save changes'}
            </button>
            {!creating && (
              <>
                <button type="button" onClick={() => setDialog('rotate')}>
                  Rotate secret
                </button>
                <a class="button" href={href('try', clientId)}>
                  Try it
                </a>
                <button type="button" class="danger" onClick={() => setDialog('delete')}>
                  Delete
                </button>
              </>
            )}
          </p>
        </form>
      )}
      {dialog === 'rotate' && (
        <ConfirmDialog
          title={`Rotate the secret of ${clientId}?`}
          confirmLabel="Rotate secret"
          onConfirm={() => void rotate()}
          onCancel={() => setDialog(undefined)}
        >
          <p>A new secret replaces the current one; the current one keeps working during the grace period.</p>
          <TextField
            id="rotate-grace"
            label="Grace period (hours)"
            inputMode="numeric"
            placeholder={draft.gracePeriod}
            value={rotation.gracePeriod}
            onValue={(value) => setRotation({ ...rotation, gracePeriod: value })}
          />
          <TextField
            id="rotate-secret"
            label="New secret (empty: generated)"
            type="password"
            autocomplete="new-password"
            value={rotation.secret}
            onValue={(value) => setRotation({ ...rotation, secret: value })}
          />
        </ConfirmDialog>
      )}
      {dialog === 'delete' && (
        <ConfirmDialog
          title={`Delete API key ${clientId}?`}
          confirmLabel={`Delete ${clientId}`}
          danger
          onConfirm={() => void remove()}
          onCancel={() => setDialog(undefined)}
        >
          <p>Its tokens stop working at once. This cannot be undone.</p>
        </ConfirmDialog>
      )}
    </>
  );
}
