// Prometheus text exposition (format 0.0.4) for every tier's GET /metrics.

export type Labels = Record<string, string>;

export class PromText {
  private readonly lines: string[] = [];
  private readonly typed = new Set<string>();

  private head(name: string, type: 'counter' | 'gauge' | 'histogram', help: string): void {
    if (this.typed.has(name)) return;
    this.typed.add(name);
    this.lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
  }

  counter(name: string, help: string, value: number, labels?: Labels): this {
    this.head(name, 'counter', help);
    this.lines.push(`${name}${fmt(labels)} ${value}`);
    return this;
  }

  gauge(name: string, help: string, value: number, labels?: Labels): this {
    this.head(name, 'gauge', help);
    this.lines.push(`${name}${fmt(labels)} ${value}`);
    return this;
  }

  /** One counter per key of `values`, labelled `label="key"`. */
  counters(name: string, help: string, label: string, values: Record<string, number>): this {
    for (const [k, v] of Object.entries(values)) this.counter(name, help, v, { [label]: k });
    return this;
  }

  histogram(name: string, help: string, h: Histogram): this {
    this.head(name, 'histogram', help);
    let cumulative = 0;
    h.bounds.forEach((b, i) => {
      cumulative += h.counts[i]!;
      this.lines.push(`${name}_bucket{le="${b}"} ${cumulative}`);
    });
    this.lines.push(`${name}_bucket{le="+Inf"} ${h.total}`, `${name}_sum ${h.sum}`, `${name}_count ${h.total}`);
    return this;
  }

  toString(): string {
    return `${this.lines.join('\n')}\n`;
  }
}

function fmt(labels?: Labels): string {
  if (labels === undefined) return '';
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`))}"`);
  return `{${parts.join(',')}}`;
}

/** Fixed-bucket histogram for the Prometheus text format. */
export class Histogram {
  readonly counts: Float64Array;
  total = 0;
  sum = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    let i = 0;
    while (i < this.bounds.length && v > this.bounds[i]!) i++;
    this.counts[i]! += 1;
    this.total++;
    this.sum += v;
  }
}
