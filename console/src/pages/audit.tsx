import { useEffect, useState } from 'preact/hooks';
import { type AuditEntry, listPage } from '../api';
import { errorNotice, formatTime, type Notice, NoticeLine, PageTitle } from '../ui';

/** The admin API's audit log of changes (GET /api/audit), newest pages by its cursor. */
export function AuditPage() {
  const [filters, setFilters] = useState({ entity: '', entityId: '' });
  const [applied, setApplied] = useState(filters);
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  const [page, setPage] = useState<{ items: AuditEntry[]; next?: string }>();
  const [notice, setNotice] = useState<Notice>();
  const pageIndex = cursors.length - 1;

  useEffect(() => {
    const query = new URLSearchParams({ limit: '50' });
    if (applied.entity) query.set('entity', applied.entity);
    if (applied.entityId.trim()) query.set('entityId', applied.entityId.trim());
    const after = cursors[pageIndex];
    if (after !== undefined) query.set('after', after);
    listPage<AuditEntry>(`/api/audit?${query}`).then(setPage, (error) => setNotice(errorNotice(error)));
  }, [applied, cursors]);

  return (
    <>
      <PageTitle>Audit log</PageTitle>
      <form
        class="filters"
        aria-label="Filter the audit log"
        onSubmit={(event) => {
          event.preventDefault();
          setApplied({ ...filters });
          setCursors([undefined]);
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
          <caption class="visually-hidden">Audit log, page {pageIndex + 1}</caption>
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
                  <code class="changes">{entry.changes === undefined ? '—' : JSON.stringify(entry.changes)}</code>
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
      <nav class="pager" aria-label="Pages of the audit log">
        <button type="button" disabled={pageIndex === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous page
        </button>
        <span>Page {pageIndex + 1}</span>
        <button type="button" disabled={page?.next === undefined} onClick={() => page?.next && setCursors([...cursors, page.next])}>
          Next page
        </button>
      </nav>
    </>
  );
}
