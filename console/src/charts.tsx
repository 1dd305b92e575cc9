/** A small line chart in SVG: no library, no external asset. */
export function LineChart({ title, unit, series }: { title: string; unit: string; series: { name: string; points: [number, number][] }[] }) {
  const w = 600;
  const h = 160;
  const all = series.flatMap((s) => s.points);
  if (all.length < 2) {
    return (
      <figure class="chart">
        <figcaption>{title}</figcaption>
        <p class="muted">Collecting data…</p>
      </figure>
    );
  }
  const x0 = Math.min(...all.map((p) => p[0]));
  const x1 = Math.max(...all.map((p) => p[0]));
  const yMax = Math.max(1e-9, ...all.map((p) => p[1]));
  const sx = (x: number) => ((x - x0) / Math.max(1, x1 - x0)) * (w - 50) + 45;
  const sy = (y: number) => h - 20 - (y / yMax) * (h - 30);
  const last = series.map((s) => s.points[s.points.length - 1]?.[1] ?? 0);
  return (
    <figure class="chart">
      <figcaption>
        {title}: {series.map((s, i) => `${s.name} ${last[i].toFixed(2)} ${unit}`).join(' · ')}
      </figcaption>
      <svg viewBox={`0 0 ${w} ${h}`} role="img" aria-label={`${title}, last 15 minutes`}>
        <line x1={45} y1={h - 20} x2={w - 5} y2={h - 20} class="axis" />
        <text x={40} y={14} text-anchor="end" class="tick">
          {yMax.toPrecision(2)}
        </text>
        <text x={40} y={h - 20} text-anchor="end" class="tick">
          0
        </text>
        {series.map((s, i) => (
          <polyline key={s.name} class={`line c${i}`} fill="none" points={s.points.map(([x, y]) => `${sx(x)},${sy(y)}`).join(' ')} />
        ))}
      </svg>
    </figure>
  );
}
