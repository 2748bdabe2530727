import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { adminOptional, isSignedIn, onSignOut, signIn, signOut } from './api';
import { ApiKeyEditor } from './pages/api-key-editor';
import { ApiKeysPage } from './pages/api-keys';
import { AuditPage } from './pages/audit';
import { JwksPage } from './pages/jwks';
import { KeyPairsPage } from './pages/key-pairs';
import { RouteEditor, RoutesPage } from './pages/routes';
import { TryItPage } from './pages/try-it';
import { errorNotice, type Notice, NoticeLine, PageTitle } from './ui';
import './style.css';

/** Pages are addressed by the URL fragment (#/keys, #/keys/my-id, ...): never a token in it. */
function currentRoute(): string[] {
  return location.hash
    .replace(/^#\/?/, '')
    .split('/')
    .filter(Boolean)
    .map((part) => decodeURIComponent(part));
}

function useRoute(): string[] {
  const [route, setRoute] = useState(currentRoute);
  useEffect(() => {
    const update = () => setRoute(currentRoute());
    addEventListener('hashchange', update);
    return () => removeEventListener('hashchange', update);
  }, []);
  return route;
}

function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [token, setToken] = useState('');
  const [notice, setNotice] = useState<Notice>();
  const [busy, setBusy] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    setBusy(true);
    setNotice(undefined);
    try {
      await signIn(token.trim());
      setToken('');
      onSignedIn();
    } catch (error) {
      setNotice(errorNotice(error));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin">
      <PageTitle>Token authority console</PageTitle>
      <form onSubmit={(event) => void submit(event)}>
        <p>
          <label for="admin-token">Admin token</label>
          <input
            id="admin-token"
            type="password"
            autocomplete="off"
            required
            value={token}
            onInput={(event) => setToken(event.currentTarget.value)}
          />
        </p>
        <p class="hint">The token stays in this tab's memory only: reloading or closing the tab signs you out.</p>
        <NoticeLine notice={notice} />
        <button type="submit" class="primary" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}

const PAGES = [
  { route: 'keys', label: 'API keys' },
  { route: 'routes', label: 'Routes' },
  { route: 'keypairs', label: 'Key pairs' },
  { route: 'jwks', label: 'JWKS' },
  { route: 'try', label: 'Try it' },
  { route: 'audit', label: 'Audit log' },
];

function App() {
  const [signedIn, setSignedIn] = useState(isSignedIn());
  const [hasAudit, setHasAudit] = useState(false);
  const route = useRoute();
  useEffect(() => onSignOut(() => setSignedIn(false)), []);
  useEffect(() => {
    if (!signedIn) return;
    // The audit log is optional on the server: its page shows only when the endpoint answers.
    adminOptional('/api/audit?limit=1').then(
      (answer) => setHasAudit(answer !== undefined),
      () => setHasAudit(false),
    );
  }, [signedIn]);
  if (!signedIn) return <SignIn onSignedIn={() => setSignedIn(true)} />;
  const [page = 'keys', ...rest] = route;
  const pages = PAGES.filter((entry) => entry.route !== 'audit' || hasAudit);
  return (
    <>
      <header>
        <span class="brand">Token authority</span>
        <nav aria-label="Console">
          <ul>
            {pages.map((entry) => (
              <li key={entry.route}>
                <a href={`#/${entry.route}`} aria-current={entry.route === page ? 'page' : undefined}>
                  {entry.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <button type="button" class="signout" onClick={() => signOut()}>
          Sign out
        </button>
      </header>
      <main id="content">
        {page === 'keys' && rest[0] === 'new' && <ApiKeyEditor key="new" />}
        {page === 'keys' && rest[0] !== undefined && rest[0] !== 'new' && <ApiKeyEditor key={rest[0]} clientId={rest[0]} />}
        {page === 'keys' && rest[0] === undefined && <ApiKeysPage />}
        {page === 'routes' && rest[0] === 'new' && <RouteEditor key="new" />}
        {page === 'routes' && rest[0] !== undefined && rest[0] !== 'new' && <RouteEditor key={rest[0]} id={rest[0]} />}
        {page === 'routes' && rest[0] === undefined && <RoutesPage />}
        {page === 'keypairs' && <KeyPairsPage />}
        {page === 'jwks' && <JwksPage />}
        {page === 'try' && <TryItPage key={rest[0] ?? ''} clientId={rest[0]} />}
        {page === 'audit' && <AuditPage />}
        {!PAGES.some((entry) => entry.route === page) && <PageTitle>Page not found</PageTitle>}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
