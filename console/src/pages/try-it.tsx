import { useState } from 'preact/hooks';
import { publicCall, TOKEN_PATH } from '../api';
import { CopyButton, type Notice, NoticeLine, PageTitle } from '../ui';

function decodePart(part: string): unknown {
  const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
  const bytes = Uint8Array.from(atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), '=')), (char) => char.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

/** A single-quoted shell word: what a person can paste into sh or bash as is. */
const shellQuote = (text: string) => `'${text.replace(/'/g, `'\\''`)}'`;

interface Issued {
  header: unknown;
  claims: Record<string, unknown>;
  answer: Record<string, unknown>;
}

/** Issues a token for a key with the public token endpoint, as a client would, and shows what is inside. */
export function TryItPage({ clientId = '' }: { clientId?: string }) {
  const [form, setForm] = useState({ clientId, clientSecret: '', scope: '', audience: '' });
  const [issued, setIssued] = useState<Issued>();
  const [notice, setNotice] = useState<Notice>();
  const [busy, setBusy] = useState(false);

  const body: Record<string, string> = { grant_type: 'client_credentials', client_id: form.clientId, client_secret: form.clientSecret };
  if (form.scope.trim()) body.scope = form.scope.trim();
  if (form.audience.trim()) body.audience = form.audience.trim();
  const curl = `curl -X POST ${shellQuote(`${location.origin}${TOKEN_PATH}`)} -H 'Content-Type: application/json' -d ${shellQuote(JSON.stringify(body))}`;

  const issue = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setNotice(undefined);
    setIssued(undefined);
    try {
      const answer = await publicCall(TOKEN_PATH, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      const parsed = JSON.parse(answer.text) as Record<string, unknown>;
      if (answer.status !== 200) {
        setNotice({ kind: 'error', text: `Refused (${answer.status} ${parsed.error}): ${parsed.error_description}.` });
        return;
      }
      const [header, claims] = String(parsed.access_token).split('.');
      setIssued({ header: decodePart(header), claims: decodePart(claims) as Record<string, unknown>, answer: parsed });
      setNotice({ kind: 'success', text: `Token issued for ${form.clientId}.` });
    } catch (error) {
      setNotice({ kind: 'error', text: error instanceof Error ? error.message : String(error) });
    } finally {
      setBusy(false);
    }
  };

  const field = (name: keyof typeof form, label: string, secret = false) => {
    const onInput = (event: { currentTarget: HTMLInputElement }) => setForm({ ...form, [name]: event.currentTarget.value });
    return (
      <p>
        <label for={`try-${name}`}>{label}</label>
        {secret ? (
          <input id={`try-${name}`} type="password" autocomplete="off" value={form[name]} onInput={onInput} />
        ) : (
          <input id={`try-${name}`} value={form[name]} onInput={onInput} />
        )}
      </p>
    );
  };

  return (
    <>
      <PageTitle>Try it: issue a token</PageTitle>
      <form class="editor" onSubmit={(event) => void issue(event)}>
        <div class="row">
          {field('clientId', 'Client id')}
          {field('clientSecret', 'Client secret', true)}
        </div>
        <div class="row">
          {field('scope', 'Scope (optional)')}
          {field('audience', 'Audience (optional)')}
        </div>
        <p>
          <button type="submit" class="primary" disabled={busy}>
            Issue a token
          </button>
        </p>
      </form>
      <NoticeLine notice={notice} />
      <section aria-labelledby="curl-title">
        <h2 id="curl-title">The same with curl</h2>
        <pre class="code" data-testid="curl">
          {curl}
        </pre>
        <CopyButton text={curl} label="Copy curl command" />
      </section>
      {issued && (
        <section aria-labelledby="token-title">
          <h2 id="token-title">The token</h2>
          <p>
            Expires in {String(issued.answer.expires_in)} s; scope: {String(issued.answer.scope ?? '—')}.
          </p>
          <div class="row">
            <div>
              <h3>Header</h3>
              <pre class="code" data-testid="token-header">
                {JSON.stringify(issued.header, null, 2)}
              </pre>
            </div>
            <div>
              <h3>Claims</h3>
              <pre class="code" data-testid="token-claims">
                {JSON.stringify(issued.claims, null, 2)}
              </pre>
            </div>
          </div>
          <h3>Encoded</h3>
          <pre class="code token">{String(issued.answer.access_token)}</pre>
        </section>
      )}
    </>
  );
}
