import { useState } from 'preact/hooks';
import { get, post, type Run, type RunSummary } from '../api';
import { usePoll } from '../hooks';
import { Badge, ErrorLine, Section, Stale } from '../ui';

type Step = Run['steps'][number];

/** The steps in rows: a step sits one row below the last of the steps it waits for. */
function levels(steps: Step[]): Step[][] {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const level = new Map<string, number>();
  const of = (s: Step, seen: Set<string>): number => {
    const known = level.get(s.id);
    if (known != null) return known;
    if (seen.has(s.id)) return 0;
    seen.add(s.id);
    const deps = s.after.map((id) => byId.get(id)).filter((d): d is Step => !!d);
    const l = deps.length ? 1 + Math.max(...deps.map((d) => of(d, seen))) : 0;
    level.set(s.id, l);
    return l;
  };
  const rows: Step[][] = [];
  for (const s of steps) (rows[of(s, new Set())] ??= []).push(s);
  return rows.filter(Boolean);
}

function when(ms?: number) {
  return ms ? new Date(ms).toLocaleTimeString() : '—';
}

/** Graph runs: the list, and one run's steps live, with inputs, outputs and rerun. */
export function RunsPage() {
  const runs = usePoll(() => get<{ data: RunSummary[] }>('/v1/runs?limit=50'), 2000);
  const [open, setOpen] = useState<string | null>(null);
  const run = usePoll(
    () => (open ? get<Run>(`/v1/runs/${encodeURIComponent(open)}`) : Promise.resolve(null)),
    open ? 1000 : 0,
    [open],
  );
  const [error, setError] = useState<string | null>(null);
  const rerun = async (from: string) => {
    if (!open) return;
    setError(null);
    try {
      const r = await post<{ id: string }>(`/v1/runs/${encodeURIComponent(open)}/rerun`, { from });
      setOpen(r.id);
      runs.refresh();
    } catch (e) {
      setError(e instanceof Error ? e.message : String(e));
    }
  };
  return (
    <>
      <h1>Graph runs</h1>
      <Stale updated={runs.updated} error={runs.error} />
      <ErrorLine error={error} />
      <div class="split">
        <Section title="Runs">
          {runs.data?.data.length === 0 && <p>No runs yet (`shoal graph run NAME`).</p>}
          <ul class="runs">
            {(runs.data?.data ?? []).map((r) => (
              <li key={r.id}>
                <button class="link" aria-pressed={r.id === open} onClick={() => setOpen(r.id)}>
                  {r.graph}
                </button>{' '}
                <Badge state={r.status} /> <span class="muted">{when(r.created_at_ms)}</span>
              </li>
            ))}
          </ul>
        </Section>
        {run.data && (
          <Section title={`Run ${run.data.id}`}>
            <p>
              {run.data.graph} v{run.data.version} · <Badge state={run.data.status} />
              {run.data.error && <span class="error"> {run.data.error}</span>}
            </p>
            <div class="dag" role="list" aria-label="Steps by dependency level">
              {levels(run.data.steps).map((row, level) => (
                <div class="dag-level" key={level} role="presentation">
                  {row.map((s) => (
                    <div key={s.id} role="listitem" class={`step s-${s.status}`}>
                      <details>
                        <summary>
                          <strong>{s.id}</strong> {s.kind && <span class="muted">{s.kind}</span>} <Badge state={s.status} />
                          {s.duration_ms ? <span class="muted"> {s.duration_ms} ms</span> : null}
                        </summary>
                        {s.after.length > 0 && <p class="muted">after {s.after.join(', ')}</p>}
                        {s.error && <p class="error">{s.error}</p>}
                        {s.inputs != null && (
                          <>
                            <h4>Inputs</h4>
                            <pre>{JSON.stringify(s.inputs, null, 2)}</pre>
                          </>
                        )}
                        {s.output != null && (
                          <>
                            <h4>Output</h4>
                            <pre>{JSON.stringify(s.output, null, 2)}</pre>
                          </>
                        )}
                        <button onClick={() => rerun(s.id)}>Rerun from here</button>
                      </details>
                    </div>
                  ))}
                </div>
              ))}
            </div>
            {run.data.outputs != null && (
              <>
                <h3>Outputs</h3>
                <pre>{JSON.stringify(run.data.outputs, null, 2)}</pre>
              </>
            )}
          </Section>
        )}
      </div>
    </>
  );
}
