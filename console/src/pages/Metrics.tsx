import { get } from '../api';
import type { paths } from '../api-schema';
import { LineChart } from '../charts';
import { usePoll } from '../hooks';
import { ErrorLine } from '../ui';

/** One 5-second interval of the gateway's own history, as the API describes it. */
export type Point = paths['/v1/console/metrics']['get']['responses'][200]['content']['application/json']['points'][number];

export const loadPoints = () => get<{ points: Point[] }>('/v1/console/metrics').then((r) => r.points);

/** The last 15 minutes from the gateway's own counters (no Prometheus needed). */
export function MetricsPage() {
  const { data, error } = usePoll(loadPoints, 5000);
  const points = data ?? [];
  const t = (p: Point) => p.at_ms / 1000;
  const nodes = [...new Set(points.flatMap((p) => p.nodes.map((n) => n.node)))];
  return (
    <>
      <h1>Metrics</h1>
      <p class="muted">This gateway's last 15 minutes, sampled every 5 s. Cluster-wide history: the Grafana dashboards.</p>
      <ErrorLine error={error} />
      <div class="charts">
        <LineChart
          title="Requests"
          unit="/s"
          series={[
            { name: 'requests', points: points.map((p) => [t(p), p.requests_per_s]) },
            { name: 'errors', points: points.map((p) => [t(p), p.errors_per_s]) },
          ]}
        />
        <LineChart
          title="Time to first token"
          unit="s"
          series={[{ name: 'mean', points: points.filter((p) => p.ttft_seconds != null).map((p) => [t(p), p.ttft_seconds!]) }]}
        />
        <LineChart title="Tokens" unit="/s" series={[{ name: 'generated', points: points.map((p) => [t(p), p.tokens_per_s]) }]} />
        <LineChart
          title="Node load"
          unit=""
          series={nodes.map((n) => ({
            name: n,
            points: points.map((p) => [t(p), p.nodes.find((x) => x.node === n)?.cpu_load ?? 0] as [number, number]),
          }))}
        />
      </div>
    </>
  );
}
