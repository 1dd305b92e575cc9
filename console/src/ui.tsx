import type { ComponentChildren } from 'preact';

/** An error said plainly, where it happened. */
export function ErrorLine({ error }: { error: string | null | undefined }) {
  if (!error) return null;
  return (
    <p class="error" role="alert">
      {error}
    </p>
  );
}

export function Stale({ updated, error }: { updated: number | null; error: string | null }) {
  if (!error || !updated) return null;
  return (
    <p class="stale" role="status">
      Showing data from {new Date(updated).toLocaleTimeString()}: the last refresh failed ({error}).
    </p>
  );
}

export function Badge({ state }: { state: string }) {
  return <span class={`badge s-${state.replace(/[^a-z]/g, '')}`}>{state}</span>;
}

export function Section({ title, children, actions }: { title: string; children: ComponentChildren; actions?: ComponentChildren }) {
  return (
    <section class="card" aria-label={title}>
      <div class="card-head">
        <h2>{title}</h2>
        {actions}
      </div>
      {children}
    </section>
  );
}
