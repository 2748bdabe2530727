import { useEffect, useState } from 'preact/hooks';
import { admin, ApiError, type KeyPair, type KeyPairVersion } from '../api';
import { RadioGroup, TextField } from '../fields';
import { ConfirmDialog, errorNotice, formatTime, type Notice, NoticeLine, PageTitle } from '../ui';

const ALGORITHMS = ['RS256', 'PS256', 'ES256', 'EdDSA'];

type Action = { kind: 'rotate' | 'retire' | 'delete' | 'schedule' | 'unschedule'; keyPair: KeyPair };

/** A duration in seconds, in the largest unit that divides it (the schedule's own words). */
export function formatDuration(seconds: number): string {
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3600],
    ['min', 60],
  ] as const)
    if (seconds >= size && seconds % size === 0) return `${seconds / size} ${unit}`;
  return `${seconds} s`;
}

/** A version's state in words: what signs, what is published ahead, what only verifies. */
function versionState(version: KeyPairVersion): string {
  if (version.status === 'pending') return `(published ahead, signs from ${formatTime(version.activatesAt)})`;
  if (version.status === 'active') return version.retiredAt === null ? '(signing)' : `(signing until ${formatTime(version.retiredAt)})`;
  return `(retired, verifies until ${formatTime(version.verifyUntil)})`;
}

/** The schedule in words, and what comes next. */
function RotationCell({ keyPair }: { keyPair: KeyPair }) {
  const { rotation, nextRotation } = keyPair;
  if (!rotation) return <>Only when asked</>;
  return (
    <>
      Every {formatDuration(rotation.rotateEvery)}, published {formatDuration(rotation.publishAhead)} ahead
      {nextRotation && (
        <div class="hint">
          {nextRotation.kid === null
            ? `Next key published ${formatTime(nextRotation.publishAt)}, signs from ${formatTime(nextRotation.switchAt)}`
            : `Next key ${nextRotation.kid} signs from ${formatTime(nextRotation.switchAt)}`}
        </div>
      )}
    </>
  );
}

/** The server's refusals (409) in words: why, and what to do instead. */
export function explainConflict(error: unknown, id: string): Notice {
  if (!(error instanceof ApiError) || error.status !== 409) return errorNotice(error);
  const message = error.message;
  if (/defaultKeyPair/.test(message))
    return {
      kind: 'error',
      text: `${id} cannot be deleted: it is this authority's default key pair (defaultKeyPair in its configuration), which signs the tokens of every API key without a key pair of its own. Make another key pair the default in the configuration first.`,
    };
  const users = /used by API keys: (.*?)\.?$/.exec(message);
  if (users)
    return {
      kind: 'error',
      text: `${id} cannot be deleted: API keys still sign their tokens with it (their jwt-sign-keypair metadata names it): ${users[1]}. Point them at another key pair first.`,
    };
  if (/already retired/.test(message)) return { kind: 'error', text: `${id} is already retired: it signs nothing more.` };
  if (/already exists/.test(message)) return { kind: 'error', text: `A key pair named ${id} already exists: choose another id.` };
  return { kind: 'error', text: `Refused by the server: ${message}` };
}

/** Key pairs: list with versions and state; create (generated or imported PEM), rotate, retire, delete. */
export function KeyPairsPage() {
  const [keyPairs, setKeyPairs] = useState<KeyPair[]>();
  const [notice, setNotice] = useState<Notice>();
  const [action, setAction] = useState<Action>();
  const [form, setForm] = useState({ id: '', algorithm: 'RS256', description: '', source: 'generate', privateKey: '', publicKey: '' });
  const [busy, setBusy] = useState(false);
  const [schedule, setSchedule] = useState({ days: '30', hours: '24' });

  const load = () =>
    admin<KeyPair[]>('GET', '/api/keypairs').then(
      (answer) => setKeyPairs(answer.data),
      (error) => setNotice(errorNotice(error)),
    );
  useEffect(() => void load(), []);

  const create = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setNotice(undefined);
    try {
      const body: Record<string, string> = { id: form.id.trim(), algorithm: form.algorithm, description: form.description };
      if (form.source === 'import') {
        body.privateKey = form.privateKey;
        if (form.publicKey.trim()) body.publicKey = form.publicKey;
      }
      await admin('POST', '/api/keypairs', body);
      setForm({ ...form, id: '', description: '', privateKey: '', publicKey: '' });
      await load();
      setNotice({ kind: 'success', text: `Key pair ${body.id} created.` });
    } catch (error) {
      setNotice(explainConflict(error, form.id.trim()));
    } finally {
      setBusy(false);
    }
  };

  const run = async ({ kind, keyPair }: Action) => {
    setAction(undefined);
    setNotice(undefined);
    const path = `/api/keypairs/${encodeURIComponent(keyPair.id)}`;
    try {
      if (kind === 'delete') await admin('DELETE', path);
      else if (kind === 'schedule')
        await admin('PATCH', path, {
          rotation: { rotateEvery: Math.round(Number(schedule.days) * 86_400), publishAhead: Math.round(Number(schedule.hours) * 3600) },
        });
      else if (kind === 'unschedule') await admin('PATCH', path, { rotation: null });
      else await admin('POST', `${path}/${kind}`, kind === 'rotate' ? {} : undefined);
      const done = {
        rotate: 'rotated: a new kid signs from now on',
        retire: 'retired: it signs nothing more',
        delete: 'deleted',
        schedule: 'now rotates on a schedule',
        unschedule: 'rotates only when asked from now on',
      }[kind];
      // The list first, then the message: what the message says is on screen when it is announced.
      await load();
      setNotice({ kind: 'success', text: `Key pair ${keyPair.id} ${done}.` });
    } catch (error) {
      await load();
      setNotice(explainConflict(error, keyPair.id));
    }
  };

  return (
    <>
      <PageTitle>Key pairs</PageTitle>
      <NoticeLine notice={notice} />
      {keyPairs && (
        <table>
          <caption class="visually-hidden">Signing key pairs</caption>
          <thead>
            <tr>
              <th scope="col">Id</th>
              <th scope="col">Algorithm</th>
              <th scope="col">State</th>
              <th scope="col">Versions (kid)</th>
              <th scope="col">Rotation</th>
              <th scope="col">Created</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {keyPairs.map((keyPair) => (
              <tr key={keyPair.id} data-key-pair={keyPair.id}>
                <td>
                  {keyPair.id}
                  {keyPair.description && <div class="hint">{keyPair.description}</div>}
                </td>
                <td>{keyPair.algorithm}</td>
                <td>{keyPair.status === 'active' ? 'Active' : 'Retired'}</td>
                <td>
                  <ul class="versions">
                    {keyPair.versions.map((version) => (
                      <li key={version.kid}>
                        <code>{version.kid}</code> {versionState(version)}
                      </li>
                    ))}
                  </ul>
                </td>
                <td>
                  <RotationCell keyPair={keyPair} />
                </td>
                <td>{formatTime(keyPair.createdAt)}</td>
                <td class="row-actions">
                  <button type="button" aria-label={`Rotate ${keyPair.id}`} onClick={() => setAction({ kind: 'rotate', keyPair })}>
                    Rotate
                  </button>
                  {keyPair.status === 'active' && (
                    <button type="button" aria-label={`Retire ${keyPair.id}`} onClick={() => setAction({ kind: 'retire', keyPair })}>
                      Retire
                    </button>
                  )}
                  {keyPair.status === 'active' && (
                    <button
                      type="button"
                      aria-label={`Schedule rotation of ${keyPair.id}`}
                      onClick={() => {
                        if (keyPair.rotation)
                          setSchedule({
                            days: String(keyPair.rotation.rotateEvery / 86_400),
                            hours: String(keyPair.rotation.publishAhead / 3600),
                          });
                        setAction({ kind: 'schedule', keyPair });
                      }}
                    >
                      Schedule
                    </button>
                  )}
                  {keyPair.rotation && (
                    <button
                      type="button"
                      aria-label={`Remove the rotation schedule of ${keyPair.id}`}
                      onClick={() => setAction({ kind: 'unschedule', keyPair })}
                    >
                      Unschedule
                    </button>
                  )}
                  <button
                    type="button"
                    class="danger"
                    aria-label={`Delete ${keyPair.id}`}
                    onClick={() => setAction({ kind: 'delete', keyPair })}
                  >
                    Delete
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <form class="editor" onSubmit={(event) => void create(event)} aria-labelledby="create-key-pair">
        <h2 id="create-key-pair">Create a key pair</h2>
        <div class="row">
          <p>
            <label for="kp-id">Id</label>
            <input
              id="kp-id"
              required
              autocomplete="off"
              value={form.id}
              onInput={(event) => setForm({ ...form, id: event.currentTarget.value })}
            />
          </p>
          <p>
            <label for="kp-algorithm">Algorithm</label>
            <select
              id="kp-algorithm"
              value={form.algorithm}
              onChange={(event) => setForm({ ...form, algorithm: event.currentTarget.value })}
            >
              {ALGORITHMS.map((algorithm) => (
                <option key={algorithm}>{algorithm}</option>
              ))}
            </select>
          </p>
          <TextField
            id="kp-description"
            label="Description"
            value={form.description}
            onValue={(value) => setForm({ ...form, description: value })}
          />
        </div>
        <RadioGroup
          name="kp-source"
          label="Keys"
          value={form.source}
          options={[
            { value: 'generate', label: 'Generate' },
            { value: 'import', label: 'Import PEM' },
          ]}
          onValue={(value) => setForm({ ...form, source: value })}
        />
        {form.source === 'import' && (
          <>
            <TextField
              id="kp-private"
              label="Private key (PEM)"
              rows={6}
              spellcheck={false}
              value={form.privateKey}
              onValue={(value) => setForm({ ...form, privateKey: value })}
            />
            <TextField
              id="kp-public"
              label="Public key (PEM, optional: derived from the private key)"
              rows={4}
              spellcheck={false}
              value={form.publicKey}
              onValue={(value) => setForm({ ...form, publicKey: value })}
            />
          </>
        )}
        <p>
          <button type="submit" class="primary" disabled={busy}>
            Create key pair
          </button>
        </p>
      </form>
      {action && (
        <ConfirmDialog
          title={
            action.kind === 'schedule'
              ? `Rotation schedule of ${action.keyPair.id}`
              : action.kind === 'unschedule'
                ? `Stop rotating ${action.keyPair.id} on a schedule?`
                : `${{ rotate: 'Rotate', retire: 'Retire', delete: 'Delete' }[action.kind]} key pair ${action.keyPair.id}?`
          }
          confirmLabel={
            action.kind === 'schedule'
              ? `Save the schedule of ${action.keyPair.id}`
              : action.kind === 'unschedule'
                ? `Unschedule ${action.keyPair.id}`
                : `${{ rotate: 'Rotate', retire: 'Retire', delete: 'Delete' }[action.kind]} ${action.keyPair.id}`
          }
          danger={action.kind === 'retire' || action.kind === 'delete'}
          onConfirm={() => void run(action)}
          onCancel={() => setAction(undefined)}
        >
          {action.kind === 'schedule' ? (
            <>
              <p>
                A new key is published in the JWKS and to every ext-authz this long before it signs, so caches (Envoy's jwt_authn, clients)
                hold it first; the replaced key stays published until its last token has expired.
              </p>
              <div class="row">
                <p>
                  <label for="kp-rotate-days">Rotate every (days)</label>
                  <input
                    id="kp-rotate-days"
                    type="number"
                    min="0.001"
                    step="any"
                    required
                    value={schedule.days}
                    onInput={(event) => setSchedule({ ...schedule, days: event.currentTarget.value })}
                  />
                </p>
                <p>
                  <label for="kp-publish-hours">Publish ahead (hours)</label>
                  <input
                    id="kp-publish-hours"
                    type="number"
                    min="0"
                    step="any"
                    required
                    value={schedule.hours}
                    onInput={(event) => setSchedule({ ...schedule, hours: event.currentTarget.value })}
                  />
                </p>
              </div>
            </>
          ) : (
            <p>
              {
                {
                  rotate:
                    'A new version with a new kid signs from now on; the current one is retired and keeps verifying until its tokens expire. A key published ahead of a scheduled rotation is dropped.',
                  retire: 'It signs nothing more; its keys verify until their tokens have expired.',
                  delete: 'Its tokens stop verifying at once. This cannot be undone.',
                  unschedule: 'It rotates only when asked from now on; a key already published ahead still takes over when due.',
                }[action.kind]
              }
            </p>
          )}
        </ConfirmDialog>
      )}
    </>
  );
}
