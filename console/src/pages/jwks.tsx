import { useEffect, useState } from 'preact/hooks';
import { JWKS_PATH, publicCall } from '../api';
import { type Notice, NoticeLine, PageTitle } from '../ui';

/** The public JWKS exactly as the authority serves it to everyone. */
export function JwksPage() {
  const [text, setText] = useState<string>();
  const [notice, setNotice] = useState<Notice>();
  useEffect(() => {
    publicCall(JWKS_PATH).then(
      (answer) =>
        answer.status === 200
          ? setText(answer.text)
          : setNotice({ kind: 'error', text: `The JWKS endpoint answered ${answer.status}: ${answer.text}` }),
      (error: Error) => setNotice({ kind: 'error', text: error.message }),
    );
  }, []);
  let count: number | undefined;
  try {
    count = text ? (JSON.parse(text) as { keys: unknown[] }).keys.length : undefined;
  } catch {
    count = undefined;
  }
  return (
    <>
      <PageTitle>Public keys (JWKS)</PageTitle>
      <p>
        As served at <a href={JWKS_PATH}>{JWKS_PATH}</a>
        {count !== undefined && `: ${count} key${count === 1 ? '' : 's'}`}.
      </p>
      <NoticeLine notice={notice} />
      {text !== undefined && (
        <pre class="code" data-testid="jwks">
          {text}
        </pre>
      )}
    </>
  );
}
