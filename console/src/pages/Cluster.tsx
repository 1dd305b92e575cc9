import { get, fmtAge, fmtBytes, type Cluster, type Deployment, type Node } from '../api';
import { usePoll } from '../hooks';
import { Badge, ErrorLine, Section, Stale } from '../ui';

interface ClusterData {
  cluster: Cluster;
  nodes: Node[];
  deployments: Deployment[];
}

async function load(): Promise<ClusterData> {
  const [cluster, nodes, deployments] = await Promise.all([
    get<Cluster>('/v1/cluster'),
    get<{ nodes: Node[] }>('/v1/nodes'),
    get<{ data: Deployment[] }>('/v1/deployments'),
  ]);
  return { cluster, nodes: nodes.nodes, deployments: deployments.data };
}

/** Coordinators, nodes and where every replica and stage runs; refreshed every second. */
export function ClusterPage() {
  const { data, error, updated } = usePoll(load, 1000);
  if (!data) return <ErrorLine error={error} />;
  const { cluster, nodes, deployments } = data;
  const accel = (n: Node) =>
    (n.capacity.accelerators as { kind?: string; model?: string; memory_bytes?: number }[])
      .map((a) => `${a.kind ?? ''} ${a.model ?? ''}`.trim())
      .join(', ') || 'CPU only';
  return (
    <>
      <h1>Cluster</h1>
      <Stale updated={updated} error={error} />
      <Section title="Coordinators">
        <p>
          Leader: <strong>{cluster.leader_id ?? 'none'}</strong> · term {cluster.term} · commit index{' '}
          {cluster.commit_index}
        </p>
        <table>
          <thead>
            <tr>
              <th scope="col">Id</th>
              <th scope="col">Role</th>
              <th scope="col">QUIC</th>
              <th scope="col">HTTP</th>
            </tr>
          </thead>
          <tbody>
            {cluster.members.map((m) => (
              <tr key={m.id}>
                <td>{m.id}</td>
                <td>{m.leader ? <Badge state="leader" /> : m.voter ? 'voter' : 'learner'}</td>
                <td>{m.quic}</td>
                <td>{m.http}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </Section>
      <Section title="Nodes">
        <table data-testid="nodes">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">State</th>
              <th scope="col">Generation</th>
              <th scope="col">Accelerators</th>
              <th scope="col">Load</th>
              <th scope="col">Memory free</th>
              <th scope="col">Heartbeat</th>
            </tr>
          </thead>
          <tbody>
            {nodes.map((n) => {
              const load = n.load as { cpu_load_milli?: number; memory_available_bytes?: number; in_flight?: number } | null;
              return (
                <tr key={n.id} data-node={n.name}>
                  <td>{n.name}</td>
                  <td>
                    <Badge state={n.state} />
                  </td>
                  <td>{n.generation}</td>
                  <td>{accel(n)}</td>
                  <td>
                    {load ? `${((load.cpu_load_milli ?? 0) / 1000).toFixed(2)} · ${load.in_flight ?? 0} running` : '—'}
                  </td>
                  <td>{load?.memory_available_bytes != null ? fmtBytes(load.memory_available_bytes) : '—'}</td>
                  <td>{fmtAge(n.last_heartbeat_age_ms)}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      </Section>
      <Section title="Where models run">
        <div class="map">
          {nodes.map((n) => {
            const here = deployments.flatMap((d) =>
              d.placements.filter((p) => p.node === n.id).map((p) => ({ d, p })),
            );
            return (
              <div class={`map-node s-${n.state}`} key={n.id}>
                <h3>{n.name}</h3>
                {here.length === 0 && <p class="muted">nothing placed</p>}
                {here.map(({ d, p }) => {
                  const stage = p.stage as { index: number; count: number; layers: [number, number] } | null;
                  const layers = d.layers || 0;
                  const [from, end] = stage?.layers ?? [0, layers];
                  const what = stage ? `stage ${stage.index + 1} of ${stage.count}: ` : '';
                  return (
                    <div class="replica" key={p.id}>
                      <span>
                        {d.name} <Badge state={p.state} />
                      </span>
                      {layers > 0 && (
                        <div
                          class="layers"
                          role="img"
                          aria-label={`${what}layers ${from} to ${end - 1} of ${layers}`}
                          title={`${what}layers ${from}–${end - 1} of ${layers}`}
                        >
                          <span style={{ left: `${(from / layers) * 100}%`, width: `${((end - from) / layers) * 100}%` }} />
                        </div>
                      )}
                      {p.message && <p class="muted">{p.message}</p>}
                    </div>
                  );
                })}
              </div>
            );
          })}
        </div>
      </Section>
    </>
  );
}
