/**
 * A hand-written SVG line chart: for each scenario, throughput per second (sent, accepted, completed) above and
 * p99 POST → terminal latency per second (log scale) below.
 */

export interface ChartSeries {
  label: string;
  color: string;
  points: [number, number][];
}

export interface ChartPanel {
  title: string;
  yLabel: string;
  log?: boolean;
  series: ChartSeries[];
}

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function niceMax(v: number): number {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** One panel at (x0, y0) of size w × h. */
function panel(p: ChartPanel, x0: number, y0: number, w: number, h: number): string {
  const left = 64;
  const right = 130;
  const top = 24;
  const bottom = 30;
  const pw = w - left - right;
  const ph = h - top - bottom;
  const all = p.series.flatMap((s) => s.points);
  const xMax = Math.max(1, ...all.map((q) => q[0]));
  const ys = all.map((q) => q[1]).filter((v) => Number.isFinite(v));
  let yOf: (v: number) => number;
  const ticks: { v: number; label: string }[] = [];
  if (p.log) {
    const lo = Math.max(1, Math.min(...ys.filter((v) => v > 0), 10));
    const hi = Math.max(10, ...ys);
    const l0 = Math.floor(Math.log10(lo));
    const l1 = Math.ceil(Math.log10(hi));
    yOf = (v) => y0 + top + ph - (ph * (Math.log10(Math.max(v, 10 ** l0)) - l0)) / Math.max(1, l1 - l0);
    for (let e = l0; e <= l1; e++)
      ticks.push({ v: 10 ** e, label: 10 ** e >= 1000 ? `${10 ** e / 1000} s` : `${10 ** e} ms` });
  } else {
    const hi = niceMax(Math.max(1, ...ys));
    yOf = (v) => y0 + top + ph - (ph * v) / hi;
    for (let i = 0; i <= 4; i++) ticks.push({ v: (hi * i) / 4, label: String(Math.round((hi * i) / 4)) });
  }
  const xOf = (t: number) => x0 + left + (pw * t) / xMax;
  const out: string[] = [];
  out.push(`<text x="${x0 + left}" y="${y0 + 16}" font-size="13" font-weight="bold">${esc(p.title)}</text>`);
  out.push(`<rect x="${x0 + left}" y="${y0 + top}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`);
  for (const t of ticks) {
    const y = yOf(t.v);
    out.push(`<line x1="${x0 + left}" x2="${x0 + left + pw}" y1="${y}" y2="${y}" stroke="#eee"/>`);
    out.push(
      `<text x="${x0 + left - 6}" y="${y + 4}" font-size="10" text-anchor="end">${esc(t.label)}</text>`,
    );
  }
  const xStep = niceMax(xMax / 6);
  for (let t = 0; t <= xMax; t += xStep) {
    out.push(
      `<text x="${xOf(t)}" y="${y0 + top + ph + 14}" font-size="10" text-anchor="middle">${t}s</text>`,
    );
  }
  out.push(
    `<text x="${x0 + 14}" y="${y0 + top + ph / 2}" font-size="10" transform="rotate(-90 ${x0 + 14} ${y0 + top + ph / 2})" text-anchor="middle">${esc(p.yLabel)}</text>`,
  );
  p.series.forEach((s, i) => {
    const pts = s.points.filter((q) => Number.isFinite(q[1]));
    if (pts.length > 0) {
      const d = pts
        .map((q, j) => `${j === 0 ? "M" : "L"}${xOf(q[0]).toFixed(1)},${yOf(q[1]).toFixed(1)}`)
        .join(" ");
      out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.6"/>`);
    }
    const ly = y0 + top + 12 + i * 16;
    out.push(
      `<line x1="${x0 + left + pw + 10}" x2="${x0 + left + pw + 26}" y1="${ly - 4}" y2="${ly - 4}" stroke="${s.color}" stroke-width="2"/>`,
    );
    out.push(`<text x="${x0 + left + pw + 30}" y="${ly}" font-size="10">${esc(s.label)}</text>`);
  });
  return out.join("\n");
}

/** An SVG document with one row of two panels per scenario. */
export function chartSvg(title: string, rows: ChartPanel[][]): string {
  const w = 560;
  const h = 220;
  const width = w * 2;
  const height = 40 + rows.length * h;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="10" y="24" font-size="15" font-weight="bold">${esc(title)}</text>`,
  ];
  rows.forEach((row, r) => row.forEach((p, c) => parts.push(panel(p, c * w, 40 + r * h, w, h))));
  parts.push("</svg>");
  return parts.join("\n");
}
