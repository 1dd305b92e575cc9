import { useState } from 'preact/hooks';
import { del, get, post, type Deployment, type DeployRequest } from '../api';
import { usePoll } from '../hooks';
import { Badge, ErrorLine, Section, Stale } from '../ui';

/** Deploy from a source, scale, delete; every replica's state and message. */
export function DeploymentsPage() {
  const { data, error, updated, refresh } = usePoll(() => get<{ data: Deployment[] }>('/v1/deployments'), 2000);
  const [form, setForm] = useState({ name: '', source: '', replicas: 1 });
  const [busy, setBusy] = useState(false);
  const [actionError, setActionError] = useState<string | null>(null);

  const run = async (what: () => Promise<unknown>) => {
    setBusy(true);
    setActionError(null);
    try {
      await what();
      await refresh();
    } catch (e) {
      setActionError(e instanceof Error ? e.message : String(e));
    } finally {
      setBusy(false);
    }
  };
  const deploy = (e: Event) => {
    e.preventDefault();
    const req: DeployRequest = { name: form.name.trim(), replicas: form.replicas };
    if (form.source.trim()) req.source = form.source.trim();
    run(() => post('/v1/deployments', req));
  };
  const scale = (d: Deployment, replicas: number) =>
    run(() => post('/v1/deployments', { name: d.name, replicas } satisfies DeployRequest));
  const remove = (d: Deployment) => {
    if (confirm(`Delete deployment ${d.name}? Its replicas stop.`)) run(() => del(`/v1/deployments/${encodeURIComponent(d.name)}`));
  };

  return (
    <>
      <h1>Deployments</h1>
      <Stale updated={updated} error={error} />
      <Section title="Deploy a model">
        <form class="row" onSubmit={deploy}>
          <label>
            Name
            <input
              name="name"
              value={form.name}
              required
              pattern="[a-z0-9][a-z0-9._\-]*"
              onInput={(e) => setForm({ ...form, name: (e.target as HTMLInputElement).value })}
            />
          </label>
          <label>
            Source
            <input
              name="source"
              placeholder="builtin://echo, file://…, hf://…"
              value={form.source}
              onInput={(e) => setForm({ ...form, source: (e.target as HTMLInputElement).value })}
            />
          </label>
          <label>
            Replicas
            <input
              name="replicas"
              type="number"
              min={1}
              max={64}
              value={form.replicas}
              onInput={(e) => setForm({ ...form, replicas: Number((e.target as HTMLInputElement).value) })}
            />
          </label>
          <button type="submit" disabled={busy}>
            Deploy
          </button>
        </form>
        <ErrorLine error={actionError} />
      </Section>
      <ErrorLine error={!data ? error : null} />
      {data?.data.length === 0 && <p>No deployments yet.</p>}
      {data?.data.map((d) => (
        <Section
          key={d.name}
          title={d.name}
          actions={
            <span class="actions">
              <button aria-label={`Remove a replica of ${d.name}`} disabled={busy || d.replicas <= 1} onClick={() => scale(d, d.replicas - 1)}>
                −
              </button>
              <span aria-live="polite">
                {d.ready_replicas} / {d.replicas} ready
              </span>
              <button aria-label={`Add a replica of ${d.name}`} disabled={busy} onClick={() => scale(d, d.replicas + 1)}>
                +
              </button>
              <button class="danger" disabled={busy} onClick={() => remove(d)}>
                Delete
              </button>
            </span>
          }
        >
          <p class="muted">
            {d.model} v{d.version} · {d.capabilities.join(', ')}
            {d.source ? ` · ${d.source}` : ''}
          </p>
          {d.pending && <p class="warn">{d.pending}</p>}
          <table>
            <thead>
              <tr>
                <th scope="col">Replica</th>
                <th scope="col">Node</th>
                <th scope="col">State</th>
                <th scope="col">Message</th>
              </tr>
            </thead>
            <tbody>
              {d.placements.map((p) => (
                <tr key={p.id}>
                  <td>{p.id}</td>
                  <td>{p.node_name || p.node}</td>
                  <td>
                    <Badge state={p.state} />
                  </td>
                  <td>{p.message}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </Section>
      ))}
    </>
  );
}
