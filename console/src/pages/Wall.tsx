import { get, type Cluster, type Deployment, type KnowledgeBase, type Node } from '../api';
import { usePoll } from '../hooks';
import { loadPoints } from './Metrics';

interface WallData {
  cluster: Cluster;
  nodes: Node[];
  deployments: Deployment[];
  bases: KnowledgeBase[];
  rps: number;
  tps: number;
}

async function load(): Promise<WallData> {
  const [cluster, nodes, deployments, bases, points] = await Promise.all([
    get<Cluster>('/v1/cluster'),
    get<{ nodes: Node[] }>('/v1/nodes'),
    get<{ data: Deployment[] }>('/v1/deployments'),
    get<{ data: KnowledgeBase[] }>('/v1/knowledge-bases'),
    loadPoints(),
  ]);
  const last = points[points.length - 1];
  return {
    cluster,
    nodes: nodes.nodes,
    deployments: deployments.data,
    bases: bases.data,
    rps: last?.requests_per_s ?? 0,
    tps: last?.tokens_per_s ?? 0,
  };
}

/** Alerts derived from what the console sees (the Prometheus rules say the same, with history). */
function alerts(d: WallData): string[] {
  const out: string[] = [];
  if (d.cluster.leader_id == null) out.push('No raft leader: cluster writes fail');
  for (const n of d.nodes.filter((n) => n.state === 'dead')) out.push(`Node ${n.name} is dead`);
  for (const x of d.deployments.filter((x) => x.ready_replicas < x.replicas))
    out.push(`${x.name}: ${x.ready_replicas} of ${x.replicas} replicas ready`);
  for (const b of d.bases.filter((b) => b.status !== 'ready')) out.push(`Knowledge base ${b.name} is ${b.status}`);
  return out;
}

/** A read-only wall screen: large type, no rotation, no controls beyond the page links. */
export function WallPage() {
  const { data, error, updated } = usePoll(load, 2000);
  if (!data) return <p class="wall-state">{error ?? 'Loading…'}</p>;
  const ready = data.nodes.filter((n) => n.state === 'ready').length;
  const list = alerts(data);
  return (
    <div class="wall-grid" aria-live="polite">
      <div class={`tile ${data.cluster.leader_id == null ? 'bad' : 'good'}`}>
        <h2>Leader</h2>
        <p class="big">{data.cluster.leader_id ?? 'none'}</p>
        <p>term {data.cluster.term}</p>
      </div>
      <div class={`tile ${ready < data.nodes.length ? 'bad' : 'good'}`}>
        <h2>Nodes ready</h2>
        <p class="big">
          {ready} / {data.nodes.length}
        </p>
      </div>
      <div class="tile">
        <h2>Requests/s</h2>
        <p class="big">{data.rps.toFixed(1)}</p>
      </div>
      <div class="tile">
        <h2>Tokens/s</h2>
        <p class="big">{data.tps.toFixed(0)}</p>
      </div>
      <div class={`tile alerts ${list.length ? 'bad' : 'good'}`}>
        <h2>Alerts</h2>
        {list.length === 0 ? <p class="big">None</p> : <ul>{list.map((a) => <li key={a}>{a}</li>)}</ul>}
      </div>
      <p class="updated">{error ? `Last refresh failed: ${error}` : `Updated ${new Date(updated ?? 0).toLocaleTimeString()}`}</p>
    </div>
  );
}
