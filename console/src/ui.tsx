import type { ComponentChildren } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError } from './api';

/** What a page says after an action: errors are announced at once (role=alert), successes politely. */
export type Notice = { kind: 'error' | 'success'; text: string } | undefined;

export function NoticeLine({ notice }: { notice: Notice }) {
  if (!notice) return null;
  return notice.kind === 'error' ? (
    <p class="notice error" role="alert">
      {notice.text}
    </p>
  ) : (
    <p class="notice success" role="status">
      {notice.text}
    </p>
  );
}

export function errorNotice(error: unknown): Notice {
  return { kind: 'error', text: error instanceof ApiError ? error.message : `Unexpected error: ${String(error)}` };
}

export function formatTime(value: number | string | null | undefined): string {
  if (value === null || value === undefined || value === '') return '—';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

/** The page title, focused when the page opens so screen readers and keyboards start there. */
export function PageTitle({ children }: { children: ComponentChildren }) {
  const ref = useRef<HTMLHeadingElement>(null);
  useEffect(() => ref.current?.focus(), []);
  return (
    <h1 ref={ref} tabIndex={-1}>
      {children}
    </h1>
  );
}

function copyWithSelection(text: string): boolean {
  const field = document.createElement('textarea');
  field.value = text;
  field.readOnly = true;
  field.className = 'visually-hidden';
  document.body.append(field);
  field.select();
  try {
    return document.execCommand('copy');
  } finally {
    field.remove();
  }
}

/** Copies text to the clipboard, and says whether it worked. */
export function CopyButton({ text, label }: { text: string; label: string }) {
  const [state, setState] = useState<'idle' | 'copied' | 'failed'>('idle');
  const copy = async (button: HTMLButtonElement) => {
    try {
      // The Clipboard API exists only in secure contexts (https, localhost): plain http such as
      // http://oauth.oto.tools:8080 gets the older copy command on a selected, hidden field.
      if (navigator.clipboard) await navigator.clipboard.writeText(text);
      else if (!copyWithSelection(text)) throw new Error('copy refused');
      setState('copied');
    } catch {
      setState('failed');
    }
    button.focus();
  };
  return (
    <span class="copy">
      <button type="button" onClick={(event) => void copy(event.currentTarget)}>
        {label}
      </button>
      <span role="status" class="hint">
        {state === 'copied' ? 'Copied.' : state === 'failed' ? 'Copy failed: select the text and copy it.' : ''}
      </span>
    </span>
  );
}

/** A secret the server shows once: with a copy button and the warning that it will not be shown again. */
export function SecretOnce({ clientId, secret, onDone }: { clientId: string; secret: string; onDone: () => void }) {
  const ref = useRef<HTMLElement>(null);
  useEffect(() => ref.current?.focus(), []);
  return (
    <section class="secret" aria-labelledby="secret-title" ref={ref} tabIndex={-1}>
      <h2 id="secret-title">Client secret of {clientId}</h2>
      <p>Copy it now: it is shown only once and cannot be read again.</p>
      <p>
        <code class="secret-value" data-testid="secret">
          {secret}
        </code>
      </p>
      <p class="actions">
        <CopyButton text={secret} label="Copy secret" />
        <button type="button" onClick={onDone}>
          Done
        </button>
      </p>
    </section>
  );
}

/**
 * A modal confirmation (native <dialog>: focus stays inside, Escape cancels). The confirm
 * button names what it does, e.g. "Delete my-id".
 */
export function ConfirmDialog(props: {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  danger?: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.close();
  }, []);
  return (
    <dialog
      ref={ref}
      aria-labelledby="confirm-title"
      onCancel={(event) => {
        event.preventDefault();
        props.onCancel();
      }}
    >
      <form
        method="dialog"
        onSubmit={(event) => {
          event.preventDefault();
          props.onConfirm();
        }}
      >
        <h2 id="confirm-title">{props.title}</h2>
        {props.children}
        <p class="actions">
          <button type="submit" class={props.danger ? 'danger' : 'primary'}>
            {props.confirmLabel}
          </button>
          <button type="button" onClick={props.onCancel}>
            Cancel
          </button>
        </p>
      </form>
    </dialog>
  );
}

/** Splits a list typed by a person: spaces, commas or new lines between items. */
export function splitList(text: string): string[] {
  return text.split(/[\s,]+/).filter(Boolean);
}

/** Where a cursor-paged list (the admin API's `limit` + `after`) stands: cursors[n] opens page n+1. */
export function useCursorPages() {
  const [cursors, setCursors] = useState<(string | undefined)[]>([undefined]);
  return {
    /** Changes whenever the page does: a dependency for the effect that loads it. */
    cursors,
    after: cursors[cursors.length - 1],
    index: cursors.length - 1,
    first: () => setCursors([undefined]),
    previous: () => setCursors(cursors.slice(0, -1)),
    next: (cursor: string) => setCursors([...cursors, cursor]),
  };
}

/** Previous / next buttons of a cursor-paged list; `next` is the cursor the API gave, if any. */
export function Pager({ label, pages, next }: { label: string; pages: ReturnType<typeof useCursorPages>; next?: string }) {
  return (
    <nav class="pager" aria-label={label}>
      <button type="button" disabled={pages.index === 0} onClick={pages.previous}>
        Previous page
      </button>
      <span>Page {pages.index + 1}</span>
      <button type="button" disabled={next === undefined} onClick={() => next && pages.next(next)}>
        Next page
      </button>
    </nav>
  );
}
