// Reports as charts: the funnel, response times and volumes, from the reports API (shown when
// the server has it: /v1/reports/{name}).
import { html, useState } from "../../vendor/htm-preact-standalone.module.js";
import { get, hasRoute } from "../api.js";
import { useData, ErrorNote, Empty, Time, BarChart, channelName } from "../ui.js";

async function load(days) {
  if (!(await hasRoute("/v1/reports/{name}"))) return { missing: true };
  const [funnel, times, volumes] = await Promise.all(["funnel", "response_times", "volumes"].map((n) => get(`/v1/reports/${n}?days=${days}`)));
  return { funnel, times, volumes };
}

export function Reports() {
  const [days, setDays] = useState(30);
  const data = useData(() => load(days), [days]);
  if (data.error) return html`<${ErrorNote} error=${data.error} />`;
  if (!data.data) return html`<p>Loading…</p>`;
  if (data.data.missing) return html`<section><h1>Reports</h1><${Empty}>Reports are not installed on this server yet: this page appears when the API has <code>/v1/reports/{name}</code>.<//></section>`;
  const { funnel, times, volumes } = data.data;
  const pipeline = (funnel.data.pipelines || []).find((p) => p.default) || (funnel.data.pipelines || [])[0];
  const seconds = (s) => (s == null ? "—" : s < 90 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`);
  return html`<section aria-labelledby="reports-title"><div class="page-head"><h1 id="reports-title">Reports</h1>
    <label>Period <select value=${days} onChange=${(e) => setDays(Number(e.target.value))}>${[7, 30, 90].map((d) => html`<option value=${d}>${d} days</option>`)}</select></label></div>
    <div class="charts">
      ${pipeline && html`<${BarChart} title=${`Funnel: ${pipeline.pipeline} (leads that reached each stage)`}
        rows=${pipeline.stages.map((s) => ({ label: s.stage, value: s.reached, note: `${s.reached}${s.reached_share != null ? ` · ${Math.round(s.reached_share * 100)}%` : ""}` }))} />`}
      <${BarChart} title="First reply time by channel (p50, p90)" colors=${["#1f5f8b", "#e59866"]} legend=${["p50", "p90 (beyond p50)"]}
        rows=${(times.data.channels || []).map((c) => ({ label: channelName(c.channel), value: [c.p50_seconds || 0, Math.max((c.p90_seconds || 0) - (c.p50_seconds || 0), 0)], note: `${seconds(c.p50_seconds)} / ${seconds(c.p90_seconds)}` }))} />
      <${BarChart} title="Messages per day" legend=${["inbound", "outbound"]}
        rows=${(volumes.data.days || []).slice(-14).map((d) => ({ label: d.day, value: [d.inbound, d.outbound] }))} />
    </div>
    <p class="small">Computed <${Time} at=${funnel.computed_at} /> (funnel), <${Time} at=${times.computed_at} /> (response times).</p>
  </section>`;
}
