import { useEffect, useState } from 'preact/hooks';
import { admin, type ApiKey, ApiError, listPage } from '../api';
import { href } from '../router';
import { ConfirmDialog, errorNotice, formatTime, type Notice, NoticeLine, PageTitle, Pager, useCursorPages } from '../ui';

interface Filters {
  enabled: '' | 'true' | 'false';
  tag: string;
  authorizedEntity: string;
  limit: number;
}

const NO_FILTERS: Filters = { enabled: '', tag: '', authorizedEntity: '', limit: 20 };

function listPath(filters: Filters, after: string | undefined): string {
  const query = new URLSearchParams({ limit: String(filters.limit) });
  if (filters.enabled) query.set('enabled', filters.enabled);
  if (filters.tag.trim()) query.set('tag', filters.tag.trim());
  if (filters.authorizedEntity.trim()) query.set('authorizedEntity', filters.authorizedEntity.trim());
  if (after !== undefined) query.set('after', after);
  return `/api/apikeys?${query}`;
}

/** API keys, a page at a time (the API's limit/after cursor), with the API's filters and a search. */
export function ApiKeysPage() {
  const [filters, setFilters] = useState<Filters>(NO_FILTERS);
  const [draft, setDraft] = useState<Filters>(NO_FILTERS);
  const pages = useCursorPages();
  const [page, setPage] = useState<{ items: ApiKey[]; next?: string }>();
  const [search, setSearch] = useState('');
  const [found, setFound] = useState<ApiKey>();
  const [notice, setNotice] = useState<Notice>();
  const [deleting, setDeleting] = useState<ApiKey>();
  const [reload, setReload] = useState(0);

  useEffect(() => {
    let current = true;
    listPage<ApiKey>(listPath(filters, pages.after)).then(
      (answer) => current && setPage(answer),
      (error) => current && setNotice(errorNotice(error)),
    );
    return () => {
      current = false;
    };
  }, [filters, pages.cursors, reload]);

  const term = search.trim().toLowerCase();
  const shown = (page?.items ?? []).filter(
    (apiKey) =>
      !term ||
      apiKey.clientId.toLowerCase().includes(term) ||
      apiKey.clientName.toLowerCase().includes(term) ||
      apiKey.tags.some((tag) => tag.toLowerCase().includes(term)),
  );

  // A client id typed in full is looked up even when it is on another page.
  useEffect(() => {
    setFound(undefined);
    const id = search.trim();
    if (!id || shown.some((apiKey) => apiKey.clientId === id)) return;
    let current = true;
    admin<ApiKey>('GET', `/api/apikeys/${encodeURIComponent(id)}`).then(
      (answer) => current && setFound(answer.data),
      () => undefined,
    );
    return () => {
      current = false;
    };
  }, [search, page]);

  const rows = found ? [...shown, found] : shown;

  const applyFilters = (event: Event) => {
    event.preventDefault();
    setNotice(undefined);
    setFilters({ ...draft });
    pages.first();
  };

  const remove = async (apiKey: ApiKey) => {
    setDeleting(undefined);
    try {
      await admin('DELETE', `/api/apikeys/${encodeURIComponent(apiKey.clientId)}`);
      setNotice({ kind: 'success', text: `API key ${apiKey.clientId} deleted.` });
      setReload((count) => count + 1);
    } catch (error) {
      setNotice(
        error instanceof ApiError && error.status === 404 ? { kind: 'error', text: 'That API key no longer exists.' } : errorNotice(error),
      );
      setReload((count) => count + 1);
    }
  };

  return (
    <>
      <div class="title-row">
        <PageTitle>API keys</PageTitle>
        <a class="button primary" href={href('keys', 'new')}>
          Create API key
        </a>
      </div>
      <form class="filters" onSubmit={applyFilters} aria-label="Filter API keys">
        <p>
          <label for="filter-enabled">State</label>
          <select
            id="filter-enabled"
            value={draft.enabled}
            onChange={(event) => setDraft({ ...draft, enabled: event.currentTarget.value as Filters['enabled'] })}
          >
            <option value="">Any</option>
            <option value="true">Enabled</option>
            <option value="false">Disabled</option>
          </select>
        </p>
        <p>
          <label for="filter-tag">Tag</label>
          <input id="filter-tag" value={draft.tag} onInput={(event) => setDraft({ ...draft, tag: event.currentTarget.value })} />
        </p>
        <p>
          <label for="filter-entity">Authorized entity</label>
          <input
            id="filter-entity"
            placeholder="route_foo"
            value={draft.authorizedEntity}
            onInput={(event) => setDraft({ ...draft, authorizedEntity: event.currentTarget.value })}
          />
        </p>
        <p>
          <label for="filter-limit">Per page</label>
          <select
            id="filter-limit"
            value={draft.limit}
            onChange={(event) => setDraft({ ...draft, limit: Number(event.currentTarget.value) })}
          >
            {[20, 50, 100].map((size) => (
              <option key={size} value={size}>
                {size}
              </option>
            ))}
          </select>
        </p>
        <p>
          <button type="submit">Apply filters</button>
        </p>
      </form>
      <p class="search">
        <label for="search">Search</label>
        <input
          id="search"
          type="search"
          value={search}
          onInput={(event) => setSearch(event.currentTarget.value)}
          aria-describedby="search-hint"
        />
        <span id="search-hint" class="hint">
          Client id, name or tag on this page; a full client id is found on any page.
        </span>
      </p>
      <NoticeLine notice={notice} />
      {page && (
        <table>
          <caption class="visually-hidden">API keys, page {pages.index + 1}</caption>
          <thead>
            <tr>
              <th scope="col">Client id</th>
              <th scope="col">Name</th>
              <th scope="col">Enabled</th>
              <th scope="col">Authorized entities</th>
              <th scope="col">Scopes</th>
              <th scope="col">Tags</th>
              <th scope="col">Last change</th>
              <th scope="col">Actions</th>
            </tr>
          </thead>
          <tbody>
            {rows.map((apiKey) => (
              <tr key={apiKey.clientId} data-client-id={apiKey.clientId}>
                <td>
                  <a href={href('keys', apiKey.clientId)}>{apiKey.clientId}</a>
                </td>
                <td>{apiKey.clientName}</td>
                <td>{apiKey.enabled ? 'Yes' : 'No'}</td>
                <td>{apiKey.authorizedEntities.join(', ') || '—'}</td>
                <td>{apiKey.scope.join(' ') || '—'}</td>
                <td>{apiKey.tags.join(', ') || '—'}</td>
                <td>{formatTime(apiKey.updatedAt)}</td>
                <td class="row-actions">
                  <a href={href('keys', apiKey.clientId)} aria-label={`Edit ${apiKey.clientId}`}>
                    Edit
                  </a>
                  <a href={href('try', apiKey.clientId)} aria-label={`Try it with ${apiKey.clientId}`}>
                    Try it
                  </a>
                  <button type="button" class="danger" aria-label={`Delete ${apiKey.clientId}`} onClick={() => setDeleting(apiKey)}>
                    Delete
                  </button>
                </td>
              </tr>
            ))}
            {rows.length === 0 && (
              <tr>
                <td colSpan={8}>No API keys here.</td>
              </tr>
            )}
          </tbody>
        </table>
      )}
      <Pager label="Pages of API keys" pages={pages} next={page?.next} />
      {deleting && (
        <ConfirmDialog
          title={`Delete API key ${deleting.clientId}?`}
          confirmLabel={`Delete ${deleting.clientId}`}
          danger
          onConfirm={() => void remove(deleting)}
          onCancel={() => setDeleting(undefined)}
        >
          <p>
            {deleting.clientName !== deleting.clientId ? `${deleting.clientName}: ` : ''}its tokens stop working at once. This cannot be
            undone.
          </p>
        </ConfirmDialog>
      )}
    </>
  );
}
