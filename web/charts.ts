/**
 * Charts of the overview (Chart.js, tree-shaken: only the controllers used are
 * registered). Each chart keeps a visually hidden table of the values it shows,
 * for screen readers and for the browser test to check real data was drawn.
 */
import {
  BarController,
  BarElement,
  CategoryScale,
  Chart,
  type ChartConfiguration,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
} from 'chart.js';
import { el } from './dom.js';

Chart.register(
  BarController,
  BarElement,
  CategoryScale,
  Filler,
  Legend,
  LinearScale,
  LineController,
  LineElement,
  PointElement,
  Tooltip,
);
Chart.defaults.animation = false;
Chart.defaults.maintainAspectRatio = false;
Chart.defaults.font.size = 11;

const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2'];

export interface Series {
  label: string;
  values: number[];
  colors?: string[];
}

/** One chart in a card: a canvas plus its data table. */
export class ChartCard {
  readonly chart: Chart;
  private readonly table: HTMLTableElement;

  constructor(
    host: HTMLElement,
    type: 'line' | 'bar',
    opts: { unit?: string; horizontal?: boolean; max?: number; stacked?: boolean; legend?: boolean } = {},
  ) {
    const canvas = el('canvas');
    this.table = el('table', { className: 'sr-only' });
    host.append(el('div', { className: 'chart' }, canvas), this.table);
    const axis = {
      beginAtZero: true,
      ...(opts.max !== undefined ? { max: opts.max } : {}),
      ticks: opts.unit ? { callback: (v: string | number) => `${v}${opts.unit}` } : {},
    };
    const config: ChartConfiguration = {
      type,
      data: { labels: [], datasets: [] },
      options: {
        indexAxis: opts.horizontal ? 'y' : 'x',
        scales: opts.horizontal ? { x: axis, y: { ticks: { autoSkip: false } } } : { y: axis },
        plugins: {
          legend: { display: opts.legend ?? type === 'line', position: 'bottom', labels: { boxWidth: 10 } },
        },
        elements: { point: { radius: 0 }, line: { tension: 0.25, borderWidth: 2 } },
      },
    };
    this.chart = new Chart(canvas, config);
  }

  /** Replaces the data: category labels (x, or y when horizontal) and one value per label per series. */
  set(labels: string[], series: Series[]): void {
    this.chart.data.labels = labels;
    this.chart.data.datasets = series.map((s, i) => ({
      label: s.label,
      data: s.values,
      borderColor: COLORS[i % COLORS.length],
      backgroundColor: s.colors ?? `${COLORS[i % COLORS.length]}cc`,
      maxBarThickness: 36,
    }));
    this.chart.update();
    this.table.replaceChildren(
      el('tr', {}, el('th', {}, ''), ...series.map((s) => el('th', {}, s.label))),
      ...labels.map((l, i) =>
        el('tr', {}, el('th', {}, l), ...series.map((s) => el('td', {}, String(s.values[i] ?? '')))),
      ),
    );
    this.table.dataset.rows = String(labels.length);
  }
}

/** A rolling window of samples (time label + one value per series) for the line charts. */
export class History {
  readonly labels: string[] = [];
  readonly values = new Map<string, number[]>();

  constructor(private readonly keep = 150) {}

  push(at: Date, sample: Record<string, number>): void {
    this.labels.push(at.toLocaleTimeString());
    for (const [k, v] of Object.entries(sample)) {
      const arr = this.values.get(k) ?? new Array<number>(this.labels.length - 1).fill(Number.NaN);
      arr.push(v);
      this.values.set(k, arr);
    }
    for (const arr of this.values.values()) if (arr.length < this.labels.length) arr.push(Number.NaN);
    if (this.labels.length > this.keep) {
      this.labels.shift();
      for (const arr of this.values.values()) arr.shift();
    }
  }

  series(...keys: string[]): Series[] {
    return keys.map((k) => ({ label: k, values: this.values.get(k) ?? [] }));
  }
}
