// Small hand-written SVG charts for the benchmark report: throughput over time
// across a failover (successes and failures per second, with event markers) and
// latency histograms (log-spaced buckets).

const W = 760;
const H = 300;
const M = { left: 56, right: 16, top: 34, bottom: 44 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;
const COLORS = ['#2f6fdf', '#1f9d55', '#d97706', '#7c3aed', '#0891b2', '#be185d'];

const esc = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const f1 = (x: number) => (Math.round(x * 10) / 10).toString();

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function frame(title: string, yLabel: string, xLabel: string, yMax: number, body: string[]): string {
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">${esc(title)}</text>`,
  ];
  for (let i = 0; i <= 4; i++) {
    const y = M.top + PH - (PH * i) / 4;
    out.push(
      `<line x1="${M.left}" x2="${M.left + PW}" y1="${f1(y)}" y2="${f1(y)}" stroke="#e5e7eb"/>`,
      `<text x="${M.left - 6}" y="${f1(y + 4)}" text-anchor="end" fill="#555">${f1((yMax * i) / 4)}</text>`,
    );
  }
  out.push(
    `<line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${M.top + PH}" stroke="#333"/>`,
    `<line x1="${M.left}" x2="${M.left + PW}" y1="${M.top + PH}" y2="${M.top + PH}" stroke="#333"/>`,
    `<text x="14" y="${M.top + PH / 2}" transform="rotate(-90 14 ${M.top + PH / 2})" text-anchor="middle" fill="#333">${esc(yLabel)}</text>`,
    `<text x="${M.left + PW / 2}" y="${H - 8}" text-anchor="middle" fill="#333">${esc(xLabel)}</text>`,
    ...body,
    '</svg>',
  );
  return out.join('\n');
}

export interface TimelineSeries {
  name: string;
  /** One point per bucket: time (s from the start) and count per bucket. */
  points: Array<{ t: number; ok: number; failed: number }>;
}

/**
 * Successful operations per second over time (one line per series) and failed
 * ones (red bars), with vertical markers at events (kill -9, restart).
 */
export function timelineChart(o: {
  title: string;
  bucketMs: number;
  series: TimelineSeries[];
  markers: Array<{ t: number; label: string }>;
}): string {
  const perSec = 1000 / o.bucketMs;
  const tMax = Math.max(1, ...o.series.flatMap((s) => s.points.map((p) => p.t + o.bucketMs / 1000)));
  const yMax = niceMax(
    Math.max(1, ...o.series.flatMap((s) => s.points.map((p) => Math.max(p.ok, p.failed) * perSec))),
  );
  const x = (t: number) => M.left + (PW * t) / tMax;
  const y = (v: number) => M.top + PH - (PH * v) / yMax;
  const body: string[] = [];
  for (let i = 0; i <= 6; i++) {
    const t = (tMax * i) / 6;
    body.push(
      `<text x="${f1(x(t))}" y="${M.top + PH + 14}" text-anchor="middle" fill="#555">${f1(t)}</text>`,
    );
  }
  const bw = Math.max(1, (PW * (o.bucketMs / 1000)) / tMax - 1);
  o.series.forEach((s, si) => {
    for (const p of s.points) {
      if (p.failed === 0) continue;
      const h = PH - (y(p.failed * perSec) - M.top);
      body.push(
        `<rect x="${f1(x(p.t))}" y="${f1(y(p.failed * perSec))}" width="${f1(bw)}" height="${f1(h)}" fill="#dc2626" opacity="0.7"><title>${esc(s.name)} failed: ${p.failed}</title></rect>`,
      );
    }
    const pts = s.points.map((p) => `${f1(x(p.t + o.bucketMs / 2000))},${f1(y(p.ok * perSec))}`).join(' ');
    const color = COLORS[si % COLORS.length];
    body.push(`<polyline points="${pts}" fill="none" stroke="${color}" stroke-width="1.6"/>`);
    body.push(
      `<rect x="${M.left + 10 + si * 150}" y="${M.top + 4}" width="10" height="10" fill="${color}"/>`,
      `<text x="${M.left + 24 + si * 150}" y="${M.top + 13}">${esc(s.name)} ok/s</text>`,
    );
  });
  if (o.series.some((s) => s.points.some((p) => p.failed > 0))) {
    const lx = M.left + 10 + o.series.length * 150;
    body.push(
      `<rect x="${lx}" y="${M.top + 4}" width="10" height="10" fill="#dc2626" opacity="0.7"/>`,
      `<text x="${lx + 14}" y="${M.top + 13}">failed/s</text>`,
    );
  }
  o.markers.forEach((m, i) => {
    const mx = x(m.t);
    body.push(
      `<line x1="${f1(mx)}" x2="${f1(mx)}" y1="${M.top}" y2="${M.top + PH}" stroke="#111" stroke-dasharray="4 3"/>`,
      `<text x="${f1(mx + 3)}" y="${M.top + 28 + (i % 3) * 12}" fill="#111">${esc(m.label)}</text>`,
    );
  });
  return frame(o.title, 'operations per second', 'seconds', yMax, body);
}

/** Latency histograms (log-spaced buckets) of several phases, as grouped bars. */
export function histogramChart(o: {
  title: string;
  series: Array<{ name: string; buckets: Array<{ le: number; count: number }> }>;
}): string {
  const les = [...new Set(o.series.flatMap((s) => s.buckets.map((b) => b.le)))].sort((a, b) => a - b);
  const totals = o.series.map((s) => s.buckets.reduce((a, b) => a + b.count, 0) || 1);
  // Share of each phase's operations per bucket, in percent: phases of very different sizes compare.
  const yMax = niceMax(
    Math.max(
      1,
      ...o.series.flatMap((s, si) => s.buckets.map((b) => (100 * b.count) / (totals[si] as number))),
    ),
  );
  const slot = PW / Math.max(1, les.length);
  const bw = Math.max(1, (slot - 2) / Math.max(1, o.series.length));
  const y = (v: number) => M.top + PH - (PH * v) / yMax;
  const body: string[] = [];
  les.forEach((le, i) => {
    if (les.length <= 24 || i % 2 === 0) {
      body.push(
        `<text x="${f1(M.left + slot * i + slot / 2)}" y="${M.top + PH + 14}" text-anchor="middle" fill="#555">${le < 10 ? le : Math.round(le)}</text>`,
      );
    }
  });
  o.series.forEach((s, si) => {
    const color = COLORS[si % COLORS.length];
    for (const b of s.buckets) {
      const i = les.indexOf(b.le);
      const v = (100 * b.count) / (totals[si] as number);
      if (v === 0) continue;
      body.push(
        `<rect x="${f1(M.left + slot * i + 1 + bw * si)}" y="${f1(y(v))}" width="${f1(bw)}" height="${f1(M.top + PH - y(v))}" fill="${color}"><title>${esc(s.name)} ≤ ${b.le} ms: ${b.count}</title></rect>`,
      );
    }
    body.push(
      `<rect x="${M.left + 10 + (si % 4) * 170}" y="${M.top + 4 + Math.floor(si / 4) * 14}" width="10" height="10" fill="${color}"/>`,
      `<text x="${M.left + 24 + (si % 4) * 170}" y="${M.top + 13 + Math.floor(si / 4) * 14}">${esc(s.name)}</text>`,
    );
  });
  return frame(o.title, '% of operations', 'latency (ms, upper bound of the bucket)', yMax, body);
}
