import { useEffect, useRef, useState } from 'preact/hooks';
import { admin, ApiError, listPage, type Route, type RouteXdsStatus } from '../api';
import { CheckField, CheckGroup, TextField } from '../fields';
import { go, href } from '../router';
import { ConfirmDialog, errorNotice, formatTime, type Notice, NoticeLine, PageTitle, Pager, splitList, useCursorPages } from '../ui';

const EXTRACTORS: { name: string; label: string }[] = [
  { name: 'bearer', label: 'Bearer token (client credentials flow)' },
  { name: 'basic', label: 'HTTP Basic (client id and secret)' },
  { name: 'customHeaders', label: 'Otoroshi client id / secret headers' },
  { name: 'clientId', label: 'Client id header alone' },
];

/** `host:port`, with https:// in front for TLS to the backend; one target per line. */
function targetText(route: Route): string {
  return route.backend.targets.map((target) => `${target.tls ? 'https://' : ''}${target.hostname}:${target.port}`).join('\n');
}

function parseTargets(text: string): { targets?: { hostname: string; port: number; tls: boolean }[]; error?: string } {
  const targets = [];
  for (const line of text
    .split('\n')
    .map((each) => each.trim())
    .filter(Boolean)) {
    const match = /^(?:(https?):\/\/)?(\[[0-9a-fA-F:.]+\]|[^:/[\]\s]+):(\d{1,5})$/.exec(line);
    if (!match) return { error: `Backend target "${line}": write host:port (put https:// in front for TLS).` };
    targets.push({ hostname: match[2].replace(/^\[|\]$/g, ''), port: Number(match[3]), tls: match[1] === 'https' });
  }
  return { targets };
}

/** After a save, when status.xds is read again: Envoy has answered the push by then (tens of ms). */
const STATUS_REFRESH_MS = 500;

/** What Envoy made of the route: a badge, and Envoy's own words when it refused the config. */
function XdsBadge({ status, detailed = false }: { status?: RouteXdsStatus; detailed?: boolean }) {
  if (!status) return <span class="hint">xDS off</span>;
  if (status.state === 'accepted')
    return (
      <span class="badge ok" title={`${status.envoys} Envoy${status.envoys === 1 ? '' : 's'} connected`}>
        Accepted
      </span>
    );
  if (status.state === 'pending') return <span class="badge muted">No Envoy connected</span>;
  return (
    <span class="xds-rejected">
      <span class="badge danger">Rejected by Envoy</span>{' '}
      <span class="xds-error" data-testid="xds-error">
        {status.error}
      </span>
      {detailed && (
        <span class="hint">
          {' '}
          ({status.type}, Envoy {status.node}, {formatTime(status.at)}; Envoy keeps serving the config it accepted before)
        </span>
      )}
    </span>
  );
}

interface Draft {
  id: string;
  name: string;
  description: string;
  enabled: boolean;
  domains: string;
  pathPrefix: string;
  targets: string;
  check: boolean;
  extractors: string[];
  authorizedEntities: string;
  requiredScopes: string;
  stripCredential: boolean;
  publicPathPrefixes: string;
}

const EMPTY: Draft = {
  id: '',
  name: '',
  description: '',
  enabled: true,
  domains: '',
  pathPrefix: '/',
  targets: '',
  check: true,
  extractors: ['bearer'],
  authorizedEntities: '',
  requiredScopes: '',
  stripCredential: false,
  publicPathPrefixes: '',
};

function draftOf(route: Route): Draft {
  return {
    id: route.id,
    name: route.name,
    description: route.description,
    enabled: route.enabled,
    domains: route.frontend.domains.join('\n'),
    pathPrefix: route.frontend.pathPrefix,
    targets: targetText(route),
    check: route.apikeys.enabled,
    extractors: route.apikeys.extractors,
    authorizedEntities: route.apikeys.authorizedEntities.join(' '),
    requiredScopes: route.apikeys.requiredScopes.join(' '),
    stripCredential: route.apikeys.stripCredential,
    publicPathPrefixes: route.apikeys.publicPathPrefixes.join('\n'),
  };
}

/** The routes Envoy serves, a page at a time: enable or disable in one click, edit, delete. */
export function RoutesPage() {
  const pages = useCursorPages();
  const [page, setPage] = useState<{ items: Route[]; next?: string }>();
  const [notice, setNotice] = useState<Notice>();
  const [deleting, setDeleting] = useState<Route>();
  const [reload, setReload] = useState(0);

  useEffect(() => {
    let current = true;
    const query = new URLSearchParams({ limit: '50' });
    if (pages.after !== undefined) query.set('after', pages.after);
    listPage<Route>(`/api/routes?${query}`).then(
      (answer) => current && setPage(answer),
      (error) => current && setNotice(errorNotice(error)),
    );
    return () => {
      current = false;
    };
  }, [pages.cursors, reload]);

  const toggle = async (route: Route) => {
    try {
      const { etag } = await admin<Route>('GET', `/api/routes/${encodeURIComponent(route.id)}`);
      await admin('PATCH', `/api/routes/${encodeURIComponent(route.id)}`, { enabled: !route.enabled }, { ifMatch: etag });
      setNotice({ kind: 'success', text: `Route ${route.id} ${route.enabled ? 'disabled' : 'enabled'}.` });
    } catch (error) {
      setNotice(errorNotice(error));
    }
    setReload((count) => count + 1);
  };

  const remove = async (route: Route) => {
    setDeleting(undefined);
    try {
      await admin('DELETE', `/api/routes/${encodeURIComponent(route.id)}`);
      setNotice({ kind: 'success', text: `Route ${route.id} deleted.` });
    } catch (error) {
      setNotice(
        error instanceof ApiError && error.status === 404 ? { kind: 'error', text: 'That route no longer exists.' } : errorNotice(error),
      );
    }
    setReload((count) => count + 1);
  };

  return (
    <>
      <div class="title-row">
        <PageTitle>Routes</PageTitle>
        <a class="button primary" href={href('routes', 'new')}>
          Create route
        </a>
      </div>
      <NoticeLine notice={notice} />
      {page && (
        <table>
          <caption class="visually-hidden">Routes, page {pages.index + 1}</caption>
          <thead>
            <tr>
              <th scope="col">Id</th>
              <th scope="col">Domains</th>
              <th scope="col">Path prefix</th>
              <th scope="col">Backend</th>
              <th scope="col">API key check</th>
              <th scope="col">Enabled</th>
              <th scope="col">Envoy</th>
              <th scope="col">Last change</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {page.items.map((route) => (
              <tr key={route.id} data-route-id={route.id}>
                <td>
                  <a href={href('routes', route.id)}>{route.id}</a>
                </td>
                <td>{route.frontend.domains.join(', ')}</td>
                <td>
                  <code>{route.frontend.pathPrefix}</code>
                </td>
                <td>{targetText(route).split('\n').join(', ')}</td>
                <td>{route.apikeys.enabled ? route.apikeys.extractors.join(', ') : 'None (open)'}</td>
                <td>{route.enabled ? 'Yes' : 'No'}</td>
                <td>
                  <XdsBadge status={route.status?.xds} />
                </td>
                <td>{formatTime(route.updatedAt)}</td>
                <td class="row-actions">
                  <a href={href('routes', route.id)} aria-label={`Edit ${route.id}`}>
                    Edit
                  </a>
                  <button
                    type="button"
                    aria-label={`${route.enabled ? 'Disable' : 'Enable'} ${route.id}`}
                    onClick={() => void toggle(route)}
                  >
                    {route.enabled ? 'Disable' : 'Enable'}
                  </button>
                  <button type="button" class="danger" aria-label={`Delete ${route.id}`} onClick={() => setDeleting(route)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
            {page.items.length === 0 && (
              <tr>
                <td colSpan={9}>No routes here.</td>
              </tr>
            )}
          </tbody>
        </table>
      )}
      <Pager label="Pages of routes" pages={pages} next={page?.next} />
      {deleting && (
        <ConfirmDialog
          title={`Delete route ${deleting.id}?`}
          confirmLabel={`Delete ${deleting.id}`}
          danger
          onConfirm={() => void remove(deleting)}
          onCancel={() => setDeleting(undefined)}
        >
          <p>Envoy stops serving {deleting.frontend.domains.join(', ')} for it. This cannot be undone.</p>
        </ConfirmDialog>
      )}
    </>
  );
}

/** Create a route, or edit one (PUT of the route as read, with the form's fields, under If-Match). */
export function RouteEditor({ id }: { id?: string }) {
  const creating = id === undefined;
  const [loaded, setLoaded] = useState<{ route: Route; etag?: string }>();
  const [draft, setDraft] = useState<Draft>(EMPTY);
  const [notice, setNotice] = useState<Notice>();
  const [busy, setBusy] = useState(false);

  const load = async () => {
    if (creating) return;
    try {
      const answer = await admin<Route>('GET', `/api/routes/${encodeURIComponent(id)}`);
      setLoaded({ route: answer.data, etag: answer.etag });
      setDraft(draftOf(answer.data));
    } catch (error) {
      setNotice(errorNotice(error));
    }
  };
  useEffect(() => {
    void load();
  }, [id]);
  /** The status read after a save: not done once the editor is left (the route may be gone by then). */
  const statusTimer = useRef<ReturnType<typeof setTimeout> | undefined>(undefined);
  useEffect(() => () => clearTimeout(statusTimer.current), []);
  /** Only status.xds, read again (the fields being edited are left as they are). */
  const refreshStatus = async () => {
    if (creating) return;
    try {
      const answer = await admin<Route>('GET', `/api/routes/${encodeURIComponent(id)}`);
      setLoaded((current) => (current ? { ...current, route: { ...current.route, status: answer.data.status } } : current));
    } catch {
      // the next read says it
    }
  };

  const set = <K extends keyof Draft>(field: K, value: Draft[K]) => setDraft({ ...draft, [field]: value });

  const save = async (event: Event) => {
    event.preventDefault();
    setNotice(undefined);
    const { targets, error } = parseTargets(draft.targets);
    if (error) return setNotice({ kind: 'error', text: error });
    const base = loaded?.route;
    const body = {
      ...(base ?? {}),
      id: creating ? draft.id.trim() : id,
      name: draft.name.trim() || undefined,
      description: draft.description,
      enabled: draft.enabled,
      frontend: { domains: splitList(draft.domains), pathPrefix: draft.pathPrefix.trim() || '/' },
      backend: { ...(base?.backend ?? {}), targets },
      apikeys: {
        ...(base?.apikeys ?? {}),
        enabled: draft.check,
        extractors: draft.extractors,
        authorizedEntities: splitList(draft.authorizedEntities).length ? splitList(draft.authorizedEntities) : undefined,
        requiredScopes: splitList(draft.requiredScopes),
        stripCredential: draft.stripCredential,
        publicPathPrefixes: splitList(draft.publicPathPrefixes),
      },
    };
    setBusy(true);
    try {
      const answer = creating
        ? await admin<Route>('POST', '/api/routes', body)
        : await admin<Route>('PUT', `/api/routes/${encodeURIComponent(id)}`, body, { ifMatch: loaded?.etag });
      // A write's answer has no status: keep the one read, then read what Envoy made of the change.
      setLoaded({ route: { ...answer.data, status: loaded?.route.status }, etag: answer.etag });
      setDraft(draftOf(answer.data));
      setNotice({ kind: 'success', text: `Route ${answer.data.id} saved.` });
      if (creating) go('routes', answer.data.id);
      else {
        clearTimeout(statusTimer.current);
        statusTimer.current = setTimeout(() => void refreshStatus(), STATUS_REFRESH_MS);
      }
    } catch (failure) {
      setNotice(errorNotice(failure));
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <PageTitle>{creating ? 'Create a route' : `Route ${id}`}</PageTitle>
      <p>
        <a href={href('routes')}>Back to routes</a>
      </p>
      <NoticeLine notice={notice} />
      {(creating || loaded) && (
        <form class="editor" onSubmit={(event) => void save(event)} novalidate>
          <fieldset>
            <legend>Route</legend>
            {creating ? (
              <TextField
                id="route-id"
                label="Id"
                value={draft.id}
                onValue={(value) => set('id', value)}
                autocomplete="off"
                hint="API keys name it as route_<id> in their authorized entities."
              />
            ) : (
              <>
                <p>
                  Id: <code>{id}</code> (created {formatTime(loaded?.route.createdAt)}, last change {formatTime(loaded?.route.updatedAt)})
                </p>
                <p>
                  In Envoy: <XdsBadge status={loaded?.route.status?.xds} detailed />
                </p>
              </>
            )}
            <TextField id="route-name" label="Name" value={draft.name} onValue={(value) => set('name', value)} />
            <TextField
              id="route-description"
              label="Description"
              rows={2}
              value={draft.description}
              onValue={(value) => set('description', value)}
            />
            <CheckField id="route-enabled" label="Enabled" checked={draft.enabled} onChecked={(checked) => set('enabled', checked)} />
          </fieldset>
          <fieldset>
            <legend>Frontend and backend</legend>
            <TextField
              id="route-domains"
              label="Domains"
              rows={2}
              value={draft.domains}
              placeholder="foo.oto.tools"
              onValue={(value) => set('domains', value)}
              hint="One per line: foo.oto.tools, *.oto.tools, with :port or :* if needed."
            />
            <TextField id="route-prefix" label="Path prefix" value={draft.pathPrefix} onValue={(value) => set('pathPrefix', value)} />
            <TextField
              id="route-targets"
              label="Backend targets"
              rows={2}
              value={draft.targets}
              placeholder="127.0.0.1:8081"
              onValue={(value) => set('targets', value)}
              hint="One per line: host:port; put https:// in front for TLS."
            />
          </fieldset>
          <fieldset>
            <legend>API keys</legend>
            <CheckField
              id="route-check"
              label="Check API keys (off: anyone may call this route)"
              checked={draft.check}
              onChecked={(checked) => set('check', checked)}
            />
            <CheckGroup
              name="extractor"
              legend="Credentials accepted"
              options={EXTRACTORS}
              selected={draft.extractors}
              onSelected={(selected) => set('extractors', selected)}
            />
            <TextField
              id="route-entities"
              label="Authorized entities"
              value={draft.authorizedEntities}
              placeholder={`route_${draft.id || id || 'foo'}`}
              onValue={(value) => set('authorizedEntities', value)}
              hint="Keys authorized on one of these may pass; empty: route_<id>."
            />
            <TextField
              id="route-scopes"
              label="Required scopes"
              value={draft.requiredScopes}
              onValue={(value) => set('requiredScopes', value)}
            />
            <CheckField
              id="route-strip"
              label="Remove the credential before the backend"
              checked={draft.stripCredential}
              onChecked={(checked) => set('stripCredential', checked)}
            />
            <TextField
              id="route-public"
              label="Public path prefixes"
              rows={2}
              value={draft.publicPathPrefixes}
              placeholder="/public/"
              onValue={(value) => set('publicPathPrefixes', value)}
              hint="One per line, under the path prefix: served with no check."
            />
          </fieldset>
          <p class="actions">
            <button type="submit" class="primary" disabled={busy}>
              {creating ? 'Create route' : 'Save route'}
            </button>
          </p>
        </form>
      )}
    </>
  );
}
