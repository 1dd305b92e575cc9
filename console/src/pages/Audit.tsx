import { useState } from 'preact/hooks';
import { get } from '../api';
import { usePoll } from '../hooks';
import { ErrorLine, Stale } from '../ui';

interface Record {
  id: string;
  time_ms: number;
  verb: string;
  method: string;
  uri: string;
  object: string;
  key_id: string;
  key_name: string;
  source: string;
  code: number;
  duration_ms: number;
  reason: string;
}

/** The gateway's audit log (admin keys): mutations, admin reads, authentication failures. */
export function AuditPage() {
  const [failed, setFailed] = useState(false);
  const [key, setKey] = useState('');
  const q = new URLSearchParams({ limit: '200' });
  if (failed) q.set('failed', 'true');
  if (key.trim()) q.set('key', key.trim());
  const { data, error, updated } = usePoll(() => get<{ data: Record[] }>(`/v1/audit?${q}`), 5000, [failed, key]);
  return (
    <>
      <h1>Audit log</h1>
      <div class="row">
        <label>
          Key (id or name)
          <input value={key} onInput={(e) => setKey((e.target as HTMLInputElement).value)} />
        </label>
        <label class="inline">
          <input type="checkbox" checked={failed} onChange={(e) => setFailed((e.target as HTMLInputElement).checked)} />
          Failures only
        </label>
      </div>
      <Stale updated={updated} error={error} />
      <ErrorLine error={!data ? error : null} />
      <div class="card">
        <table>
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Key</th>
              <th scope="col">Request</th>
              <th scope="col">Code</th>
              <th scope="col">Source</th>
              <th scope="col">Why recorded</th>
            </tr>
          </thead>
          <tbody>
            {(data?.data ?? []).map((r) => (
              <tr key={r.id} class={r.code >= 400 ? 'failed' : ''}>
                <td>{new Date(r.time_ms).toLocaleString()}</td>
                <td>{r.key_name || r.key_id || '—'}</td>
                <td>
                  {r.method} {r.uri}
                </td>
                <td>{r.code}</td>
                <td>{r.source}</td>
                <td>{r.reason}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </>
  );
}
