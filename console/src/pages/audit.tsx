import { useEffect, useState } from 'preact/hooks';
import { type AuditEntry, listPage } from '../api';
import { errorNotice, formatTime, type Notice, NoticeLine, PageTitle, Pager, useCursorPages } from '../ui';

const isFieldChange = (value: unknown): value is { before: unknown; after: unknown } =>
  typeof value === 'object' && value !== null && 'before' in value && 'after' in value;

/** Changed fields as "field: before → after"; a created or deleted entity folded under a summary. */
function Change({ change }: { change: unknown }) {
  if (change === undefined || change === null) return <span>—</span>;
  const entries = typeof change === 'object' ? Object.entries(change as Record<string, unknown>) : [];
  if (entries.length > 0 && entries.every(([, value]) => isFieldChange(value))) {
    return (
      <ul class="changes">
        {entries.map(([field, value]) => {
          const { before, after } = value as { before: unknown; after: unknown };
          return (
            <li key={field}>
              <strong>{field}</strong>: <code>{JSON.stringify(before)}</code> → <code>{JSON.stringify(after)}</code>
            </li>
          );
        })}
      </ul>
    );
  }
  return (
    <details>
      <summary>The whole entity</summary>
      <code class="changes">{JSON.stringify(change, null, 1)}</code>
    </details>
  );
}

/** The admin API's audit log of changes (GET /api/audit), oldest first, a page at a time by its cursor. */
export function AuditPage() {
  const [filters, setFilters] = useState({ entity: '', entityId: '' });
  const [applied, setApplied] = useState(filters);
  const pages = useCursorPages();
  const [page, setPage] = useState<{ items: AuditEntry[]; next?: string }>();
  const [notice, setNotice] = useState<Notice>();

  useEffect(() => {
    const query = new URLSearchParams({ limit: '50' });
    if (applied.entity) query.set('entity', applied.entity);
    if (applied.entityId.trim()) query.set('entityId', applied.entityId.trim());
    if (pages.after !== undefined) query.set('after', pages.after);
    listPage<AuditEntry>(`/api/audit?${query}`).then(setPage, (error) => setNotice(errorNotice(error)));
  }, [applied, pages.cursors]);

  return (
    <>
      <PageTitle>Audit log</PageTitle>
      <p class="hint">Every change made through the admin API or the CLI, oldest first; secrets show as [redacted].</p>
      <form
        class="filters"
        aria-label="Filter the audit log"
        onSubmit={(event) => {
          event.preventDefault();
          setApplied({ ...filters });
          pages.first();
        }}
      >
        <p>
          <label for="audit-entity">Entity</label>
          <select
            id="audit-entity"
            value={filters.entity}
            onChange={(event) => setFilters({ ...filters, entity: event.currentTarget.value })}
          >
            <option value="">Any</option>
            <option value="apikey">API keys</option>
            <option value="keypair">Key pairs</option>
          </select>
        </p>
        <p>
          <label for="audit-entity-id">Id</label>
          <input
            id="audit-entity-id"
            value={filters.entityId}
            onInput={(event) => setFilters({ ...filters, entityId: event.currentTarget.value })}
          />
        </p>
        <p>
          <button type="submit">Apply filters</button>
        </p>
      </form>
      <NoticeLine notice={notice} />
      {page && (
        <table>
          <caption class="visually-hidden">Audit log, page {pages.index + 1}</caption>
          <thead>
            <tr>
              <th scope="col">When</th>
              <th scope="col">Who</th>
              <th scope="col">Action</th>
              <th scope="col">Entity</th>
              <th scope="col">Changes</th>
            </tr>
          </thead>
          <tbody>
            {page.items.map((entry) => (
              <tr key={String(entry.id)}>
                <td>{formatTime(entry.at)}</td>
                <td>{entry.actor}</td>
                <td>{entry.action}</td>
                <td>
                  {entry.entity} <code>{entry.entityId}</code>
                </td>
                <td>
                  <Change change={entry.change} />
                </td>
              </tr>
            ))}
            {page.items.length === 0 && (
              <tr>
                <td colSpan={5}>Nothing recorded here.</td>
              </tr>
            )}
          </tbody>
        </table>
      )}
      <Pager label="Pages of the audit log" pages={pages} next={page?.next} />
    </>
  );
}
